"""Chaos (slow): searches from two clients while another process commits new versions
and shard actors are SIGKILLed at random. Every answer must equal the local index at
the served version; after an explicit reload every shard serves the newest one.

``SHARDANN_CHAOS_SECONDS`` sets how long the faults go on (default 60).
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import ray
from dist_support import assert_same, build_local

import shardann
from shardann.distributed import ShardedIndex
from shardann.storage import IndexStore

pytestmark = [pytest.mark.ray, pytest.mark.slow]

COMMITTER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import shardann
    path, stop = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(7)
    while not os.path.exists(stop):
        index = shardann.open_index(path)
        if rng.random() < 0.7:
            index.add(rng.standard_normal((200, index.d)).astype(np.float32))
        else:
            index.remove_ids(rng.choice(index.next_id, 50, replace=False))
        print(index.save(path, merge=True), flush=True)
        time.sleep(0.3)
""")


def _alive(actor, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return ray.get(actor.stats.remote(), timeout=5)
        except Exception:
            time.sleep(0.2)
    raise AssertionError("a killed shard actor did not restart")


def test_searches_stay_right_through_kills_and_foreign_commits(ray_local, data, tmp_path):
    xb, xq, xt = data
    seconds = float(os.environ.get("SHARDANN_CHAOS_SECONDS", 60))
    path = tmp_path / "idx"
    local = build_local(path, xt, xb[:3000])
    served = IndexStore.open(path).version
    want = local.search(xq, 10, nprobe=6)
    stop_file = tmp_path / "stop"
    counts = {"searches": 0, "failed": 0, "wrong": 0, "kills": 0}
    errors = []
    lock = threading.Lock()
    done = threading.Event()

    with ShardedIndex.open(path, num_shards=2, replicas=2) as sharded:
        committer = subprocess.Popen(
            [sys.executable, "-c", COMMITTER, str(path), str(stop_file)],
            stdout=subprocess.PIPE, text=True)

        def client(seed):
            rng = random.Random(seed)
            while not done.is_set():
                rows = sorted(rng.sample(range(len(xq)), rng.randint(1, 20)))
                try:
                    got = sharded.search(xq[rows], 10, nprobe=6)
                except Exception as exc:  # noqa: BLE001 — every failure is counted
                    with lock:
                        counts["failed"] += 1
                        errors.append(repr(exc))
                    continue
                ok = (np.array_equal(got[1], want[1][rows])
                      and np.array_equal(got[0], want[0][rows]))
                with lock:
                    counts["searches"] += 1
                    counts["wrong"] += not ok

        def killer():
            rng = random.Random(3)
            actors = [a for g in sharded._actors for a in g]
            while not done.is_set():
                victim = rng.choice(actors)
                pid = _alive(victim)["pid"]  # one actor down at a time: replicas=2
                os.kill(pid, signal.SIGKILL)
                counts["kills"] += 1
                done.wait(rng.uniform(0.5, 2.0))
                _alive(victim)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        threads.append(threading.Thread(target=killer))
        for t in threads:
            t.start()
        time.sleep(seconds)
        done.set()
        for t in threads:
            t.join(120)
        stop_file.touch()
        out, _ = committer.communicate(timeout=120)
        commits = [int(v) for v in out.split()]

        print(f"\nchaos {seconds:.0f}s: {counts['searches']} searches, {counts['failed']} "
              f"failed, {counts['wrong']} wrong; {counts['kills']} SIGKILLs; "
              f"{len(commits)} foreign commits (v{served} -> v{max(commits, default=served)})")
        assert committer.returncode == 0
        assert counts["failed"] == 0, errors[:5]
        assert counts["wrong"] == 0
        # a kill waits for the last victim to be back (about 1-3 s here)
        assert counts["kills"] >= seconds / 6 and len(commits) >= 10, (counts, len(commits))
        assert counts["searches"] > 100
        assert sharded.version == served  # no switch without a reload

        newest = sharded.reload()
        assert newest == max(commits) == IndexStore.open(path).version
        want_new = shardann.open_index(path).search(xq, 10, nprobe=6)
        for _ in range(4):
            assert_same(sharded.search(xq, 10, nprobe=6), want_new)
        assert {s["version"] for s in sharded.stats()["shards"]} == {newest}
