"""The planner on tiny inputs: the model's arithmetic, the plan's bookkeeping
(memory -> shards, QPS -> replicas), the Python API and `shardann plan` with
--json. Its accuracy at scale is tests/test_planner_accuracy.py (slow)."""

import json

import numpy as np
import pytest

import shardann
from shardann.bench import Plan, measure_sample, plan
from shardann.bench._plan_measure import measurement_nlists
from shardann.bench._plan_model import (
    RecallModel,
    bytes_per_vector,
    fixed_bytes,
    local_plane,
)
from shardann.bench._runners import model_twin
from shardann.bench.datasets import mixture, synthetic
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


def test_plan_bookkeeping(meas):
    p = plan(1_000_000, D, target_recall=0.8, memory_per_node="64GiB", measurements=meas)
    assert isinstance(p, Plan) and p.feasible
    assert (p.M, p.nbits) == (8, 4) and p.nlist in (256, 512, 1024, 2048, 4096, 8192, 16384)
    assert p.recall >= 0.8 and p.recall == pytest.approx(p.coarse_recall * p.survival)
    assert p.bytes_per_vector == bytes_per_vector(D, 8, 4, p.keep_vectors)
    assert (p.shards, p.replicas, p.nodes) == (1, 1, 1)
    assert p.qps_per_core == pytest.approx(1 / p.seconds_per_query["total"])
    # a node of 8 MiB (6 usable) holds a fraction: shards follow the bytes
    small = plan(1_000_000, D, target_recall=0.8, memory_per_node="8MiB", measurements=meas)
    usable = 8 * 2**20 * 0.75
    assert small.shards >= np.ceil(1_000_000 * small.bytes_per_vector / usable)
    assert small.shard_bytes <= usable and small.nodes == small.shards * small.replicas
    # a QPS target beyond one node's cores adds replicas
    busy = plan(1_000_000, D, target_recall=0.8, memory_per_node="64GiB", qps=1e9,
                cores_per_node=4, measurements=meas)
    assert busy.replicas == np.ceil(1e9 / (busy.qps_per_core * 4 * busy.shards))
    assert busy.nodes == busy.shards * busy.replicas > 1
    # a higher target never plans fewer probes for the same layout and lists
    hi = plan(1_000_000, D, target_recall=0.9, memory_per_node="64GiB", measurements=meas)
    if (hi.nlist, hi.M, hi.nbits, hi.keep_vectors, hi.refine_factor) == \
            (p.nlist, p.M, p.nbits, p.keep_vectors, p.refine_factor):
        assert hi.nprobe >= p.nprobe
    # out of reach: the best there is, flagged
    top = plan(1_000_000, D, target_recall=0.9999, measurements=meas)
    assert not top.feasible and "no measured layout" in top.notes[0]
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
