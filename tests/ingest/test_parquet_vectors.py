"""The fast Parquet embedding reader against Arrow's own reader.

Two oracles: ``FixedListColumn`` must give Arrow's float32 values bit for bit
(and must really take the fast path on the layouts it claims), and
``read_block`` must give the same parts — vectors, ids, bad rows and their
reasons — with the fast path on as with it off, including on files where it
has to hand a row group back to Arrow part way through.
"""

import os
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardann.distributed import _ingest_inputs
from shardann.distributed._ingest_inputs import plan_inputs, read_block
from shardann.distributed._parquet_vectors import FixedListColumn, Unsupported, embedding_leaf


def _vectors(n, d, seed=0, distinct=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    if distinct is not None:  # few distinct values: dictionary pages all the way
        x = rng.integers(0, distinct, (n, d)).astype(np.float32)
    return x


def _fsl(x):
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _write(path, table, **opts):
    pq.write_table(table, path, **opts)
    return str(path)


def _arrow_values(path, group, d):
    col = pq.ParquetFile(path).read_row_group(group).column("embedding").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d)


def _fast_values(path, group, d, part_rows=1 << 20):
    pf = pq.ParquetFile(path)
    leaf = embedding_leaf(pf.metadata, "embedding")
    assert leaf is not None
    parts = list(FixedListColumn(path, pf.metadata, leaf, d).read(group, part_rows))
    for p in parts:
        assert p.dtype == np.float32 and p.flags.c_contiguous and p.shape[1] == d
        assert p.shape[0] <= part_rows
    return np.concatenate(parts) if parts else np.zeros((0, d), np.float32)


LAYOUTS = [
    dict(),
    dict(compression="snappy"),
    dict(compression="zstd"),
    dict(compression="gzip"),
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
    x = _vectors(3000, d, seed=d)
    path = _write(tmp_path / "v.parquet", pa.table({"embedding": _fsl(x)}), row_group_size=1700,
                  **opts)
    for g in range(pq.ParquetFile(path).metadata.num_row_groups):
        want = _arrow_values(path, g, d)
        for part_rows in (1 << 20, 97):
            got = _fast_values(path, g, d, part_rows)
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
    x = _vectors(5000, 16, distinct=7)
    path = _write(tmp_path / "v.parquet", pa.table({"embedding": _fsl(x)}))
    assert "RLE_DICTIONARY" in pq.ParquetFile(path).metadata.row_group(0).column(0).encodings
    np.testing.assert_array_equal(_fast_values(path, 0, 16), x)


def test_variable_list_type_with_equal_lengths_takes_the_fast_path(tmp_path):
    x = _vectors(500, 12)
    arr = pa.array(list(x), type=pa.list_(pa.float32()))
    path = _write(tmp_path / "v.parquet", pa.table({"embedding": arr, "id": np.arange(500)}))
    np.testing.assert_array_equal(_fast_values(path, 0, 12), x)


def test_special_float_values_are_copied_bit_for_bit(tmp_path):
    x = np.array([[np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4e38]], np.float32).repeat(10, 0)
    path = _write(tmp_path / "v.parquet", pa.table({"embedding": _fsl(x)}))
    assert _fast_values(path, 0, 6).view(np.uint32).tobytes() == x.view(np.uint32).tobytes()


@pytest.mark.parametrize("case", ["null_row", "null_value", "short_row", "uneven", "double",
                                  "nested"])
def test_other_layouts_are_refused(tmp_path, case):
    x = _vectors(50, 4)
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
    path = _write(tmp_path / "v.parquet", pa.table({"embedding": arr}), write_statistics=False)
    pf = pq.ParquetFile(path)
    leaf = embedding_leaf(pf.metadata, "embedding")
    if case in ("double", "nested"):
        assert leaf is None
        return
    with pytest.raises(Unsupported):
        list(FixedListColumn(path, pf.metadata, leaf, 4).read(0, 1000))


def test_a_damaged_page_header_is_refused_not_misread(tmp_path):
    x = _vectors(2000, 8)
    path = _write(tmp_path / "v.parquet", pa.table({"embedding": _fsl(x)}),
                  use_dictionary=False)
    pf = pq.ParquetFile(path)
    cc = pf.metadata.row_group(0).column(0)
    raw = bytearray(open(path, "rb").read())
    raw[cc.data_page_offset] = 0xFF  # the first byte of the first page header
    open(path, "wb").write(bytes(raw))
    with pytest.raises(Unsupported):
        list(FixedListColumn(path, pf.metadata, 0, 8).read(0, 1000))


# -- read_block with and without the fast path -------------------------------------------------
def _parts(paths, monkeypatch, fast, rows=None, **plan_opts):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(_ingest_inputs, "_fast_reader", lambda *a: None)
        plan = plan_inputs(paths, **plan_opts)
        out = []
        for block in plan.blocks:
            want = None
            if rows is not None:  # file rows of a one-file plan
                want = rows[(rows >= block.start) & (rows < block.stop)]
            for p in read_block(plan, block, rows=want):
                out.append((p.start, p.x.copy(), None if p.ids is None else p.ids.copy(),
                            p.bad.copy(), dict(p.reasons), None if p.rows is None else
                            np.asarray(p.rows).copy()))
    return out


def _same_parts(a, b):
    for pa_, pb in zip(a, b, strict=True):
        assert pa_[0] == pb[0]
        good = ~pa_[3]
        assert pa_[1][good].tobytes() == pb[1][good].tobytes()
        for i in (2, 5):
            assert (pa_[i] is None) == (pb[i] is None)
            if pa_[i] is not None:
                np.testing.assert_array_equal(pa_[i], pb[i])
        np.testing.assert_array_equal(pa_[3], pb[3])
        assert pa_[4] == pb[4]


def _mixed_file(tmp_path, name, n, d, bad_rows=(), bad_ids=(), **opts):
    x = _vectors(n, d, seed=n)
    rows = [list(map(float, r)) for r in x]
    for r in bad_rows:
        rows[r] = rows[r][:-1] if r % 2 else None
    ids = pa.array([None if i in bad_ids else 10_000 + i for i in range(n)], pa.int64())
    arr = pa.array(rows, pa.list_(pa.float32()))
    return _write(tmp_path / name, pa.table({"embedding": arr, "key": ids}), **opts)


@pytest.mark.parametrize("block_rows", [64, 1000])
def test_read_block_is_the_same_with_the_fast_path(tmp_path, monkeypatch, block_rows):
    paths = [
        _mixed_file(tmp_path, "a.parquet", 700, 8, row_group_size=300, data_page_size=2048),
        # a bad row in the second row group: Arrow takes over part way through it
        _mixed_file(tmp_path, "b.parquet", 900, 8, bad_rows=(450, 451, 899), bad_ids=(10,),
                    row_group_size=350, data_page_size=2048),
        _mixed_file(tmp_path, "c.parquet", 200, 8, compression="zstd",
                    data_page_version="2.0"),
    ]
    opts = dict(column="embedding", id_column="key", block_rows=block_rows)
    fast = _parts(paths, monkeypatch, True, **opts)
    slow = _parts(paths, monkeypatch, False, **opts)
    _same_parts(fast, slow)
    assert sum(p[3].sum() for p in fast) == 4  # three bad vectors, one null id


def test_read_block_sampling_is_the_same_with_the_fast_path(tmp_path, monkeypatch):
    paths = [_mixed_file(tmp_path, "a.parquet", 1000, 8, bad_rows=(600,), row_group_size=300)]
    rows = np.sort(np.random.default_rng(1).choice(1000, 130, replace=False)).astype(np.int64)
    opts = dict(column="embedding", id_column="key", block_rows=128)
    fast = _parts(paths, monkeypatch, True, rows=rows, **opts)
    slow = _parts(paths, monkeypatch, False, rows=rows, **opts)
    # parts may be cut differently (a row group at a time against a batch at a
    # time); the rows, vectors, ids and flags must be the same
    _same_parts([_joined(fast)], [_joined(slow)])
    assert _joined(fast)[5].tolist() == rows.tolist()


def test_read_block_sampling_reads_runs_of_rows_across_pages(tmp_path, monkeypatch):
    # runs of consecutive rows are read in one go: they cross pages (2 KB pages of
    # d=7 rows do not end on a row), dictionary pages and row groups
    paths = [_mixed_file(tmp_path, "a.parquet", 1000, 7, row_group_size=300,
                         data_page_size=2048, use_dictionary=False),
             _mixed_file(tmp_path, "b.parquet", 500, 7, row_group_size=200,
                         data_page_size=1024, use_dictionary=True)]
    starts = np.sort(np.random.default_rng(2).choice(180, 40, replace=False)) * 8
    rows = np.concatenate([np.arange(s, min(s + 8, 1500)) for s in starts]).astype(np.int64)
    opts = dict(column="embedding", id_column="key", block_rows=128)
    read_rows, fast_groups = FixedListColumn.read_rows, []

    def spy(self, group, rows):
        out = read_rows(self, group, rows)
        fast_groups.append(group)
        return out
    monkeypatch.setattr(FixedListColumn, "read_rows", spy)
    for path, lo, hi, group_rows in ((paths[0], 0, 1000, 300), (paths[1], 1000, 1500, 200)):
        want = rows[(rows >= lo) & (rows < hi)] - lo
        groups = np.unique(want // group_rows).size
        fast_groups.clear()
        fast = _joined(_parts([path], monkeypatch, True, rows=want, **opts))
        assert len(fast_groups) == groups  # every row group on the fast path
        slow = _joined(_parts([path], monkeypatch, False, rows=want, **opts))
        _same_parts([fast], [slow])
        assert fast[5].tolist() == want.tolist()


def _joined(parts):
    reasons = {}
    off = 0
    for p in parts:
        reasons.update({off + r: why for r, why in p[4].items()})
        off += p[1].shape[0]
    return (0, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]),
            np.concatenate([p[3] for p in parts]), reasons, np.concatenate([p[5] for p in parts]))


def test_read_block_uses_the_fast_path(tmp_path, monkeypatch):
    path = _mixed_file(tmp_path, "a.parquet", 500, 8, row_group_size=200)
    plan = plan_inputs([path], column="embedding", id_column="key")
    calls = []
    real = FixedListColumn.read

    def spy(self, group, part_rows):
        calls.append(group)
        yield from real(self, group, part_rows)

    monkeypatch.setattr(FixedListColumn, "read", spy)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches",
                        lambda *a, **k: pytest.fail("Arrow read a clean row group"))
    n = sum(p.x.shape[0] for b in plan.blocks for p in read_block(plan, b))
    assert n == 500 and calls == [0, 1, 2]


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
    from shardann._kernels.rle import fixed_list_levels

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
