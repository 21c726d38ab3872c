"""Segment integrity without a Parquet decoder of ours: one CRC-32 per column
chunk in the manifest, checked with ISA-L over the chunk's bytes; codebooks
that Arrow reads alone."""

import json
import os
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from storage_support import content, flip_byte

import shardann
from shardann.storage import (
    FORMAT_VERSION,
    IndexStore,
    _codebooks,
    _manifest,
    _segments,
    decode_codebooks,
    encode_codebooks,
)


def _segment(store, i=0):
    entry = store.manifest["files"]["segments"][i]
    return os.path.join(store.path, entry["path"]), entry


def test_chunks_tile_the_file_and_their_crcs_are_plain_crc32(tmp_path, make_index):
    store = IndexStore.create(tmp_path / "s", make_index("ivfpq", keep_vectors=True),
                              row_group_rows=300)
    path, entry = _segment(store)
    data = open(path, "rb").read()
    md = pq.ParquetFile(path).metadata
    assert md.num_row_groups == len(entry["row_groups"]) > 3
    assert _segments.layout_problem(md, len(data), entry["footer_size"]) is None
    covered = 4 + entry["footer_size"]
    for g, rg in enumerate(entry["row_groups"]):
        assert len(rg["crc32"]) == md.num_columns == 4  # list_id, id, code, vector
        for c in range(md.num_columns):
            start, end = _segments.chunk_range(md.row_group(g).column(c))
            assert zlib.crc32(data[start:end]) == rg["crc32"][c]
            covered += end - start
    assert covered == len(data) == entry["size"]  # every byte is under a checksum
    # no page checksums and no page index: the chunk CRCs are the check
    assert not md.row_group(0).column(2).has_offset_index


def test_flipped_chunk_is_named_by_row_group_and_column(tmp_path, make_index):
    store = IndexStore.create(tmp_path / "s", make_index("ivfpq"), row_group_rows=300)
    path, entry = _segment(store)
    md = pq.ParquetFile(path).metadata
    start, end = _segments.chunk_range(md.row_group(1).column(1))  # the ids of group 1
    flip_byte(path, (start + end) // 2)
    with pytest.raises(shardann.CorruptIndexError,
                       match=r"\.parquet: row group 1, column id: column chunk fails its "
                             r"checksum"):
        IndexStore.open(tmp_path / "s").read_lists()
    # a shard that owns only the lists of row group 0 never reads the damaged chunk
    g0 = entry["row_groups"][0]
    lists = list(range(g0["first_list"], g0["last_list"] + 1))
    sizes, ids, _ = IndexStore.open(tmp_path / "s").read_lists(lists)
    assert ids.size == g0["rows"]
    with pytest.raises(shardann.CorruptIndexError, match=os.path.basename(path)):
        IndexStore.open(tmp_path / "s").verify()  # the whole-file CRC


def test_flipped_leading_magic_is_caught(tmp_path, make_index):
    store = IndexStore.create(tmp_path / "s", make_index("ivfpq"))
    path, _ = _segment(store)
    flip_byte(path, 1)
    with pytest.raises(shardann.CorruptIndexError, match="PAR1"):
        IndexStore.open(tmp_path / "s").read_lists()


@pytest.mark.parametrize("column", ["code", "id", "list_id"])
def test_checks_while_arrow_decodes(tmp_path, make_index, monkeypatch, column):
    """Reads of PARALLEL_CHECK_BYTES or more decode in a thread while the CRCs are
    checked: the same rows when intact, the CRC error when a chunk is damaged."""
    path = tmp_path / "idx"
    IndexStore.create(path, make_index("ivfpq"))
    want = content(IndexStore.open(path))
    monkeypatch.setattr(_segments, "PARALLEL_CHECK_BYTES", 0)
    assert content(IndexStore.open(path)) == want
    seg, _ = _segment(IndexStore.open(path))
    md = pq.ParquetFile(seg).metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    cc = md.row_group(0).column(names.index(column))
    offset = (cc.data_page_offset - 2 if cc.has_dictionary_page
              else cc.data_page_offset + cc.total_compressed_size // 2)
    flip_byte(seg, offset)
    with pytest.raises(shardann.CorruptIndexError, match=f"column {column}: .*fails"):
        IndexStore.open(path).read_lists()


def test_entry_without_chunk_crcs_is_damage(tmp_path, make_index):
    store = IndexStore.create(tmp_path / "s", make_index("ivfpq"))
    mpath = _manifest.manifest_path(store.path, 1)
    body = json.load(open(mpath))
    for g in body["files"]["segments"][0]["row_groups"]:
        del g["crc32"]
    with open(mpath, "wb") as f:
        f.write(_manifest.encode(body))  # a valid manifest that lost the CRCs
    with pytest.raises(shardann.CorruptIndexError, match="lacks the column chunk CRCs"):
        IndexStore.open(tmp_path / "s").read_lists()


@pytest.mark.parametrize("kind,opq", [("ivfpq", True), ("ivfpq", False), ("ivfflat", False)])
def test_codebooks_are_one_float32_column_arrow_reads_alone(make_index, kind, opq):
    index = make_index(kind, opq=opq) if kind == "ivfpq" else make_index(kind)
    arrays = index.to_state().arrays
    data = encode_codebooks(arrays, index.kind, index.get_config())
    table = pq.read_table(pa.BufferReader(data))
    assert table.schema.types == [pa.float32()] and table.num_rows == sum(
        a.size for a in arrays.values())
    meta = json.loads(table.schema.metadata[b"shardann"])
    assert meta["format_version"] == FORMAT_VERSION and meta["kind"] == kind
    assert meta["arrays"] == {k: list(v.shape) for k, v in arrays.items()}
    for checked in (True, False):  # checked: the manifest CRC matched (no page CRCs)
        got, meta2 = _codebooks.decode(data, "cb", checked=checked)
        assert meta2 == meta and sorted(got) == sorted(arrays)
        for name, arr in got.items():
            assert arr.dtype == np.float32 and arr.flags.writeable
            np.testing.assert_array_equal(arr, arrays[name])


def test_damaged_standalone_codebooks_file(make_index):
    """Outside a store (no manifest CRC) Arrow's page checksums guard the values."""
    index = make_index("ivfpq")
    data = bytearray(encode_codebooks(index.to_state().arrays, "ivfpq", index.get_config()))
    data[len(data) // 3] ^= 0x10
    with pytest.raises(shardann.CorruptIndexError, match="cb.parquet"):
        decode_codebooks(bytes(data), "cb.parquet")


def test_version_1_codebooks_still_decode():
    root = os.path.join(os.path.dirname(__file__), "fixtures", "v1", "ivfpq8-opq-keep")
    store = IndexStore.open(root)
    cb = store.manifest["files"]["codebooks"]
    data = open(os.path.join(root, cb["path"]), "rb").read()
    arrays, meta = decode_codebooks(data, cb["path"])
    assert meta["format_version"] == 1
    assert {k: v.shape for k, v in arrays.items()} == {
        "centroids": (8, 16), "codebooks": (4, 256, 4), "opq_rotation": (16, 16)}
    again = encode_codebooks(arrays, meta["kind"], meta["config"])
    for name, arr in decode_codebooks(again, "v2")[0].items():
        np.testing.assert_array_equal(arr, arrays[name])
