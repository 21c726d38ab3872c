"""Stores on object storage: a real S3-compatible server (moto's standalone server,
its own process on 127.0.0.1) and ``memory://``. Commits without rename: a version
is published by a create-if-absent put of its manifest."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest
from storage_support import NB, content, search_kw

import shardann
from shardann.storage import CRASH_ENV_VAR, IndexStore, list_versions, location


def _same_search(a, b, xq):
    kw = search_kw(a)
    Da, Ia = a.search(xq, 10, **kw)
    Db, Ib = b.search(xq, 10, **kw)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_array_equal(Da, Db)


def _objects(moto_s3, bucket):
    """{key: bytes} of every object in ``bucket``."""
    import pyarrow.fs as pafs
    from s3_support import ACCESS_KEY, REGION, SECRET_KEY

    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{moto_s3.port}", scheme="http",
                           access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(bucket, recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(bucket) + 1:]] = f.read()
    return out


def test_moto_honours_if_none_match(s3_env):
    """The server refuses a second create-only put (S3 ``If-None-Match: *``): what the
    commit protocol relies on. Checked with obstore, the library the commit uses."""
    import obstore
    from obstore.exceptions import AlreadyExistsError
    from obstore.store import from_url

    store = from_url(f"s3://{s3_env.new_bucket()}")
    obstore.put(store, "m/v1.json", b"first", mode="create")
    with pytest.raises(AlreadyExistsError):
        obstore.put(store, "m/v1.json", b"second", mode="create")
    assert bytes(obstore.get(store, "m/v1.json").bytes()) == b"first"


@pytest.mark.parametrize("kind,keep", [("ivfpq", False), ("ivfpq", True), ("ivfflat", False)])
def test_s3_round_trip_equals_local(tmp_path, s3_env, make_index, sdata, kind, keep):
    index = make_index(kind, keep_vectors=keep)
    uri = f"s3://{s3_env.new_bucket()}/indexes/a"
    assert index.save(uri) == 1
    index.save(tmp_path / "local")
    remote, local = shardann.open_index(uri), shardann.open_index(tmp_path / "local")
    _same_search(remote, local, sdata[1])
    _same_search(remote, index, sdata[1])
    rs, ls = IndexStore.open(uri), IndexStore.open(tmp_path / "local")
    assert content(rs) == content(ls)
    for name, arr in ls.trained_arrays().items():
        np.testing.assert_array_equal(rs.trained_arrays()[name], arr)
    assert rs.path == uri and rs.verify()["ntotal"] == NB
    # only the lists asked for are read, and the same rows come back
    lists = np.arange(0, rs.nlist, 3)
    assert content(rs.read_lists(lists)) == content(ls.read_lists(lists))
    # a second version on top of the first, as locally
    remote.remove_ids(np.arange(10))
    assert remote.save(uri) == 2
    assert shardann.open_index(uri).ntotal == NB - 10


def test_uri_forms_and_explicit_storage_options(moto_s3, make_index, sdata):
    """No environment at all: endpoint and credentials from ``storage_options``."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert var not in os.environ
    index = make_index("ivfpq")
    uri = f"s3://{moto_s3.new_bucket()}/x/"  # a trailing slash names the same store
    index.save(uri, storage_options=moto_s3.options)
    back = shardann.open_index(uri.rstrip("/"), storage_options=moto_s3.options)
    _same_search(back, index, sdata[1])
    with pytest.raises(ValueError, match="plain HTTP"):
        IndexStore.open(uri, storage_options={**moto_s3.options, "allow_http": False})


def test_save_to_s3_creates_no_local_directory(tmp_path, monkeypatch, s3_env, make_index):
    monkeypatch.chdir(tmp_path)
    make_index("ivfpq").save(f"s3://{s3_env.new_bucket()}/x")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("uri", ["foo://x", "http://example.com/idx", "ftp://h/p", "s3://"])
def test_unsupported_scheme_is_a_clear_error(tmp_path, monkeypatch, make_index, uri):
    monkeypatch.chdir(tmp_path)
    index = make_index("ivfpq")
    with pytest.raises(ValueError, match="unsupported storage URI scheme|names no bucket"):
        index.save(uri)
    with pytest.raises(ValueError):
        shardann.open_index(uri)
    with pytest.raises(ValueError):
        IndexStore.create(uri, index)
    assert os.listdir(tmp_path) == []


def test_ingest_into_a_uri_makes_no_local_directory(tmp_path, monkeypatch):
    """A URI is never taken for a local path (ingest into s3:// itself: tests/ingest/
    test_ingest_s3.py); a backend that cannot commit is refused before any work."""
    from shardann.distributed import IngestJob

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((10, 8), np.float32))
    with pytest.raises(ValueError, match="single_writer"):
        IngestJob("s3://bucket/idx", [str(tmp_path / "x.npy")], nlist=2, M=2,
                  storage_options={"conditional_writes": False})
    with pytest.raises(ValueError, match="unsupported storage URI scheme"):
        IngestJob("foo://bucket/idx", [str(tmp_path / "x.npy")], nlist=2, M=2)
    assert os.listdir(tmp_path) == ["x.npy"]


def test_file_uri_is_the_local_directory(tmp_path, make_index, sdata):
    index = make_index("ivfpq")
    index.save(f"file://{tmp_path}/f")
    assert list_versions(tmp_path / "f") == [1]
    _same_search(shardann.open_index(tmp_path / "f"), index, sdata[1])
    assert location(f"file://{tmp_path}/f").local


def test_memory_store_transactions_compact_vacuum_verify(make_index, sdata):
    uri = f"memory://t-{uuid.uuid4().hex}"
    index = make_index("ivfpq")
    store = IndexStore.create(uri, index)
    txn = store.transaction()
    ids = np.arange(50000, 50040)
    txn.add(ids % store.nlist, ids, codes=np.full((40, store.code_size), 7, np.uint8))
    txn.delete(np.arange(20))
    v2 = txn.commit()
    assert v2.version == 2 and v2.ntotal == NB + 20
    v3 = v2.compact()
    assert v3.ntotal == NB + 20 and len(v3.manifest["files"]["segments"]) == 1
    assert content(v3) == content(v2)
    report = v3.vacuum(keep=1, grace_seconds=0)
    assert report["removed_versions"] == [1, 2]
    assert IndexStore.open(uri).verify()["ntotal"] == NB + 20
    # the live files of version 3 all survived
    assert set(location(uri).listdir("segments")) == {
        s["path"].split("/")[1] for s in v3.manifest["files"]["segments"]}


def test_memory_store_conflict_and_no_conditional_writes(make_index):
    index = make_index("ivfpq")
    uri = f"memory://c-{uuid.uuid4().hex}"
    store = IndexStore.create(uri, index)
    a, b = store.transaction(), store.transaction()
    a.delete([1])
    b.delete([2])
    a.commit()
    with pytest.raises(shardann.CommitConflictError, match="version 2 was committed"):
        b.commit()
    # a backend without create-if-absent writes: refused unless single-writer mode
    plain = f"memory://p-{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match="single_writer"):
        IndexStore.create(plain, index, storage_options={"conditional_writes": False})
    assert location(plain).listdir() == []  # refused before writing anything
    opts = {"conditional_writes": False, "single_writer": True}
    s = IndexStore.create(plain, index, storage_options=opts)
    txn = IndexStore.open(plain, storage_options={"conditional_writes": False}).transaction()
    txn.delete([1])
    with pytest.raises(ValueError, match="single_writer"):
        txn.commit()
    assert IndexStore.open(plain, storage_options=opts).version == s.version == 1


def test_credentials_never_written_logged_or_in_errors(moto_s3, make_index, caplog):
    from s3_support import ACCESS_KEY, SECRET_KEY

    caplog.set_level(logging.DEBUG)
    bucket = moto_s3.new_bucket()
    uri = f"s3://{bucket}/idx"
    opts = moto_s3.options
    index = make_index("ivfpq")
    index.save(uri, storage_options=opts)
    store = IndexStore.open(uri, storage_options=opts)
    txn = store.transaction()
    txn.delete([3])
    txn.commit()
    messages = [repr(store), repr(store.location), str(store.manifest)]
    stale = store.transaction()
    stale.delete([4])
    for call, exc in [(stale.commit, shardann.CommitConflictError),
                      (lambda: IndexStore.open(uri, 99, storage_options=opts), FileNotFoundError),
                      (lambda: IndexStore.open(f"s3://{bucket}/none", storage_options=opts),
                       FileNotFoundError),
                      (lambda: IndexStore.open(f"s3://{bucket}-missing/i", storage_options=opts),
                       Exception)]:
        with pytest.raises(exc) as info:
            call()
        messages.append(str(info.value))
    messages.append(caplog.text)
    objects = _objects(moto_s3, bucket)
    assert any(k.startswith("idx/_manifests/") for k in objects)
    for secret in (SECRET_KEY, ACCESS_KEY):
        assert not any(secret in m for m in messages)
        assert not any(secret.encode() in data for data in objects.values())


# -- two writers, and writers killed mid-commit, on S3 -------------------------------------

RACER = textwrap.dedent("""
    import sys
    import numpy as np
    import shardann
    from shardann.storage import IndexStore
    uri, me, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for r in range(rounds):
        store = IndexStore.open(uri)
        txn = store.transaction()
        ids = 1_000_000 + (2 * r + me) * 100 + np.arange(20)
        txn.add(ids % store.nlist, ids, codes=np.full((20, store.code_size), me, np.uint8))
        txn.delete([2 * r + me])
        print("READY", r, store.version, flush=True)
        sys.stdin.readline()
        try:
            print("WON", r, txn.commit().version, flush=True)
        except shardann.CommitConflictError:
            print("CONFLICT", r, flush=True)
""")


def _race(uri, rounds):
    procs = [subprocess.Popen([sys.executable, "-c", RACER, uri, str(me), str(rounds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for me in (0, 1)]
    winners = []
    try:
        for r in range(rounds):
            ready = [p.stdout.readline().split() for p in procs]
            assert all(line[:2] == ["READY", str(r)] for line in ready), ready
            assert ready[0][2] == ready[1][2] == str(r + 1)  # both based on one version
            for p in procs:  # release both at once
                p.stdin.write("go\n")
                p.stdin.flush()
            out = [p.stdout.readline().split() for p in procs]
            won = [me for me, line in enumerate(out) if line[0] == "WON"]
            lost = [me for me, line in enumerate(out) if line[0] == "CONFLICT"]
            assert len(won) == 1 and len(lost) == 1, out  # one winner, one conflict
            assert out[won[0]][2] == str(r + 2)
            winners.append(won[0])
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(60)
    assert all(p.returncode == 0 for p in procs)
    return winners


def _expected_ids(winners):
    ids = set(range(NB))
    for r, me in enumerate(winners):
        ids.discard(2 * r + me)
        ids.update((1_000_000 + (2 * r + me) * 100 + np.arange(20)).tolist())
    return ids


@pytest.mark.parametrize("rounds", [5, pytest.param(50, marks=pytest.mark.slow)])
def test_two_processes_race_to_commit_on_s3(s3_env, make_index, rounds):
    uri = f"s3://{s3_env.new_bucket()}/race"
    IndexStore.create(uri, make_index("ivfpq"))
    winners = _race(uri, rounds)
    store = IndexStore.open(uri)
    assert store.version == rounds + 1
    assert [h["parent_version"] for h in store.history()] == [None] + list(range(1, rounds + 1))
    live = store.live_ids()
    assert live.size == np.unique(live).size == store.ntotal
    assert set(live.tolist()) == _expected_ids(winners)
    # every version is the winners' history up to it
    for r in range(rounds):
        old = set(IndexStore.open(uri, r + 2).live_ids().tolist())
        assert old == _expected_ids(winners[:r + 1])
    # the losers cleaned up: every segment in the bucket is named by some version
    named = {s["path"] for v in store.versions()
             for s in IndexStore.open(uri, v).manifest["files"]["segments"]}
    assert {f"segments/{n}" for n in location(uri).listdir("segments")} == named


KILLED = textwrap.dedent("""
    import sys
    import numpy as np
    from shardann.storage import IndexStore
    uri, trial = sys.argv[1], int(sys.argv[2])
    store = IndexStore.open(uri)
    txn = store.transaction()
    ids = 2_000_000 + trial * 1000 + np.arange(300)
    txn.add(ids % store.nlist, ids, codes=np.full((300, store.code_size), 1, np.uint8))
    txn.delete([trial])
    print("START", store.version, flush=True)
    print("DONE", txn.commit().version, flush=True)
""")


def _kill_trials(uri, plan, base_ids):
    """Run one committing writer per entry of ``plan`` on the store at ``uri`` whose
    newest version holds ``base_ids``: a crash point name (the writer kills itself
    there), or a delay in seconds after the writer starts its commit, when it is
    SIGKILLed. After each, a fresh open must find a whole version holding exactly
    its ids (none lost, duplicated or phantom). Returns how many commits landed."""
    version = IndexStore.open(uri).version
    expected = {version: set(base_ids)}
    landed = 0
    for trial, how in enumerate(plan):
        env = dict(os.environ)
        if isinstance(how, str):
            env[CRASH_ENV_VAR] = how
        p = subprocess.Popen([sys.executable, "-c", KILLED, uri, str(trial)], env=env,
                             stdout=subprocess.PIPE, text=True)
        if not isinstance(how, str):
            p.stdout.readline()  # START: the transaction is about to be written
            time.sleep(how)
            p.send_signal(signal.SIGKILL)
        p.communicate(timeout=120)
        store = IndexStore.open(uri)
        assert store.version in (version, version + 1), (how, store.version, version)
        if store.version == version + 1:
            new = expected[version] - {trial}
            expected[version + 1] = new | set((2_000_000 + trial * 1000
                                               + np.arange(300)).tolist())
            version += 1
            landed += 1
        live = store.live_ids()
        assert live.size == np.unique(live).size == store.ntotal
        assert set(live.tolist()) == expected[version]
        assert store.verify()["duplicate_live_ids"] == 0
    return landed


def test_writer_killed_at_commit_steps_on_s3(s3_env, make_index):
    uri = f"s3://{s3_env.new_bucket()}/kill"
    IndexStore.create(uri, make_index("ivfpq"))
    points = ["segment.row_group", "commit.before_manifest", "manifest.after_publish"]
    assert _kill_trials(uri, points, range(NB)) == 1  # only the last one had published
    report = IndexStore.open(uri).vacuum(keep=1, grace_seconds=0)
    assert report["removed_files"]  # the killed commits' files were garbage
    assert IndexStore.open(uri).verify()["ntotal"] == NB - 1 + 300


@pytest.mark.slow
def test_writer_sigkilled_at_random_points_on_s3(s3_env, make_index):
    from shardann.storage import CRASH_POINTS

    uri = f"s3://{s3_env.new_bucket()}/random-kill"
    IndexStore.create(uri, make_index("ivfpq"))
    # how long a commit takes here (START to exit), to spread the kills over it
    p = subprocess.Popen([sys.executable, "-c", KILLED, uri, "999"], stdout=subprocess.PIPE,
                         text=True)
    p.stdout.readline()
    t0 = time.perf_counter()
    out, _ = p.communicate(timeout=120)
    took = time.perf_counter() - t0
    assert "DONE 2" in out
    base = set(range(NB)) - {999} | set((2_000_000 + 999_000 + np.arange(300)).tolist())
    rng = np.random.default_rng(20)
    plan = [pt for pt in CRASH_POINTS if not pt.startswith("codebooks")]
    plan += rng.uniform(0.0, took, size=30).tolist()
    rng.shuffle(plan)
    landed = _kill_trials(uri, plan, base)
    assert 0 < landed < len(plan)
    live_before = IndexStore.open(uri).live_ids()
    IndexStore.open(uri).vacuum(keep=1, grace_seconds=0)
    after = IndexStore.open(uri)
    assert after.verify()["ntotal"] == live_before.size  # vacuum never removed a live file


def test_cache_dir_serves_a_reload_locally(tmp_path, s3_env, make_index):
    uri = f"s3://{s3_env.new_bucket()}/cached"
    IndexStore.save(uri, make_index("ivfpq"), row_group_rows=1)
    opts = {"cache_dir": str(tmp_path / "cache")}
    lists = np.arange(0, 16, 4)
    first = IndexStore.open(uri, storage_options=opts)
    want = content(first.read_lists(lists))
    cold = first.location.stats()
    again = IndexStore.open(uri, storage_options=opts)  # a new location: nothing in memory
    assert content(again.read_lists(lists)) == want
    warm = again.location.stats()
    manifest = len(location(uri).read("_manifests/v00000001.json"))
    assert cold["bytes_read"] > 2 * manifest
    assert warm["bytes_read"] == manifest and warm["read_requests"] == 1  # the manifest only
    # other lists are read from the store, and the cache never changes what is read
    assert content(again.read_lists([1, 2])) == content(IndexStore.open(uri).read_lists([1, 2]))


def test_object_stores_write_smaller_row_groups(tmp_path, s3_env):
    """A shard reads whole row groups by ranged GETs: object stores get row groups of
    about REMOTE_ROW_GROUP_ROWS rows (cut at list boundaries), local stores keep
    ROW_GROUP_ROWS; an explicit size wins."""
    from shardann.storage import ROW_GROUP_ROWS

    x = np.random.default_rng(0).standard_normal((20_000, 8)).astype(np.float32)
    index = shardann.IVFFlatIndex(8, nlist=32, seed=0)
    index.train(x)
    index.add(x)

    def groups(path, **kw):
        store = IndexStore.save(path, index, **kw)
        return sum(len(seg["row_groups"]) for seg in store.manifest["files"]["segments"])

    assert ROW_GROUP_ROWS >= 20_000 and groups(tmp_path / "local") == 1
    assert groups(f"s3://{s3_env.new_bucket()}/idx") == 3     # about 8192 rows each
    assert groups(f"s3://{s3_env.new_bucket()}/idx", row_group_rows=2000) >= 10
