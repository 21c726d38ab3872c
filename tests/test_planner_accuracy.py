"""The planner's check at scale (``shardann bench plancheck``): the plan's
predicted recall against the recall of the planned index built on the whole
database. The default suite checks the plumbing on tiny data; the slow tests
hold the planner to its goal (within 0.03) on two datasets of 200k vectors."""

import json

import numpy as np
import pytest

from shardann.bench.plancheck import TOLERANCE, check_plan, format_check, generate
from shardann.cli import main

TINY = dict(sample_size=2000, queries=100, pq_configs=[(4, 8)], keeps=["float16"],
            refine_factors=[2], reps=1)


def test_generate_holds_the_queries_out():
    xb, xq = generate("mixture", 300, 20, 8, seed=1)
    assert xb.shape == (300, 8) and xq.shape == (20, 8) and xb.dtype == np.float32
    again = generate("mixture", 320, 0, 8, seed=1)[0]
    np.testing.assert_array_equal(np.vstack([xb, xq]), again)  # one draw, split
    with pytest.raises(ValueError, match="dataset"):
        generate("sift", 10, 1, 8)


def test_check_plan_builds_the_plan_and_compares():
    xb, xq = generate("synthetic", 4000, 100, 16, seed=2)
    out = check_plan(xb, xq, target_recall=0.8, **TINY)
    p = out["plan"]
    assert out["n"] == 4000 and out["nq"] == 100 and p["vectors"] == 4000
    assert (p["nbits"], p["M"]) == (4, 8)
    planned = [r for r in out["rows"] if r["planned"]]
    assert len(planned) == 1 and planned[0]["nprobe"] == p["nprobe"]
    assert planned[0]["predicted"] == pytest.approx(p["recall"])
    assert out["error"] == pytest.approx(planned[0]["predicted"] - planned[0]["measured"])
    probes = [r["nprobe"] for r in out["rows"]]
    assert probes == sorted(probes) and len(probes) >= 2
    for r in out["rows"]:
        assert 0 <= r["measured"] <= 1 and 0 <= r["predicted"] <= 1
    # more probes, never a lower recall on the same index
    measured = [r["measured"] for r in out["rows"]]
    assert measured == sorted(measured)
    assert out["qps_per_core"]["measured"] > 0 and out["qps_per_core"]["predicted"] > 0
    text = format_check({**out, "config": {"dataset": "synthetic", "sample_size": 2000}})
    assert "<- planned" in text and f"nlist={p['nlist']}" in text


def test_cli_bench_plancheck_writes_the_report(tmp_path, capsys):
    argv = ["bench", "plancheck", "--dataset", "mixture", "--n", "3000", "--d", "16",
            "--metric", "cosine", "--nq", "50", "--target-recall", "0.8",
            "--sample-size", "2000", "--queries", "100", "--pq", "4x8", "--keep", "float16",
            "--reps", "1", "--tolerance", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "<- planned" in text and "QPS per core" in text
    report = json.loads((tmp_path / "plancheck.json").read_text())
    assert report["config"]["dataset"] == "mixture" and report["metric"] == "cosine"
    assert report["plan"]["vectors"] == 3000 and report["plan"]["d"] == 16


@pytest.mark.slow
@pytest.mark.parametrize("dataset,d,metric", [("synthetic", 128, "l2"),
                                              ("mixture", 384, "cosine")])
def test_predicted_recall_holds_at_200k(dataset, d, metric):
    xb, xq = generate(dataset, 200_000, 1000, d, seed=0)
    out = check_plan(xb, xq, metric=metric, target_recall=0.9, sample_size=50_000,
                     queries=1000)
    assert abs(out["error"]) <= TOLERANCE, format_check(
        {**out, "config": {"dataset": dataset, "sample_size": 50_000}})
