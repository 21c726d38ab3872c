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
