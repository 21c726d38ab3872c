"""Block planning over Parquet row groups (metadata only, no Ray)."""

import numpy as np
import pytest
from ingest_support import data, write_mixed

from shardann.distributed._ingest_plan import plan_inputs


@pytest.mark.parametrize("group_rows", [7, 100, 333])
def test_small_row_groups_are_packed_into_blocks(tmp_path, group_rows):
    n, block_rows = 5_000, 1_000
    write_mixed(tmp_path, data(n, 8, seed=0), [n // 2, n - n // 2], row_groups=[group_rows])
    plan = plan_inputs(str(tmp_path), block_rows=block_rows)
    # whole row groups per block, none over block_rows unless a single group is
    per_block = group_rows * (block_rows // group_rows)
    assert len(plan.blocks) == sum(-(-(n // 2) // per_block) for _ in range(2))
    for b in plan.blocks:
        assert b.stop - b.start <= block_rows
    covered = {(b.file, r) for b in plan.blocks for r in range(b.start, b.stop)}
    assert len(covered) == n


def test_a_row_group_larger_than_a_block_is_its_own_block(tmp_path):
    write_mixed(tmp_path, data(3_000, 8, seed=0), [3_000], row_groups=[2_500])
    plan = plan_inputs(str(tmp_path), block_rows=1_000)
    assert [(b.start, b.stop) for b in plan.blocks] == [(0, 2_500), (2_500, 3_000)]
    assert np.all([len(b.row_groups) == 1 for b in plan.blocks])


def test_prefetch_asks_for_exactly_the_bytes_a_block_reads(tmp_path, monkeypatch):
    """prefetch_block hints the kernel with each block's bytes (Parquet: the column
    chunks of its row groups' embedding and id columns, not the others; .npy/.fvecs:
    its rows) and never raises."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardann._parquet import chunk_range
    from shardann.bench.datasets import write_fvecs
    from shardann.distributed import _ingest_read

    x = data(3_000, 8, seed=1)
    table = pa.table({"note": pa.array(["x" * 50] * 2_000),
                      "embedding": pa.FixedSizeListArray.from_arrays(
                          pa.array(x[:2_000].reshape(-1)), 8),
                      "key": pa.array(np.arange(2_000, dtype=np.int64))})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=300)
    np.save(tmp_path / "b.npy", x[2_000:2_500])
    write_fvecs(tmp_path / "c.fvecs", x[2_500:])
    plan = plan_inputs([str(tmp_path / n) for n in ("a.parquet", "b.npy", "c.fvecs")],
                       id_column=None, block_rows=400)
    hints = []
    monkeypatch.setattr(_ingest_read, "_WILLNEED_PIECE", 1000)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: hints.append(
        (plan_path(fd), off, n, advice)))

    def plan_path(fd):
        return os.readlink(f"/proc/self/fd/{fd}")

    for block in plan.blocks:
        f = plan.files[block.file]
        if f.kind == "parquet":
            md = pq.ParquetFile(f.path).metadata
            want = [(f.path, a, b - a) for g in block.row_groups
                    for a, b in [chunk_range(md.row_group(g).column(1))]]
        elif f.kind == "npy":
            header = os.path.getsize(f.path) - 500 * 8 * 4
            want = [(f.path, header + block.start * 32, (block.stop - block.start) * 32)]
        else:
            want = [(f.path, block.start * 36, (block.stop - block.start) * 36)]
        hints.clear()
        _ingest_read.prefetch_block(plan, block)
        # asked in pieces (Linux reads ahead only a window's worth per call),
        # which together are the block's byte ranges
        assert {h[3] for h in hints} == {os.POSIX_FADV_WILLNEED}
        assert max(h[2] for h in hints) <= 1000
        joined = []
        for path, off, n, _ in hints:
            if joined and joined[-1][0] == path and sum(joined[-1][1:]) == off:
                joined[-1] = (path, joined[-1][1], joined[-1][2] + n)
            else:
                joined.append((path, off, n))
        assert joined == want
    gone = plan.blocks[0]
    os.remove(plan.files[gone.file].path)
    _ingest_read.prefetch_block(plan, gone)  # the read reports a missing file, not this


@pytest.mark.parametrize("n,workers,most", [(0, 2, 4), (1, 2, 4), (7, 2, 4), (79, 2, 4),
                                            (500, 3, 4), (40, 1, 1), (1000, 8, 6)])
def test_task_groups_cover_the_units_in_order_and_shrink_to_one(n, workers, most):
    from shardann.distributed._ingest_runtime import task_groups

    units = list(range(100, 100 + n))
    groups = task_groups(units, workers, most)
    assert [u for g in groups for u in g] == units
    sizes = [len(g) for g in groups]
    assert all(1 <= s <= most for s in sizes)
    assert sizes == sorted(sizes, reverse=True)  # large tasks first, small ones last
    # the last 2 x workers units each get a task of their own, so no worker is
    # left with a long task while the others have finished
    assert sizes[-min(n, 2 * workers):] == [1] * min(n, 2 * workers)
    if most > 1 and n >= 8 * workers * most:
        assert len(groups) < n / 2  # far fewer Ray Data tasks than units


@pytest.mark.parametrize("total,count,run", [(1000, 100, 8), (1001, 1001, 8), (1001, 1000, 8),
                                             (50, 7, 1), (10, 0, 8), (5, 9, 8), (64, 64, 64)])
def test_draw_rows_gives_distinct_rows_in_runs(total, count, run):
    from shardann.distributed._ingest_work import draw_rows

    rows = draw_rows(total, count, run, np.random.default_rng(0))
    assert rows.dtype == np.int64 and rows.size == min(count, total)
    assert np.unique(rows).size == rows.size and rows.min(initial=0) >= 0
    assert rows.max(initial=0) < max(total, 1)
    # whole runs, but for one cut short
    runs, sizes = np.unique(rows // run, return_counts=True)
    full = np.minimum(run, total - runs * run)
    assert (sizes < full).sum() <= 1


def test_draw_rows_draws_every_row_as_often():
    from shardann.distributed._ingest_work import draw_rows

    # 43 rows: five whole runs of 8 and three rows of a sixth
    total, count, trials = 200, 43, 4000
    seen, first = np.zeros(total), np.zeros(total)
    rng = np.random.default_rng(1)
    for _ in range(trials):
        rows = draw_rows(total, count, 8, rng)
        seen[rows] += 1
        first[rows[:10]] += 1  # a prefix is a random subset as well
    # each count is binomial: sd sqrt(4000 * p * (1 - p)) / 4000 = 0.0065 and 0.0034
    assert np.abs(seen / trials - count / total).max() < 0.03
    assert np.abs(first / trials - 10 / total).max() < 0.017
    # a row's place in its run does not matter (the run cut short takes any rows)
    by_place = seen.reshape(-1, 8).mean(axis=0) / trials
    assert np.abs(by_place - count / total).max() < 0.01
