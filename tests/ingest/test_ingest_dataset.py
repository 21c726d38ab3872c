"""Ingest from a ``ray.data.Dataset``: the same index as from the same rows in Parquet,
whatever the Dataset's column type (Ray tensor, fixed-size list, list) and blocks."""

import os

import numpy as np
import pytest
from ingest_support import NPROBE, TRAIN, K, assert_same_index, data, write_mixed

from shardann.distributed import InputError, ingest
from shardann.storage import IndexStore

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_local")]

N = 9000


@pytest.fixture(scope="module")
def xb():
    x = data(N, seed=3)
    x.flags.writeable = False
    return x


def _embed(xb, ids_offset=0):
    """An 'embedding model' stage: ids in, (id, vector) out, as NumPy (a tensor column)."""
    def fn(batch):
        rows = batch["id"]
        return {"id": rows + ids_offset, "embedding": xb[rows]}
    return fn


def assert_same_store(a, b):
    """Two stores hold the same model, rows, codes and calibration set, and answer
    searches identically."""
    from shardann.index import load_index

    sa, sb = IndexStore.open(a), IndexStore.open(b)
    assert sa.config == sb.config
    for name, arr in sa.trained_arrays().items():
        np.testing.assert_array_equal(arr, sb.trained_arrays()[name])
    la, lb = sa.read_lists(), sb.read_lists()
    np.testing.assert_array_equal(la[0], lb[0])
    np.testing.assert_array_equal(la[1], lb[1])
    for name in la[2]:
        np.testing.assert_array_equal(la[2][name], lb[2][name])
    ca, cb = sa.read_calibration(), sb.read_calibration()
    assert ca is not None and cb is not None
    assert ca[1] == cb[1]
    for name, arr in ca[0].items():
        np.testing.assert_array_equal(arr, cb[0][name], err_msg=name)
    q = data(30, seed=77)
    ia, ib = load_index(sa), load_index(sb)
    Da, Ia = ia.search(q, K, nprobe=NPROBE)
    Db, Ib = ib.search(q, K, nprobe=NPROBE)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_array_equal(Da, Db)


def test_dataset_equals_parquet(tmp_path, xb):
    import ray.data

    files = tmp_path / "pq"
    files.mkdir()
    ids = np.arange(N, dtype=np.int64) * 3 + 5
    write_mixed(files, xb, [4000, 5000], encodings=("fsl",), ids=ids)
    from_files = str(tmp_path / "from_files")
    ingest(from_files, str(files), id_column="id", **TRAIN)

    # a pipeline: ids -> embedding map_batches (NumPy out: a Ray tensor column)
    ds = ray.data.range(N, override_num_blocks=5).map_batches(
        _embed(xb), batch_size=700, batch_format="numpy")
    from_ds = str(tmp_path / "from_ds")
    s = ingest(from_ds, ds.map_batches(lambda b: {**b, "id": b["id"] * 3 + 5},
                                       batch_format="numpy"),
               id_column="id", block_rows=2500, **TRAIN)
    assert (s.vectors, s.mode, s.blocks) == (N, "create", 4)
    assert "stage" in s.stage_seconds
    assert_same_store(from_files, from_ds)
    assert_same_index(from_ds, xb, ids=ids)
    # the staged copy is gone with the job's scratch
    assert os.listdir(os.path.join(from_ds, "_ingest", s.job_id)) == ["committed.json"]


def test_dataset_default_ids_and_list_columns(tmp_path, xb):
    """Without an id column the ids are the Dataset's row order (as for files);
    list<double> and fixed_size_list columns read like their Parquet twins."""
    import pyarrow as pa
    import ray.data

    files = tmp_path / "pq"
    files.mkdir()
    write_mixed(files, xb, [N], encodings=("fsl",))
    from_files = str(tmp_path / "from_files")
    ingest(from_files, str(files), **TRAIN)

    lists = pa.ListArray.from_arrays(np.arange(0, N * xb.shape[1] + 1, xb.shape[1],
                                               dtype=np.int32),
                                     pa.array(xb.reshape(-1).astype(np.float64)))
    ds = ray.data.from_arrow(pa.table({"embedding": lists})).repartition(6)
    from_ds = str(tmp_path / "from_ds")
    ingest(from_ds, ds, **TRAIN)
    assert_same_store(from_files, from_ds)
    np.testing.assert_array_equal(np.sort(IndexStore.open(from_ds).read_lists()[1]),
                                  np.arange(N))

    # appending a second Dataset continues the ids after the index's next_id
    more = data(500, seed=8)
    ds2 = ray.data.from_numpy(more).rename_columns({"data": "embedding"})
    s = ingest(from_ds, ds2, progress=False)
    assert (s.mode, s.vectors, s.version) == ("append", 500, 2)
    store = IndexStore.open(from_ds)
    assert store.next_id == N + 500


def test_dataset_bad_column(tmp_path):
    import ray.data

    ds = ray.data.from_items([{"vec": [1.0, 2.0]}] * 10)
    with pytest.raises(InputError, match="no vector column 'embedding'"):
        ingest(str(tmp_path / "idx"), ds, **TRAIN)
    assert not IndexStore.exists(str(tmp_path / "idx"))


DS_CHILD = """
import json, sys
import ray, ray.data
from shardann.distributed import ingest
path, files, tmp, opts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
         configure_logging=False, _temp_dir=tmp)
ingest(path, ray.data.read_parquet(files), **opts)
"""


def _never(batch):
    raise AssertionError("the staged copy should have been reused")


@pytest.mark.slow
def test_dataset_job_resumes_from_its_staged_copy(tmp_path, xb):
    """A Dataset job SIGKILLed after two encoded blocks resumes under the same job_id
    from its staged copy: the Dataset is not run again, finished blocks are skipped."""
    import json
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    import ray.data
    from test_resume import _ray_processes

    from shardann.storage import CRASH_ENV_VAR

    files = tmp_path / "pq"
    files.mkdir()
    write_mixed(files, xb, [N], encodings=("fsl",))
    path = str(tmp_path / "idx")
    opts = {**TRAIN, "block_rows": 1000, "job_id": "emb-2026-12-07"}
    tmp = tempfile.mkdtemp(prefix="sa-ray-", dir="/tmp")
    try:
        proc = subprocess.run([sys.executable, "-c", DS_CHILD, path, str(files), tmp,
                               json.dumps(opts)], capture_output=True, text=True, timeout=600,
                              env={**os.environ, CRASH_ENV_VAR: "ingest.block_done@2"})
        deadline = time.monotonic() + 20  # the child's Ray processes share its fate
        while _ray_processes(tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _ray_processes(tmp)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"Ray processes outlived the killed ingest: {left}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not IndexStore.exists(path)
    ds = ray.data.read_parquet(str(files)).map_batches(_never)
    s = ingest(path, ds, **opts)
    assert s.resumed_blocks >= 2 and s.vectors == N
    assert_same_index(path, xb)
