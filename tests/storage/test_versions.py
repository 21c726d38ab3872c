"""Versions and writers (issue 19): a save commits only on top of the version the
index came from (else CommitConflictError, or a merge on request); a damaged newest
manifest is a CorruptIndexError for readers and writers, never a silent rollback,
until an operator repairs the store; ``save`` returns the committed version."""

import logging
import os

import numpy as np
import pytest
from storage_support import NB, NLIST, content, flip_byte

import shardann
from shardann.index.serialize import save_index
from shardann.storage import IndexStore, _manifest

X_IDS = np.arange(NB + 100, NB + 120)  # what writer A adds
Y_IDS = np.arange(NB + 500, NB + 530)  # what writer B adds


def _vectors(sdata, n, scale):
    xb = sdata[0]
    return np.ascontiguousarray(xb[:n] * scale, np.float32)


@pytest.fixture()
def saved(tmp_path, make_index):
    """An IVF-PQ index (ids 0..NB-1) saved as version 1 at ``tmp_path / "idx"``."""
    path = tmp_path / "idx"
    make_index("ivfpq", keep_vectors=True).save(path)
    return path


def _two_writers(path, sdata):
    """A and B open version 1; A adds X and removes 0..9; B adds Y and saves (v2)."""
    a = shardann.open_index(path)
    b = shardann.open_index(path)
    a.add(_vectors(sdata, X_IDS.size, 1.01), ids=X_IDS)
    a.remove_ids(np.arange(10))
    b.add(_vectors(sdata, Y_IDS.size, 0.99), ids=Y_IDS)
    assert b.save(path) == 2
    return a, b


def _ids(store):
    return set(content(store))


# -- (4) save returns the committed version -----------------------------------------------
def test_save_returns_the_committed_version(tmp_path, make_index):
    index = make_index("flat")
    v = index.save(tmp_path / "i")
    assert type(v) is int and v == 1
    index.remove_ids([0])
    assert index.save(tmp_path / "i") == 2
    assert save_index(index, tmp_path / "i") == 3
    assert IndexStore.open(tmp_path / "i").version == 3
    assert index.save(tmp_path / "elsewhere") == 1  # a new store starts at 1


# -- (2) a stale in-memory index must not overwrite other writers' work ---------------------
def test_stale_save_raises_conflict_and_keeps_the_other_writers_work(saved, sdata):
    a, _ = _two_writers(saved, sdata)
    with pytest.raises(shardann.CommitConflictError) as exc:
        a.save(saved)
    msg = str(exc.value)
    assert "version 1" in msg and "version 2" in msg and "merge=True" in msg
    assert "reopen the store and retry" not in msg  # that advice overwrites for a save
    store = IndexStore.open(saved)
    assert store.versions() == [1, 2]
    ids = _ids(store)
    assert set(Y_IDS) <= ids and not set(X_IDS) & ids and 0 in ids
    # no debris of the losing save is referenced; the index in memory is unchanged
    assert a.ntotal == NB + X_IDS.size - 10


def test_save_merge_replays_adds_and_removes_on_the_newest_version(saved, sdata):
    a, _ = _two_writers(saved, sdata)
    xq = sdata[1]
    assert a.save(saved, merge=True) == 3
    store = IndexStore.open(saved)
    ids = _ids(store)
    assert set(Y_IDS) <= ids and set(X_IDS) <= ids and not set(range(10)) & ids
    assert store.ntotal == NB - 10 + X_IDS.size + Y_IDS.size
    assert store.manifest["parent_version"] == 2
    assert store.verify()["duplicate_live_ids"] == 0
    # A's rows went in as A holds them (codes and vectors)
    got = shardann.open_index(saved)
    np.testing.assert_array_equal(got.reconstruct(X_IDS), a.reconstruct(X_IDS))
    # after the merge A holds the merged version, and saves on top of it again
    assert a.ntotal == store.ntotal and a.contains(Y_IDS).all()
    np.testing.assert_array_equal(a.search(xq, 10, nprobe=4, refine_factor=2)[1],
                                  got.search(xq, 10, nprobe=4, refine_factor=2)[1])
    a.remove_ids(Y_IDS[:3])
    assert a.save(saved) == 4
    assert IndexStore.open(saved).ntotal == store.ntotal - 3


@pytest.mark.parametrize("kind,kw", [("flat", {}), ("ivfflat", {"metric": "cosine"}),
                                     ("ivfpq", {"nbits": 4})], ids=["flat", "ivfflat", "pq4"])
def test_merge_for_every_kind(tmp_path, sdata, make_index, kind, kw):
    path = tmp_path / "k"
    make_index(kind, **kw).save(path)
    a = shardann.open_index(path)
    b = shardann.open_index(path)
    a.add(_vectors(sdata, X_IDS.size, 1.01), ids=X_IDS)
    a.remove_ids([3, 4])
    b.remove_ids([7])
    b.save(path)
    assert a.save(path, merge=True) == 3
    got = shardann.open_index(path)
    assert got.ntotal == NB + X_IDS.size - 3 == a.ntotal
    np.testing.assert_array_equal(got.reconstruct(X_IDS), a.reconstruct(X_IDS))
    assert not got.contains([3, 4, 7]).any()
    assert IndexStore.open(path).verify()["ntotal"] == got.ntotal


def test_merge_that_loses_a_race_replays_again(saved, sdata, monkeypatch):
    a, b = _two_writers(saved, sdata)
    real = shardann.storage.Transaction.commit
    calls = []

    def commit(txn):
        calls.append(txn.base_version)
        if len(calls) == 1:  # B lands version 3 just before A's merge commits
            b.remove_ids([11])
            b.save(saved)
        return real(txn)

    monkeypatch.setattr(shardann.storage.Transaction, "commit", commit)
    assert a.save(saved, merge=True) == 4
    assert calls == [2, 2, 3]  # A on 2 (lost to B's save on 2), A again on 3
    got = IndexStore.open(saved)
    assert got.ntotal == NB - 11 + X_IDS.size + Y_IDS.size == a.ntotal
    assert got.verify()["ntotal"] == got.ntotal


def test_merge_refuses_ids_the_other_writer_added(saved, sdata):
    a = shardann.open_index(saved)
    b = shardann.open_index(saved)
    a.add(_vectors(sdata, X_IDS.size, 1.01), ids=X_IDS)
    b.add(_vectors(sdata, 5, 0.5), ids=X_IDS[:5])
    b.save(saved)
    with pytest.raises(shardann.DuplicateIdError, match=str(X_IDS[0])):
        a.save(saved, merge=True)
    assert IndexStore.open(saved).versions() == [1, 2]


def test_merge_of_an_upsert_and_of_adds_then_removes(saved, sdata):
    a = shardann.open_index(saved)
    b = shardann.open_index(saved)
    new5 = _vectors(sdata, 1, 3.0)
    a.remove_ids([5])
    a.add(new5, ids=[5])  # replace 5
    a.add(_vectors(sdata, 3, 2.0), ids=Y_IDS[:3])
    a.remove_ids(Y_IDS[:3])  # added and removed again: nothing to replay
    b.add(_vectors(sdata, 3, 0.9), ids=Y_IDS[:3])  # ... so B's rows stay
    b.save(saved)
    assert a.save(saved, merge=True) == 3
    got = shardann.open_index(saved)
    assert got.ntotal == NB + 3 and got.contains(Y_IDS[:3]).all()
    np.testing.assert_array_equal(got.reconstruct(5), a.reconstruct(5))
    np.testing.assert_allclose(got.reconstruct(5), new5[0], rtol=1e-2, atol=1e-2)


def test_merge_refuses_when_the_model_changed(saved, sdata, make_index):
    a = shardann.open_index(saved)
    a.add(_vectors(sdata, 4, 1.1), ids=X_IDS[:4])
    other = shardann.IVFPQIndex(16, NLIST, 4, 8, "l2", seed=5, niter=4, pq_niter=4,
                                keep_vectors=True).train(sdata[2])
    other.save(saved)  # an unrelated index saved over the store: version 2
    with pytest.raises(shardann.CommitConflictError, match="model"):
        a.save(saved, merge=True)
    assert IndexStore.open(saved).versions() == [1, 2]


def test_merge_without_conflict_is_a_plain_save(saved, sdata):
    a = shardann.open_index(saved)
    a.add(_vectors(sdata, 4, 1.1), ids=X_IDS[:4])
    assert a.save(saved, merge=True) == 2
    assert IndexStore.open(saved).manifest["operation"] == "save"
    assert a.save(saved) == 3  # its own save is the new base


def test_saving_elsewhere_is_unaffected(saved, sdata, tmp_path, make_index):
    a, _ = _two_writers(saved, sdata)
    assert a.save(tmp_path / "copy") == 1  # a new path
    assert IndexStore.open(tmp_path / "copy").ntotal == a.ntotal
    # an index that never came from ``saved`` replaces its content, as before
    fresh = make_index("ivfpq", keep_vectors=True)
    assert fresh.save(saved) == 3
    assert IndexStore.open(saved).ntotal == NB


def test_partial_index_saves_only_by_merge(saved, sdata):
    part = shardann.open_index(saved, lists=np.arange(4))
    b = shardann.open_index(saved)
    x = _vectors(sdata, 20, 1.02)
    list_no, _ = part.encode(part.prepare(x))
    keep = list_no < 4
    assert keep.any()
    part.add(x[keep], ids=X_IDS[:int(keep.sum())])
    with pytest.raises(ValueError, match="lists"):
        part.save(saved)
    b.add(_vectors(sdata, 3, 0.9), ids=Y_IDS[:3])
    b.save(saved)
    assert part.save(saved, merge=True) == 3
    store = IndexStore.open(saved)
    assert store.ntotal == NB + 3 + int(keep.sum())
    assert part.ntotal == int(store.list_sizes()[:4].sum())


# -- (3) a damaged newest manifest ----------------------------------------------------------
@pytest.fixture()
def damaged(saved, make_index):
    """Versions 1 and 2 (ids 0..9 removed), then one byte of v2's manifest flipped."""
    index = shardann.open_index(saved)
    index.remove_ids(np.arange(10))
    index.save(saved)
    flip_byte(_manifest.manifest_path(str(saved), 2), 60)
    return saved


def test_damaged_newest_manifest_is_an_error_not_a_rollback(damaged):
    for opener in (IndexStore.open, shardann.open_index):
        with pytest.raises(shardann.CorruptIndexError, match="v00000002.json") as exc:
            opener(damaged)
        assert "repair" in str(exc.value)
    # an older version is still there when asked for explicitly
    assert IndexStore.open(damaged, version=1).ntotal == NB
    assert shardann.open_index(damaged, version=1).ntotal == NB


def test_commits_on_a_store_with_a_damaged_newest_manifest_name_it(damaged, sdata):
    seg_dir = os.path.join(damaged, "segments")
    before = sorted(os.listdir(seg_dir))
    v1 = IndexStore.open(damaged, version=1)
    txn = v1.transaction()
    txn.delete([20])
    with pytest.raises(shardann.CorruptIndexError, match="v00000002.json"):
        txn.commit()
    with pytest.raises(shardann.CorruptIndexError, match="v00000002.json"):
        v1.vacuum(grace_seconds=0)  # would delete files the damaged version may name
    index = shardann.open_index(damaged, version=1)
    index.remove_ids([20])
    for merge in (False, True):
        with pytest.raises(shardann.CorruptIndexError, match="v00000002.json"):
            index.save(damaged, merge=merge)
    assert _manifest.list_versions(str(damaged)) == [1, 2]
    assert sorted(os.listdir(seg_dir)) == before  # the failed commits left no files


def test_repair_rollback_sets_the_damaged_manifest_aside(damaged):
    report = shardann.storage.repair(damaged, rollback=True)
    assert report["version"] == 1 and report["damaged"] == [2]
    mdir = os.path.join(damaged, "_manifests")
    assert "damaged-v00000002.json" in os.listdir(mdir)
    assert "v00000002.json" not in os.listdir(mdir)
    store = IndexStore.open(damaged)
    assert store.version == 1 and store.ntotal == NB
    txn = store.transaction()
    txn.delete([20])
    assert txn.commit().version == 2
    assert "damaged-v00000002.json" in os.listdir(mdir)  # kept, never deleted
    IndexStore.open(damaged).vacuum(grace_seconds=0)
    assert "damaged-v00000002.json" in os.listdir(mdir)


def test_repair_supersede_publishes_an_older_version_above_the_damaged_one(damaged):
    want = content(IndexStore.open(damaged, version=1))
    report = IndexStore.repair(damaged, supersede=1)
    assert report["version"] == 3 and report["damaged"] == [2]
    store = IndexStore.open(damaged)
    assert store.version == 3 and content(store) == want
    assert store.manifest["parent_version"] == 1
    assert store.manifest["operation"] == "supersede"
    assert store.verify()["ntotal"] == NB
    with pytest.raises(shardann.CorruptIndexError, match="v00000002.json"):
        IndexStore.open(damaged, version=2)  # left as it was
    index = shardann.open_index(damaged)
    index.remove_ids([20])
    assert index.save(damaged) == 4


def test_repair_refuses_what_it_cannot_do(damaged):
    with pytest.raises(ValueError, match="one of"):
        shardann.storage.repair(damaged)
    with pytest.raises(ValueError, match="one of"):
        shardann.storage.repair(damaged, rollback=True, supersede=1)
    with pytest.raises(ValueError, match="version 2"):
        shardann.storage.repair(damaged, supersede=2)  # the damaged one itself
    with pytest.raises(FileNotFoundError, match="no version 7"):
        shardann.storage.repair(damaged, supersede=7)
    shardann.storage.repair(damaged, rollback=True)
    with pytest.raises(ValueError, match="nothing to repair"):
        shardann.storage.repair(damaged, rollback=True)  # healthy now


def test_whole_index_save_supersedes_a_damaged_newest_manifest(damaged, make_index, caplog):
    """save_index's promise: a save of an index that does not depend on the damaged
    version (a new one, or one loaded from that very version) supersedes it."""
    fresh = make_index("flat")
    with caplog.at_level(logging.WARNING, logger="shardann"):
        assert fresh.save(damaged) == 3
    assert "v00000002.json" in caplog.text
    store = IndexStore.open(damaged)
    assert store.version == 3 and store.kind == "flat" and store.ntotal == NB


def test_index_loaded_from_the_damaged_version_may_supersede_it(saved):
    index = shardann.open_index(saved)
    index.remove_ids([1])
    assert index.save(saved) == 2
    flip_byte(_manifest.manifest_path(str(saved), 2), 60)  # bit rot after the save
    index.remove_ids([2])
    assert index.save(saved) == 3  # it holds everything version 2 held
    assert IndexStore.open(saved).ntotal == NB - 2
