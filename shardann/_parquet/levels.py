"""Parquet's RLE / bit-packed hybrid encoding, decoded (levels and dictionary indices).

The stream is a sequence of runs, each introduced by a ULEB128 header: an
even header ``2 * count`` is an RLE run of ``count`` copies of one value
stored in ``ceil(width / 8)`` little-endian bytes; an odd header
``2 * groups + 1`` is ``8 * groups`` values bit-packed ``width`` bits each,
least significant bit first. The last bit-packed run may be padded past the
values the page holds.

Plain Numba functions over a uint8 buffer; every read stays inside
``buf[pos:end]`` whatever the bytes say (fuzzed in tests/parquet/test_fuzz.py,
checked against a pure-Python twin in tests/parquet/test_levels.py). Callers
pass ``end <= buf.size``.
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def rle_hybrid_decode(buf, pos, end, width, n, out):
    """Decode ``n`` values of ``width`` bits from ``buf[pos:end]`` into ``out[:n]``.

    Parameters
    ----------
    buf : uint8 (m,). pos, end : int, the stream's bytes. width : int in 0..32.
    n : int, values wanted. out : uint32 (>= n,).

    Returns
    -------
    int, the position after the last run read, or -1 when the stream ends
    before ``n`` values (a truncated or corrupt page) or ``width`` is not in 0..32.
    """
    if width < 0 or width > 32 or n > out.size:
        return -1
    i = 0
    while i < n:
        pos, count, packed_end, v = _run(buf, pos, end, width)
        if pos < 0:
            return -1
        stop = min(n, i + count)
        if packed_end < 0:
            for j in range(i, stop):
                out[j] = v
        else:
            bit = np.int64(pos) * 8
            for j in range(i, stop):
                out[j] = _unpack(buf, bit, width, packed_end)
                bit += width
            pos = packed_end
        i = stop
    return pos


@njit(cache=True, nogil=True)
def fixed_list_levels(buf, pos, end, width, n, first, d, want, repetition):
    """Check that ``n`` levels from ``buf[pos:end]`` say "every row holds exactly
    ``d`` present values", without decoding them into an array.

    The levels belong to values ``first .. first + n - 1`` of a column chunk.
    Definition levels (``repetition`` False) must all equal ``want`` (the
    maximum: no null or empty list, no null value). Repetition levels must be
    0 at every value whose index is a multiple of ``d`` (a row starts) and 1
    elsewhere. RLE runs are checked whole; only bit-packed runs are unpacked.

    Returns the position after the levels, -1 for a truncated stream (or a
    ``width`` not in 0..32), -2 when a level breaks the rule. ``d`` >= 1.
    """
    if width < 0 or width > 32:
        return -1
    phase = first % d  # index of the next value within its row
    i = 0
    while i < n:
        pos, count, packed_end, v = _run(buf, pos, end, width)
        if pos < 0:
            return -1
        if packed_end < 0:
            c = min(n - i, count)
            if not repetition:
                if v != want:
                    return -2
            elif v == 1:
                if phase == 0 or phase + c > d:  # would cover a row start
                    return -2
            elif v == 0:
                if d != 1 and (c != 1 or phase != 0):
                    return -2
            else:
                return -2
            phase = (phase + c) % d
            i += c
        else:
            stop = min(n, i + count)
            bit = np.int64(pos) * 8
            if repetition and width == 1 and d % 8 == 0 and phase % 8 == 0:
                # a byte holds 8 levels of one row (lowest bit first): 0b11111110
                # where the row starts, else all ones; one compare per byte
                # instead of eight unpacked levels (a sampling read's largest CPU item)
                whole = (stop - i) // 8
                for t in range(whole):
                    if buf[pos + t] != (0xFE if phase == 0 else 0xFF):
                        return -2
                    phase += 8
                    if phase == d:
                        phase = 0
                i += whole * 8
                bit += whole * 8
            for _ in range(i, stop):
                v = _unpack(buf, bit, width, packed_end)
                bit += width
                if repetition:
                    if v != (0 if phase == 0 else 1):
                        return -2
                    phase += 1
                    if phase == d:
                        phase = 0
                elif v != want:
                    return -2
            i = stop
            pos = packed_end
    return pos


#: most groups of 8 in a bit-packed run (a page holds < 2**31 values); more is damage,
#: and would overflow ``groups * 8``
_MAX_GROUPS = 1 << 28


@njit(cache=True, nogil=True, inline="always")
def _run(buf, pos, end, width):
    """The run whose header is at ``buf[pos]``: ``(start, count, packed_end, value)``.

    ``start`` is where its data begins (-1 when the stream ends first, or the
    run is empty or impossibly long) and ``count`` its number of values. An
    RLE run has ``packed_end`` -1 and its ``value``; a bit-packed run's values
    lie in ``buf[start:packed_end]``.
    """
    none = np.uint32(0)
    header, pos = _uleb128(buf, pos, end)
    if pos < 0:
        return -1, 0, -1, none
    if header & 1 == 0:
        vbytes = (width + 7) // 8
        if header == 0 or pos + vbytes > end:  # no writer makes an empty run: damage
            return -1, 0, -1, none
        return pos + vbytes, header >> 1, -1, _rle_value(buf, pos, vbytes)
    groups = header >> 1
    if groups == 0 or groups > _MAX_GROUPS or pos + groups * width > end:
        return -1, 0, -1, none
    return pos, groups * 8, pos + groups * width, none


@njit(cache=True, nogil=True, inline="always")
def _uleb128(buf, pos, end):
    """(value, position after it), or (0, -1) past ``end`` or when too long."""
    value = 0
    shift = 0
    while True:
        if pos >= end or shift > 56:
            return 0, -1
        b = np.int64(buf[pos])
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


@njit(cache=True, nogil=True, inline="always")
def _rle_value(buf, pos, vbytes):
    v = np.uint32(0)
    for j in range(vbytes):
        v |= np.uint32(buf[pos + j]) << np.uint32(8 * j)
    return v


@njit(cache=True, nogil=True, inline="always")
def _unpack(buf, bit, width, limit):
    """The ``width``-bit value starting at bit ``bit`` of ``buf`` (bytes before ``limit``)."""
    byte = bit >> 3
    word = np.uint64(0)
    last = min(byte + 5, limit)  # up to 5 bytes hold <= 32 bits starting at any bit
    for t in range(byte, last):
        word |= np.uint64(buf[t]) << np.uint64(8 * (t - byte))
    return np.uint32((word >> np.uint64(bit & 7)) & np.uint64((1 << width) - 1))


