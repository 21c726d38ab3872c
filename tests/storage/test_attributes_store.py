"""Attribute columns in the store: save/open, remove + compact, merge, verify, CRCs."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from storage_support import NB, flip_byte, search_kw
from test_zero_copy import _arrow_owner, _inside

import shardann
from shardann.index import index_from_state
from shardann.storage import IndexStore

FILTER = "lang = 'en' AND (year >= 2010 OR tags CONTAINS 'news')"


def _attrs(ids):
    ids = np.asarray(ids)
    lang = np.array(["en", "fr", "de", None], object)[ids % 4]
    return pa.table({"lang": pa.array(list(lang), pa.string()),
                     "year": pa.array(2000 + ids % 25, pa.int32()),
                     "tags": pa.array([["news"] if i % 3 == 0 else [] for i in ids],
                                      pa.list_(pa.string()))})


def _with_attributes(index):
    """The index rebuilt from its state with attributes derived from each id."""
    state = index.to_state()
    state.attributes = _attrs(state.ids)
    state.attribute_schema = None
    state.__post_init__()
    return index_from_state(state)


def _same(a, b, xq):
    ids = np.arange(NB + 100)
    assert a.get_attributes(ids).equals(b.get_attributes(ids))
    for f in (None, FILTER):
        Da, Ia = a.search(xq, 10, filter=f, **search_kw(a))
        Db, Ib = b.search(xq, 10, filter=f, **search_kw(b))
        np.testing.assert_array_equal(Ia, Ib)
        np.testing.assert_array_equal(Da, Db)


@pytest.mark.parametrize("kind, nbits", [("flat", 8), ("ivfpq", 4)])
def test_attributes_survive_save_open_remove_compact(tmp_path, make_index, sdata, kind, nbits):
    xq = sdata[1][:8]
    index = _with_attributes(make_index(kind, nbits=nbits, keep_vectors=kind == "ivfpq"))
    path = tmp_path / "s"
    index.save(path)
    back = shardann.open_index(path)
    assert back.attribute_schema.equals(index.attribute_schema)
    _same(index, back, xq)
    back.remove_ids(np.arange(0, NB, 7))
    back.add(sdata[0][:5], ids=np.arange(NB, NB + 5), attributes=_attrs(np.arange(NB, NB + 5)))
    back.save(path)
    # a transaction on top: a new segment and a tombstone
    new = np.arange(NB + 5, NB + 9)
    list_no, payload = back.encode(back.prepare(sdata[0][10:14]))
    gone = np.arange(1, NB, 11)
    with IndexStore.open(path).transaction() as txn:
        txn.delete(gone)
        txn.add(list_no, new, **payload, attributes=_attrs(new))
    back.remove_ids(gone)
    back.add_preassigned(list_no, new, payload, attributes=_attrs(new))
    store = IndexStore.open(path)
    assert len(store.manifest["files"]["segments"]) == 2
    assert len(store.manifest["files"]["tombstones"]) == 1
    store.verify()
    again = shardann.open_index(path)
    _same(back, again, xq)
    store.compact()
    store = IndexStore.open(path)
    assert len(store.manifest["files"]["segments"]) == 1
    assert store.verify()["ntotal"] == back.ntotal
    _same(back, shardann.open_index(path), xq)


def test_merge_save_replays_attributes(tmp_path, make_index, sdata):
    path = tmp_path / "s"
    _with_attributes(make_index("ivfpq")).save(path)
    a, b = shardann.open_index(path), shardann.open_index(path)
    a.add(sdata[0][:2], ids=[NB, NB + 1], attributes=_attrs([NB, NB + 1]))
    a.save(path)
    b.remove_ids([3])
    b.add(sdata[0][:1], ids=[NB + 7], attributes={"lang": ["xx"], "year": [1], "tags": [["t"]]})
    b.save(path, merge=True)
    got = shardann.open_index(path).get_attributes([NB, NB + 1, NB + 7, 3, 4])
    want = pa.concat_tables([_attrs([NB, NB + 1]),
                             pa.table({"lang": ["xx"], "year": pa.array([1], pa.int32()),
                                       "tags": pa.array([["t"]], pa.list_(pa.string()))}),
                             _attrs([3]).slice(0, 0)])
    assert got.slice(0, 3).equals(want)
    assert got.column("year").to_pylist()[3:] == [None, 2004]


def test_attributes_added_to_a_store_without_them(tmp_path, make_index, sdata):
    path = tmp_path / "s"
    plain = make_index("ivfflat")
    plain.save(path)
    store = IndexStore.open(path)
    assert "attributes" not in store.manifest and store.attribute_schema is None
    with store.transaction() as txn:
        txn.add(0, [NB], vectors=sdata[0][:1], attributes={"lang": ["en"], "year": [2020]})
    index = shardann.open_index(path)
    assert index.attribute_schema.names == ["lang", "year"]
    got = index.get_attributes([0, NB])
    assert got.column("lang").to_pylist() == [None, "en"]  # the old segment reads as nulls
    D, I = index.search(sdata[0][:1], 3, filter="lang = 'en'", nprobe=16)
    assert I[0].tolist() == [NB, -1, -1]


def test_segments_with_attributes_added_to_a_store_without_them(tmp_path, make_index, sdata):
    # what an ingest appending attributes commits: segments written elsewhere
    from shardann.storage import write_segment

    path = tmp_path / "s"
    plain = make_index("ivfflat")
    plain.save(path)
    store = IndexStore.open(path)
    ids = np.arange(NB, NB + 50)
    list_no, cols = plain.encode(plain.prepare(sdata[0][:50] + 0.5))
    schema = _attrs(ids).schema
    rel = "segments/appended.parquet"
    entry = write_segment(path / rel, list_no, ids, cols, plain.columns,
                          attributes=_attrs(ids))
    with pytest.raises(shardann.CorruptIndexError):  # its columns, unannounced
        store.transaction().add_segments([{"path": rel, **entry}])
    with store.transaction() as txn:
        txn.add_segments([{"path": rel, **entry}], attribute_schema=schema)
    index = shardann.open_index(path)
    assert index.attribute_schema.equals(schema)
    got = index.get_attributes([0, NB + 1])
    assert got.column("year").to_pylist() == [None, 2000 + (NB + 1) % 25]
    D, I = index.search(sdata[0][:1] + 0.5, 3, filter="lang IS NULL", nprobe=16)
    assert (I[I >= 0] < NB).all() and (I >= 0).all()  # the old rows read as nulls
    # a store with other columns refuses them, naming the column
    other = pa.schema([("lang", pa.string()), ("year", pa.int64()),
                       ("tags", pa.list_(pa.string()))])
    with pytest.raises(ValueError, match="differ at 'year'"):
        IndexStore.open(path).transaction().add_segments([], attribute_schema=other)


def test_vectors_stay_zero_copy_and_columns_read_with_pyarrow(tmp_path, make_index):
    index = _with_attributes(make_index("ivfpq", keep_vectors=True))
    store = IndexStore.create(tmp_path / "s", index)
    sizes, ids, cols = store.read_lists(attributes=True)
    for arr in (ids, cols["codes"], cols["vectors"]):
        buf = _arrow_owner(arr)
        assert isinstance(buf, pa.Buffer) and _inside(arr, buf)
    assert cols["attributes"].equals(_attrs(ids))
    m = store.manifest
    assert [c["name"] for c in m["attributes"]["columns"]] == ["lang", "year", "tags"]
    seg = pq.read_table(str(tmp_path / "s" / m["files"]["segments"][0]["path"]))
    assert seg.column_names[-3:] == ["attr:lang", "attr:year", "attr:tags"]
    assert seg.column("attr:year").to_pylist() == (2000 + seg.column("id").to_numpy() % 25
                                                   ).tolist()
    meta = json.loads(seg.schema.metadata[b"shardann"])
    assert meta["format"] == "shardann-segment"


def test_a_damaged_attribute_chunk_is_caught(tmp_path, make_index):
    index = _with_attributes(make_index("ivfflat"))
    store = IndexStore.create(tmp_path / "s", index)
    entry = store.manifest["files"]["segments"][0]
    path = tmp_path / "s" / entry["path"]
    md = pq.read_metadata(str(path))
    col = md.schema.names.index("attr:lang")
    chunk = md.row_group(0).column(col)
    flip_byte(path, chunk.data_page_offset + chunk.total_compressed_size // 2)
    with pytest.raises(shardann.CorruptIndexError, match="segment checksum mismatch"):
        IndexStore.open(tmp_path / "s").verify()
    with pytest.raises(shardann.CorruptIndexError, match="attr:lang"):
        shardann.open_index(tmp_path / "s")


def test_info_lists_the_attribute_columns(tmp_path, make_index, capsys):
    from shardann.cli import main

    _with_attributes(make_index("flat")).save(tmp_path / "s")
    assert main(["info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "attributes" in out and "lang (string), year (int32), tags (list<item: string>)" in out
