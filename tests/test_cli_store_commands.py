"""``shardann verify`` and ``shardann repair`` (issue 19): check a stored version
completely; set a damaged newest manifest aside or supersede it (no Ray)."""

import os

import numpy as np
import pytest

import shardann
from shardann.cli import main
from shardann.storage import IndexStore


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture()
def store(tmp_path):
    """Versions 1 (500 vectors) and 2 (ids 0..9 removed) of an IVF-PQ index."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    index = shardann.IVFPQIndex(8, 4, 2, 8, seed=0, niter=4, pq_niter=4).train(x)
    index.add(x)
    path = tmp_path / "idx"
    index.save(path)
    index.remove_ids(np.arange(10))
    index.save(path)
    return path


def _manifest(path, version):
    return os.path.join(path, "_manifests", f"v{version:08d}.json")


def test_verify_a_healthy_store(store, capsys):
    assert main(["verify", str(store)]) == 0
    out = capsys.readouterr().out
    assert "version 2" in out and "490" in out and "ok" in out
    assert main(["verify", str(store), "--version", "1"]) == 0
    assert "500" in capsys.readouterr().out


def test_verify_reports_a_damaged_segment(store, capsys):
    seg = IndexStore.open(store).manifest["files"]["segments"][0]["path"]
    _flip(os.path.join(store, seg), 200)
    assert main(["verify", str(store)]) == 1
    captured = capsys.readouterr()
    assert os.path.basename(seg) in captured.out + captured.err
    assert main(["verify", str(store), "--version", "1"]) == 0  # v1 has other segments


def test_verify_reports_a_damaged_newest_manifest(store, capsys):
    _flip(_manifest(store, 2), 60)
    assert main(["verify", str(store)]) == 1
    captured = capsys.readouterr()
    assert "v00000002.json" in captured.out + captured.err
    assert main(["verify", str(store), "--version", "1"]) == 0
    assert main(["verify", str(store), "--version", "9"]) == 1


def test_repair_rollback(store, capsys):
    _flip(_manifest(store, 2), 60)
    assert main(["repair", str(store), "--rollback"]) == 0
    out = capsys.readouterr().out
    assert "damaged-v00000002.json" in out and "version 1" in out
    assert os.path.exists(os.path.join(store, "_manifests", "damaged-v00000002.json"))
    assert IndexStore.open(store).version == 1
    assert main(["verify", str(store)]) == 0


def test_repair_supersede(store, capsys):
    _flip(_manifest(store, 2), 60)
    assert main(["repair", str(store), "--supersede", "1"]) == 0
    assert "version 3" in capsys.readouterr().out
    s = IndexStore.open(store)
    assert s.version == 3 and s.ntotal == 500


def test_repair_usage_and_refusals(store, capsys):
    assert main(["repair", str(store)]) == 2  # one of --rollback / --supersede
    assert main(["repair", str(store), "--rollback", "--supersede", "1"]) == 2
    capsys.readouterr()
    assert main(["repair", str(store), "--rollback"]) == 1  # nothing is damaged
    assert "nothing to repair" in capsys.readouterr().err
