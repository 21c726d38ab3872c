"""``read_block`` reads Parquet the same with the fast reader on as off.

The fast reader (``shardann._parquet``) reads the embedding column of the row
groups it handles; Arrow reads the others, also when the fast reader hands a
row group back part way through. The parts — vectors, ids, bad rows and their
reasons — must be the same as when Arrow reads everything
(``plan_inputs(..., fast_parquet=False)`` or ``SHARDANN_PARQUET_FAST=0``).
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardann._parquet import FixedListColumn
from shardann.distributed._ingest_plan import plan_inputs
from shardann.distributed._ingest_read import read_block


def _vectors(n, d, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _write(path, table, **opts):
    pq.write_table(table, path, **opts)
    return str(path)


def _parts(paths, fast, rows=None, **plan_opts):
    plan = plan_inputs(paths, fast_parquet=fast, **plan_opts)
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
def test_read_block_is_the_same_with_the_fast_path(tmp_path, block_rows):
    paths = [
        _mixed_file(tmp_path, "a.parquet", 700, 8, row_group_size=300, data_page_size=2048),
        # a bad row in the second row group: Arrow takes over part way through it
        _mixed_file(tmp_path, "b.parquet", 900, 8, bad_rows=(450, 451, 899), bad_ids=(10,),
                    row_group_size=350, data_page_size=2048),
        _mixed_file(tmp_path, "c.parquet", 200, 8, compression="zstd",
                    data_page_version="2.0"),
    ]
    opts = dict(column="embedding", id_column="key", block_rows=block_rows)
    fast = _parts(paths, True, **opts)
    slow = _parts(paths, False, **opts)
    _same_parts(fast, slow)
    assert sum(p[3].sum() for p in fast) == 4  # three bad vectors, one null id


def test_read_block_sampling_is_the_same_with_the_fast_path(tmp_path):
    paths = [_mixed_file(tmp_path, "a.parquet", 1000, 8, bad_rows=(600,), row_group_size=300)]
    rows = np.sort(np.random.default_rng(1).choice(1000, 130, replace=False)).astype(np.int64)
    opts = dict(column="embedding", id_column="key", block_rows=128)
    fast = _parts(paths, True, rows=rows, **opts)
    slow = _parts(paths, False, rows=rows, **opts)
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
        fast = _joined(_parts([path], True, rows=want, **opts))
        assert len(fast_groups) == groups  # every row group on the fast path
        slow = _joined(_parts([path], False, rows=want, **opts))
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


# -- the off-switch --------------------------------------------------------------------------
def test_switched_off_arrow_reads_every_row(tmp_path, monkeypatch):
    path = _mixed_file(tmp_path, "a.parquet", 500, 8, row_group_size=200)
    for name in ("read", "read_rows"):
        monkeypatch.setattr(FixedListColumn, name,
                            lambda *a, **k: pytest.fail("the fast reader was used"))
    monkeypatch.setenv("SHARDANN_PARQUET_FAST", "0")
    plan = plan_inputs([path], column="embedding", id_column="key")
    assert plan.fast_parquet is False
    assert sum(p.x.shape[0] for b in plan.blocks for p in read_block(plan, b)) == 500
    rows = np.array([3, 250, 499], np.int64)
    got = [p for b in plan.blocks for p in read_block(
        plan, b, rows=rows[(rows >= b.start) & (rows < b.stop)])]
    assert np.concatenate([p.rows for p in got]).tolist() == rows.tolist()


@pytest.mark.parametrize("value, on", [(None, True), ("1", True), ("true", True), ("", True),
                                       ("0", False), ("off", False), (" False ", False)])
def test_the_environment_variable_sets_the_default(tmp_path, monkeypatch, value, on):
    path = _mixed_file(tmp_path, "a.parquet", 50, 8)
    if value is None:
        monkeypatch.delenv("SHARDANN_PARQUET_FAST", raising=False)
    else:
        monkeypatch.setenv("SHARDANN_PARQUET_FAST", value)
    plan = plan_inputs([path])
    assert plan.fast_parquet is on
    # the argument wins; the switch is not part of the job's identity (a job
    # resumed with it flipped is the same job: the results are the same)
    other = plan_inputs([path], fast_parquet=not on)
    assert other.fast_parquet is (not on)
    assert other.fingerprint() == plan.fingerprint()


def test_a_bad_value_of_the_environment_variable_is_refused(tmp_path, monkeypatch):
    path = _mixed_file(tmp_path, "a.parquet", 50, 8)
    monkeypatch.setenv("SHARDANN_PARQUET_FAST", "maybe")
    with pytest.raises(ValueError, match="SHARDANN_PARQUET_FAST must be 0 or 1; got 'maybe'"):
        plan_inputs([path])
