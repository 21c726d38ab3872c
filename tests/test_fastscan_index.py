"""The 4-bit SIMD fast scan inside IVFPQIndex: same results as the scalar scan
while the lists change underneath it, and after a save/open round trip."""

import numpy as np
import pytest

import shardann
from shardann._kernels import fastscan
from shardann.bench.datasets import synthetic_chunk

pytestmark = pytest.mark.skipif(not fastscan.AVAILABLE, reason="fast scan needs x86 AVX2")

D = 32


@pytest.fixture(scope="module")
def data():
    return synthetic_chunk(0, 12000, D), synthetic_chunk(1_000_000, 1_000_060, D)


def _pair(x, metric, M, **kw):
    out = []
    for _ in range(2):
        index = shardann.IVFPQIndex(D, 24, M, 4, metric=metric, seed=3, **kw)
        index.train(x[:4000])
        out.append(index)
    return out


def _search(index, q, monkeypatch, fast, k=10, nprobe=6):
    monkeypatch.setattr(fastscan, "AVAILABLE", fast)
    return index.search(q, k, nprobe=nprobe)


def _assert_same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("metric,M,kw", [("l2", 8, {}), ("ip", 8, {}), ("cosine", 16, {}),
                                         ("l2", 16, {"precompute_max_bytes": 0})])
def test_fast_scan_tracks_adds_and_removes(data, metric, M, kw, monkeypatch):
    x, q = data
    fast, scalar = _pair(x, metric, M, **kw)
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
            _assert_same(_search(fast, q, monkeypatch, True, k),
                         _search(scalar, q, monkeypatch, False, k))
    assert fast.derived_bytes() > 0  # the block layout it searched
    assert scalar.derived_bytes() == 0


def test_fast_scan_after_save_and_open(data, tmp_path, monkeypatch):
    x, q = data
    index = shardann.IVFPQIndex(D, 24, 8, 4, seed=3)
    index.train(x[:4000])
    index.add(x)
    index.remove_ids(np.arange(0, x.shape[0], 5))
    want = _search(index, q, monkeypatch, False)
    _assert_same(_search(index, q, monkeypatch, True), want)
    index.save(tmp_path / "idx")
    opened = shardann.open_index(tmp_path / "idx")
    _assert_same(_search(opened, q, monkeypatch, True, nprobe=6), want)
    for i in range(5):  # one query at a time takes the serial kernel
        _assert_same(_search(opened, q[i:i + 1], monkeypatch, True),
                     _search(opened, q[i:i + 1], monkeypatch, False))


def test_fast_scan_can_be_turned_off(data, tmp_path):
    x, q = data
    on = shardann.IVFPQIndex(D, 24, 8, 4, seed=3)
    off = shardann.IVFPQIndex(D, 24, 8, 4, seed=3, fast_scan=False)
    for index in (on, off):
        index.train(x[:4000]).add(x)
    _assert_same(on.search(q, 10, nprobe=6), off.search(q, 10, nprobe=6))
    assert on.derived_bytes() > 0 and off.derived_bytes() == 0  # no second copy of the codes
    off.save(tmp_path / "off")
    assert shardann.open_index(tmp_path / "off").fast_scan is False
    with pytest.raises(TypeError, match="fast_scan"):
        shardann.IVFPQIndex(D, 24, 8, 4, fast_scan="yes")


def test_pickle_drops_the_blocks_and_searches_the_same(data, monkeypatch):
    import pickle

    x, q = data
    index = shardann.IVFPQIndex(D, 24, 8, 4, seed=3)
    index.train(x[:4000]).add(x)
    want = _search(index, q, monkeypatch, True)
    assert index.derived_bytes() > 0
    clone = pickle.loads(pickle.dumps(index))
    assert clone.derived_bytes() == 0  # derived data is not shipped
    _assert_same(_search(clone, q, monkeypatch, True), want)


def test_blocks_follow_a_retrain_and_a_reload(data, tmp_path, monkeypatch):
    x, q = data
    index = shardann.IVFPQIndex(D, 24, 8, 4, seed=3)
    index.train(x[:4000]).add(x[:3000])
    index.search(q, 10, nprobe=6)  # blocks built
    index.remove_ids(np.arange(3000))
    index.train(x[4000:8000]).add(x[5000:])  # new lists, other sizes
    _assert_same(_search(index, q, monkeypatch, True), _search(index, q, monkeypatch, False))
    other = shardann.IVFPQIndex(D, 24, 8, 4, seed=4)
    other.train(x[:4000]).add(x[:500])
    other.save(tmp_path / "small")
    index._set_trained_arrays(shardann.open_index(tmp_path / "small")._trained_arrays())
    index.add(x[:100])
    _assert_same(_search(index, q, monkeypatch, True), _search(index, q, monkeypatch, False))


def test_code_blocks_match_a_fresh_layout_after_many_changes():
    from shardann.index._blocks import CodeBlocks
    from shardann.index._lists import InvertedLists

    rng = np.random.default_rng(9)
    cs, nlist = 5, 7
    lists = InvertedLists(nlist, {"codes": (cs, np.uint8)})
    blocks = CodeBlocks(lists, cs)
    next_id = 0
    for step in range(60):
        n = int(rng.integers(1, 90))
        owner = rng.integers(0, nlist, n)
        lists.add(owner, np.arange(next_id, next_id + n),
                  codes=rng.integers(0, 256, (n, cs), dtype=np.uint8))
        blocks.mark(owner)
        next_id += n
        if step % 4 == 3:
            rows = lists.live_rows()
            dead = rng.choice(rows, min(rows.size, 40), replace=False)
            blocks.mark(lists.owners(dead))
            lists.remove(dead)
        assert blocks.covers(lists)
        blocks.refresh(lists)
        for lst in range(nlist):
            s, size = lists.start[lst], lists.size[lst]
            got = blocks.bcodes[blocks.bstart[lst]:]
            for i in range(size):  # byte j of row i: block i // 32, group j, lane i % 32
                base = (i // 32) * 32 * cs + i % 32
                np.testing.assert_array_equal(got[base:base + 32 * cs:32],
                                              lists.data["codes"][s + i])
    assert blocks.used >= int((-(-lists.size // 32)).sum()) * 32 * cs
