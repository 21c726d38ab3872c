"""ShardedIndex in local Ray mode: exactness against the local index, routing,
writes, faults and input validation; attributes and filters (1 and 3 shards
answer as the local index, hits' columns included)."""

import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray
from dist_support import assert_same, build_local

import shardann
from shardann.distributed import SearchResult, ShardedIndex, place_lists
from shardann.storage import IndexStore

pytestmark = pytest.mark.ray


def test_placement_balances_rows():
    rng = np.random.default_rng(0)
    sizes = rng.integers(50, 150, 256)
    for shards in (2, 3, 4):
        owner = place_lists(sizes, shards)
        loads = np.bincount(owner, weights=sizes, minlength=shards)
        assert loads.max() <= 1.1 * loads.mean()
        assert set(owner.tolist()) == set(range(shards))
    np.testing.assert_array_equal(place_lists(sizes, 3), place_lists(sizes, 3))


@pytest.mark.parametrize("nbits,keep", [(8, False), (4, True)])
def test_shard_of_empty_lists_answers_nothing(tmp_path, nbits, keep):
    # a shard may own only empty lists; it must start (warm-up) and answer -1 rows
    from shardann.bench.datasets import synthetic_split
    from shardann.distributed.shard import ShardWorker

    xb, xq, xt = synthetic_split(2000, 4, 16, nt=2000, seed=2)
    index = shardann.IVFPQIndex(16, 32, 4, nbits, keep_vectors=keep, seed=0).train(xt)
    index.add(xb[index.assign(xb) != 0])  # list 0 stays empty
    index.save(tmp_path / "idx")
    worker = ShardWorker(tmp_path / "idx", np.array([0]))
    q = np.ascontiguousarray(xq, dtype=np.float32)
    probes = np.zeros((4, 1), np.int64)
    keys, ids, exact = worker.search(q, np.zeros((4, 1), np.float32), probes, 3, keep)
    assert (ids == -1).all() and np.isinf(keys).all()
    assert exact is None if not keep else np.isinf(exact).all()


def test_shard_payload_chunks_stay_under_the_inline_size():
    from shardann.distributed.shard import INLINE_CHUNK_BYTES, pack, unpack

    rng = np.random.default_rng(1)
    q = rng.standard_normal((256, 128)).astype(np.float32)  # 128 KB: over Ray's 100 KB
    probes = rng.integers(-1, 1024, (256, 16))
    chunks = pack((q, probes, 10, False))
    assert len(chunks) > 1 and all(0 < len(c) <= INLINE_CHUNK_BYTES for c in chunks)
    got = unpack(chunks)
    np.testing.assert_array_equal(got[0], q)
    np.testing.assert_array_equal(got[1], probes)
    assert got[2:] == (10, False)
    assert unpack(b"".join(chunks))[2] == 10
    assert unpack(pack(None)) is None


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_one_and_three_shards_equal_local(ray_local, data, tmp_path, metric):
    xb, xq, xt = data
    local = build_local(tmp_path / "idx", xt, xb, metric, keep_vectors=True,
                        delete=np.arange(0, 6000, 7))  # tombstones present
    expected = {rf: local.search(xq, 10, nprobe=6, refine_factor=rf) for rf in (0, 3)}
    for got in expected.values():
        assert (got[1] >= 0).all()
        assert not np.isin(got[1], np.arange(0, 6000, 7)).any()
    assert not np.array_equal(expected[0][1], expected[3][1])  # refine changes results
    for shards in (1, 3):
        with ShardedIndex.open(tmp_path / "idx", num_shards=shards) as sharded:
            assert sharded.ntotal == local.ntotal
            for rf, want in expected.items():
                assert_same(sharded.search(xq, 10, nprobe=6, refine_factor=rf), want)


@pytest.mark.parametrize("keep,metric", [("int8", "l2"), ("int8", "cosine"), ("float16", "ip")])
def test_compact_kept_vectors_shards_equal_local(ray_local, data, tmp_path, keep, metric):
    # refine on float16 / int8 rows (read in place, int8 through the saved scale)
    xb, xq, xt = data
    local = build_local(tmp_path / "idx", xt, xb, metric, nbits=4, keep_vectors=keep)
    want = local.search(xq, 10, nprobe=6, refine_factor=3)
    with ShardedIndex.open(tmp_path / "idx", num_shards=2) as sharded:
        assert_same(sharded.search(xq, 10, nprobe=6, refine_factor=3), want)
        assert_same(sharded.search(xq[:1], 10, nprobe=6, refine_factor=3),
                    local.search(xq[:1], 10, nprobe=6, refine_factor=3))


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_four_bit_shards_equal_local(ray_local, data, tmp_path, metric):
    # shards scan 4-bit codes with the SIMD fast scan where the CPU has it
    xb, xq, xt = data
    local = build_local(tmp_path / "idx", xt, xb, metric, nbits=4,
                        delete=np.arange(0, 6000, 11))
    want = local.search(xq, 10, nprobe=6)
    with ShardedIndex.open(tmp_path / "idx", num_shards=2) as sharded:
        assert_same(sharded.search(xq, 10, nprobe=6), want)
        assert_same(sharded.search(xq[:1], 10, nprobe=6), local.search(xq[:1], 10, nprobe=6))


def test_routing_calls_only_owning_shard(ray_local, data, tmp_path):
    xb, xq, xt = data
    build_local(tmp_path / "idx", xt, xb)
    with ShardedIndex.open(tmp_path / "idx", num_shards=3) as sharded:
        q = sharded.model.prepare(xq[:1])
        _, probes = sharded.model.probe(q, 1)
        target = int(sharded.owner[probes[0, 0]])
        before = [s["calls"]["search"] for s in sharded.stats()["shards"]]
        sharded.search(xq[:1], 5, nprobe=1)
        after = [s["calls"]["search"] for s in sharded.stats()["shards"]]
        assert [a - b for a, b in zip(after, before, strict=True)] == [
            1 if s == target else 0 for s in range(3)]


def test_shard_threads_divide_the_cores(ray_local, data, tmp_path):
    xb, xq, xt = data
    build_local(tmp_path / "idx", xt, xb)
    # ray_local has 2 CPUs: two shards scanning at once get one kernel thread each
    with ShardedIndex.open(tmp_path / "idx", num_shards=2) as sharded:
        assert [s["threads"] for s in sharded.stats()["shards"]] == [1, 1]
        expected = sharded.search(xq, 10, nprobe=8)
    with ShardedIndex.open(tmp_path / "idx", num_shards=1, shard_threads=2) as sharded:
        assert [s["threads"] for s in sharded.stats()["shards"]] == [2]
        assert_same(sharded.search(xq, 10, nprobe=8), expected)
    with pytest.raises(ValueError, match="shard_threads"):
        ShardedIndex.open(tmp_path / "idx", num_shards=1, shard_threads=0)


def test_add_remove_durable_and_visible(ray_local, data, tmp_path):
    xb, xq, xt = data
    build_local(tmp_path / "idx", xt, xb[:4000])
    with ShardedIndex.open(tmp_path / "idx", num_shards=2) as sharded:
        new_ids = sharded.add(xb[4000:])
        np.testing.assert_array_equal(new_ids, np.arange(4000, 6000))
        assert sharded.ntotal == 6000
        D, I = sharded.search(xb[4500:4510], 1, nprobe=32)
        # l2 residual PQ: a stored vector is almost always its own nearest hit
        assert (I[:, 0] == np.arange(4500, 4510)).mean() >= 0.8
        # the coordinator's per-list sizes follow its writes (the stored ones, read anew)
        np.testing.assert_array_equal(sharded.list_sizes(),
                                      IndexStore.open(tmp_path / "idx").list_sizes())
        assert sharded.remove_ids(np.arange(4500, 4510)) == 10
        assert sharded.remove_ids(np.arange(4500, 4510)) == 0
        sizes = sharded.list_sizes()
        np.testing.assert_array_equal(sizes, IndexStore.open(tmp_path / "idx").list_sizes())
        assert sizes.dtype == np.int64 and sizes.sum() == sharded.ntotal == 5990
        assert sum(sharded.stats()["shard_rows"]) == 5990
        _, I2 = sharded.search(xb[4500:4510], 10, nprobe=32)
        assert not np.isin(I2, np.arange(4500, 4510)).any()
        with pytest.raises(ValueError, match="already in the index"):
            sharded.add(xb[:2], ids=[1, 2])
        expected = sharded.search(xq, 10, nprobe=8)
    # everything acknowledged is in the store: a fresh local open agrees
    reopened = shardann.open_index(tmp_path / "idx")
    assert reopened.ntotal == 5990
    assert_same(reopened.search(xq, 10, nprobe=8), expected)


def test_bad_input_raised_before_fanout(ray_local, data, tmp_path):
    xb, xq, xt = data
    build_local(tmp_path / "idx", xt, xb)
    with ShardedIndex.open(tmp_path / "idx", num_shards=2) as sharded:
        before = [s["calls"]["search"] for s in sharded.stats()["shards"]]
        with pytest.raises(ValueError, match="dimension"):
            sharded.search(xq[:, :5], 10)
        with pytest.raises(ValueError, match="NaN"):
            sharded.search(np.full((1, 32), np.nan, np.float32), 10)
        with pytest.raises(ValueError, match="k must be"):
            sharded.search(xq, 0)
        with pytest.raises(ValueError, match="nprobe"):
            sharded.search(xq, 10, nprobe=10_000)
        with pytest.raises(ValueError, match="keep_vectors"):
            sharded.search(xq, 10, refine_factor=2)
        with pytest.raises(TypeError):
            sharded.search(np.array([["a"] * 32]), 10)
        after = [s["calls"]["search"] for s in sharded.stats()["shards"]]
        assert before == after
        D, I = sharded.search(xq[:0], 4)
        assert D.shape == (0, 4) and I.shape == (0, 4)


def _kill_during_stream(sharded, xq, baseline, n_queries=500):
    outcomes = {"ok": 0, "unavailable": 0, "wrong": 0}
    victim = sharded._actors[0][0]

    def killer():
        time.sleep(0.3)
        ray.kill(victim, no_restart=False)

    t = threading.Thread(target=killer)
    t.start()
    for i in range(n_queries):
        j = i % len(xq)
        try:
            D, I = sharded.search(xq[j:j + 1], 10, nprobe=6, timeout_s=5)
        except shardann.ShardUnavailableError:
            outcomes["unavailable"] += 1
            continue
        if np.array_equal(I[0], baseline[1][j]):
            outcomes["ok"] += 1
        else:
            outcomes["wrong"] += 1
    t.join()
    return outcomes


def test_kill_shard_with_replicas(ray_local, data, tmp_path):
    xb, xq, xt = data
    build_local(tmp_path / "idx", xt, xb)
    with ShardedIndex.open(tmp_path / "idx", num_shards=2, replicas=2) as sharded:
        baseline = sharded.search(xq, 10, nprobe=6)
        outcomes = _kill_during_stream(sharded, xq, baseline)
        assert outcomes == {"ok": 500, "unavailable": 0, "wrong": 0}


def test_kill_shard_single_replica_recovers(ray_local, data, tmp_path):
    xb, xq, xt = data
    build_local(tmp_path / "idx", xt, xb)
    with ShardedIndex.open(tmp_path / "idx", num_shards=2, replicas=1) as sharded:
        baseline = sharded.search(xq, 10, nprobe=6)
        outcomes = _kill_during_stream(sharded, xq, baseline)
        assert outcomes["wrong"] == 0
        assert outcomes["ok"] + outcomes["unavailable"] == 500
        deadline = time.monotonic() + 60
        while True:  # the restarted actor reloads from the store
            try:
                assert_same(sharded.search(xq, 10, nprobe=6), baseline)
                break
            except shardann.ShardUnavailableError:
                assert time.monotonic() < deadline
        assert sharded.ntotal == len(xb)


def test_timeout_and_partial(ray_local, data, tmp_path):
    xb, xq, xt = data
    build_local(tmp_path / "idx", xt, xb)
    with ShardedIndex.open(tmp_path / "idx", num_shards=2, replicas=1, max_restarts=0) as s:
        full = s.search(xq, 10, nprobe=32)
        ray.kill(s._actors[1][0], no_restart=True)
        # shard 0 must answer within the deadline even while the raylet reaps
        # the killed worker on this small machine: 1 s was seen to fall short
        with pytest.raises(shardann.ShardUnavailableError, match=r"shard\(s\) \[1\]"):
            s.search(xq, 10, nprobe=32, timeout_s=3)
        res = s.search(xq, 10, nprobe=32, timeout_s=3, allow_partial=True)
        assert isinstance(res, SearchResult) and res.missing_shards == [1]
        assert not res.complete
        assert (res[1] >= 0).all()
        # what is left is exactly shard 0's answer: the local scan of its lists
        local = shardann.open_index(tmp_path / "idx")
        q = local.prepare(xq)
        dis0, probes = local.probe(q, 32)
        probes = np.where(s.owner[probes] == 0, probes, -1)
        D0, I0 = local.search_preassigned(q, dis0, probes, 10)
        np.testing.assert_array_equal(res[1], I0)
        np.testing.assert_array_equal(res[0], D0)
        assert not np.array_equal(res[1], full[1])


# -- attributes and filters (issue 21) ------------------------------------------------------
ATTR_FILTERS = [
    "lang = 'en'",                                   # about a third passes
    "lang = 'en' AND year >= 2021 AND tags CONTAINS 'news'",
    "year BETWEEN 2019 AND 2020 OR lang IS NULL",   # nulls
    "score < 0.02",                                  # very selective
    "lang = 'xx'",                                   # nothing passes: rows of -1
]
ATTR_COLUMNS = ["lang", "year", "tags", "ts"]


def _same(got, want):
    """Equal ``(D, I)`` and, when both carry one, equal attribute tables."""
    assert len(got) == len(want)
    assert_same(got, want)
    if len(want) == 3:
        assert got[2].equals(want[2]), (got[2], want[2])


def _attributes(n, seed):
    """A table of n rows: lang (string, with nulls), year (int), tags (list<string>),
    score (float), ts (timestamp)."""
    rng = np.random.default_rng(seed)
    lang = np.array(["en", "de", "fr"], object)[rng.integers(0, 3, n)]
    lang[rng.random(n) < 0.1] = None
    tags = [["news", "sport"][: rng.integers(0, 3)] if i % 4 else ["blog"] for i in range(n)]
    ts = (np.datetime64("2024-01-01T00:00:00") + rng.integers(0, 10**6, n)
          .astype("timedelta64[s]")).astype("datetime64[us]")
    return pa.table({"lang": pa.array(lang.tolist(), pa.string()),
                     "year": rng.integers(2015, 2025, n),
                     "tags": pa.array(tags, pa.list_(pa.string())),
                     "score": rng.random(n),
                     "ts": pa.array(ts)})


@pytest.fixture(scope="module")
def attr_small():
    from shardann.bench.datasets import synthetic_split
    xb, xq, xt = synthetic_split(3000, 12, 16, nt=1500, seed=7)
    return xb, xq, xt


@pytest.fixture(scope="module")
def attr_store(attr_small, tmp_path_factory):
    """A local IVF-PQ index with attributes and tombstones, saved; reopened from the store."""
    xb, _, xt = attr_small
    path = tmp_path_factory.mktemp("filters") / "idx"
    index = shardann.IVFPQIndex(16, 16, 4, 8, "l2", seed=0, keep_vectors=True, niter=6,
                                pq_niter=6).train(xt)
    index.add(xb, attributes=_attributes(len(xb), 1))
    index.remove_ids(np.arange(0, len(xb), 11))
    index.save(path)
    return path


def test_one_and_three_shards_equal_local_with_filters(ray_local, attr_small, attr_store):
    _, xq, _ = attr_small
    local = shardann.open_index(attr_store)
    for shards in (1, 3):
        with ShardedIndex.open(attr_store, num_shards=shards) as sharded:
            assert sharded.attribute_schema.equals(local.attribute_schema)
            for f in ATTR_FILTERS:
                for rf in (0, 2):
                    want = local.search(xq, 8, nprobe=6, refine_factor=rf, filter=f,
                                        columns=ATTR_COLUMNS)
                    _same(sharded.search(xq, 8, nprobe=6, refine_factor=rf, filter=f,
                                        columns=ATTR_COLUMNS), want)
            # an Expression works as the string does; filter=None is unchanged
            expr = (pc.field("lang") == "de") & (pc.field("year") > 2018)
            _same(sharded.search(xq, 8, nprobe=6, filter=expr),
                 local.search(xq, 8, nprobe=6, filter=expr))
            _same(sharded.search(xq, 8, nprobe=6), local.search(xq, 8, nprobe=6))
            res = sharded.search(xq, 8, nprobe=6, filter=ATTR_FILTERS[0], columns=["year"],
                                 allow_partial=True)
            assert res.complete and len(res) == 3
            _same(res, local.search(xq, 8, nprobe=6, filter=ATTR_FILTERS[0], columns=["year"]))
            # bad filters and columns are refused by the coordinator, naming what is wrong
            for bad, err, needle in (({"filter": "nope = 1"}, ValueError, "nope"),
                                     ({"filter": "year = 'abc'"}, ValueError, "year"),
                                     ({"filter": "lang = = 'en'"}, ValueError, "syntax"),
                                     ({"columns": ["title"]}, ValueError, "title"),
                                     ({"filter": 3}, TypeError, "filter")):
                with pytest.raises(err, match=needle):
                    sharded.search(xq, 5, **bad)
    got = local.search(xq, 8, nprobe=16, filter="lang = 'xx'", columns=["lang"])
    assert (got[1] == -1).all() and got[2].column("lang").null_count == got[2].num_rows


def test_sharded_adds_with_attributes(ray_local, attr_small, tmp_path):
    # from an index without attributes: the first add with attributes reaches some
    # shards and fixes the schema on all (the other rows are nulls that IS NULL finds);
    # later adds reach the owning shards, with or without attributes, and are committed
    xb, xq, xt = attr_small
    index = shardann.IVFPQIndex(16, 16, 4, 8, "l2", seed=0, niter=6, pq_niter=6).train(xt)
    index.add(xb)
    path = tmp_path / "idx"
    index.save(path)
    local = shardann.open_index(path)
    new_x, new_attrs = xq + np.float32(0.01), _attributes(len(xq), 2)
    with ShardedIndex.open(path, num_shards=3) as sharded:
        assert sharded.attribute_schema is None
        with pytest.raises(ValueError, match="no attributes"):
            sharded.search(xq, 5, filter="lang = 'en'")
        ids = sharded.add(new_x[:2], attributes=new_attrs.slice(0, 2))
        local.add(new_x[:2], ids=ids, attributes=new_attrs.slice(0, 2))
        assert sharded.attribute_schema.equals(local.attribute_schema)
        ids = sharded.add(new_x[2:], ids=np.arange(10_000, 10_000 + len(xq) - 2),
                          attributes=new_attrs.slice(2))
        local.add(new_x[2:], ids=ids, attributes=new_attrs.slice(2))
        more = sharded.add(xq[:3] - np.float32(0.01))  # without attributes: nulls
        local.add(xq[:3] - np.float32(0.01), ids=more)
        for f in ("lang IS NULL", "lang = 'en'", "year >= 2020 OR tags CONTAINS 'news'"):
            _same(sharded.search(xq, 8, nprobe=16, filter=f, columns=ATTR_COLUMNS),
                  local.search(xq, 8, nprobe=16, filter=f, columns=ATTR_COLUMNS))
        with pytest.raises(ValueError, match="year"):
            sharded.add(xq[:2], attributes={"lang": ["en", "de"]})  # year etc. missing
    # the adds were committed with their attributes
    _same(shardann.open_index(path).search(xq, 8, nprobe=16, filter="lang = 'fr'",
                                           columns=ATTR_COLUMNS),
          local.search(xq, 8, nprobe=16, filter="lang = 'fr'", columns=ATTR_COLUMNS))


def test_filtered_partial_answer(ray_local, attr_small, attr_store):
    # a dead shard: the filtered search fails, or with allow_partial answers from the
    # others — passing hits only, their columns included
    _, xq, _ = attr_small
    with ShardedIndex.open(attr_store, num_shards=2, max_restarts=0) as s:
        ray.kill(s._actors[1][0], no_restart=True)
        f = "lang = 'en' AND score < 0.5"
        with pytest.raises(shardann.ShardUnavailableError):
            s.search(xq, 5, nprobe=4, filter=f, timeout_s=3)
        res = s.search(xq, 5, nprobe=4, filter=f, columns=["lang", "score"], timeout_s=3,
                       allow_partial=True)
        assert res.missing_shards == [1] and len(res) == 3
        I, A = res[1], res[2]
        hit = I.reshape(-1) >= 0
        assert hit.any()
        rows = A.filter(pa.array(hit)).to_pylist()
        assert all(r["lang"] == "en" and r["score"] < 0.5 for r in rows)
        assert A.filter(pa.array(~hit)).column("lang").null_count == int((~hit).sum())
