"""``shardann search --probe-ratio``: the library's adaptive-probing answer; a
ratio outside (0, 1] is a usage error."""

import copy
import json

import numpy as np

from shardann.cli import main


def test_search_command_passes_probe_ratio(tmp_path, data, built, capsys):
    _, xq, _ = data
    index = copy.deepcopy(built("ivfflat"))  # save() marks the index: not the shared one
    index.save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", xq[:5])
    args = ["search", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "-k", "4",
            "--nprobe", "16"]
    assert main([*args, "--probe-ratio", "0.6"]) == 0
    got = [json.loads(line)["ids"] for line in capsys.readouterr().out.splitlines()]
    want = index.search(xq[:5], 4, nprobe=16, probe_ratio=0.6)[1]
    assert got == want.tolist()
    assert main([*args, "--probe-ratio", "1.5"]) == 2
    assert "probe_ratio" in capsys.readouterr().err


def test_search_command_passes_probe_gap(tmp_path, data, built, capsys):
    _, xq, _ = data
    index = copy.deepcopy(built("ivfflat"))
    index.save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", xq[:5])
    args = ["search", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "-k", "4",
            "--nprobe", "16"]
    assert main([*args, "--probe-gap", "0.05"]) == 0
    got = [json.loads(line)["ids"] for line in capsys.readouterr().out.splitlines()]
    assert got == index.search(xq[:5], 4, nprobe=16, probe_gap=0.05)[1].tolist()
    assert main([*args, "--probe-gap", "0"]) == 2
    assert "probe_gap" in capsys.readouterr().err
