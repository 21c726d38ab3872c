"""Crash safety: SIGKILL a writer at every named point inside a commit.

A child process commits version 2 (acknowledged: it prints ``ACK 2``), then
sets ``SHARDANN_CRASH_POINT`` and commits version 3, dying at that point. A
fresh process (this one) must then find exactly version 2 or exactly version
3 — all acknowledged rows, no partial commit — and be able to write again.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from storage_support import NB, content

import shardann
from shardann.index import load_index
from shardann.storage import CRASH_ENV_VAR as ENV_VAR
from shardann.storage import CRASH_POINTS, IndexStore

NEW_FROM = CRASH_POINTS.index("manifest.after_publish")  # from here on, v3 is committed

TXN_CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    from shardann.storage import IndexStore
    path, point = sys.argv[1], sys.argv[2]

    def codes(ids, w):
        return ((ids[:, None] * 7 + np.arange(w)[None, :] * 13) % 256).astype(np.uint8)

    store = IndexStore.open(path)
    cs, nlist = store.code_size, store.nlist
    a = store.transaction()
    ids = np.arange(50000, 50100)
    a.add(ids % nlist, ids, codes=codes(ids, cs))
    a.delete(np.arange(10))
    store = a.commit()
    print("ACK", store.version, flush=True)
    os.environ["SHARDANN_CRASH_POINT"] = point
    b = store.transaction()
    ids = np.arange(60000, 60100)
    b.add(ids % nlist, ids, codes=codes(ids, cs))
    ids = np.arange(60100, 60200)
    b.add(ids % nlist, ids, codes=codes(ids, cs))
    b.delete(np.r_[np.arange(10, 20), np.arange(50000, 50005)])
    store = b.commit()
    print("ACK", store.version, flush=True)
""")

SAVE_CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    import shardann
    from shardann.bench.datasets import synthetic_split
    path, point, dump = sys.argv[1], sys.argv[2], sys.argv[3]

    def packed(index):
        sizes, ids, data = index.to_state().lists
        return {"sizes": sizes, "ids": ids, "codes": data["codes"]}

    xb, xq, xt = synthetic_split(2000, 40, 16, nt=1500, seed=7)
    index = shardann.open_index(path)
    index.remove_ids(np.arange(10))
    index.add(xb[:100] * 1.01, ids=np.arange(50000, 50100))
    np.savez(dump + "-v2.npz", **packed(index))
    index.save(path)
    print("ACK 2", flush=True)
    other = shardann.IVFPQIndex(16, 16, 4, 8, "l2", seed=1, niter=4, pq_niter=4).train(xt)
    other.add(xb[:700], ids=np.arange(70000, 70700))
    np.savez(dump + "-v3.npz", **packed(other))
    os.environ["SHARDANN_CRASH_POINT"] = point
    other.save(path)
    print("ACK 3", flush=True)
""")

TXN_POINTS = ["segment.before_write", "segment.row_group", "segment.after_write",
              "segment.before_write@2", "segment.row_group@2", "segment.after_write@2",
              "tombstone.before_write", "tombstone.after_write", "commit.before_manifest",
              "manifest.after_tmp_write", "manifest.after_publish", "commit.after_publish"]
SAVE_POINTS = ["codebooks.before_write", "codebooks.after_write", "segment.before_write",
               "segment.row_group", "segment.after_write", "commit.before_manifest",
               "manifest.after_tmp_write", "manifest.after_publish", "commit.after_publish"]


def _codes(ids, w):
    return ((ids[:, None] * 7 + np.arange(w)[None, :] * 13) % 256).astype(np.uint8)


def _expected_txn(base, nlist, cs):
    v2 = {k: v for k, v in base.items() if k >= 10}
    for i in range(50000, 50100):
        v2[i] = (i % nlist, _codes(np.array([i]), cs)[0].tobytes())
    v3 = {k: v for k, v in v2.items() if not (10 <= k < 20 or 50000 <= k < 50005)}
    for i in range(60000, 60200):
        v3[i] = (i % nlist, _codes(np.array([i]), cs)[0].tobytes())
    return {2: v2, 3: v3}


def _from_dump(path):
    with np.load(path) as z:
        return content((z["sizes"], z["ids"], {"codes": z["codes"]}))


@pytest.fixture(scope="module")
def base_store(tmp_path_factory, make_index):
    path = tmp_path_factory.mktemp("crash") / "base"
    store = IndexStore.create(path, make_index("ivfpq"))
    return path, content(store), store.nlist, store.code_size


def _run(script, path, point, *extra):
    env = dict(os.environ)
    env.pop(ENV_VAR, None)
    return subprocess.run([sys.executable, "-c", script, str(path), point, *extra],
                          capture_output=True, text=True, env=env, timeout=600)


def _check_after_crash(path, point, expected):
    """Open in this (fresh) process: exactly old or exactly new, then keep working."""
    base_point = point.partition("@")[0]
    want_version = 3 if CRASH_POINTS.index(base_point) >= NEW_FROM else 2
    store = IndexStore.open(path)
    assert store.version == want_version, (point, store.versions())
    assert content(store) == expected[want_version], point
    assert store.ntotal == len(expected[want_version])
    assert store.verify()["ntotal"] == store.ntotal
    index = load_index(store)
    assert index.ntotal == store.ntotal
    index.search(np.zeros((1, index.d), np.float32), 5)
    # the store is not wedged: another commit lands on top, and vacuum clears the debris
    t = store.transaction()
    t.delete([next(iter(expected[want_version]))])
    after = t.commit()
    assert after.version == want_version + 1 and after.ntotal == store.ntotal - 1
    after.vacuum(keep=1, grace_seconds=0)
    root = str(path)
    live = {s["path"] for s in after.manifest["files"]["segments"]}
    assert {f"segments/{n}" for n in os.listdir(os.path.join(root, "segments"))} == live
    assert IndexStore.open(path).verify()["ntotal"] == after.ntotal


@pytest.mark.parametrize("point", TXN_POINTS)
def test_sigkill_inside_a_transaction_commit(tmp_path, base_store, point):
    base_path, base, nlist, cs = base_store
    path = tmp_path / "idx"
    shutil.copytree(base_path, path)
    proc = _run(TXN_CHILD, path, point)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split("\n")[0] == "ACK 2" and "ACK 3" not in proc.stdout
    _check_after_crash(path, point, _expected_txn(base, nlist, cs))


@pytest.mark.parametrize("point", SAVE_POINTS)
def test_sigkill_inside_index_save(tmp_path, base_store, point):
    base_path = base_store[0]
    path = tmp_path / "idx"
    shutil.copytree(base_path, path)
    dump = str(tmp_path / "expected")
    proc = _run(SAVE_CHILD, path, point, dump)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split("\n")[0] == "ACK 2" and "ACK 3" not in proc.stdout
    expected = {2: _from_dump(dump + "-v2.npz"), 3: _from_dump(dump + "-v3.npz")}
    # version 2 opens as a working index with its own codebooks whatever happened to 3
    index = shardann.open_index(path, version=2)
    assert index.ntotal == NB - 10 + 100
    _check_after_crash(path, point, expected)


def test_crash_points_cover_every_file_write():
    """Every point the store defines is exercised by one of the scenarios above."""
    used = {p.partition("@")[0] for p in TXN_POINTS + SAVE_POINTS}
    assert used == set(CRASH_POINTS)
