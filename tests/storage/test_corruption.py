"""Damaged files raise CorruptIndexError naming the file — never a crash or a hang —
and versions that do not use the damaged file still open."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
from storage_support import NB, content, flip_byte

import shardann
from shardann.index import load_index
from shardann.storage import IndexStore, _manifest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, make_index):
    """A store with version 1 (segment S1) and version 2 (+ segment S2, tombstone T2)."""
    path = tmp_path_factory.mktemp("corrupt") / "pristine"
    index = make_index("ivfpq", keep_vectors=True)
    store = IndexStore.create(path, index)
    ids = np.arange(NB, NB + 300)
    list_no, cols = index.encode(index.prepare(index.reconstruct(np.arange(300))))
    txn = store.transaction()
    txn.add(list_no, ids, **cols)
    txn.delete(np.arange(0, 40))
    v2 = txn.commit()
    m = v2.manifest
    new_seg = [s for s in m["files"]["segments"] if s["seq"] == 2][0]
    return {"path": path, "v1": content(store), "v2": content(v2),
            "S2": new_seg["path"], "T2": m["files"]["tombstones"][0]["path"],
            "CB": m["files"]["codebooks"]["path"]}


@pytest.fixture()
def idx(tmp_path, pristine):
    path = tmp_path / "idx"
    shutil.copytree(pristine["path"], path)
    return path


def _name(rel):
    return os.path.basename(rel)


def _v1_still_fine(path, pristine):
    store = IndexStore.open(path, version=1)
    assert content(store) == pristine["v1"]
    assert store.verify()["ntotal"] == NB
    assert shardann.open_index(path, version=1).ntotal == NB


def _raises_on_load(path, rel):
    """Open may pass (cheap checks); loading must raise naming the file, and so must verify."""
    with pytest.raises(shardann.CorruptIndexError, match=_name(rel)):
        shardann.open_index(path)
    try:
        store = IndexStore.open(path)
    except shardann.CorruptIndexError as exc:
        assert _name(rel) in str(exc)
        return
    with pytest.raises(shardann.CorruptIndexError, match=_name(rel)):
        store.verify()


def test_truncated_segment(idx, pristine):
    seg = idx / pristine["S2"]
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 2])
    with pytest.raises(shardann.CorruptIndexError, match=_name(pristine["S2"]) + ".*truncated"):
        IndexStore.open(idx)
    _raises_on_load(idx, pristine["S2"])
    _v1_still_fine(idx, pristine)


def test_flipped_byte_in_segment_footer(idx, pristine):
    seg = idx / pristine["S2"]
    m = IndexStore.open(idx).manifest
    entry = [s for s in m["files"]["segments"] if s["path"] == pristine["S2"]][0]
    flip_byte(seg, entry["size"] - entry["footer_size"] // 2)
    IndexStore.open(idx)  # sizes still match: open is cheap and passes
    with pytest.raises(shardann.CorruptIndexError, match=_name(pristine["S2"]) + ".*footer"):
        IndexStore.open(idx).read_lists()
    _raises_on_load(idx, pristine["S2"])
    _v1_still_fine(idx, pristine)


@pytest.mark.parametrize("column", ["code", "id", "vector", "list_id"])
def test_flipped_byte_in_data_page(idx, pristine, column):
    seg = idx / pristine["S2"]
    md = pq.ParquetFile(seg).metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    col = md.row_group(0).column(names.index(column))
    if col.dictionary_page_offset is not None:  # list_id: damage the dictionary values
        offset = col.data_page_offset - 2
    else:
        offset = col.data_page_offset + col.total_compressed_size // 2
    flip_byte(seg, offset)
    with pytest.raises(shardann.CorruptIndexError, match=_name(pristine["S2"])):
        IndexStore.open(idx).read_lists()
    _raises_on_load(idx, pristine["S2"])
    _v1_still_fine(idx, pristine)


def test_missing_segment_and_tombstone(idx, pristine):
    os.unlink(idx / pristine["S2"])
    with pytest.raises(shardann.CorruptIndexError, match=_name(pristine["S2"]) + ".*missing"):
        shardann.open_index(idx)
    _v1_still_fine(idx, pristine)
    shutil.copy(pristine["path"] / pristine["S2"], idx / pristine["S2"])
    os.unlink(idx / pristine["T2"])
    with pytest.raises(shardann.CorruptIndexError, match=_name(pristine["T2"]) + ".*missing"):
        shardann.open_index(idx)
    _v1_still_fine(idx, pristine)


def test_damaged_tombstone_file(idx, pristine):
    flip_byte(idx / pristine["T2"], 100)
    with pytest.raises(shardann.CorruptIndexError, match=_name(pristine["T2"]) + ".*checksum"):
        shardann.open_index(idx)
    _v1_still_fine(idx, pristine)


def test_damaged_or_truncated_codebooks(idx, pristine):
    cb = idx / pristine["CB"]
    flip_byte(cb, cb.stat().st_size // 2)
    with pytest.raises(shardann.CorruptIndexError, match=_name(pristine["CB"]) + ".*checksum"):
        IndexStore.open(idx)
    data = (pristine["path"] / pristine["CB"]).read_bytes()
    cb.write_bytes(data[:-10])
    with pytest.raises(shardann.CorruptIndexError, match=_name(pristine["CB"])):
        IndexStore.open(idx, version=1)  # both versions share the codebooks


def _rewrite_manifest(path, version, change):
    mpath = _manifest.manifest_path(str(path), version)
    with open(mpath) as f:
        body = json.load(f)
    change(body)
    with open(mpath, "wb") as f:
        f.write(_manifest.encode(body))  # a valid manifest that states wrong facts


def _entry(body, rel):
    f = body["files"]
    return [e for e in f["segments"] + f["tombstones"] + [f["codebooks"]]
            if e["path"] == rel][0]


@pytest.mark.parametrize("which,field", [("S2", "crc32"), ("S2", "footer_crc32"),
                                         ("T2", "crc32"), ("CB", "crc32")])
def test_manifest_naming_a_wrong_checksum(idx, pristine, which, field):
    rel = pristine[which]
    _rewrite_manifest(idx, 2, lambda b: _entry(b, rel).__setitem__(
        field, _entry(b, rel)[field] ^ 1))
    if (which, field) == ("S2", "crc32"):
        # the whole-file checksum is verify()'s job (loading checks footer and pages)
        store = IndexStore.open(idx)
        assert load_index(store).ntotal == store.ntotal
        with pytest.raises(shardann.CorruptIndexError, match=_name(rel) + ".*checksum"):
            store.verify()
    else:
        _raises_on_load(idx, rel)
    if which != "CB":
        _v1_still_fine(idx, pristine)


def test_damaged_newest_manifest_is_an_error_not_a_fallback(idx, pristine):
    flip_byte(_manifest.manifest_path(str(idx), 2), 40)
    with pytest.raises(shardann.CorruptIndexError, match="v00000002.json.*repair"):
        IndexStore.open(idx)  # never silently version 1 (issue 19)
    with pytest.raises(shardann.CorruptIndexError, match="v00000002.json"):
        IndexStore.open(idx, version=2)
    store = IndexStore.open(idx, version=1)
    assert content(store) == pristine["v1"]
    # the broken version number is taken: a writer is told about the damage, and a
    # retry would never succeed, so it is no CommitConflictError
    with pytest.raises(shardann.CorruptIndexError, match="v00000002.json"):
        store.transaction().commit()


def test_manifest_that_is_not_json(idx, pristine):
    with open(_manifest.manifest_path(str(idx), 2), "w") as f:
        f.write('{"format": "shardann", "trunc')
    with pytest.raises(shardann.CorruptIndexError, match="v00000002.json.*JSON"):
        IndexStore.open(idx, version=2)
    with pytest.raises(shardann.CorruptIndexError, match="v00000002.json.*JSON"):
        IndexStore.open(idx)
    assert IndexStore.open(idx, version=1).version == 1


def test_future_format_version_is_a_clear_error(idx, pristine):
    _rewrite_manifest(idx, 2, lambda b: b.__setitem__("format_version", 99))
    with pytest.raises(shardann.CorruptIndexError,
                       match=r"v00000002.json.*format version 99.*upgrade shardann"):
        IndexStore.open(idx)  # never silently falls back to an older version
    assert IndexStore.open(idx, version=1).version == 1


def test_future_tombstone_format_named(idx, pristine, monkeypatch):
    from shardann.storage import FORMAT_VERSION, _tombstones
    real = _tombstones.encode
    monkeypatch.setattr(_tombstones, "encode", lambda ids, fv: real(ids, 3))
    store = IndexStore.open(idx)
    txn = store.transaction()
    txn.delete([100, 101])
    v3 = txn.commit()
    monkeypatch.undo()
    assert FORMAT_VERSION == 2 and _tombstones.encode is real
    rel = [t["path"] for t in v3.manifest["files"]["tombstones"] if t["seq"] == 3][0]
    with pytest.raises(shardann.CorruptIndexError,
                       match=_name(rel) + ".*format version 3.*upgrade shardann"):
        shardann.open_index(idx)
    assert shardann.open_index(idx, version=2).ntotal == len(pristine["v2"])


def test_future_segment_format_named(idx, pristine, monkeypatch):
    from shardann.storage import _segments
    real = _segments.write_segment

    def future(*a, **k):
        k["format_version"] = 5
        return real(*a, **k)

    monkeypatch.setattr(_segments, "write_segment", future)
    store = IndexStore.open(idx)
    txn = store.transaction()
    txn.add(0, [10**7], codes=np.zeros((1, store.code_size), np.uint8),
            vectors=np.zeros((1, 16), np.float32))
    v3 = txn.commit()
    monkeypatch.undo()
    rel = [s["path"] for s in v3.manifest["files"]["segments"] if s["seq"] == 3][0]
    with pytest.raises(shardann.CorruptIndexError,
                       match=_name(rel) + ".*format version 5.*upgrade shardann"):
        shardann.open_index(idx)
    assert shardann.open_index(idx, version=2).ntotal == len(pristine["v2"])


FUZZ = textwrap.dedent("""
    import os, shutil, sys
    import numpy as np
    import shardann
    from shardann.storage import IndexStore, _segments
    src, work, rel = sys.argv[1], sys.argv[2], sys.argv[3]
    if sys.argv[4] == "parallel":  # decode while the chunk CRCs are checked, as large reads do
        _segments.PARALLEL_CHECK_BYTES = 0
    store = IndexStore.open(src)
    want = store.read_lists()
    size = os.path.getsize(os.path.join(src, rel))
    rng = np.random.default_rng(0)
    positions = sorted(set(np.linspace(0, size - 1, 60).astype(int).tolist()
                           + rng.integers(0, size, 60).tolist()))
    same = raised = 0
    for pos in positions:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        with open(os.path.join(work, rel), "r+b") as f:
            f.seek(pos); b = f.read(1); f.seek(pos); f.write(bytes([b[0] ^ 0x5A]))
        print("pos", pos, flush=True)
        try:
            got = IndexStore.open(work).read_lists()
        except shardann.CorruptIndexError as exc:
            assert os.path.basename(rel) in str(exc), (pos, str(exc))
            raised += 1
            continue
        # undetected on load: only bytes that do not change the data may pass
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), pos
        for k in want[2]:
            assert np.array_equal(got[2][k], want[2][k]), (pos, k)
        try:
            IndexStore.open(work).verify()
            raise AssertionError(f"verify missed a flipped byte at {pos}")
        except shardann.CorruptIndexError:
            same += 1
    for cut in (0, 4, 8, size // 3, size - 9, size - 1):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        with open(os.path.join(work, rel), "r+b") as f:
            f.truncate(cut)
        try:
            IndexStore.open(work).read_lists()
            raise AssertionError(f"truncation to {cut} bytes went unnoticed")
        except shardann.CorruptIndexError:
            raised += 1
    print("DONE", len(positions), raised, same, flush=True)
""")


@pytest.mark.parametrize("which,mode", [("S2", "serial"), ("S2", "parallel"),
                                        ("T2", "serial"), ("CB", "serial")])
def test_fuzzed_bytes_never_crash_or_hang(tmp_path, pristine, which, mode):
    """Flip bytes all over a file, in a child process (a segfault would show as a signal)."""
    proc = subprocess.run([sys.executable, "-c", FUZZ, str(pristine["path"]),
                           str(tmp_path / "w"), pristine[which], mode],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-300:], proc.stderr[-3000:])
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0] == "DONE" and int(last[2]) > 0


def test_check_chunks_off_trades_detection_for_speed(idx, pristine):
    """check_chunks=False skips chunk CRCs on reads; footers, sizes and verify() still hold."""
    seg = idx / pristine["S2"]
    md = pq.ParquetFile(seg).metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    col = md.row_group(0).column(names.index("code"))
    flip_byte(seg, col.data_page_offset + col.total_compressed_size // 2)
    fast = IndexStore.open(idx, check_chunks=False)
    assert fast.read_lists()[1].size == len(pristine["v2"])  # the flipped code goes unseen
    with pytest.raises(shardann.CorruptIndexError, match=_name(pristine["S2"])):
        fast.verify()
    with pytest.raises(shardann.CorruptIndexError, match=_name(pristine["S2"])):
        IndexStore.open(idx).read_lists()
