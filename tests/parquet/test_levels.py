"""The RLE / bit-packed hybrid decoder (``shardann._parquet.levels``) and its slow twin."""

import numpy as np
import pytest
from parquet_support import check_against_twin, hybrid

from shardann._parquet.levels import fixed_list_levels, rle_hybrid_decode


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


@pytest.mark.parametrize("width", [0, 1, 2, 3, 7, 8, 9, 13, 16, 17, 24, 31, 32])
def test_decode_equals_the_twin_on_well_formed_streams(width):
    rng = np.random.default_rng(width)
    top = (1 << width) - 1
    for _ in range(20):
        runs = []
        for _ in range(rng.integers(1, 6)):
            if rng.random() < 0.5:
                runs.append(("rle", int(rng.integers(0, top + 1)), int(rng.integers(1, 40))))
            else:
                runs.append(("packed", rng.integers(0, top + 1, rng.integers(1, 40),
                                                    dtype=np.uint64)))
        buf = hybrid(runs, width)
        total = sum(r[2] if r[0] == "rle" else len(r[1]) for r in runs)
        for n in (0, 1, total // 2, total):
            check_against_twin(buf, 0, buf.size, width, n, 3, 5, 1, False)
        check_against_twin(buf, 0, buf.size - 1, width, total, 0, 1, 0, True)  # truncated


def test_rows_of_d_levels_pass_and_others_fail():
    # repetition levels of 3 rows of 4 as RLE runs and as bit-packed runs
    good = [0, 1, 1, 1] * 3
    for buf in (hybrid([("rle", 0, 1), ("rle", 1, 3)] * 3, 1), hybrid([("packed", good)], 1)):
        assert fixed_list_levels(buf, 0, buf.size, 1, 12, 0, 4, 1, True) == buf.size
        assert fixed_list_levels(buf, 0, buf.size, 1, 12, 1, 4, 1, True) == -2  # shifted
    long_row = hybrid([("rle", 0, 1), ("rle", 1, 4)], 1)  # a row of 5
    assert fixed_list_levels(long_row, 0, long_row.size, 1, 5, 0, 4, 1, True) == -2
    # definition levels: all at the maximum, else a null somewhere
    assert fixed_list_levels(hybrid([("rle", 3, 9)], 2), 0, 2, 2, 9, 0, 3, 3, False) == 2
    buf = hybrid([("packed", [3, 3, 2, 3])], 2)
    assert fixed_list_levels(buf, 0, buf.size, 2, 4, 0, 2, 3, False) == -2


def test_impossible_runs_and_widths_are_refused():
    out = np.zeros(8, np.uint32)
    for width in (-1, 33, 200):  # a dictionary page's index width comes from the file
        assert rle_hybrid_decode(np.array([2, 1], np.uint8), 0, 2, width, 1, out) == -1
    empty_rle, empty_packed = np.array([0, 1], np.uint8), np.array([1], np.uint8)
    for buf in (empty_rle, empty_packed):
        assert rle_hybrid_decode(buf, 0, buf.size, 1, 1, out) == -1
        assert fixed_list_levels(buf, 0, buf.size, 1, 1, 0, 1, 1, False) == -1
    # 2**60 groups of 8: would overflow groups * 8 and groups * width
    huge = np.array([0x81] * 8 + [0x20], np.uint8)
    assert rle_hybrid_decode(huge, 0, huge.size, 4, 8, out) == -1
    assert rle_hybrid_decode(np.array([2, 1], np.uint8), 0, 2, 1, 9, out) == -1  # out too short
