"""Parquet page headers parsed without Arrow (``shardann._parquet.pages``, used only by
the ingest's local-file fast path; the store checks column chunk CRCs instead)."""

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardann._parquet.pages import (
    DATA_PAGE,
    DICTIONARY_PAGE,
    MalformedPage,
    chunk_range,
    iter_pages,
    read_struct,
)


def _write(path, n=20000, **kw):
    rng = np.random.default_rng(0)
    table = pa.table({"k": pa.array(rng.integers(0, 7, n), pa.int32()),
                      "v": pa.array(rng.standard_normal(n))})
    pq.write_table(table, path, data_page_size=16 << 10, row_group_size=n // 2, **kw)
    return pq.ParquetFile(path).metadata


def test_pages_walk_each_column_chunk_and_carry_their_crc(tmp_path):
    path = tmp_path / "f.parquet"
    md = _write(path, write_page_checksum=True)
    data = path.read_bytes()
    kinds = set()
    for g in range(md.num_row_groups):
        for c in range(md.num_columns):
            cc = md.row_group(g).column(c)
            start, end = chunk_range(cc)
            pages = list(iter_pages(data, start, end))
            assert pages[-1][1] + pages[-1][2] == end  # the pages tile the chunk
            assert sum(h.get(5, h.get(8, {})).get(1, 0) for h, _, _ in pages) == cc.num_values
            for header, at, size in pages:
                kinds.add(header[1])
                assert zlib.crc32(data[at:at + size]) == header[4] & 0xFFFFFFFF
    assert {DATA_PAGE, DICTIONARY_PAGE} <= kinds


def test_damaged_headers_raise_instead_of_looping():
    nested = bytes([0x1C] * 64) + bytes(64)  # struct in struct in struct ...
    with pytest.raises(MalformedPage, match="nested"):
        read_struct(nested, 0)
    huge_list = bytes([0x19, 0xF5]) + b"\xff\xff\xff\xff\x0f" + bytes(8)  # list of 2**32 i32
    with pytest.raises(IndexError):
        read_struct(huge_list, 0)
    # map<bool, bool> of 2: each boolean takes a byte, so the struct ends where it should
    fields, end = read_struct(bytes([0x1B, 2, 0x11, 1, 2, 2, 1, 0]), 0)
    assert fields == {1: {True: False, False: True}} and end == 8
    with pytest.raises(MalformedPage, match="unknown Thrift type"):
        read_struct(bytes([0x1D, 0]), 0)
