"""The calibration set of an ingest-built index: the same queries, exact neighbours
and recall estimates as a local index given the same rows (one add per ingest job),
kept up to date by appends (open and closed sets), and none where none can be kept."""

import logging

import numpy as np
import pytest
from ingest_support import (
    TRAIN,
    assert_same_calibration,
    data,
    reference,
    write_mixed,
    write_parquet,
)

from shardann.distributed import ingest
from shardann.index import CalibrationSet, brute_force_knn, load_index
from shardann.storage import IndexStore

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_local")]

N_A, N_B = 7000, 5000


@pytest.fixture(scope="module")
def xb():
    x = data(N_A + N_B, seed=6)
    x.flags.writeable = False
    return x


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, xb):
    """Parquet of the first N_A rows (two files) and of the other N_B (two files)."""
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    write_mixed(a, xb[:N_A], [3000, 4000], row_groups=[700, None])
    write_mixed(b, xb[N_A:], [2000, 3000], encodings=("list",))
    return str(a), str(b)


def stored_set(path, version=None):
    return CalibrationSet.from_file(*IndexStore.open(path, version).read_calibration())


def assert_same_estimates(path, ref):
    got = load_index(IndexStore.open(path))
    settings = [{"k": 10, "nprobe": 4}, {"k": 1, "nprobe": 2},
                {"k": 10, "nprobe": 8, "probe_ratio": 0.5}]
    if ref.keep_vectors:
        settings.append({"k": 10, "nprobe": 4, "refine_factor": 2})
    for kw in settings:
        a, b = got.estimate_recall(**kw), ref.estimate_recall(**kw)
        assert a.to_dict() == b.to_dict(), kw
        assert a.n_queries > 0


@pytest.mark.parametrize("opts", [{}, {"metric": "cosine", "opq": True, "keep_vectors": True}],
                         ids=["l2", "cosine-opq-refine"])
def test_ingest_set_equals_local_index(tmp_path, xb, inputs, opts):
    path = str(tmp_path / "idx")
    # several blocks in several encode tasks: the neighbours are merged over blocks
    s = ingest(path, [inputs[0], inputs[1]], block_rows=1500, calibration=300, **opts,
               **TRAIN)
    assert s.blocks >= 4 and "calibration" in s.stage_seconds
    ref = reference(path, xb)  # one local add of the same rows, in input order
    got = assert_same_calibration(path, ref._cal)
    assert got.nqueries == 300 and got.closed and got.rows_seen == N_A + N_B
    # and the truth is the exact neighbours (brute force over the raw rows)
    metric = opts.get("metric", "l2")
    _, I = brute_force_knn(got.vectors, xb, got.k_max + 1, metric)
    want = np.array([[i for i in row if i != own][:got.k_max]
                     for row, own in zip(I, got.ids, strict=True)])
    assert (got.truth_ids == want).mean() > 0.999  # (ties of float rounding aside)
    assert_same_estimates(path, ref)


@pytest.mark.parametrize("size", [300, 10_000], ids=["closed", "open-then-closes"])
def test_append_updates_the_set_as_local_adds_do(tmp_path, xb, inputs, size):
    path = str(tmp_path / "idx")
    ingest(path, inputs[0], calibration=size, **TRAIN)
    first = stored_set(path)
    assert first.closed == (size < N_A)
    second = ingest(path, inputs[1], progress=False)
    assert (second.mode, second.version) == ("append", 2)
    # the local index: the same model, the same two batches in two adds
    ref = reference(path, xb[:N_A], version=1)
    ref.add(xb[N_A:], ids=np.arange(N_A, N_A + N_B))
    got = assert_same_calibration(path, ref._cal)
    assert got.closed and got.nqueries == min(size, N_A + N_B)
    assert_same_calibration(path, first, version=1)  # the old version keeps its own
    assert_same_estimates(path, ref)


def test_no_set_where_none_can_be_kept(tmp_path, xb, inputs, caplog):
    path = str(tmp_path / "idx")
    ingest(path, inputs[0], calibration=0, **TRAIN)
    assert IndexStore.open(path).calibration_file is None
    with caplog.at_level(logging.WARNING, logger="shardann.distributed"):
        ingest(path, inputs[1], progress=False)
    # the index has rows its set would not know: the appended version has none either
    assert IndexStore.open(path).calibration_file is None
    assert any("no calibration set" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="no calibration set"):
        load_index(IndexStore.open(path)).estimate_recall()
    with pytest.raises(ValueError, match="do not pass calibration"):
        ingest(path, inputs[1], calibration=50, progress=False)


def test_skipped_rows_are_neither_queries_nor_neighbours(tmp_path, xb):
    # a set larger than the input: every row is drawn, the bad ones too
    x = np.array(xb[:600])
    x[[3, 250]] = np.nan
    src = str(tmp_path / "in.parquet")
    write_parquet(src, x)
    path = str(tmp_path / "idx")
    s = ingest(path, src, skip_bad_rows=True, calibration=1000, **TRAIN)
    assert s.skipped_rows == 2
    keep = np.setdiff1d(np.arange(600), [3, 250])
    got = assert_same_calibration(path, reference(path, x[keep], ids=keep)._cal)
    assert got.nqueries == got.rows_seen == 598 and not got.closed
    assert not np.isin([3, 250], got.truth_ids).any()
