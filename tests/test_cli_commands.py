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
