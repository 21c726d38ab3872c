"""Loading lists hands the kernels NumPy views of Arrow's buffers: no copy, no row loop."""

import sys

import numpy as np
import pyarrow as pa
import pytest
from storage_support import NB, K

import shardann
from shardann.index import load_index
from shardann.storage import IndexStore


def _arrow_owner(arr):
    """The pyarrow.Buffer at the bottom of a NumPy array's ``base`` chain (or None)."""
    base = arr
    while base is not None and not isinstance(base, pa.Buffer):
        base = getattr(base, "base", None)
        if isinstance(base, memoryview):
            base = base.obj
    return base


def _inside(arr, buf):
    start = arr.__array_interface__["data"][0]
    return buf.address <= start and start + arr.nbytes <= buf.address + buf.size


@pytest.mark.parametrize("row_group_rows", [65536, 100], ids=["one-row-group", "many"])
def test_codes_are_views_of_arrow_buffers(tmp_path, make_index, sdata, row_group_rows):
    _, xq, _ = sdata
    # row-major codes: the fast scans' block layout (4-bit on AVX2, 8-bit on AVX-512
    # VBMI) is a copy made at load
    index = make_index("ivfpq", keep_vectors=True, fast_scan=False)
    store = IndexStore.create(tmp_path / "s", index, row_group_rows=row_group_rows)
    sizes, ids, cols = store.read_lists()
    assert sizes.sum() == ids.size == NB
    for arr in (ids, cols["codes"], cols["vectors"]):
        buf = _arrow_owner(arr)
        assert isinstance(buf, pa.Buffer), "array was copied out of Arrow"
        assert _inside(arr, buf)
        assert not arr.flags.owndata and arr.flags.c_contiguous
    assert cols["codes"].dtype == np.uint8 and cols["codes"].shape == (NB, store.code_size)
    # the index the kernels scan holds exactly those buffers
    loaded = load_index(store)
    codes = loaded._lists.data["codes"]
    buf = _arrow_owner(codes)
    assert isinstance(buf, pa.Buffer) and _inside(codes, buf)
    np.testing.assert_array_equal(loaded.search(xq, K, nprobe=4)[1],
                                  index.search(xq, K, nprobe=4)[1])


def test_shard_read_of_whole_row_groups_is_zero_copy(tmp_path, make_index):
    index = make_index("ivfpq")
    store = IndexStore.create(tmp_path / "s", index, row_group_rows=100)
    groups = store.manifest["files"]["segments"][0]["row_groups"]
    lists = list(range(groups[1]["first_list"], groups[2]["last_list"] + 1))
    sizes, ids, cols = store.read_lists(lists)
    assert ids.size == groups[1]["rows"] + groups[2]["rows"]
    assert isinstance(_arrow_owner(cols["codes"]), pa.Buffer)


def _calls_during(fn):
    """(number of Python and C function calls made by ``fn()``, names of C calls)."""
    counts = {"n": 0}
    names = set()

    def prof(frame, event, arg):
        if event in ("call", "c_call"):
            counts["n"] += 1
            if event == "c_call":
                names.add(getattr(arg, "__name__", ""))

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return counts["n"], names


def test_load_work_in_python_does_not_grow_with_rows(tmp_path, make_index, sdata):
    """No per-row Python loop or conversion: the same calls load 2000 or 8000 rows."""
    xb = sdata[0]
    small = make_index("ivfpq", keep_vectors=True)
    big = make_index("ivfpq", keep_vectors=True)
    for r in range(1, 4):
        big.add(xb, ids=np.arange(r * NB, (r + 1) * NB))
    IndexStore.create(tmp_path / "small", small)
    IndexStore.create(tmp_path / "big", big)
    got = {}
    for name in ("small", "big"):
        store = IndexStore.open(tmp_path / name)
        load_index(store)  # first-use imports, caches and kernel dispatch
        store = IndexStore.open(tmp_path / name)
        got[name] = _calls_during(lambda: load_index(store))  # noqa: B023
    # a per-row loop over the 6000 extra rows would add thousands of calls; a few
    # first-use calls (caches, kernel dispatch) may fall in either load, so allow those
    assert got["big"][0] <= got["small"][0] + 20, got
    for n in ("to_pylist", "as_py", "to_numpy", "to_pandas", "tolist"):
        assert n not in got["big"][1]


def test_loaded_arrays_are_writable_so_the_index_stays_mutable(tmp_path, make_index):
    index = make_index("flat")
    store = IndexStore.create(tmp_path / "s", index)
    loaded = load_index(store)
    vec = loaded._lists.data["vectors"]
    assert isinstance(_arrow_owner(vec), pa.Buffer) and vec.flags.writeable
    assert loaded.remove_ids(np.arange(10)) == 10
    assert loaded.ntotal == NB - 10
    assert shardann.open_index(tmp_path / "s").ntotal == NB  # the files are untouched


def test_filtered_read_is_streamed_in_bounded_batches(tmp_path, make_index, monkeypatch):
    """A shard owning every other list reads its rows a few row groups at a time
    into arrays allocated once, and gets exactly the rows of a full read."""
    from shardann.storage import _segments

    index = make_index("ivfpq", keep_vectors=True)
    # row groups of several lists, so every one holds rows of lists not asked for
    store = IndexStore.create(tmp_path / "s", index, row_group_rows=400)
    groups = store.manifest["files"]["segments"][0]["row_groups"]
    assert len(groups) > 3 and all(g["first_list"] < g["last_list"] for g in groups)
    full_sizes, full_ids, full_cols = store.read_lists()
    lists = np.arange(0, store.nlist, 2)
    row_bytes = store.code_size + index.d * 4
    monkeypatch.setattr(_segments, "READ_BATCH_BYTES", 500 * row_bytes)
    batches = []
    real = _segments.SegmentFile.read

    def spy(self, row_groups=None, columns=None):
        if "code" in columns:
            batches.append(sum(self.entry["row_groups"][g]["rows"] for g in row_groups))
        return real(self, row_groups, columns)

    monkeypatch.setattr(_segments.SegmentFile, "read", spy)
    sizes, ids, cols = store.read_lists(lists)
    # a batch stops at the first row group that reaches the budget
    assert len(batches) > 1
    assert max(batches) < 500 + max(g["rows"] for g in groups)
    keep = np.repeat(np.isin(np.arange(store.nlist), lists), full_sizes)
    np.testing.assert_array_equal(sizes[lists], full_sizes[lists])
    np.testing.assert_array_equal(ids, full_ids[keep])
    for k in ("codes", "vectors"):
        np.testing.assert_array_equal(cols[k], full_cols[k][keep])
        assert cols[k].flags.owndata or cols[k].base is not None
