"""The ``shardann`` command: demo, info, usage errors (no Ray)."""

import numpy as np

import shardann
from shardann.cli import main


def test_demo_small_without_ray(capsys):
    assert main(["demo", "--n", "3000", "--d", "16", "--nlist", "16", "--M", "4",
                 "--nq", "40", "--no-ray"]) == 0
    out = capsys.readouterr().out
    assert "recall@10" in out and "identical" in out


def test_demo_bad_parameters_is_usage_error(capsys):
    assert main(["demo", "--d", "16", "--M", "7", "--no-ray"]) == 2


def test_info_on_saved_index_and_missing_path(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    index = shardann.IVFPQIndex(8, 4, 2, 4).train(x)
    index.add(x)
    index.save(tmp_path / "idx")
    assert main(["info", str(tmp_path / "idx")]) == 0
    out = capsys.readouterr().out
    assert "500" in out and "ivfpq" in out.lower()
    assert main(["info", str(tmp_path / "nothing-here")]) == 1


# what the library subpackages load: every public name, so lazily loaded modules count too
_LIBRARY_IMPORTS = """
import importlib, json, sys
for name in ("shardann", "shardann.index", "shardann.storage", "shardann.distributed",
             "shardann.service"):
    package = importlib.import_module(name)
    for attr in getattr(package, "__all__", ()):
        if attr != "Client" or name != "shardann":  # shardann.Client is shardann.service's
            getattr(package, attr)
loaded = sorted(m for m in sys.modules if m == "shardann" or m.startswith("shardann."))
argparse_users = []
for m in loaded:
    path = getattr(sys.modules[m], "__file__", None) or ""
    if path.endswith(".py") and "argparse" in open(path, encoding="utf-8").read():
        argparse_users.append(m)
print(json.dumps({"loaded": loaded, "argparse": argparse_users}))
"""


def test_library_never_imports_the_command_line():
    """Imports point down: the library subpackages (and every public name in them)
    load neither ``shardann.cli`` nor any module that uses argparse."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _LIBRARY_IMPORTS], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert "shardann.distributed.coordinator" in found["loaded"]  # the names did load
    assert "shardann.service.app" in found["loaded"]
    assert [m for m in found["loaded"] if m.split(".")[:2] == ["shardann", "cli"]] == []
    assert found["argparse"] == []


def test_python_m_shardann_cli_errors_are_one_line(tmp_path):
    """``python -m shardann.cli`` is the command: a failure is one line and status 1."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "shardann.cli", "info", str(tmp_path / "no")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardann info: error: "), out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_info_recall(tmp_path, capsys):
    from shardann.bench.datasets import synthetic

    x = synthetic(2000, 16, seed=0)
    index = shardann.IVFPQIndex(16, 8, 4, calibration=100, pq_niter=5).train(x)
    index.add(x)
    index.save(tmp_path / "idx")
    want = index.estimate_recall(5, 2)
    assert main(["info", str(tmp_path / "idx")]) == 0
    out = capsys.readouterr().out
    assert "calibration" in out and "100 queries" in out and "recall@" not in out
    assert main(["info", str(tmp_path / "idx"), "--recall", "--k", "5", "--nprobe", "2"]) == 0
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("recall@5")][0]
    assert f"{want.recall:.4f}  [{want.lower:.4f}, {want.upper:.4f}]" in line
    assert "nprobe=2" in line and "100 queries" in line
    assert main(["info", str(tmp_path / "idx"), "--recall", "--k", "101"]) == 2
    none = shardann.IVFFlatIndex(16, 8, calibration=0).train(x)
    none.add(x)
    none.save(tmp_path / "none")
    assert main(["info", str(tmp_path / "none"), "--recall"]) == 1
    assert "no calibration set" in capsys.readouterr().err
