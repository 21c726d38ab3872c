"""Crash safety of ingest: SIGKILL the job (driver, and with it its Ray) at points in
every stage, run it again with the same arguments, and check that the index is
always the old version or the complete new one, the rerun finishes it without
redoing finished work, and no id is ever committed twice."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
from ingest_support import (
    TRAIN,
    assert_same_calibration,
    assert_same_index,
    data,
    reference,
    write_mixed,
)

from shardann.distributed import ingest
from shardann.index import load_index
from shardann.storage import CRASH_ENV_VAR, IndexStore

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_local")]

N_A, N_B = 6000, 6000
OPTS = {**TRAIN, "block_rows": 1000, "merge_bytes": 32 << 10}

CHILD = textwrap.dedent("""
    import json, sys
    import ray
    from shardann.distributed import ingest
    path, inputs, tmp, opts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, _temp_dir=tmp)
    s = ingest(path, inputs, **opts)
    print("DONE", s.version, flush=True)
""")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    x = data(N_A + N_B, seed=4)
    a = tmp_path_factory.mktemp("a")
    b = tmp_path_factory.mktemp("b")
    write_mixed(a, x[:N_A], [2500, 3500], row_groups=[600, 1000])
    write_mixed(b, x[N_A:], [4000, 2000], encodings=("list", "binary"), row_groups=[1500])
    return x, str(a), str(b)


def _ray_processes(tag):
    """pids of processes whose command line mentions ``tag`` (the child's Ray temp dir)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if tag.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def _kill_child(path, inputs, point, opts):
    """Run the ingest in a fresh process (with its own Ray) that SIGKILLs itself at ``point``."""
    import json

    tmp = tempfile.mkdtemp(prefix="sa-ray-", dir="/tmp")
    env = {**os.environ, CRASH_ENV_VAR: point}
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, path, inputs, tmp, json.dumps(opts)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout,
                                                    proc.stderr[-3000:])
        # the child's Ray processes share its fate (no orphans left running)
        deadline = time.monotonic() + 20
        while _ray_processes(tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _ray_processes(tmp)
        for pid in left:  # ours: clean up before failing
            os.kill(pid, signal.SIGKILL)
        assert not left, f"Ray processes outlived the killed ingest: {left}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Each case starts a Ray runtime in a child process (10-40 s here); the default suite
# kills in the encode stage of a create and right after an append's commit point,
# the rest is opt-in (-m slow). The in-process tests below cover more points cheaply.
CASES = [
    ("create", "ingest.block_done@2"),
    ("append", "manifest.after_publish"),
    pytest.param("create", "ingest.range_done@2", marks=pytest.mark.slow),
    pytest.param("create", "manifest.after_publish", marks=pytest.mark.slow),
    pytest.param("create", "commit.before_manifest", marks=pytest.mark.slow),
    pytest.param("append", "ingest.encoded", marks=pytest.mark.slow),
    pytest.param("create", "ingest.encoded", marks=pytest.mark.slow),
    pytest.param("create", "manifest.after_tmp_write", marks=pytest.mark.slow),
    pytest.param("create", "ingest.committed", marks=pytest.mark.slow),
    pytest.param("append", "ingest.block_done@3", marks=pytest.mark.slow),
    pytest.param("append", "ingest.range_done@1", marks=pytest.mark.slow),
    pytest.param("append", "commit.before_manifest", marks=pytest.mark.slow),
    pytest.param("append", "ingest.committed", marks=pytest.mark.slow),
]
#: from here on the killed job had published its version
PUBLISHED = ("manifest.after_publish", "ingest.committed")


@pytest.mark.parametrize("mode,point", CASES)
def test_kill_and_rerun(tmp_path, inputs, mode, point):
    x, dir_a, dir_b = inputs
    path = str(tmp_path / "idx")
    if mode == "create":
        target, opts, base, want_rows = dir_a, OPTS, 0, N_A
    else:
        ingest(path, dir_a, **OPTS)
        target, opts, base, want_rows = dir_b, {"progress": False, "block_rows": 1000,
                                                "merge_bytes": 32 << 10}, 1, N_A + N_B
    _kill_child(path, target, point, opts)

    published = point.split("@")[0] in PUBLISHED
    if IndexStore.exists(path):
        store = IndexStore.open(path)
        assert store.version == base + published
        assert store.ntotal == (want_rows if published else N_A)  # new, or the old version
    else:
        assert mode == "create" and not published

    s = ingest(path, target, **opts)
    assert s.version == base + 1
    assert s.already_committed == published
    assert IndexStore.open(path).versions() == list(range(1, base + 2))
    if point.startswith("ingest.block_done"):
        assert s.resumed_blocks >= int(point.split("@")[1])
    assert_same_index(path, x[:want_rows])
    # no debris: every segment file is named by the manifest
    store = IndexStore.open(path)
    named = {os.path.basename(seg["path"]) for seg in store.manifest["files"]["segments"]}
    if base:
        named |= {os.path.basename(seg["path"]) for seg in
                  IndexStore.open(path, version=1).manifest["files"]["segments"]}
    assert set(os.listdir(os.path.join(path, "segments"))) == named
    # and the job dir holds only the record of the finished job
    assert os.listdir(os.path.join(path, "_ingest", s.job_id)) == ["committed.json"]
    # a third run is a no-op
    assert ingest(path, target, **opts).already_committed


class _Stop(Exception):
    pass


def _stop_at(monkeypatch, point):
    """Make the driver raise at ``point`` ("name@n"): an interruption without SIGKILL."""
    from shardann.distributed import _ingest_commit, _ingest_encode, _ingest_merge

    name, _, nth = point.partition("@")
    hits = {"n": 0}

    def stop(where):
        if where == name:
            hits["n"] += 1
            if hits["n"] >= int(nth or 1):
                raise _Stop(where)

    for mod in (_ingest_encode, _ingest_merge, _ingest_commit):  # the driver's stages
        monkeypatch.setattr(mod, "crash_point", stop)


@pytest.mark.parametrize("point", ["ingest.block_done@3", "ingest.encoded",
                                   "ingest.range_done@3", "ingest.before_commit"])
def test_interrupted_and_resumed(tmp_path, inputs, monkeypatch, point):
    """Stopped by an exception at each stage, the job leaves the index untouched and a
    rerun finishes it, reusing the finished blocks and ranges."""
    x, dir_a, dir_b = inputs
    path = str(tmp_path / "idx")
    ingest(path, dir_a, **OPTS)
    opts = {"progress": False, "block_rows": 1000, "merge_bytes": 32 << 10}
    with monkeypatch.context() as m:
        _stop_at(m, point)
        with pytest.raises(_Stop):
            ingest(path, dir_b, **opts)
    store = IndexStore.open(path)
    assert (store.version, store.ntotal) == (1, N_A)
    s = ingest(path, dir_b, **opts)
    assert (s.version, s.vectors, s.already_committed) == (2, N_B, False)
    if point != "ingest.block_done@3":
        assert s.resumed_blocks == s.blocks
    else:
        assert s.resumed_blocks >= 3
    assert_same_index(path, x)
    # the calibration set drawn before the stop and the blocks' neighbours found
    # before it: as two local adds make it
    ref = reference(path, x[:N_A], version=1)
    ref.add(x[N_A:], ids=np.arange(N_A, N_A + N_B))
    assert_same_calibration(path, ref._cal)


def test_changed_index_restarts_the_job(tmp_path, inputs, monkeypatch):
    """If the index moved on while a job was stopped, the job starts over (fresh ids)."""
    x, dir_a, dir_b = inputs
    path = str(tmp_path / "idx")
    ingest(path, dir_a, **OPTS)
    opts = {"progress": False, "block_rows": 1000}
    with monkeypatch.context() as m:
        _stop_at(m, "ingest.encoded")
        with pytest.raises(_Stop):
            ingest(path, dir_b, **opts)
    # someone else appends meanwhile
    store = IndexStore.open(path)
    extra = x[:5] * 1.01
    model = load_index(store, lists=np.zeros(0, np.int64))
    list_no, cols = model.encode(model.prepare(extra))
    txn = store.transaction()
    txn.add(list_no, np.arange(N_A, N_A + 5), **cols)
    txn.commit()
    s = ingest(path, dir_b, **opts)
    assert s.version == 3 and s.resumed_blocks == 0 and s.vectors == N_B
    ids = np.sort(IndexStore.open(path).read_lists()[1])
    np.testing.assert_array_equal(ids, np.arange(N_A + 5 + N_B))  # ids after the others'
    assert IndexStore.open(path).verify()["duplicate_live_ids"] == 0


def test_concurrent_run_of_the_same_job_is_refused(tmp_path, inputs):
    from shardann.distributed._ingest_job import _Job
    from shardann.distributed._ingest_state import JobLock
    from shardann.errors import IngestJobBusyError

    x, dir_a, _ = inputs
    path = str(tmp_path / "idx")
    # hold the job's lock as a running job would, then start the same job
    job = _Job(path, dir_a, progress=False, **_job_opts(OPTS))
    os.makedirs(job.job_dir)
    with JobLock(job.job_dir, job.job_id):
        with pytest.raises(IngestJobBusyError, match="running in another process"):
            ingest(path, dir_a, **OPTS)
    assert not IndexStore.exists(path)


def _job_opts(opts):
    import inspect
    params = inspect.signature(ingest).parameters
    out = {k: p.default for k, p in params.items()
           if p.default is not inspect.Parameter.empty and k != "progress"}
    out.update({k: v for k, v in opts.items() if k != "progress"})
    return out
