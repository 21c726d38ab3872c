"""The RLE / bit-packed hybrid decoder (``shardann._parquet.levels``)."""

import numpy as np
import pytest

from shardann._parquet.levels import fixed_list_levels


def _bitpacked(levels):
    """One bit-packed run (bit width 1) of ``levels``, padded to whole groups of 8."""
    groups = -(-len(levels) // 8)
    bits = np.zeros(groups * 8, np.uint8)
    bits[:len(levels)] = levels
    header = (groups << 1) | 1
    head = bytearray()
    while True:  # ULEB128
        byte, header = header & 0x7F, header >> 7
        head.append(byte | (0x80 if header else 0))
        if not header:
            break
    return np.frombuffer(bytes(head) + np.packbits(bits, bitorder="little").tobytes(), np.uint8)


@pytest.mark.parametrize("d", [8, 16, 24, 12, 1])
@pytest.mark.parametrize("first", [0, 8, 5, 16])
def test_repetition_levels_are_checked_byte_by_byte_or_level_by_level(d, first):
    # bit-packed repetition levels: whole bytes are compared at once when a byte
    # holds 8 levels of one row (d a multiple of 8, the run starting on a byte of
    # the row); the answers must be those of the level-by-level check
    n = 200
    good = np.array([0 if (first + i) % d == 0 else 1 for i in range(n)], np.uint8)
    buf = _bitpacked(good)
    assert fixed_list_levels(buf, 0, buf.size, 1, n, first, d, 1, True) == buf.size
    for wrong in (0, 7, 8, 100, n - 1):
        bad = good.copy()
        bad[wrong] ^= 1
        b = _bitpacked(bad)
        assert fixed_list_levels(b, 0, b.size, 1, n, first, d, 1, True) == -2, wrong
    # levels beyond n (the padding of the last group) are not checked
    assert fixed_list_levels(buf, 0, buf.size, 1, n - 3, first, d, 1, True) == buf.size
    assert fixed_list_levels(buf, 0, buf.size - 1, 1, n, first, d, 1, True) == -1
