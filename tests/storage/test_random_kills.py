"""A writer process SIGKILLed at a random moment of its add/remove + ``save(merge=True)``,
many times over (slow; ``SHARDANN_KILL_TRIALS``, default 30): after every kill the store
opens at a whole version, the previous one or the new one, never a mix, with exactly that
version's rows, and ``verify`` finds nothing wrong.

Complements tests/storage/test_crash.py, which kills at each named write point: here the
moments are not chosen by the code under test."""

import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

import shardann
from shardann.storage import IndexStore

pytestmark = pytest.mark.slow

ADDED, REMOVED = 3000, 40
WRITER = r"""
import sys, numpy as np, shardann
root, step = sys.argv[1], int(sys.argv[2])
idx = shardann.open_index(root)
print("ready", flush=True)
if step % 3 == 2:  # a remove of 40 live ids (disjoint ranges)
    idx.remove_ids(np.arange(step * 40, step * 40 + 40))
else:
    idx.add(np.random.default_rng(step).standard_normal((3000, 32)).astype("float32"))
idx.save(root, merge=True)
print("saved", flush=True)
"""


def _writer(root, step):
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(step)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_writers_killed_at_random_moments_leave_whole_versions(tmp_path):
    trials = int(os.environ.get("SHARDANN_KILL_TRIALS", "30"))
    root = tmp_path / "idx"
    xb = np.random.default_rng(0).standard_normal((5000, 32)).astype("float32")
    index = shardann.IVFPQIndex(32, 32, 8, keep_vectors=True)
    index.train(xb)
    index.add(xb)
    index.save(root)

    p = _writer(root, 0)  # one uncut run times the add + save
    t0 = time.monotonic()
    assert p.stdout.readline().strip() == "saved"
    t_save = time.monotonic() - t0
    p.wait()

    outcomes = {"previous": 0, "new": 0}
    for step in range(1, trials + 1):
        before = IndexStore.open(root).version
        n_before = shardann.open_index(root).ntotal
        p = _writer(root, step)
        time.sleep(random.Random(step).uniform(0, t_save))
        p.kill()
        p.wait()
        store = IndexStore.open(root)
        report = store.verify()  # raises CorruptIndexError naming any damaged file
        assert report["duplicate_live_ids"] == 0
        n_after = shardann.open_index(root).ntotal
        if store.version == before:
            outcomes["previous"] += 1
            assert n_after == n_before
        else:
            outcomes["new"] += 1
            assert store.version == before + 1
            assert n_after == n_before + (-REMOVED if step % 3 == 2 else ADDED)
    print(f"{trials} writers killed within their {t_save:.2f} s add+save: {outcomes}")
