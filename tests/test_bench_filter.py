"""`shardann bench filter`: the attribute column, FAISS's IDSelector and LanceDB's
where through the bench runners, and a tiny run of every installed system end to end."""

import json

import numpy as np
import pyarrow as pa
import pytest

from shardann.bench._filter import make_filters
from shardann.bench._runners import FaissRunner, LanceRunner
from shardann.bench.datasets import categorical, synthetic
from shardann.cli import main


def test_categorical_holds_exact_shares():
    col = categorical(10_000, {"s10": 0.1, "s1": 0.01, "s0.1": 0.001}, seed=3)
    names, counts = np.unique(col, return_counts=True)
    assert dict(zip(names.tolist(), counts.tolist(), strict=True)) == {
        "s10": 1000, "s1": 100, "s0.1": 10, "rest": 8890}
    np.testing.assert_array_equal(col, categorical(10_000, {"s10": 0.1, "s1": 0.01,
                                                            "s0.1": 0.001}, seed=3))
    assert not np.array_equal(col, categorical(10_000, {"s10": 0.1, "s1": 0.01,
                                                        "s0.1": 0.001}, seed=4))
    with pytest.raises(ValueError, match="add up to"):
        categorical(100, {"a": 0.6, "b": 0.5})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        categorical(100, {"a": 0.0})


def test_make_filters_pass_their_share():
    col, filters, skipped = make_filters(5000, [1.0, 0.1, 0.001], k=10, seed=0)
    assert [f["label"] for f in filters] == ["unfiltered", "100%", "10%"]
    assert filters[2]["sql"] == "category = 's10'" and filters[2]["count"] == 500
    np.testing.assert_array_equal(filters[2]["mask"], col == "s10")
    assert filters[1]["mask"].all() and filters[1]["sql"].startswith("category IN (")
    # 0.1% of 5000 is 5 rows, fewer than k: left out, and said so
    assert skipped == [("selectivity 0.1%", "it passes 5 rows of 5000, fewer than k=10")]


@pytest.fixture(scope="module")
def small():
    x = synthetic(3000, 16, seed=5)
    cat = categorical(3000, {"s10": 0.1}, seed=1)
    return x[:2900], x[2900:2920], cat[:2900]


def test_faiss_runner_keeps_to_the_selector(small):
    faiss = pytest.importorskip("faiss")
    xb, xq, cat = small
    mask = cat == "s10"
    for kind, M in (("ivfpq8", 4), ("ivfpq4", 8)):
        runner = FaissRunner(faiss, kind, 16, 16, M, "l2", 0)
        index = runner.make()
        runner.train(index, xb)
        runner.add(index, xb)
        bits = np.packbits(mask, bitorder="little")
        _, ids = runner.search(index, xq, 10, 16, sel=faiss.IDSelectorBitmap(bits))
        assert (ids >= 0).all() and mask[ids].all()
        _, unfiltered = runner.search(index, xq, 10, 16)
        assert not mask[unfiltered].all()


def test_lance_runner_pre_filters(small, tmp_path):
    lancedb = pytest.importorskip("lancedb")
    xb, xq, cat = small
    runner = LanceRunner(lancedb, 16, 8, 4, 8, "l2", 2, 64, str(tmp_path))
    table = runner.build(xb, pa.table({"category": cat}))
    D, ids = runner.search(table, xq[:5], 10, 8, where="category = 's10'")
    assert ids.shape == (5, 10) and (ids >= 0).all() and (cat[ids] == "s10").all()
    assert (np.diff(D, axis=1) >= 0).all()
    _, unfiltered = runner.search(table, xq[:5], 10, 8)
    assert not (cat[unfiltered] == "s10").all()


def test_bench_filter_smoke(tmp_path, capsys):
    out = tmp_path / "results"
    status = main(["bench", "filter", "--n", "3000", "--d", "16", "--nq", "20",
                   "--train-size", "1000", "--nlist", "16", "--pq", "8x4",
                   "--selectivities", "1,0.1,0.01", "--nprobe-sweep", "2,16", "--reps", "1",
                   "--lancedb-nq", "5", "--out", str(out)])
    text = capsys.readouterr().out
    assert status == 0, text
    report = json.loads((out / "filter.json").read_text())
    systems = report["systems"]
    assert systems[0] == "shardann"
    assert [f["label"] for f in report["filters"]] == ["unfiltered", "100%", "10%", "1%"]
    assert [f["count"] for f in report["filters"]] == [3000, 3000, 300, 30]
    pts = report["points"]
    assert len(pts) == len(systems) * 4 * 2
    assert all(0.0 <= p["recall"] <= 1.0 and p["qps"] > 0 for p in pts)
    by = {(p["system"], p["config"], p["nprobe"]): p for p in pts}
    # nprobe = nlist scans every list: the PQ top-k of the 30 passing rows (observed
    # recall 0.87 of their exact top-k with 4 bytes a vector; 0.35 at nprobe 2)
    assert by["shardann", "1%", 16]["recall"] >= 0.75
    kept = report["recall_kept"]["shardann"]["1%"]
    assert kept["min"] == min(r["ratio"] for r in kept["by_nprobe"])
    assert "targets: (1)" in text and "recall kept under the filter" in text
    if "faiss" in systems:
        assert any(r["system"] == "faiss" for r in report["equal_recall"])
    if not any("plot" in s["what"] for s in report["skipped"]):  # matplotlib installed
        assert (out / "filter-recall-qps.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["bench", "filter", "--selectivities", "0.6,0.5"]) == 2
    assert "add up to 1.1 > 1" in capsys.readouterr().err
