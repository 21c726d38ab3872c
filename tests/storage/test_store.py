"""IndexStore: round trips, versions, transactions, tombstones, compaction, vacuum."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from storage_support import NB, NLIST, K, content, search_kw

import shardann
from shardann.index import load_index
from shardann.storage import FORMAT_VERSION, IndexStore

KINDS = [
    ("flat", {"metric": "l2"}),
    ("flat", {"metric": "cosine"}),
    ("ivfflat", {"metric": "ip"}),
    ("ivfpq", {"metric": "l2"}),
    ("ivfpq", {"metric": "l2", "nbits": 4, "keep_vectors": "float16"}),
    ("ivfpq", {"metric": "ip", "opq": True, "keep_vectors": True}),
    ("ivfpq", {"metric": "cosine", "nbits": 4}),
]
KIND_IDS = ["-".join([k] + [f"{a}={b}" for a, b in kw.items()]) for k, kw in KINDS]


def _codes_for(ids, width):
    """Deterministic codes derived from ids (so expectations need no bookkeeping)."""
    return ((ids[:, None] * 7 + np.arange(width)[None, :] * 13) % 256).astype(np.uint8)


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_save_open_identical_results(tmp_path, sdata, make_index, kind, kw):
    xb, xq, _ = sdata
    index = make_index(kind, **kw)
    index.save(tmp_path / "i")
    again = shardann.open_index(tmp_path / "i")
    assert type(again) is type(index) and again.ntotal == NB
    assert again.get_config() == index.get_config()
    D0, I0 = index.search(xq, K, **search_kw(index))
    D1, I1 = again.search(xq, K, **search_kw(index))
    np.testing.assert_array_equal(I0, I1)
    np.testing.assert_array_equal(D0, D1)
    ids = np.array([0, 5, NB - 1])
    np.testing.assert_array_equal(index.reconstruct(ids), again.reconstruct(ids))
    store = IndexStore.open(tmp_path / "i")
    assert store.version == 1 and store.kind == kind and store.ntotal == NB
    report = store.verify()
    assert report["ntotal"] == NB and report["duplicate_live_ids"] == 0
    # the opened index stays fully usable: remove (in place on Arrow-backed arrays) and add
    assert again.remove_ids([0, 1, 2]) == 3
    again.add(xb[:3], ids=[0, 1, 2])
    np.testing.assert_array_equal(again.search(xq, K, **search_kw(index))[1], I0)


def test_untrained_round_trip(tmp_path):
    index = shardann.IVFPQIndex(16, 8, 4, nbits=4, metric="ip", seed=3)
    index.save(tmp_path / "u")
    store = IndexStore.open(tmp_path / "u")
    assert not store.is_trained and store.ntotal == 0 and store.columns is None
    again = shardann.open_index(tmp_path / "u")
    assert not again.is_trained and (again.nlist, again.M, again.nbits) == (8, 4, 4)
    with pytest.raises(shardann.NotTrainedError):
        store.transaction().add(0, [1], codes=np.zeros((1, 2), np.uint8))
    sizes, ids, cols = store.read_lists()
    assert sizes.shape == (8,) and ids.size == 0 and cols == {}


def test_save_over_store_adds_versions_old_ones_stay_readable(tmp_path, sdata, make_index):
    xb, xq, _ = sdata
    path = tmp_path / "i"
    index = make_index("ivfpq")
    r1 = index.search(xq, K, nprobe=4)
    index.save(path)
    index.remove_ids(np.arange(100))
    index.add(xb[:50] * 1.01, ids=np.arange(NB, NB + 50))
    r2 = index.search(xq, K, nprobe=4)
    index.save(path)
    store = IndexStore.open(path)
    assert store.versions() == [1, 2] and store.version == 2
    assert store.ntotal == NB - 100 + 50
    m = store.manifest
    assert m["parent_version"] == 1 and m["operation"] == "save"
    # the unchanged codebooks file is shared, the segments are new
    m1 = store.checkout(1).manifest
    assert m["files"]["codebooks"] == m1["files"]["codebooks"]
    assert {s["path"] for s in m["files"]["segments"]}.isdisjoint(
        s["path"] for s in m1["files"]["segments"])
    for version, want in ((1, r1), (2, r2), (None, r2)):
        got = shardann.open_index(path, version=version).search(xq, K, nprobe=4)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    # vacuum drops version 1 and the files only it used
    report = store.vacuum(keep=1, grace_seconds=0)
    assert report["removed_versions"] == [1]
    assert [p for p in report["removed_files"] if p.startswith("segments/")]
    assert IndexStore.open(path).versions() == [2]
    with pytest.raises(FileNotFoundError, match="no version 1"):
        shardann.open_index(path, version=1)
    np.testing.assert_array_equal(shardann.open_index(path).search(xq, K, nprobe=4)[1], r2[1])


def test_open_missing_and_not_an_index(tmp_path):
    with pytest.raises(FileNotFoundError):
        IndexStore.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no shardann index"):
        shardann.open_index(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a shardann index"):
        shardann.FlatIndex(4).save(tmp_path / "other")


def test_create_refuses_existing_store(tmp_path, make_index):
    index = make_index("flat")
    IndexStore.create(tmp_path / "i", index)
    with pytest.raises(FileExistsError, match="already holds"):
        IndexStore.create(tmp_path / "i", index)


def _store_with_codes(tmp_path, make_index):
    index = make_index("ivfpq")
    return IndexStore.create(tmp_path / "s", index), index


def test_transaction_add_delete_tombstones(tmp_path, make_index):
    store, index = _store_with_codes(tmp_path, make_index)
    cs = store.code_size
    before = content(store)
    new_ids = np.arange(5000, 5040, dtype=np.int64)
    lists = new_ids % NLIST
    with store.transaction() as txn:
        txn.add(lists, new_ids, codes=_codes_for(new_ids, cs))
        txn.delete([3, 4, 5, 999999])  # 999999 is unknown: ignored
    s2 = txn.committed
    assert s2.version == 2 and s2.ntotal == NB + 40 - 3
    after = content(s2)
    want = {k: v for k, v in before.items() if k not in (3, 4, 5)}
    for i, lst in zip(new_ids.tolist(), lists.tolist(), strict=True):
        want[i] = (lst, _codes_for(np.array([i]), cs)[0].tobytes())
    assert after == want
    assert s2.manifest["next_id"] == 5040
    np.testing.assert_array_equal(s2.list_sizes(), np.bincount(
        [v[0] for v in want.values()], minlength=NLIST))
    # deleting ids that are already gone or unknown writes no tombstone
    s3 = s2.transaction()
    s3.delete([3, 4, 123456])
    s3 = s3.commit()
    assert s3.ntotal == s2.ntotal
    assert len(s3.manifest["files"]["tombstones"]) == len(s2.manifest["files"]["tombstones"])
    # older version untouched
    assert content(store.checkout(1)) == before
    assert s3.verify()["ntotal"] == s3.ntotal


def test_delete_then_readd_is_an_upsert(tmp_path, make_index):
    store, _ = _store_with_codes(tmp_path, make_index)
    cs = store.code_size
    old = content(store)[7]
    txn = store.transaction()
    txn.delete([7])
    txn.add(0, [7], codes=np.full((1, cs), 42, np.uint8))
    s2 = txn.commit()
    assert s2.ntotal == NB
    assert content(s2)[7] == (0, bytes([42] * cs)) != old
    # delete in a later commit, then re-add in the one after
    t = s2.transaction()
    t.delete([7])
    s3 = t.commit()
    assert 7 not in content(s3) and s3.ntotal == NB - 1
    t = s3.transaction()
    t.add(1, [7], codes=np.full((1, cs), 9, np.uint8))
    s4 = t.commit()
    assert content(s4)[7] == (1, bytes([9] * cs)) and s4.ntotal == NB
    assert s4.verify()["ntotal"] == NB


def test_transaction_validation(tmp_path, make_index):
    store, _ = _store_with_codes(tmp_path, make_index)
    txn = store.transaction()
    cs = store.code_size
    with pytest.raises(ValueError, match="list_no must be in"):
        txn.add([NLIST], [1], codes=np.zeros((1, cs), np.uint8))
    with pytest.raises(ValueError, match="codes is required"):
        txn.add([0], [1])
    with pytest.raises(ValueError, match="shape"):
        txn.add([0], [1], codes=np.zeros((1, cs + 1), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        txn.add([0], [1], codes=np.zeros((1, cs), np.int32))
    with pytest.raises(ValueError, match="no 'vectors' column"):
        txn.add([0], [1], codes=np.zeros((1, cs), np.uint8), vectors=np.zeros((1, 16)))
    assert txn.add([], np.zeros(0, np.int64), codes=np.zeros((0, cs), np.uint8)) == 0
    txn.commit()
    with pytest.raises(RuntimeError, match="already committed"):
        txn.delete([1])


def test_context_manager_aborts_on_error(tmp_path, make_index):
    store, _ = _store_with_codes(tmp_path, make_index)
    segs = set(os.listdir(tmp_path / "s" / "segments"))
    with pytest.raises(KeyError), store.transaction() as txn:
        txn.add(0, [10**6], codes=np.zeros((1, store.code_size), np.uint8))
        raise KeyError("boom")
    assert set(os.listdir(tmp_path / "s" / "segments")) == segs
    assert IndexStore.open(tmp_path / "s").version == 1


def test_read_lists_reads_only_the_row_groups_it_needs(tmp_path, make_index, monkeypatch):
    index = make_index("ivfpq")
    store = IndexStore.create(tmp_path / "s", index, row_group_rows=100)
    seg = store.manifest["files"]["segments"][0]
    groups = seg["row_groups"]
    assert len(groups) > 4
    # row groups are cut at list boundaries and hold increasing list ranges
    for a, b in zip(groups[:-1], groups[1:], strict=True):
        assert a["last_list"] < b["first_list"]
    md = pq.ParquetFile(tmp_path / "s" / seg["path"]).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == \
        [g["rows"] for g in groups]
    from shardann.storage import _segments
    asked = []
    real = _segments.SegmentFile.read

    def spy(self, row_groups=None, columns=None):
        asked.append(list(row_groups))
        return real(self, row_groups, columns)

    monkeypatch.setattr(_segments.SegmentFile, "read", spy)
    want_lists = [groups[2]["first_list"], groups[-1]["last_list"]]
    sizes, ids, cols = store.read_lists(want_lists)
    # the id columns, then the payload: both from those two row groups only
    assert asked and all(a == [2, len(groups) - 1] for a in asked)
    full = content(store)
    part = content((sizes, ids, cols))
    assert part == {k: v for k, v in full.items() if v[0] in want_lists}
    assert sizes[[i for i in range(NLIST) if i not in want_lists]].sum() == 0
    # a shard-style partial index searches its lists like the full index
    shard = load_index(store, lists=want_lists)
    assert shard.ntotal == ids.size and shard.is_trained


def test_multi_segment_read_groups_by_list(tmp_path, make_index, sdata):
    """Rows of several segments come back grouped by list, like the in-memory index."""
    xb, xq, _ = sdata
    index = make_index("ivfpq", keep_vectors=True)
    store = IndexStore.create(tmp_path / "s", index)
    extra = xb[:300] + 0.01
    new_ids = np.arange(NB, NB + 300)
    list_no, cols = index.encode(index.prepare(extra))
    txn = store.transaction()
    txn.add(list_no[:150], new_ids[:150], **{k: v[:150] for k, v in cols.items()})
    txn.add(list_no[150:], new_ids[150:], **{k: v[150:] for k, v in cols.items()})
    txn.delete(np.arange(0, NB, 7))
    s2 = txn.commit()
    assert len(s2.manifest["files"]["segments"]) == 3
    index.add(extra, ids=new_ids)
    index.remove_ids(np.arange(0, NB, 7))
    loaded = load_index(s2)
    assert loaded.ntotal == index.ntotal == s2.ntotal
    for kw in ({"nprobe": 4}, {"nprobe": 16, "refine_factor": 3}):
        a, b = index.search(xq, K, **kw), loaded.search(xq, K, **kw)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    sizes, ids, _ = s2.read_lists()
    lists = np.repeat(np.arange(NLIST), sizes)
    np.testing.assert_array_equal(lists, index.assign(index.reconstruct(ids)))


def test_compaction_keeps_results_and_drops_deleted_rows(tmp_path, make_index, sdata):
    xb, xq, _ = sdata
    index = make_index("ivfpq")
    store = IndexStore.create(tmp_path / "s", index)
    for start in range(0, 400, 100):
        ids = np.arange(NB + start, NB + start + 100)
        list_no, cols = index.encode(index.prepare(xb[start:start + 100] * 0.99))
        # delete from the previous batch only (the first segment stays clean)
        gone = np.arange(NB + start - 100, NB + start - 70) if start else []
        txn = store.transaction()
        txn.add(list_no, ids, **cols)
        txn.delete(gone)
        store = txn.commit()
        index.add(xb[start:start + 100] * 0.99, ids=ids)
        index.remove_ids(gone)
    before = load_index(store).search(xq, K, nprobe=8)
    want = index.search(xq, K, nprobe=8)
    np.testing.assert_array_equal(before[1], want[1])
    m = store.manifest
    assert len(m["files"]["segments"]) == 5 and len(m["files"]["tombstones"]) == 3
    # merge only the small segments: the big first one (no deletes) stays as it is
    partial = store.compact(min_rows=150)
    pm = partial.manifest
    assert len(pm["files"]["segments"]) == 2 and pm["files"]["tombstones"] == []
    assert pm["files"]["segments"][0] == m["files"]["segments"][0]
    full = partial.compact()
    fm = full.manifest
    assert len(fm["files"]["segments"]) == 1 and fm["files"]["tombstones"] == []
    assert fm["operation"] == "compact" and full.ntotal == store.ntotal == index.ntotal
    seg = fm["files"]["segments"][0]
    assert seg["rows"] == full.ntotal and seg["deleted"] == 0
    for s in (partial, full):
        got = load_index(s).search(xq, K, nprobe=8)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
        assert s.verify()["ntotal"] == index.ntotal
    assert full.compact() is full  # nothing left to do
    # the versions before compaction still read the same
    np.testing.assert_array_equal(load_index(store.checkout(store.version))
                                  .search(xq, K, nprobe=8)[1], want[1])


def test_vacuum_keeps_fresh_orphans_and_removes_old_ones(tmp_path, make_index):
    store, _ = _store_with_codes(tmp_path, make_index)
    seg_dir = tmp_path / "s" / "segments"
    orphan = seg_dir / "0123456789abcdef.parquet"
    orphan.write_bytes(b"left by a crashed writer")
    tmp_manifest = tmp_path / "s" / "_manifests" / ".tmp-dead.json"
    tmp_manifest.write_text("{")
    report = store.vacuum(keep=1)  # default grace: young orphans stay
    assert report["removed_files"] == [] and orphan.exists()
    old = os.path.getmtime(orphan) - 7200
    os.utime(orphan, (old, old))
    os.utime(tmp_manifest, (old, old))
    report = store.vacuum(keep=1)
    assert set(report["removed_files"]) == {"segments/0123456789abcdef.parquet",
                                            "_manifests/.tmp-dead.json"}
    assert store.verify()["ntotal"] == NB
    with pytest.raises(ValueError):
        store.vacuum(keep=0)


def test_vacuum_keep_n(tmp_path, make_index):
    store, _ = _store_with_codes(tmp_path, make_index)
    for i in range(4):
        t = store.transaction()
        t.delete([i])
        store = t.commit()
    assert store.versions() == [1, 2, 3, 4, 5]
    report = store.vacuum(keep=2, grace_seconds=0)
    assert report["removed_versions"] == [1, 2, 3]
    assert store.versions() == [4, 5]
    for v in (4, 5):
        assert store.checkout(v).verify()["version"] == v


def test_files_carry_format_version_and_read_with_pyarrow_alone(tmp_path, make_index):
    """docs/format.md's recipe: read a version with pyarrow, json and numpy only."""
    import pyarrow as pa

    index = make_index("ivfpq", keep_vectors=True)
    store = IndexStore.create(tmp_path / "s", index)
    t = store.transaction()
    t.delete([1, 2])
    store = t.commit()
    root = tmp_path / "s"
    manifests = sorted(os.listdir(root / "_manifests"))
    m = json.loads((root / "_manifests" / manifests[-1]).read_text())
    assert m["format"] == "shardann" and m["format_version"] == FORMAT_VERSION
    cb = pq.read_table(root / m["files"]["codebooks"]["path"])
    cb_meta = json.loads(cb.schema.metadata[b"shardann"])
    assert cb_meta["format_version"] == FORMAT_VERSION
    values, arrays, at = cb.column("values").to_numpy(), {}, 0
    for name in sorted(cb_meta["arrays"]):  # one after another, in name order
        shape = cb_meta["arrays"][name]
        arrays[name] = values[at:at + int(np.prod(shape))].reshape(shape)
        at += int(np.prod(shape))
    assert at == values.size
    np.testing.assert_array_equal(arrays["centroids"], index.centroids)
    np.testing.assert_array_equal(arrays["codebooks"], index.pq.codebooks)
    dead_by_seq = []
    for t in m["files"]["tombstones"]:
        with pa.ipc.open_file(root / t["path"]) as r:
            assert json.loads(r.schema.metadata[b"shardann"])["format_version"] == FORMAT_VERSION
            dead_by_seq.append((t["seq"], r.read_all().column("id").to_numpy()))
    rows = {}
    for s in m["files"]["segments"]:
        tab = pq.read_table(root / s["path"])
        meta = json.loads(tab.schema.metadata[b"shardann"])
        assert meta["format_version"] == FORMAT_VERSION
        ids = tab.column("id").to_numpy()
        dead = [d for seq, d in dead_by_seq if seq > s["seq"]]
        live = ~np.isin(ids, np.concatenate(dead)) if dead else np.ones(ids.size, bool)
        code = np.frombuffer(tab.column("code").combine_chunks().buffers()[1], np.uint8)
        code = code.reshape(-1, m["columns"]["code"]["width"])
        vec = np.frombuffer(tab.column("vector").combine_chunks().buffers()[1], "<f4")
        vec = vec.reshape(-1, m["columns"]["vector"]["width"])
        lists = tab.column("list_id").to_numpy()
        for i in np.flatnonzero(live):
            rows[int(ids[i])] = (int(lists[i]), code[i].tobytes(), vec[i].tobytes())
    assert len(rows) == m["ntotal"] == NB - 2
    assert rows == content(store)


def test_bytes_on_disk_per_vector_within_budget(tmp_path):
    """Segments cost at most code bytes + 8 (id) + 5%: list_id is dictionary/RLE-encoded
    to almost nothing, ids and codes are stored plain (fast, zero-copy reads)."""
    index = shardann.IVFPQIndex(64, 256, 32, 8, seed=0, niter=2, pq_niter=2)
    rng = np.random.default_rng(0)
    index.train(rng.standard_normal((256 * 4, 64)).astype(np.float32))
    store = IndexStore.create(tmp_path / "s", index)  # trained, empty
    n = 200_000
    ids = rng.permutation(n).astype(np.int64)
    txn = store.transaction()
    txn.add(rng.integers(0, 256, n), ids, codes=rng.integers(0, 256, (n, 32), dtype=np.uint8))
    store = txn.commit()
    seg = store.manifest["files"]["segments"][0]
    per_vector = seg["size"] / n
    assert per_vector <= 1.05 * (32 + 8), per_vector  # observed 40.02


def test_store_view_pickles_without_open_files(tmp_path, make_index):
    import pickle

    store = IndexStore.create(tmp_path / "s", make_index("ivfpq"))
    before = content(store)  # fills the caches (open Parquet files)
    again = pickle.loads(pickle.dumps(store))
    assert again.version == store.version and again.manifest == store.manifest
    assert content(again) == before


def test_segments_written_elsewhere_are_committed_by_reference(tmp_path, make_index, sdata):
    """add_segments / create_from_segments: files written by other processes (ingest)."""
    import uuid

    from shardann.storage import IndexState, write_segment

    xb, xq, _ = sdata
    full = make_index("ivfpq")
    state = full.to_state()
    model = IndexState(state.kind, state.config, True, state.arrays, state.nlist, state.columns)
    root = tmp_path / "s"
    (root / "segments").mkdir(parents=True)
    list_no, cols = full.encode(full.prepare(xb))
    entries = []
    for part in np.array_split(np.arange(NB), 3):  # three "workers"
        rel = f"segments/{uuid.uuid4().hex}.parquet"
        e = write_segment(root / rel, list_no[part], part, {"codes": cols["codes"][part]},
                          full.columns)
        entries.append({"path": rel, **e})
    with pytest.raises(ValueError, match="trained, empty"):
        IndexStore.create_from_segments(root, state, entries)
    store = IndexStore.create_from_segments(root, model, entries)
    assert store.version == 1 and store.ntotal == NB and store.next_id == NB
    np.testing.assert_array_equal(load_index(store).search(xq, K, nprobe=4)[1],
                                  full.search(xq, K, nprobe=4)[1])
    assert store.verify()["ntotal"] == NB
    txn = store.transaction()
    with pytest.raises(ValueError, match="already part"):
        txn.add_segments(entries[:1])
    bad = dict(entries[0], path="elsewhere/x.parquet")
    with pytest.raises(ValueError, match="segment path"):
        txn.add_segments([bad])
