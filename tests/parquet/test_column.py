"""The fast Parquet embedding reader (``shardann._parquet.FixedListColumn``) against Arrow.

``FixedListColumn`` must give Arrow's float32 values bit for bit (and must
really take the fast path on the layouts it claims), and refuse
(:class:`Unsupported`) every layout it does not handle. Files of other
writers than pyarrow: test_writers.py; ``read_block`` with the fast path on
and off: tests/ingest/test_read_parquet.py.
"""

import os
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_support import arrow_values, fast_values, fsl, vectors, write

from shardann._parquet import FixedListColumn, Unsupported, embedding_leaf

LAYOUTS = [
    dict(),
    dict(compression="snappy"),
    dict(compression="zstd"),
    dict(compression="gzip"),
    dict(compression="brotli"),
    dict(compression="lz4"),  # Parquet's LZ4_RAW ("LZ4" in pyarrow's metadata)
    dict(use_dictionary=False),
    dict(data_page_version="2.0"),
    dict(data_page_version="2.0", compression="zstd", use_dictionary=False),
    dict(use_dictionary=False, use_byte_stream_split=True),
    dict(data_page_size=4096),  # many small pages: a row may straddle two
    dict(data_page_size=4096, data_page_version="2.0", compression="snappy"),
    dict(write_page_checksum=True),
]


@pytest.mark.parametrize("opts", LAYOUTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in
                                                                 o.items()) or "default")
@pytest.mark.parametrize("d", [1, 3, 128])
def test_fast_reader_equals_arrow(tmp_path, opts, d):
    x = vectors(3000, d, seed=d)
    path = write(tmp_path / "v.parquet", pa.table({"embedding": fsl(x)}), row_group_size=1700,
                  **opts)
    for g in range(pq.ParquetFile(path).metadata.num_row_groups):
        want = arrow_values(path, g, d)
        for part_rows in (1 << 20, 97):
            got = fast_values(path, g, d, part_rows)
            assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes()
        # a few rows only (sampling): of PLAIN uncompressed pages only those are read
        pf = pq.ParquetFile(path)
        reader = FixedListColumn(path, pf.metadata, embedding_leaf(pf.metadata, "embedding"), d)
        rng = np.random.default_rng(g)
        for size in (1, 40, want.shape[0]):
            rows = np.sort(rng.choice(want.shape[0], size, replace=False)).astype(np.int64)
            got = reader.read_rows(g, rows)
            assert got.view(np.uint32).tobytes() == want[rows].view(np.uint32).tobytes()


def test_dictionary_pages_throughout(tmp_path):
    x = vectors(5000, 16, distinct=7)
    path = write(tmp_path / "v.parquet", pa.table({"embedding": fsl(x)}))
    assert "RLE_DICTIONARY" in pq.ParquetFile(path).metadata.row_group(0).column(0).encodings
    np.testing.assert_array_equal(fast_values(path, 0, 16), x)


def test_variable_list_type_with_equal_lengths_takes_the_fast_path(tmp_path):
    x = vectors(500, 12)
    arr = pa.array(list(x), type=pa.list_(pa.float32()))
    path = write(tmp_path / "v.parquet", pa.table({"embedding": arr, "id": np.arange(500)}))
    np.testing.assert_array_equal(fast_values(path, 0, 12), x)


def test_special_float_values_are_copied_bit_for_bit(tmp_path):
    x = np.array([[np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4e38]], np.float32).repeat(10, 0)
    path = write(tmp_path / "v.parquet", pa.table({"embedding": fsl(x)}))
    assert fast_values(path, 0, 6).view(np.uint32).tobytes() == x.view(np.uint32).tobytes()


@pytest.mark.parametrize("case", ["null_row", "null_value", "short_row", "uneven", "double",
                                  "nested"])
def test_other_layouts_are_refused(tmp_path, case):
    x = vectors(50, 4)
    rows = [list(map(float, r)) for r in x]
    if case == "null_row":
        rows[30] = None
        arr = pa.array(rows, pa.list_(pa.float32()))
    elif case == "null_value":
        rows[30][2] = None
        arr = pa.array(rows, pa.list_(pa.float32()))
    elif case == "short_row":
        rows[30] = rows[30][:3]
        arr = pa.array(rows, pa.list_(pa.float32()))
    elif case == "uneven":  # as many values as 50 rows of 4, but not 4 in each row
        rows[10] = rows[10] + [1.0]
        rows[30] = rows[30][:3]
        arr = pa.array(rows, pa.list_(pa.float32()))
    elif case == "double":
        arr = pa.array(rows, pa.list_(pa.float64()))
    else:
        arr = pa.array([[r] for r in rows], pa.list_(pa.list_(pa.float32())))
    # no statistics: the levels themselves must give the nulls away
    path = write(tmp_path / "v.parquet", pa.table({"embedding": arr}), write_statistics=False)
    pf = pq.ParquetFile(path)
    leaf = embedding_leaf(pf.metadata, "embedding")
    if case in ("double", "nested"):
        assert leaf is None
        return
    with pytest.raises(Unsupported):
        list(FixedListColumn(path, pf.metadata, leaf, 4).read(0, 1000))


def test_lz4_with_hadoop_framing_is_declined(tmp_path):
    # Parquet's older LZ4 codec (Hadoop framing; pyarrow's metadata says "UNKNOWN")
    # is not decoded: a LZ4_RAW file with the codec in its footer changed to it
    x = vectors(500, 8)
    path = write(tmp_path / "v.parquet", pa.table({"embedding": fsl(x)}), compression="lz4")
    raw = bytearray(open(path, "rb").read())
    footer = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    # ColumnMetaData field 4 (codec, i32) right after the path "embedding.list.element":
    # zigzag 7 (LZ4_RAW) becomes 5 (LZ4)
    tail = bytes(raw[footer:-8])
    assert tail.count(b"element\x15\x0e") == 1
    raw[footer:-8] = tail.replace(b"element\x15\x0e", b"element\x15\x0a")
    open(path, "wb").write(bytes(raw))
    pf = pq.ParquetFile(path)
    assert pf.metadata.row_group(0).column(0).compression == "UNKNOWN"
    with pytest.raises(Unsupported, match="codec"):
        list(FixedListColumn(path, pf.metadata, 0, 8).read(0, 1000))
    np.testing.assert_array_equal(arrow_values(path, 0, 8), x)  # Arrow reads it


def test_a_damaged_page_header_is_refused_not_misread(tmp_path):
    x = vectors(2000, 8)
    path = write(tmp_path / "v.parquet", pa.table({"embedding": fsl(x)}),
                  use_dictionary=False)
    pf = pq.ParquetFile(path)
    cc = pf.metadata.row_group(0).column(0)
    raw = bytearray(open(path, "rb").read())
    raw[cc.data_page_offset] = 0xFF  # the first byte of the first page header
    open(path, "wb").write(bytes(raw))
    with pytest.raises(Unsupported):
        list(FixedListColumn(path, pf.metadata, 0, 8).read(0, 1000))


class _FakePages:
    """Pages of 4-value rows; the page after the given ones fails its level check."""

    fd = None

    def __init__(self, sizes):
        self.sizes = sizes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        first = 0
        for n in self.sizes:
            yield first, n, partial(np.arange, first, first + n, dtype=np.float32), 0
            first += n
        raise Unsupported("this page's first repetition level continues the last row")


class _SplitPages:
    """Pages of ``sizes`` values that cut rows anywhere, over a file holding the
    float32 values 0, 1, 2, ...; ``on_disk``: values left in the file (an
    uncompressed PLAIN page), else decoded."""

    def __init__(self, path, sizes, on_disk):
        self.path, self.sizes, self.on_disk = path, sizes, on_disk

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDONLY)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        return False

    def __iter__(self):
        first = 0
        for n in self.sizes:
            if self.on_disk:
                yield first, n, None, 4 * first
            else:
                yield first, n, partial(np.arange, first, first + n, dtype=np.float32), 0
            first += n


@pytest.mark.parametrize("on_disk", [True, False])
def test_read_rows_takes_runs_of_rows_cut_by_pages(tmp_path, on_disk):
    # runs of consecutive rows are read in one go, also when pages cut them
    d, sizes = 4, [6, 10, 3, 13, 9, 7]
    path = tmp_path / "values.bin"
    np.arange(sum(sizes), dtype=np.float32).tofile(path)
    col = FixedListColumn.__new__(FixedListColumn)
    col.d = d
    col._chunk = lambda g: _SplitPages(str(path), sizes, on_disk)
    for rows in ([1, 2, 3, 5, 6], [0], [11], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [4, 9, 10]):
        got = col.read_rows(0, np.array(rows, np.int64))
        want = np.arange(sum(sizes), dtype=np.float32).reshape(-1, d)[rows]
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("sizes, yielded", [([8], 0), ([12], 1), ([8, 8], 1)])
def test_a_part_ending_with_a_page_waits_for_the_next_pages_levels(monkeypatch, sizes,
                                                                  yielded):
    # a row that seems whole at the end of a page may go on in the next one: the
    # part holding it must not be returned before that page's levels are checked
    class Meta:
        def row_group(self, g):
            return type("RowGroup", (), {"num_rows": 8})()

    col = FixedListColumn.__new__(FixedListColumn)
    col.d, col.metadata = 4, Meta()
    monkeypatch.setattr(col, "_chunk", lambda g, lazy=False: _FakePages(sizes))
    got = []
    with pytest.raises(Unsupported):
        for part in col.read(0, 2):
            got.append(part)
    assert len(got) == yielded
    for i, part in enumerate(got):
        np.testing.assert_array_equal(part.reshape(-1), np.arange(8 * i, 8 * i + 8))
