"""`shardann bench core|distributed`: every option is described, and the runs
work without the optional packages of the ``bench`` extra (faiss-cpu and
matplotlib) and say what they skipped."""

import argparse
import importlib
import json
import subprocess
import sys
import textwrap

import pytest

from shardann.cli import main

SUITES = ("core", "distributed", "frontier", "filter", "threads", "plancheck")
# threadpoolctl is a runtime dependency (the batch search keeps BLAS on one thread with it)
OPTIONAL = ("faiss", "matplotlib", "lancedb")


def _squash(text):
    """``text`` without whitespace: argparse re-wraps help lines."""
    return "".join(text.split())


@pytest.mark.parametrize("suite", SUITES)
def test_help_describes_every_option(suite, capsys):
    module = importlib.import_module(f"shardann.bench.{suite}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert actions
    undescribed = [a.option_strings[0] for a in actions
                   if not a.help or a.help == argparse.SUPPRESS]
    assert undescribed == []

    assert main(["bench", suite, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: shardann bench {suite}")
    for action in actions:
        assert action.option_strings[0] in out
        assert _squash(action.help) in _squash(out), action.option_strings[0]


# blocks the optional packages, then runs the command line in this process
_WITHOUT_OPTIONAL = textwrap.dedent("""
    import sys
    for name in {names!r}:
        sys.modules[name] = None  # import raises ModuleNotFoundError
    from shardann.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _run_without_optional(args, timeout):
    code = _WITHOUT_OPTIONAL.format(names=OPTIONAL)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_bench_core_runs_without_the_bench_extra(tmp_path):
    out = tmp_path / "results"
    proc = _run_without_optional(
        ["bench", "core", "--n", "1000", "--d", "16", "--nq", "20", "--train-size", "500",
         "--nlist", "8", "--M", "4", "--nprobe", "2", "--nprobe-sweep", "1,2", "--reps", "1",
         "--sweep-reps", "1", "--latency-queries", "5", "--kinds", "ivfflat,ivfpq8",
         "--out", str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = [line for line in proc.stdout.splitlines() if "skipped" in line]
    assert len(skipped) == 1, proc.stdout
    for missing in ("faiss-cpu", "matplotlib", 'pip install -e ".[bench]"'):
        assert missing in skipped[0]
    assert "FAISS not installed" in proc.stdout
    assert "shardann/FAISS" not in proc.stdout  # no ratio rows without FAISS
    report = json.loads((out / "core.json").read_text())
    assert report["libs"] == ["shardann"]
    assert report["ground_truth"]["method"].startswith("shardann.FlatIndex")
    assert set(report["results"]) == {"ivfflat", "ivfpq8"}
    # IVF-Flat scanning nprobe=2 of 8 lists finds most true neighbours (observed 0.805)
    assert report["results"]["ivfflat"]["shardann"]["recall"] > 0.6
    assert not (out / "core-recall-qps.png").exists()


def test_bench_filter_runs_without_the_optional_systems(tmp_path):
    out = tmp_path / "results"
    proc = _run_without_optional(
        ["bench", "filter", "--n", "2000", "--d", "16", "--nq", "10", "--train-size", "500",
         "--nlist", "8", "--pq", "8x4", "--selectivities", "1,0.1", "--nprobe-sweep", "2,8",
         "--reps", "1", "--out", str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = [line for line in proc.stdout.splitlines() if "skipped" in line]
    assert len(skipped) == 1, proc.stdout
    for missing in ("FAISS (faiss-cpu", "LanceDB (lancedb", "matplotlib"):
        assert missing in skipped[0]
    report = json.loads((out / "filter.json").read_text())
    assert report["systems"] == ["shardann"] and report["equal_recall"] == []
    assert report["ground_truth"]["method"].startswith("shardann.FlatIndex")
    # nprobe = nlist scans every passing row (observed 1.15x: recall 0.83, unfiltered 0.72)
    assert report["recall_kept"]["shardann"]["10%"]["by_nprobe"][-1]["ratio"] > 0.8
    assert not (out / "filter-recall-qps.png").exists()


@pytest.mark.slow
def test_bench_distributed_runs_without_matplotlib(tmp_path):
    out = tmp_path / "results"
    proc = _run_without_optional(
        ["bench", "distributed", "--n", "2000", "--d", "16", "--M", "4", "--nlist", "16",
         "--nq", "32", "--single", "10", "--reps", "1", "--shards", "1,2", "--out", str(out)],
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "matplotlib is not installed" in proc.stdout
    assert 'pip install -e ".[bench]"' in proc.stdout
    rows = json.loads((out / "distributed.json").read_text())["rows"]
    assert [r["shards"] for r in rows] == [1, 2]
    assert all(r["identical"] for r in rows)
    assert not (out / "distributed.png").exists()


# -- plots (matplotlib installed) ----------------------------------------------------------
def _texts_inside(fig):
    """Every text of ``fig`` (suptitle, panel titles, labels) lies inside the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    texts = list(fig.texts) + [ax.title for ax in fig.axes]
    assert any(t.get_text() for t in fig.texts)  # the suptitle is among them
    for t in texts:
        if not t.get_text():
            continue
        ext = t.get_window_extent(renderer)
        assert box.x0 - 1 <= ext.x0 and ext.x1 <= box.x1 + 1, t.get_text()
        assert box.y0 - 1 <= ext.y0 and ext.y1 <= box.y1 + 1, t.get_text()


def _core_report(libs):
    sweep = [{"nprobe": p, "recall": 0.5 + 0.05 * i, "qps": 1e5 / (i + 1),
              "qps_cpu": 1.1e5 / (i + 1)} for i, p in enumerate([1, 2, 4, 8, 16, 32, 64, 128])]
    entry = {lib: {"sweep": sweep, "params": {"index_factory": "IVF1024,PQ32x8np"}}
             for lib in libs}
    return {"config": {"k": 10, "metric": "l2", "nprobe_sweep": [p["nprobe"] for p in sweep]},
            "dataset": {"n": 1_000_000, "d": 128, "nq": 1000}, "libs": list(libs),
            "results": {"ivfpq8": entry}}


@pytest.mark.parametrize("libs", [("faiss", "shardann"), ("shardann",)])
def test_core_plot_title_is_not_cut_off(libs, tmp_path):
    pytest.importorskip("matplotlib")
    from shardann.bench import _report

    report = _core_report(libs)  # one panel: the narrowest figure
    _texts_inside(_report.recall_qps_figure(report))
    _report.plot(report, tmp_path / "core.png")
    assert (tmp_path / "core.png").stat().st_size > 0


def test_distributed_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from shardann.bench import distributed

    rows = [{"shards": s, "qps": 9000.0 / s, "local_qps": 25000.0, "p50_ms": 2.0 * s,
             "p99_ms": 5.0 * s, "local_p50_ms": 0.2, "local_p99_ms": 0.5} for s in (1, 2, 4)]
    params = {"n": 200_000, "d": 128, "nlist": 1024, "M": 32, "nbits": 8, "nprobe": 16,
              "k": 10, "num_cpus": 2, "batch": 256}
    _texts_inside(distributed.shards_figure(rows, params))
    distributed.plot(rows, params, tmp_path / "distributed.png")
    assert (tmp_path / "distributed.png").stat().st_size > 0
