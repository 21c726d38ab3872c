"""`shardann bench probing`: a tiny run end to end, and the coverage bound's
arithmetic on hand-made ranks."""

import json

import numpy as np
import pytest

from shardann.bench._adaptive import coverage_bounds
from shardann.cli import main


def test_coverage_bounds_fixed_and_oracle():
    # query 0 has all its neighbours in its closest list, query 1 needs 4 lists
    ranks = np.array([[0, 0], [0, 3]])
    out = coverage_bounds(ranks, 2, [0.75, 1.0], 6)
    assert out[0.75]["fixed"] == pytest.approx(1.0)  # 1 list each covers 3 of 4
    assert out[1.0]["fixed"] == pytest.approx(4.0)
    assert out[1.0]["oracle"] == pytest.approx(2.5)  # 1 + 4 lists
    assert out[0.75]["oracle"] <= out[0.75]["fixed"]
    # a neighbour beyond the cap is never covered
    assert coverage_bounds(np.array([[0, 4]]), 2, [1.0], 4)[1.0]["fixed"] is None


def test_bench_probing_smoke(tmp_path, capsys):
    out = tmp_path / "results"
    status = main(["bench", "probing", "--n", "2000", "--d", "16", "--nq", "30",
                   "--train-size", "1000", "--nlist", "16", "--nprobe-sweep", "1,2,4",
                   "--caps", "4", "--ratios", "0.5,0.9", "--gaps", "0.1,1e9",
                   "--targets", "0.8", "--reps", "1", "--no-faiss", "--out", str(out)])
    text = capsys.readouterr().out
    assert status == 0, text
    report = json.loads((out / "probing.json").read_text())
    pts = report["points"]
    assert [p["method"] for p in pts] == ["fixed"] * 3 + ["ratio"] * 2 + ["gap"] * 2
    assert all(0 <= p["recall"] <= 1 and p["qps"] > 0 for p in pts)
    fixed = {p["nprobe"]: p for p in pts if p["method"] == "fixed"}
    assert [fixed[p]["lists"] for p in (1, 2, 4)] == [1.0, 2.0, 4.0]
    ada = [p for p in pts if p["method"] == "ratio"]
    assert 1.0 <= ada[1]["lists"] <= ada[0]["lists"] <= 4.0
    gap = [p for p in pts if p["method"] == "gap"]
    assert gap[1]["recall"] == fixed[4]["recall"]  # a gap that skips nothing: nprobe 4
    assert gap[0]["recall"] <= gap[1]["recall"]
    row = report["summary"][0]
    assert row["target"] == 0.8 and set(row) >= {"fixed", "ratio", "ratio_over_fixed", "gap",
                                                 "gap_over_fixed"}
    assert "oracle" in text and "gap " in text


def test_bench_probing_mixture_gap_only(tmp_path, capsys):
    out = tmp_path / "results"
    status = main(["bench", "probing", "--dataset", "mixture", "--n", "2000", "--d", "16",
                   "--nq", "20", "--train-size", "1000", "--nlist", "16", "--nprobe-sweep",
                   "1,4", "--caps", "4", "--ratios", "none", "--gaps", "0.3",
                   "--targets", "0.5", "--reps", "1", "--no-faiss", "--out", str(out)])
    text = capsys.readouterr().out
    assert status == 0, text
    report = json.loads((out / "probing.json").read_text())
    assert report["dataset"]["source"] == "shardann.bench.datasets.mixture"
    assert [p["method"] for p in report["points"]] == ["fixed", "fixed", "gap"]
    assert "ratio" not in report["summary"][0]


def test_bench_probing_bad_ratio_is_a_usage_error(capsys):
    assert main(["bench", "probing", "--ratios", "0,0.5"]) == 2
    assert "(0, 1]" in capsys.readouterr().err


def test_qps_at_recall_mixed():
    from shardann.bench._measure import qps_at_recall_mixed

    pts = [{"recall": 0.8, "qps": 200.0}, {"recall": 1.0, "qps": 100.0},
           {"recall": 0.95, "qps": 50.0}]
    qps, how = qps_at_recall_mixed(pts, 0.9)  # half the queries each: 7.5 ms per query
    assert how == "mixed" and qps == pytest.approx(1 / (0.5 / 200 + 0.5 / 100))
    assert qps_at_recall_mixed(pts, 1.0) == (100.0, "measured")
    assert qps_at_recall_mixed(pts, 0.5) == (200.0, "measured")
    assert qps_at_recall_mixed(pts, 1.01) == (None, "not reached")
