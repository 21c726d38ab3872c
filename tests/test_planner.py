"""The planner on tiny inputs: the model's arithmetic, the plan's bookkeeping
(memory -> shards, QPS -> replicas), the Python API and `shardann plan` with
--json. Its accuracy at scale is tests/test_planner_accuracy.py (slow)."""

import dataclasses
import json

import numpy as np
import pytest

import shardann
from shardann.bench import Plan, measure_sample, plan
from shardann.bench._plan_measure import (
    measurement_nlists,
    rank_survival,
    shortlist_grid,
)
from shardann.bench._plan_model import (
    RecallModel,
    bytes_per_vector,
    fixed_bytes,
    local_plane,
    rank_curve,
    thin_ranks,
    thinned_survival,
)
from shardann.bench._runners import model_twin
from shardann.bench.datasets import mixture, synthetic
from shardann.bench.planner import candidate_nlists
from shardann.cli import main

D = 16
TINY = dict(sample_size=2000, queries=100, pq_configs=[(4, 8)], keeps=["float16"],
            refine_factors=[2])


@pytest.fixture(scope="module")
def meas():
    return measure_sample(1_000_000, D, **TINY)


def test_local_plane_is_exact_on_a_plane_and_extends_it():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 3, (50, 3))
    y = 0.5 + X @ np.array([1.0, -2.0, 0.25])
    w = rng.uniform(0.1, 1, 50)
    for x0 in ([1, 1, 1], [10, -4, 7]):  # inside, then far outside the data
        center = np.clip(x0, X.min(0), X.max(0))
        want = 0.5 + np.dot(x0, [1.0, -2.0, 0.25])
        assert local_plane(X, y, w, np.array(x0, float), center) == pytest.approx(want,
                                                                                  abs=1e-3)
    assert np.isnan(local_plane(X, y, np.zeros(50), np.ones(3), np.ones(3)))


def test_memory_arithmetic():
    # id + 4-bit M=192 code + int8 768-d vector
    assert bytes_per_vector(768, 192, 4, "int8") == 8 + 96 + 768
    assert bytes_per_vector(128, 16, 8, None) == 8 + 16
    # centroids + codebooks, + l2 tables when they fit
    assert fixed_bytes(64, 100, 8, 8, "ip") == 100 * 64 * 4 + 256 * 64 * 4
    assert fixed_bytes(64, 100, 8, 8, "l2") == 100 * 64 * 4 + 256 * 64 * 4 + 100 * 8 * 256 * 4


def test_measurement_list_counts():
    assert measurement_nlists(100_000) == [128, 512, 2048]
    assert measurement_nlists(2000) == [8, 32]


def test_shortlist_grid():
    assert shortlist_grid(10, [2, 4, 8]) == [1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48,
                                             64, 80]
    assert shortlist_grid(10, []) == [1, 2, 3, 4, 6, 8, 10]
    assert shortlist_grid(100, [8])[-3:] == [512, 768, 800]


def test_rank_survival_reads_positions_within_the_prefix():
    # 2 queries, candidates by ADC key; rows >= n = 10 are not in the prefix database
    ids = np.array([[5, 12, 3, 7, 1, 9],
                    [11, 2, 4, 13, 8, 6]])
    gt = np.array([[3, 1], [4, 0]])                 # exact top-2 among rows < 10
    probed = np.array([[True, True], [True, False]])
    # query 0: rank 1 (row 3) at prefix position 1, rank 2 (row 1) at 3;
    # query 1: rank 1 (row 4) at position 1, rank 2 (row 0) not probed (ignored)
    got = rank_survival(ids, gt, probed, 10, [1, 2, 4])
    np.testing.assert_allclose(got, [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    # the whole database (n = 14): row 12 and 11 now come first
    got = rank_survival(ids, gt, probed, 14, [2, 3])
    np.testing.assert_allclose(got, [[0.0, 1.0], [0.0, 0.0]])


def test_thin_ranks_reads_the_top_k_of_more_rows_as_fractional_ranks():
    share = 1 - 0.02 * np.arange(1, 11)          # rank j: 1 - 0.02 j (a line)
    assert thin_ranks(share, 1.0) == pytest.approx(share.mean())
    # N = 4n: ranks j / 4; the line continues below rank 1 to rank 0 (share 1)
    assert thin_ranks(share, 0.25) == pytest.approx(np.mean(1 - 0.005 * np.arange(1, 11)))
    # curved: only ranks 1..3 carry the line to rank 0
    curved = np.array([0.9, 0.8, 0.7, 0.5, 0.3, 0.2, 0.1, 0.1, 0.0, 0.0])
    assert thin_ranks(curved, 0.1) == pytest.approx(np.mean(1.0 - 0.01 * np.arange(1, 11)))
    assert thin_ranks(np.array([0.5]), 0.1) == 0.5   # k = 1: no slope to extend


def test_thinned_survival_arithmetic():
    grid = [1, 2, 4, 8]
    # rank j survives a shortlist of L with 1 - j / (20 L) (linear in rank at each L)
    surv = np.array([[1 - j / (20 * L) for L in grid] for j in range(1, 11)])
    # at the sample's own size: the mean over ranks at the grid point
    assert thinned_survival(surv, grid, 1000, 1000, 8) == pytest.approx(surv[:, 3].mean())
    # between grid points: linear in log L
    np.testing.assert_allclose(rank_curve(surv, grid, 2 ** 1.5), (surv[:, 1] + surv[:, 2]) / 2)
    # below one slot: a Weibull law through 1 and 2 slots, in (0, 1) and falling
    below = [rank_curve(surv, grid, L) for L in (0.5, 0.1, 0.01)]
    cl = [np.log(-np.log1p(-surv[:, i])) for i in (0, 1)]
    want = -np.expm1(-np.exp(cl[0] + (cl[1] - cl[0]) * np.log2(0.5)))
    np.testing.assert_allclose(below[0], want)
    assert all(((0 < b) & (b < surv[:, 0])).all() for b in below)
    assert (below[0] > below[1]).all() and (below[1] > below[2]).all()
    # 8x the sample, shortlist 8 -> one slot, ranks j / 8: 1 - j / 160, averaged over j
    want = np.mean([1 - j / 160 for j in range(1, 11)])
    assert thinned_survival(surv, grid, 1000, 8000, 8) == pytest.approx(want)
    # with a loss that a longer shortlist cuts whatever the rank (intruders), more rows lose
    # more neighbours; a longer shortlist keeps more
    surv = np.clip(surv - 0.2 / np.array(grid), 0, 1)
    s = [thinned_survival(surv, grid, 1000, n, 8) for n in (1000, 4000, 16000, 64000)]
    assert s == sorted(s, reverse=True)
    assert thinned_survival(surv, grid, 1000, 4000, 8) < thinned_survival(surv, grid, 1000,
                                                                           4000, 16)


@pytest.mark.parametrize("gen,d", [(synthetic, 16), (mixture, 32)])
def test_thinning_predicts_the_survival_on_a_larger_database(gen, d):
    # per-rank survival on the first 4,000 rows of an index predicts the shortlist
    # survival on all 32,000 (8x), where the survival of the 4,000 rows alone does not
    N, n, k = 32_000, 4000, 10
    x = gen(N + 300, d, seed=5)
    xb, xq = x[:N], x[N:]
    index = shardann.IVFPQIndex(d, 64, d // 4, 4, seed=0).train(xb)
    index.add(xb)
    labels = index.assign(xb)
    q = index.prepare(xq)
    grid = shortlist_grid(k, [2, 4])
    for nprobe in (2, 8):
        dis0, probes = index.probe(q, nprobe)
        keys, ids, _ = index.scan_candidates(q, dis0, probes, 40 * (N // n + 2))
        ids = np.take_along_axis(ids, np.argsort(keys, axis=1, kind="stable"), 1)
        surv = {}
        for m in (n, N):
            gt = shardann.brute_force_knn(xq, xb[:m], k, "l2")[1]
            probed = (labels[gt][:, :, None] == probes[:, None, :]).any(-1)
            surv[m] = rank_survival(ids, gt, probed, m, grid)
        for L in (20, 40):
            truth = surv[N][:, grid.index(L)].mean()
            unthinned = surv[n][:, grid.index(L)].mean()
            pred = thinned_survival(surv[n], grid, n, N, L)
            assert abs(pred - truth) < 0.035, (nprobe, L, pred, truth)
            assert abs(pred - truth) < abs(unthinned - truth) / 3, (nprobe, L, pred, truth)


def test_model_twin_trains_codebooks_as_train_does():
    x = synthetic(3000, D, seed=3)
    a = shardann.IVFPQIndex(D, 16, 8, 4, seed=1, pq_niter=5).train(x)
    b = shardann.IVFPQIndex(D, 16, 4, 8, seed=1, pq_niter=5, keep_vectors="int8").train(x)
    twin = model_twin(a, x, M=4, nbits=8, keep_vectors="int8")
    np.testing.assert_array_equal(twin.centroids, b.centroids)
    np.testing.assert_array_equal(twin.pq.codebooks, b.pq.codebooks)
    twin.add(x[:500])
    b.add(x[:500])
    np.testing.assert_array_equal(twin.search(x[:20], 5, nprobe=4, refine_factor=2)[1],
                                  b.search(x[:20], 5, nprobe=4, refine_factor=2)[1])


@pytest.mark.parametrize("pca", [None, 8])
def test_model_twin_of_an_opq_index_keeps_its_rotation(pca):
    """Another kept-vector type of an OPQ index (bench frontier --opq --keep
    float16,int8) searches as that index trained directly; other codebooks are
    refused (the rotation belongs to one M)."""
    x = synthetic(3000, D, seed=4)
    kw = {"seed": 1, "pq_niter": 5, "niter": 5, "opq": True, "pca": pca}
    m = 4 if pca else 8
    a = shardann.IVFPQIndex(D, 16, m, 4, keep_vectors="float16", **kw).train(x)
    b = shardann.IVFPQIndex(D, 16, m, 4, keep_vectors="int8", **kw).train(x)
    twin = model_twin(a, x, keep_vectors="int8")
    twin.add(x[:500])
    b.add(x[:500])
    for r in (0, 2):
        np.testing.assert_array_equal(twin.search(x[:20], 5, nprobe=4, refine_factor=r)[1],
                                      b.search(x[:20], 5, nprobe=4, refine_factor=r)[1])
    with pytest.raises(ValueError, match="without OPQ"):
        model_twin(a, x, M=m // 2)


def test_measurements_are_deterministic_and_consistent(meas):
    again = measure_sample(1_000_000, D, **TINY)
    assert again.recall == meas.recall and again.coarse == meas.coarse
    assert meas.sizes == [500, 1000, 2000] and meas.nq == 100
    coarse = {(r["n"], r["nlist"], r["nprobe"]): r["recall"] for r in meas.coarse}
    for r in meas.recall:  # a search finds no neighbour outside the probed lists
        assert 0 <= r["recall"] <= coarse[(r["n"], r["nlist"], r["nprobe"])] + 1e-12
    for (n, nlist), group in _by(meas.coarse, "n", "nlist").items():
        c = [r["recall"] for r in sorted(group, key=lambda r: r["nprobe"])]
        assert c == sorted(c), (n, nlist)  # more lists probed: never fewer neighbours
    for r in meas.coarse:  # the per-rank shares average to the coarse recall
        assert len(r["by_rank"]) == 10
        assert np.mean(r["by_rank"]) == pytest.approx(r["recall"])
    # per-rank shortlist survival: every size, list count and probe count scanned
    assert {(r["n"], r["nlist"], r["nprobe"]) for r in meas.ranks} == \
        {(r["n"], r["nlist"], r["nprobe"]) for r in meas.recall}
    for r in meas.ranks:
        s = np.array(r["survival"])
        assert s.shape == (10, len(r["shortlists"])) and ((0 <= s) & (s <= 1)).all()
        assert (np.diff(s, axis=1) >= 0).all()  # a longer shortlist keeps at least as many
        # without refine the search returns the probed neighbours in the ADC top-k: the
        # rank-averaged survival at L = k is that recall over C (up to the ranks' weights)
        rec = next(x["recall"] for x in meas.recall if x["refine"] == 0 and all(
            x[f] == r[f] for f in ("n", "nlist", "nprobe")))
        c = coarse[(r["n"], r["nlist"], r["nprobe"])]
        if c > 0.5:
            assert s[:, r["shortlists"].index(10)].mean() == pytest.approx(rec / c, abs=0.05)


def _by(rows, *keys):
    out = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def test_model_follows_the_measurements(meas):
    model = RecallModel(meas)
    n = max(meas.sizes)
    # at measured points the fit stays near what was measured (tiny, noisy sample: 0.1)
    for r in meas.recall:
        if r["n"] == n and r["refine"] == 2 and r["nprobe"] in (2, 4):
            pred = model.predict(r["nprobe"], r["nlist"], n, 4, 8, "float16", 2)
            assert abs(pred - r["recall"]) < 0.1, (r, pred)
    c = [model.coarse(p, 512, 1_000_000) for p in (1, 4, 16, 64, 256)]
    assert c == sorted(c) and 0 < c[0] < c[-1] <= 1
    assert model.coarse(512, 512, 10**6) == 1.0
    with pytest.raises(ValueError, match="did not measure"):
        model.survival(4, 32, n, 8, 4, None, 0)
    # the survival thinned to more rows falls (a fixed shortlist among more rows)
    s = [model.survival(4, 32, m, 4, 8, "float16", 2) for m in (n, 8 * n, 64 * n)]
    assert s == sorted(s, reverse=True) and s[0] > s[-1]
    # measurements saved without the per-rank rows still plan (a plane in log N)
    old = RecallModel(dataclasses.replace(meas, ranks=[]))
    assert 0 < old.survival(4, 32, 8 * n, 4, 8, "float16", 2) <= 1


def test_plan_bookkeeping(meas):
    # 10x the 2,000-row sample: within reach of its thinned measurements
    n = 20_000
    p = plan(n, D, target_recall=0.75, memory_per_node="64GiB", measurements=meas)
    assert isinstance(p, Plan) and p.feasible
    assert (p.M, p.nbits) == (8, 4) and p.nlist in candidate_nlists(n)
    assert p.recall >= 0.75 and p.recall == pytest.approx(p.coarse_recall * p.survival)
    assert p.bytes_per_vector == bytes_per_vector(D, 8, 4, p.keep_vectors)
    assert (p.shards, p.replicas, p.nodes) == (1, 1, 1)
    assert p.qps_per_core == pytest.approx(1 / p.seconds_per_query["total"])
    # a node of 256 KiB (192 usable) holds a fraction: shards follow the bytes
    small = plan(n, D, target_recall=0.75, memory_per_node="256KiB", measurements=meas)
    usable = 256 * 2**10 * 0.75
    assert small.shards >= np.ceil(n * small.bytes_per_vector / usable) > 1
    assert small.shard_bytes <= usable and small.nodes == small.shards * small.replicas
    # a QPS target beyond one node's cores adds replicas
    busy = plan(n, D, target_recall=0.75, memory_per_node="64GiB", qps=1e9,
                cores_per_node=4, measurements=meas)
    assert busy.replicas == np.ceil(1e9 / (busy.qps_per_core * 4 * busy.shards))
    assert busy.nodes == busy.shards * busy.replicas > 1
    # a higher target never plans fewer probes for the same layout and lists
    hi = plan(n, D, target_recall=0.8, memory_per_node="64GiB", measurements=meas)
    if (hi.nlist, hi.M, hi.nbits, hi.keep_vectors, hi.refine_factor) == \
            (p.nlist, p.M, p.nbits, p.keep_vectors, p.refine_factor):
        assert hi.nprobe >= p.nprobe
    # out of reach: the best there is, flagged
    top = plan(n, D, target_recall=0.9999, measurements=meas)
    assert not top.feasible and "no measured layout" in top.notes[0]
    # far beyond the sample (500x: the shortlist below one slot) recall is low, not zero
    far = plan(1_000_000, D, target_recall=0.75, measurements=meas)
    assert 0 < far.recall < p.recall and any("thinned" in note for note in far.notes)
    d = p.to_dict()
    assert json.loads(json.dumps(d))["nlist"] == p.nlist
    assert "recall = C x S" in p.format() and str(p.nlist) in p.format()


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_recall=1.5), "target_recall"),
    (dict(memory_per_node="64XB"), "byte count"),
    (dict(qps=0), "qps"),
    (dict(k=5), "metric=l2, k=10"),
    (dict(d=32), "d=32"),
])
def test_plan_rejects_bad_arguments(meas, kwargs, match):
    args = dict(vectors=1_000_000, measurements=meas) | kwargs
    with pytest.raises(ValueError, match=match):
        plan(**args)


def test_plan_rejects_too_few_vectors_and_a_wrong_sample():
    with pytest.raises(ValueError, match="at least 1,000"):
        plan(999, D)
    with pytest.raises(ValueError, match=r"\(n, 16\)"):
        measure_sample(10**6, D, sample=np.zeros((3000, 8), np.float32), **TINY)


def test_cli_plan_json_on_a_sample_file(tmp_path, capsys):
    path = tmp_path / "sample.npy"
    np.save(path, mixture(2100, D, seed=2))
    argv = ["plan", "--vectors", "2e6", "--sample", str(path), "--metric", "cosine",
            "--target-recall", "0.8", "--memory-per-node", "1GiB", "--qps", "500",
            "--sample-size", "2000", "--queries", "100", "--pq", "4x8", "--keep", "float16",
            "--refine-factors", "2"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vectors"] == 2_000_000 and out["d"] == D and out["metric"] == "cosine"
    for key in ("nlist", "nprobe", "M", "nbits", "keep_vectors", "refine_factor", "shards",
                "replicas", "nodes", "recall", "qps_per_core", "bytes_per_vector", "model"):
        assert key in out
    assert out["memory_per_node"] == 2**30 and str(path) in out["measured"]["source"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "IVF-PQ nlist=" in text and "QPS per core" in text and "model" in text


@pytest.mark.parametrize("argv,code,err", [
    (["plan", "--vectors", "1e9"], 2, "--d"),
    (["plan", "--vectors", "1e9", "--d", "8", "--memory-per-node", "lots"], 2, "byte count"),
    (["plan", "--vectors", "ten", "--d", "8"], 2, "whole number"),
    (["plan", "--vectors", "1e9", "--d", "8", "--target-recall", "2"], 2, "target-recall"),
    (["plan", "--vectors", "1e9", "--d", "7", "--pq", "4x2"], 1, "M=2 does not divide d=7"),
])
def test_cli_plan_usage_errors(argv, code, err, capsys):
    assert main(argv) == code
    assert err in capsys.readouterr().err
