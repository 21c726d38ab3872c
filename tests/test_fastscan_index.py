"""The 4-bit and 8-bit SIMD fast scans inside IVFPQIndex: codes held once, in
block layout, with the same results as the scalar scan over row-major codes
while the lists change, after a save/open round trip and across pickling."""

import pickle

import numpy as np
import pytest

import shardann
from shardann._kernels import fastscan, fastscan8
from shardann.bench.datasets import synthetic_chunk
from shardann.index._lists import InvertedLists
from shardann.index._tiles import TiledRows

needs_avx2 = pytest.mark.skipif(not fastscan.AVAILABLE, reason="fast scan needs x86 AVX2")
needs_vbmi = pytest.mark.skipif(not fastscan8.AVAILABLE,
                                reason="8-bit fast scan needs x86 AVX-512 VBMI")

D = 32


@pytest.fixture(scope="module")
def data():
    return synthetic_chunk(0, 12000, D), synthetic_chunk(1_000_000, 1_000_060, D)


def _pair(x, metric="l2", M=8, nbits=4, **kw):
    """(fast-scan index, scalar-scan twin), trained alike."""
    return [shardann.IVFPQIndex(D, 24, M, nbits, metric=metric, seed=3, fast_scan=fast, **kw)
            .train(x[:4000]) for fast in (True, False)]


def _tiled(index):
    return isinstance(index._lists.data["codes"], TiledRows)


def _assert_same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("metric,M,nbits,kw", [
    pytest.param("l2", 8, 4, {}, marks=needs_avx2),
    pytest.param("cosine", 16, 4, {}, marks=needs_avx2),
    pytest.param("l2", 8, 8, {}, marks=needs_vbmi),
    # each compiles kernels of its own: opt-in, to keep the default suite under 10 minutes
    pytest.param("cosine", 16, 8, {}, marks=[needs_vbmi, pytest.mark.slow]),
    pytest.param("ip", 8, 4, {}, marks=[needs_avx2, pytest.mark.slow]),
    pytest.param("l2", 16, 4, {"precompute_max_bytes": 0}, marks=[needs_avx2, pytest.mark.slow]),
    pytest.param("l2", 16, 8, {"precompute_max_bytes": 0}, marks=[needs_vbmi, pytest.mark.slow])])
def test_fast_scan_tracks_adds_and_removes(data, metric, M, nbits, kw):
    x, q = data
    fast, scalar = _pair(x, metric, M, nbits, **kw)
    assert _tiled(fast) and not _tiled(scalar)
    rng = np.random.default_rng(5)
    pos = 0
    for step in range(12):
        n = int(rng.integers(1, 1500))
        for index in (fast, scalar):
            index.add(x[pos:pos + n])
        pos += n
        if step % 3 == 2:
            gone = rng.choice(pos, 200)
            assert fast.remove_ids(gone) == scalar.remove_ids(gone)
        for k in (1, 10, 50):
            _assert_same(fast.search(q, k, nprobe=6), scalar.search(q, k, nprobe=6))
            _assert_same(fast.search(q[:1], k, nprobe=6), scalar.search(q[:1], k, nprobe=6))
    ids = np.flatnonzero(scalar.contains(np.arange(pos)))
    np.testing.assert_array_equal(fast.reconstruct(ids), scalar.reconstruct(ids))


@needs_avx2
def test_codes_are_held_once(data):
    x, _ = data
    fast, scalar = _pair(x)
    for index in (fast, scalar):
        index.add(x)
    # one copy of the codes: only the padding of each list to 32-row blocks is extra
    row = 8 + fast.code_size
    pad = 31 * fast.nlist * row
    assert fast._lists.nbytes() <= scalar._lists.nbytes() + pad
    fast._lists.compact()
    assert fast._lists.allocated_bytes() <= x.shape[0] * row + pad + 3 * 8 * fast.nlist


@pytest.mark.parametrize("nbits,kernels", [pytest.param(4, fastscan, marks=needs_avx2),
                                            pytest.param(8, fastscan8, marks=needs_vbmi)])
def test_fast_scan_after_save_and_open(data, tmp_path, monkeypatch, nbits, kernels):
    x, q = data
    index = shardann.IVFPQIndex(D, 24, 8, nbits, seed=3)
    index.train(x[:4000])
    index.add(x)
    index.remove_ids(np.arange(0, x.shape[0], 5))
    want = index.search(q, 10, nprobe=6)
    index.save(tmp_path / "idx")
    opened = shardann.open_index(tmp_path / "idx")
    assert _tiled(opened)
    _assert_same(opened.search(q, 10, nprobe=6), want)
    monkeypatch.setattr(kernels, "AVAILABLE", False)  # a CPU without the SIMD scan opens it
    plain = shardann.open_index(tmp_path / "idx")
    assert not _tiled(plain) and plain.fast_scan
    _assert_same(plain.search(q, 10, nprobe=6), want)
    for i in range(5):  # one query at a time takes the serial kernels
        _assert_same(opened.search(q[i:i + 1], 10, nprobe=6),
                     plain.search(q[i:i + 1], 10, nprobe=6))


def test_fast_scan_can_be_turned_off(data, tmp_path):
    x, q = data
    on, off = _pair(x)
    for index in (on, off):
        index.add(x)
    _assert_same(on.search(q, 10, nprobe=6), off.search(q, 10, nprobe=6))
    assert not _tiled(off)
    off.save(tmp_path / "off")
    assert shardann.open_index(tmp_path / "off").fast_scan is False
    with pytest.raises(AttributeError):
        on.fast_scan = False  # the layout is chosen with the lists
    with pytest.raises(TypeError, match="fast_scan"):
        shardann.IVFPQIndex(D, 24, 8, 4, fast_scan="yes")


@needs_avx2
def test_pickle_keeps_or_converts_the_layout(data, monkeypatch):
    x, q = data
    index = shardann.IVFPQIndex(D, 24, 8, 4, seed=3)
    index.train(x[:4000]).add(x)
    want = index.search(q, 10, nprobe=6)
    blob = pickle.dumps(index)
    clone = pickle.loads(blob)
    assert _tiled(clone)
    _assert_same(clone.search(q, 10, nprobe=6), want)
    monkeypatch.setattr(fastscan, "AVAILABLE", False)
    elsewhere = pickle.loads(blob)
    assert not _tiled(elsewhere)
    _assert_same(elsewhere.search(q, 10, nprobe=6), want)


@needs_avx2
def test_layout_follows_a_retrain_and_a_reload(data, tmp_path):
    x, q = data
    index, twin = _pair(x)
    for ix in (index, twin):
        ix.add(x[:3000])
        ix.search(q, 10, nprobe=6)
        ix.remove_ids(np.arange(3000))
        ix.train(x[4000:8000]).add(x[5000:])  # new lists, other sizes
    _assert_same(index.search(q, 10, nprobe=6), twin.search(q, 10, nprobe=6))
    other = shardann.IVFPQIndex(D, 24, 8, 4, seed=4)
    other.train(x[:4000]).add(x[:500])
    other.save(tmp_path / "small")
    arrays = shardann.open_index(tmp_path / "small")._trained_arrays()
    for ix in (index, twin):
        ix._set_trained_arrays(arrays)
        ix.add(x[:100])
    assert _tiled(index)
    _assert_same(index.search(q, 10, nprobe=6), twin.search(q, 10, nprobe=6))


def test_tiled_lists_match_row_major_lists_after_many_changes():
    rng = np.random.default_rng(9)
    cs, nlist = 5, 7
    cols = {"codes": (cs, np.uint8), "vectors": (3, np.float16)}
    tiled = InvertedLists(nlist, cols, tiled=("codes",))
    plain = InvertedLists(nlist, cols)
    next_id = 0
    for step in range(60):
        n = int(rng.integers(1, 90))
        owner = rng.integers(0, nlist, n)
        payload = {"codes": rng.integers(0, 256, (n, cs), dtype=np.uint8),
                   "vectors": rng.standard_normal((n, 3)).astype(np.float16)}
        for lists in (tiled, plain):
            lists.add(owner, np.arange(next_id, next_id + n), **payload)
        next_id += n
        if step % 4 == 3:
            ids = plain.ids[plain.live_rows()]
            dead = set(rng.choice(ids, min(ids.size, 40), replace=False).tolist())
            for lists in (tiled, plain):
                rows = lists.live_rows()
                lists.remove(rows[np.isin(lists.ids[rows], list(dead))])
        if step == 40:
            tiled.compact()
        assert (tiled.start % 32 == 0).all() and (tiled.cap % 32 == 0).all()
        got, want = tiled.packed(), plain.packed()
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        for name in cols:
            np.testing.assert_array_equal(got[2][name], want[2][name])
        lst = int(rng.integers(nlist))
        np.testing.assert_array_equal(tiled.get_list(lst)[1]["codes"],
                                      plain.get_list(lst)[1]["codes"])


def test_tiled_rows_indexing():
    rows = TiledRows.zeros(64, 3)
    values = np.arange(64 * 3, dtype=np.uint8).reshape(64, 3)
    rows[:] = values
    np.testing.assert_array_equal(rows[5], values[5])
    np.testing.assert_array_equal(rows[10:40], values[10:40])
    mask = np.arange(64) % 3 == 0
    np.testing.assert_array_equal(rows[mask], values[mask])
    np.testing.assert_array_equal(rows[np.array([[1, 2], [63, 0]])],
                                  values[np.array([[1, 2], [63, 0]])])
    np.testing.assert_array_equal(rows.tiles[1, 2], values[32:, 2])  # byte 2 of rows 32..63
    rows[np.array([7])] = 255
    assert (rows[7] == 255).all()
    for bad in (np.array([64]), np.array([-1])):
        with pytest.raises(IndexError):
            rows[bad]
    with pytest.raises(IndexError):
        rows[np.array([0.5])]
    with pytest.raises(ValueError, match="multiple of 32"):
        TiledRows.zeros(33, 3)
    with pytest.raises(ValueError, match="uint8"):
        InvertedLists(2, {"vectors": (3, np.float32)}, tiled=("vectors",))
    grown = rows.resized(128, 40)
    np.testing.assert_array_equal(grown[:40], rows[:40])
    assert len(grown) == 128
