"""`shardann bench frontier`: a tiny run of every installed system end to end,
the frontier arithmetic, and the Parquet input."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardann.bench._measure import best_at_recall, pareto_frontier
from shardann.bench.datasets import read_vectors, synthetic
from shardann.cli import main


def _dominated(p, points):
    return any(o["recall"] >= p["recall"] and o["qps"] > p["qps"] for o in points)


def test_pareto_frontier_and_best_at_recall():
    pts = [{"recall": r, "qps": q} for r, q in
           [(0.5, 100), (0.6, 90), (0.6, 80), (0.7, 95), (0.9, 10), (0.85, 5)]]
    front = pareto_frontier(pts)
    assert [(p["recall"], p["qps"]) for p in front] == [(0.9, 10), (0.7, 95), (0.5, 100)]
    assert best_at_recall(pts, 0.6) == {"recall": 0.7, "qps": 95}
    assert best_at_recall(pts, 0.95) is None


def test_read_vectors_parquet(tmp_path):
    x = synthetic(50, 8, seed=1)
    for name, typ in (("fixed", pa.list_(pa.float32(), 8)), ("var", pa.list_(pa.float32()))):
        col = pa.array(list(x), type=typ)
        pq.write_table(pa.table({"id": np.arange(50), "embedding": col}),
                       tmp_path / f"{name}.parquet")
        np.testing.assert_array_equal(read_vectors(tmp_path / f"{name}.parquet"), x)
    pq.write_table(pa.table({"id": np.arange(3)}), tmp_path / "none.parquet")
    with pytest.raises(ValueError, match="no list column"):
        read_vectors(tmp_path / "none.parquet")


def test_bench_frontier_smoke(tmp_path, capsys):
    out = tmp_path / "results"
    status = main(["bench", "frontier", "--n", "2000", "--d", "16", "--nq", "30",
                   "--train-size", "1000", "--nlist", "16", "--shardann-pq", "4x8,8x4",
                   "--faiss-pq", "4x8", "--nprobe-sweep", "2,4", "--refine-factors", "0,2",
                   "--reps", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert status == 0
    report = json.loads((out / "frontier.json").read_text())
    systems = report["systems"]
    assert systems[0] == "shardann"
    pts = report["points"]
    # shardann: 2 configurations x 2 nprobe x (no refine + 3 kept types x refine 2)
    assert len([p for p in pts if p["system"] == "shardann"]) == 2 * 2 * 4
    assert {p["config"] for p in pts if p["system"] == "shardann"} >= {
        "4-bit M=8 + int8", "8-bit M=4 + float16", "4-bit M=8"}
    assert all(0.0 <= p["recall"] <= 1.0 and p["qps"] > 0 for p in pts)
    for s in systems:
        mine = [p for p in pts if p["system"] == s]
        front = report["frontier"][s]
        assert front and not any(_dominated(p, mine) for p in front)
        assert f"  {dict(shardann='shardann', faiss='FAISS', scann='ScaNN')[s]}:" in text
    for row in report["at_recall"]:
        best = best_at_recall([p for p in pts if p["system"] == "shardann"], row["target"])
        assert row["shardann"] == best
    # refine on kept vectors reaches a recall the plain 4-bit scan does not (observed .97 vs .65)
    sh = [p for p in pts if p["system"] == "shardann"]
    assert max(p["recall"] for p in sh if p["refine_factor"]) > \
        max(p["recall"] for p in sh if not p["refine_factor"])
    assert "configuration to pick for a recall target" in text
    if not any("plot" in s["what"] for s in report["skipped"]):  # matplotlib installed
        assert (out / "frontier-recall-qps.png").stat().st_size > 0


def test_bench_threads_smoke(tmp_path, capsys):
    """Every thread count returns the same results (the command checks it)."""
    status = main(["bench", "threads", "--n", "3000", "--d", "16", "--train-size", "1000",
                   "--nlist", "16", "--M", "8", "--refine-factor", "2", "--keep", "int8",
                   "--batch", "64", "--threads", "1,2", "--reps", "1", "--latency-queries",
                   "5", "--out", str(tmp_path)])
    assert status == 0, capsys.readouterr().out
    rows = json.loads((tmp_path / "threads.json").read_text())["rows"]
    assert [r["threads"] for r in rows] == [1, 2] and all(r["identical"] for r in rows)


def test_bench_frontier_pca_configurations(tmp_path, capsys):
    out = tmp_path / "results"
    status = main(["bench", "frontier", "--n", "2000", "--d", "16", "--nq", "20",
                   "--train-size", "1000", "--nlist", "16", "--shardann-pq", "4x8,8x4",
                   "--pca", "8", "--opq", "--keep", "float32", "--no-faiss", "--no-scann",
                   "--nprobe-sweep", "4", "--refine-factors", "0,4", "--reps", "1",
                   "--no-plot", "--out", str(out)])
    assert status == 0, capsys.readouterr().out
    pts = json.loads((out / "frontier.json").read_text())["points"]
    # M scaled by pca/d (2 dims per 4-bit sub-quantizer stay 2); each with and without OPQ
    assert {p["config"] for p in pts} == {
        "4-bit M=8", "4-bit M=8 + float32", "8-bit M=4", "8-bit M=4 + float32",
        "4-bit M=4 pca=8", "4-bit M=4 pca=8 + float32", "8-bit M=2 pca=8",
        "8-bit M=2 pca=8 + float32", "4-bit M=4 pca=8 opq", "4-bit M=4 pca=8 opq + float32",
        "8-bit M=2 pca=8 opq", "8-bit M=2 pca=8 opq + float32", "4-bit M=8 opq",
        "4-bit M=8 opq + float32", "8-bit M=4 opq", "8-bit M=4 opq + float32"}
    # refine on the original vectors lifts the reduced index's recall (observed 0.64 -> 0.98)
    pca = [p for p in pts if p["config"].startswith("4-bit M=4 pca=8 +")][0]
    plain = [p for p in pts if p["config"] == "4-bit M=4 pca=8"][0]
    assert pca["recall"] > plain["recall"]
    assert main(["bench", "frontier", "--d", "16", "--pca", "32", "--quick"]) == 2


def test_bench_frontier_sweeps_nlist(tmp_path, capsys):
    """Several --nlist values: every system built at each, labelled with its
    nlist; nprobe values above a build's nlist are left out of that build."""
    out = tmp_path / "results"
    status = main(["bench", "frontier", "--n", "2000", "--d", "16", "--nq", "20",
                   "--train-size", "1000", "--nlist", "8,16", "--shardann-pq", "4x8",
                   "--keep", "float16", "--no-faiss", "--no-scann", "--nprobe-sweep", "4,12",
                   "--refine-factors", "0,2", "--reps", "1", "--no-plot", "--out", str(out)])
    text = capsys.readouterr().out
    assert status == 0, text
    report = json.loads((out / "frontier.json").read_text())
    pts = report["points"]
    assert {p["config"] for p in pts} == {"4-bit M=8 nlist=8", "4-bit M=8 nlist=8 + float16",
                                          "4-bit M=8 nlist=16",
                                          "4-bit M=8 nlist=16 + float16"}
    assert {p["nprobe"] for p in pts if "nlist=8" in p["config"]} == {4}
    assert {p["nprobe"] for p in pts if "nlist=16" in p["config"]} == {4, 12}
    assert [b["nlist"] for b in report["builds"]] == [8, 8, 16, 16]
    assert "nlist=8,16" in text
