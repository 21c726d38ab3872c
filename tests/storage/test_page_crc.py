"""Page headers parsed without Arrow, and the store's own page-checksum check."""

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from storage_support import content, flip_byte

import shardann
from shardann._parquet_pages import (
    DATA_PAGE,
    DICTIONARY_PAGE,
    MalformedPage,
    chunk_range,
    iter_pages,
    read_struct,
)
from shardann.storage import IndexStore, _segments
from shardann.storage._page_crc import check_page_crcs


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
    check_page_crcs(str(path), data, md, range(md.num_row_groups), range(md.num_columns))


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


def test_flipped_page_body_is_named_by_row_group_and_column(tmp_path):
    path = tmp_path / "f.parquet"
    md = _write(path, write_page_checksum=True)
    start, end = chunk_range(md.row_group(1).column(1))
    flip_byte(path, (start + end) // 2)
    with pytest.raises(shardann.CorruptIndexError,
                       match=r"f\.parquet: row group 1, column v: page at byte \d+ fails"):
        check_page_crcs(str(path), path.read_bytes(), md, [0, 1], [0, 1])
    check_page_crcs(str(path), path.read_bytes(), md, [0], [0, 1])  # other row groups are not read


def test_pages_without_checksums_are_damage(tmp_path):
    """shardann always writes page CRCs: a data page without one was not written by it."""
    path = tmp_path / "f.parquet"
    md = _write(path, write_page_checksum=False)
    with pytest.raises(shardann.CorruptIndexError, match="has no checksum"):
        check_page_crcs(str(path), path.read_bytes(), md, [0], [1])


def test_chunk_past_the_end_of_the_file(tmp_path):
    path = tmp_path / "f.parquet"
    md = _write(path, write_page_checksum=True)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(shardann.CorruptIndexError, match="past the end of the file"):
        check_page_crcs(str(path), path.read_bytes(), md, [1], [1])


@pytest.mark.parametrize("column", ["code", "id", "list_id"])
def test_checks_while_arrow_decodes(tmp_path, make_index, monkeypatch, column):
    """Reads of PARALLEL_CHECK_BYTES or more decode in a thread while the CRCs are
    checked: the same rows when intact, the CRC error when a page is damaged."""
    path = tmp_path / "idx"
    IndexStore.create(path, make_index("ivfpq"))
    want = content(IndexStore.open(path))
    monkeypatch.setattr(_segments, "PARALLEL_CHECK_BYTES", 0)
    assert content(IndexStore.open(path)) == want
    seg = path / IndexStore.open(path).manifest["files"]["segments"][0]["path"]
    md = pq.ParquetFile(seg).metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    cc = md.row_group(0).column(names.index(column))
    offset = (cc.data_page_offset - 2 if cc.has_dictionary_page
              else cc.data_page_offset + cc.total_compressed_size // 2)
    flip_byte(seg, offset)
    with pytest.raises(shardann.CorruptIndexError, match=f"column {column}: .*fails"):
        IndexStore.open(path).read_lists()


@pytest.mark.parametrize("kind,opq", [("ivfpq", True), ("ivfpq", False), ("ivfflat", False)])
@pytest.mark.parametrize("layout", [
    {}, {"data_page_version": "2.0"}, {"data_page_size": 4096},
    {"compression": "zstd"}, {"use_dictionary": True}])
def test_codebooks_read_from_their_pages_equal_arrows_decode(make_index, kind, opq, layout):
    """A CRC-checked codebooks file has its values taken from the PLAIN pages; other
    layouts (compressed, dictionary) go through Arrow; both give the same arrays."""
    from shardann.storage import _codebooks

    index = make_index(kind, opq=opq) if kind == "ivfpq" else make_index(kind)
    data = _codebooks.encode(index._trained_arrays(), index.kind, index.get_config(), 1)
    table = pq.read_table(pa.BufferReader(data))
    sink = pa.BufferOutputStream()
    kw = {"compression": "none", "use_dictionary": False, **layout}
    pq.write_table(table, sink, write_page_checksum=True, **kw)
    data = sink.getvalue().to_pybytes()
    plain = _codebooks._plain_values(data, pq.ParquetFile(pa.BufferReader(data)).metadata)
    assert (plain is None) == ("compression" in layout or "use_dictionary" in layout)
    fast, meta = _codebooks.decode(data, "cb", checked=True)
    slow, meta2 = _codebooks.decode(data, "cb", checked=False)
    assert meta == meta2 and sorted(fast) == sorted(index._trained_arrays())
    for name, arr in slow.items():
        assert fast[name].dtype == np.float32 and fast[name].flags.writeable
        np.testing.assert_array_equal(fast[name], arr)
        np.testing.assert_array_equal(fast[name], index._trained_arrays()[name])
