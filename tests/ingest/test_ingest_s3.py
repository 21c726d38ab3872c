"""Ingest inputs on S3 (a real moto server process, ``moto_s3`` of tests/s3_support.py):
Parquet, .npy and
.fvecs from ``s3://`` globs build exactly the index the same local files build;
the job is named by the objects' paths, sizes and modification times, so a killed
job resumes."""

import os

import numpy as np
import pytest
from ingest_support import TRAIN, assert_same_index, data, write_mixed
from test_ingest_dataset import assert_same_store

from shardann.bench.datasets import write_fvecs
from shardann.distributed import IngestJob, InputError, ingest
from shardann.storage import IndexStore

# the S3 environment first: the Ray workers inherit it (AWS_ENDPOINT_URL, keys, ...)
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("s3_module_env", "ray_local")]

N = 8000


@pytest.fixture(scope="module")
def s3_module_env(moto_s3):
    """The standard AWS environment pointing at the moto server, for this module's
    Ray (started after it) and the child processes its tests start."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in moto_s3.env.items():
            mp.setenv(key, value)
        yield moto_s3


@pytest.fixture(scope="module")
def uploaded(moto_s3, tmp_path_factory):
    """The same vectors as local files and as objects of one bucket:
    Parquet (three encodings, several row groups) under emb/, .npy + .fvecs under arr/."""
    x = data(N, seed=21)
    local = tmp_path_factory.mktemp("local")
    (local / "emb").mkdir()
    (local / "arr").mkdir()
    write_mixed(local / "emb", x, [3000, 2500, 2500], row_groups=[700, 1200, None])
    np.save(local / "arr" / "a.npy", x[:5000])
    write_fvecs(str(local / "arr" / "b.fvecs"), x[5000:])
    bucket = moto_s3.new_bucket()
    for sub in ("emb", "arr"):
        for name in sorted(os.listdir(local / sub)):
            moto_s3.upload(str(local / sub / name), bucket, f"data/{sub}/{name}")
    # skipped by globs and prefixes alike, as a local .hidden file is
    moto_s3.upload(str(local / "emb" / "part-000.parquet"), bucket, "data/emb/.hidden.parquet")
    return x, str(local), bucket


def test_s3_parquet_equals_local(tmp_path, uploaded):
    x, local, bucket = uploaded
    ref = str(tmp_path / "local")
    ingest(ref, os.path.join(local, "emb", "*.parquet"), block_rows=1500, **TRAIN)
    got = str(tmp_path / "from_s3")
    s = ingest(got, f"s3://{bucket}/data/emb/*.parquet", block_rows=1500, **TRAIN)
    assert s.vectors == N and s.skipped_rows == 0
    assert_same_store(ref, got)
    assert_same_index(got, x)
    # a prefix ("directory") lists the same files
    job = IngestJob(str(tmp_path / "other"), f"s3://{bucket}/data/emb", **TRAIN)
    assert [f.path for f in job._job.plan.files] == [
        f"s3://{bucket}/data/emb/part-{i:03d}.parquet" for i in range(3)]


def test_s3_arrays_equal_local(tmp_path, uploaded):
    x, local, bucket = uploaded
    ref = str(tmp_path / "local")
    ingest(ref, [os.path.join(local, "arr", "a.npy"), os.path.join(local, "arr", "b.fvecs")],
           block_rows=1800, **TRAIN)
    got = str(tmp_path / "from_s3")
    ingest(got, [f"s3://{bucket}/data/arr/a.npy", f"s3://{bucket}/data/arr/b.fvecs"],
           block_rows=1800, **TRAIN)
    assert_same_store(ref, got)
    assert_same_index(got, x)


def test_s3_job_identity_and_errors(tmp_path, uploaded, moto_s3):
    x, local, bucket = uploaded
    path = str(tmp_path / "idx")
    uri = f"s3://{bucket}/data/arr/a.npy"
    first = IngestJob(path, uri, **TRAIN).job_id
    assert IngestJob(path, uri, **TRAIN).job_id == first  # same objects: same job (resume)
    # the object rewritten (other size): another job
    np.save(tmp_path / "a2.npy", x[:4000])
    moto_s3.upload(str(tmp_path / "a2.npy"), bucket, "data/arr/a.npy")
    try:
        assert IngestJob(path, uri, **TRAIN).job_id != first
    finally:
        moto_s3.upload(os.path.join(local, "arr", "a.npy"), bucket, "data/arr/a.npy")
    with pytest.raises(InputError, match="matches no files"):
        IngestJob(path, f"s3://{bucket}/nothing/*.parquet", **TRAIN)
    with pytest.raises(InputError, match="no such file or prefix"):
        IngestJob(path, f"s3://{bucket}/data/missing.npy", **TRAIN)
    assert not IndexStore.exists(path)


@pytest.mark.slow
def test_s3_killed_job_resumes(tmp_path, uploaded):
    """SIGKILLed after two encoded blocks, the same call resumes: it skips them."""
    from test_resume import _kill_child

    x, _, bucket = uploaded
    path = str(tmp_path / "idx")
    opts = {**TRAIN, "block_rows": 1000, "merge_bytes": 32 << 10}
    inputs = f"s3://{bucket}/data/emb/*.parquet"
    _kill_child(path, inputs, "ingest.block_done@2", opts)
    s = ingest(path, inputs, **opts)
    assert s.resumed_blocks >= 2 and s.version == 1
    assert_same_index(path, x)


# -- ingest INTO a store on S3 -----------------------------------------------------------------
def _store_objects(uri):
    """Top-level names and segment names under the store ``uri``."""
    from shardann.storage import location

    loc = location(uri)
    return set(loc.listdir()), set(loc.listdir("segments"))


def test_ingest_into_s3_equals_local(tmp_path, uploaded, monkeypatch):
    """Parquet from s3:// into an s3:// store: the same index as a local ingest, found
    committed (not run twice) from another work directory; the scratch stays local."""
    import shardann

    x, local, bucket = uploaded
    opts = {**TRAIN, "block_rows": 1500, "merge_bytes": 32 << 10}
    ref = str(tmp_path / "local")
    ingest(ref, os.path.join(local, "emb", "*.parquet"), **opts)
    uri = f"s3://{bucket}/stores/idx"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the default work dir
    inputs = f"s3://{bucket}/data/emb/*.parquet"
    s = ingest(uri, inputs, **opts)
    assert (s.path, s.version, s.mode, s.vectors) == (uri, 1, "create", N)
    assert s.segments > 1 and s.recall is not None and s.recall > 0.5
    assert_same_store(ref, uri)
    assert_same_index(uri, x)
    q = data(20, seed=5)
    for a, b in zip(shardann.open_index(ref).search(q, 10, nprobe=4),
                    shardann.open_index(uri).search(q, 10, nprobe=4), strict=True):
        np.testing.assert_array_equal(a, b)
    # the store holds the index's files only, every segment named by the manifest
    top, segments = _store_objects(uri)
    manifest = IndexStore.open(uri).manifest
    assert top == {"_manifests", "segments", "calibration",
                   manifest["files"]["codebooks"]["path"]}
    assert set(_store_objects(uri + "/calibration")[0]) == {
        os.path.basename(manifest["files"]["calibration"]["path"])}
    assert segments == {os.path.basename(e["path"]) for e in manifest["files"]["segments"]}
    # the scratch went to ~/.cache/shardann/ingest/<store>/<job>: only the record is left
    (store_dir,) = os.listdir(tmp_path / "cache" / "shardann" / "ingest")
    assert store_dir.startswith(f"s3-{bucket}-stores-idx-")
    jobs = tmp_path / "cache" / "shardann" / "ingest" / store_dir
    assert os.listdir(jobs) == [s.job_id]
    assert os.listdir(jobs / s.job_id) == ["committed.json"]
    assert ingest(uri, inputs, **opts).already_committed
    # another machine (another work directory) finds the job in the store: not run twice
    again = ingest(uri, inputs, work_dir=str(tmp_path / "elsewhere"), **opts)
    assert (again.already_committed, again.version, again.vectors) == (True, 1, N)
    assert IndexStore.open(uri).versions() == [1]


def test_cli_ingest_into_s3_then_append_resumes(tmp_path, uploaded):
    """``shardann ingest s3://…`` creates the store; an append stopped after two merged
    ranges leaves version 1 current and, rerun, reuses every block; same as local."""
    from test_resume import _Stop, _stop_at

    from shardann.cli import main

    x, local, bucket = uploaded
    uri = f"s3://{bucket}/stores/cli"
    work = str(tmp_path / "work")
    a_npy, b_fvecs = f"s3://{bucket}/data/arr/a.npy", f"s3://{bucket}/data/arr/b.fvecs"
    assert main(["ingest", uri, a_npy, "--nlist", str(TRAIN["nlist"]), "--M", str(TRAIN["M"]),
                 "--niter", "6", "--block-rows", "1000", "--work-dir", work, "--no-progress",
                 "--log-level", "warning"]) == 0
    opts = {"block_rows": 1000, "merge_bytes": 32 << 10, "work_dir": work, "progress": False}
    with pytest.MonkeyPatch.context() as m:
        _stop_at(m, "ingest.range_done@2")
        with pytest.raises(_Stop):
            ingest(uri, b_fvecs, **opts)
    store = IndexStore.open(uri)
    assert (store.version, store.ntotal) == (1, 5000)
    s = ingest(uri, b_fvecs, **opts)
    assert (s.version, s.mode, s.vectors, s.already_committed) == (2, "append", 3000, False)
    assert s.resumed_blocks == s.blocks
    assert_same_index(uri, x)
    ref = str(tmp_path / "ref")
    ingest(ref, os.path.join(local, "arr", "a.npy"), block_rows=1000, **TRAIN)
    ingest(ref, os.path.join(local, "arr", "b.fvecs"), **opts | {"work_dir": None})
    assert_same_store(ref, uri)
    # no debris of the stopped run: every segment is named by a version
    named = {os.path.basename(e["path"]) for v in (1, 2)
             for e in IndexStore.open(uri, v).manifest["files"]["segments"]}
    assert _store_objects(uri)[1] == named


def test_dataset_into_s3_equals_local(tmp_path, uploaded):
    """A ray.data.Dataset into an s3:// store (staged in the work directory); a named
    job run again from another work directory is found committed in the store."""
    import ray.data

    x = uploaded[0][:3000]
    bucket = uploaded[2]
    opts = {**TRAIN, "column": "data", "block_rows": 1000, "job_id": "emb-2024"}
    ref = str(tmp_path / "ref")
    ingest(ref, ray.data.from_numpy(x), **opts)
    uri = f"s3://{bucket}/stores/from-dataset"
    s = ingest(uri, ray.data.from_numpy(x), work_dir=str(tmp_path / "w1"), **opts)
    assert (s.version, s.vectors, s.job_id) == (1, 3000, "emb-2024")
    assert_same_store(ref, uri)
    again = ingest(uri, ray.data.from_numpy(x), work_dir=str(tmp_path / "w2"), **opts)
    assert again.already_committed and "stage" not in again.stage_seconds


def test_ingest_into_s3_without_conditional_writes_refuses_first(tmp_path, uploaded):
    """A backend that cannot create-if-absent: refused before any work, saying why."""
    _, _, bucket = uploaded
    with pytest.raises(ValueError, match="single_writer"):
        IngestJob(f"s3://{bucket}/stores/nocond", f"s3://{bucket}/data/arr/a.npy",
                  storage_options={"conditional_writes": False}, **TRAIN)
    with pytest.raises(ValueError, match="unsupported storage URI scheme"):
        IngestJob("foo://bucket/idx", f"s3://{bucket}/data/arr/a.npy", **TRAIN)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["ingest.range_done@2", "manifest.after_publish"])
def test_killed_ingest_into_s3_resumes(tmp_path, uploaded, point):
    """SIGKILLed in the merge or right after the manifest put, the same call finishes
    the job (or finds it committed); the store holds one whole version."""
    from test_resume import _kill_child

    x, _, bucket = uploaded
    uri = f"s3://{bucket}/stores/killed-{point.split('.')[0]}"
    opts = {**TRAIN, "block_rows": 1000, "merge_bytes": 32 << 10,
            "work_dir": str(tmp_path / "work")}
    inputs = f"s3://{bucket}/data/emb/*.parquet"
    _kill_child(uri, inputs, point, opts)
    published = point == "manifest.after_publish"
    assert IndexStore.exists(uri) == published
    s = ingest(uri, inputs, **opts)
    assert (s.version, s.already_committed) == (1, published)
    assert_same_index(uri, x)
