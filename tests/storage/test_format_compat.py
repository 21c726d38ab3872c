"""Stores written in format version 1 (tests/storage/fixtures/v1, written by the
shardann of commit f54bd7e) open, search, verify and take new commits."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from storage_support import flip_byte

import shardann
from shardann.storage import FORMAT_VERSION, IndexStore

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "v1")
NAMES = ["flat", "ivfflat", "ivfpq8-opq-keep", "ivfpq4"]


def _expected(name, version):
    with open(os.path.join(FIXTURES, "expected", f"{name}.json")) as f:
        spec = json.load(f)
    D = np.load(os.path.join(FIXTURES, "expected", f"{name}-v{version}-D.npy"))
    I = np.load(os.path.join(FIXTURES, "expected", f"{name}-v{version}-I.npy"))
    return spec["k"], spec["search"], D, I


@pytest.fixture(scope="module")
def queries():
    return np.load(os.path.join(FIXTURES, "queries.npy"))


@pytest.fixture()
def copy_of(tmp_path):
    def get(name):
        dst = tmp_path / name
        shutil.copytree(os.path.join(FIXTURES, name), dst)
        return dst
    return get


def test_fixtures_are_format_version_1():
    for name in NAMES:
        store = IndexStore.open(os.path.join(FIXTURES, name))
        assert store.manifest["format_version"] == 1 and store.version == 2
        assert store.manifest["files"]["tombstones"], name  # a tombstone is part of it
    assert FORMAT_VERSION == 2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("version", [1, 2])
def test_version_1_store_searches_identically(name, version, queries):
    k, kw, D, I = _expected(name, version)
    index = shardann.open_index(os.path.join(FIXTURES, name), version=version)
    got_D, got_I = index.search(queries, k, **kw)
    np.testing.assert_array_equal(got_I, I)
    # The same ids prove the store reads as written; distances may differ in the last
    # bit when a kernel sums in a new order (the LUT kernel of issue 23 did).
    np.testing.assert_allclose(got_D, D, rtol=1e-6, atol=1e-6)
    store = IndexStore.open(os.path.join(FIXTURES, name), version)
    assert store.verify()["ntotal"] == store.ntotal == index.ntotal


@pytest.mark.parametrize("name", NAMES)
def test_new_commits_on_a_version_1_store(name, queries, copy_of):
    """A save, a transaction and a compaction on top of version-1 files: the new
    versions are format version 2, the old files keep serving until rewritten."""
    k, kw, D, I = _expected(name, 2)
    path = copy_of(name)
    store = IndexStore.open(path)
    index = shardann.open_index(path)
    extra = queries[:5] * 1.01
    list_no, payload = index.encode(index.prepare(extra))
    txn = store.transaction()
    txn.add(list_no, np.arange(90_000, 90_005), **payload)
    txn.delete([1, 2])
    s3 = txn.commit()
    assert s3.manifest["format_version"] == FORMAT_VERSION
    kinds = [("crc32" in s["row_groups"][0]) for s in s3.manifest["files"]["segments"]]
    assert kinds == [False, False, True]  # two version-1 segments and a new one
    index.remove_ids([1, 2])
    index.add(extra, ids=np.arange(90_000, 90_005))
    want = index.search(queries, k, **kw)
    for s in (s3, s3.compact()):
        got = shardann.open_index(path, version=s.version).search(queries, k, **kw)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
        assert s.verify()["ntotal"] == index.ntotal
    assert all("crc32" in g for s in IndexStore.open(path).manifest["files"]["segments"]
               for g in s["row_groups"])
    # saving over it writes a version-2 codebooks file; version 2 still reads as before.
    # (``index`` came from version 2, and versions 3 and 4 were committed since: a plain
    # save would be a conflict; the newest version holds the same content.)
    shardann.open_index(path).save(path)
    got = shardann.open_index(path, version=2).search(queries, k, **kw)
    np.testing.assert_array_equal(got[1], I)


@pytest.mark.parametrize("column", ["code", "vector", "id"])
def test_flipped_byte_in_a_version_1_segment(column, copy_of):
    """Version-1 segments carry Parquet page CRCs, which Arrow checks as it decodes."""
    path = copy_of("ivfpq8-opq-keep")
    seg = path / IndexStore.open(path).manifest["files"]["segments"][0]["path"]
    md = pq.ParquetFile(seg).metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    cc = md.row_group(0).column(names.index(column))
    flip_byte(seg, cc.data_page_offset + cc.total_compressed_size // 2)
    with pytest.raises(shardann.CorruptIndexError, match=os.path.basename(seg)):
        shardann.open_index(path)
    with pytest.raises(shardann.CorruptIndexError, match=os.path.basename(seg)):
        IndexStore.open(path).verify()


def test_fuzzed_version_1_segment_never_crashes_or_passes_wrong_rows(tmp_path):
    """test_corruption's fuzz over a version-1 segment: Arrow's page CRC checks."""
    from test_corruption import FUZZ

    src = os.path.join(FIXTURES, "ivfpq8-opq-keep")
    rel = IndexStore.open(src).manifest["files"]["segments"][0]["path"]
    proc = subprocess.run([sys.executable, "-c", FUZZ, src, str(tmp_path / "w"), rel,
                           "serial"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-300:], proc.stderr[-3000:])
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0] == "DONE" and int(last[2]) > 0
