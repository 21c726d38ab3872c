"""Small text formatting shared by the command-line outputs and summaries."""

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n):
    """A byte count for people: binary units, one decimal above bytes.

    Examples
    --------
    >>> format_bytes(1000), format_bytes(1536), format_bytes(3 * 2**40)
    ('1,000 B', '1.5 KiB', '3.0 TiB')
    """
    n = float(n)
    for unit in _BYTE_UNITS:
        if abs(n) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{n:,.0f} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024.0


_BYTE_FACTORS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
                 "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
                 "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_bytes(value):
    """A byte count from an int or a text such as ``"64GiB"``, ``"64 GB"`` or ``"1.5e9"``.

    Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (K/KB,
    M/MB, G/GB, T/TB) powers of 1000. Raises ``ValueError`` for anything else
    and for counts below 1.

    Examples
    --------
    >>> parse_bytes("64GiB"), parse_bytes("2 GB"), parse_bytes(4096)
    (68719476736, 2000000000, 4096)
    """
    if isinstance(value, str):
        text = value.strip().replace("_", "").replace(",", "")
        num = text.rstrip("KkMmGgTtIiBb ")
        unit = text[len(num):].strip().lower()
        if unit not in _BYTE_FACTORS:
            raise ValueError(f"expected a byte count like 64GiB or 500MB; got {value!r}")
        try:
            n = float(num) * _BYTE_FACTORS[unit]
        except ValueError:
            raise ValueError(f"expected a byte count like 64GiB or 500MB; got {value!r}") \
                from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        raise TypeError(f"expected a byte count (int or text like '64GiB'); got "
                        f"{type(value).__name__}")
    if not 1 <= n < float("inf"):
        raise ValueError(f"a byte count must be at least 1; got {value!r}")
    return int(n)


def parse_count(value, name="count"):
    """A positive whole number from an int or a text such as ``"1e9"``,
    ``"1_000_000"`` or ``"1,000,000"``; raises ``ValueError`` otherwise.

    Examples
    --------
    >>> parse_count("1e9"), parse_count("2,500"), parse_count(7)
    (1000000000, 2500, 7)
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a whole number; got a bool")
    if isinstance(value, str):
        try:
            x = float(value.strip().replace("_", "").replace(",", ""))
        except ValueError:
            raise ValueError(f"{name} must be a whole number like 1e9 or 1000000; "
                             f"got {value!r}") from None
    elif isinstance(value, (int, float)):
        x = float(value)
    else:
        raise TypeError(f"{name} must be a whole number; got {type(value).__name__}")
    if not (1 <= x < float("inf") and x == int(x)):
        raise ValueError(f"{name} must be a whole number >= 1; got {value!r}")
    return int(x)
