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
