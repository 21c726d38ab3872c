"""Attributes and filters on the sharded index: 1 and 3 shards answer exactly as
the local index does (ids, distances and the hits' columns), adds with
attributes reach the owning shards, bad filters and columns are refused."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dist_support import assert_same

import shardann
from shardann.distributed import ShardedIndex

pytestmark = pytest.mark.ray

FILTERS = [
    "lang = 'en'",                                   # about a third passes
    "lang = 'en' AND year >= 2021 AND tags CONTAINS 'news'",
    "year BETWEEN 2019 AND 2020 OR lang IS NULL",   # nulls
    "score < 0.02",                                  # very selective
    "lang = 'xx'",                                   # nothing passes: rows of -1
]
COLUMNS = ["lang", "year", "tags", "ts"]


def same(got, want):
    """Equal ``(D, I)`` and, when both carry one, equal attribute tables."""
    assert len(got) == len(want)
    assert_same(got, want)
    if len(want) == 3:
        assert got[2].equals(want[2]), (got[2], want[2])


def attributes(n, seed):
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
def small():
    from shardann.bench.datasets import synthetic_split
    xb, xq, xt = synthetic_split(3000, 12, 16, nt=1500, seed=7)
    return xb, xq, xt


@pytest.fixture(scope="module")
def store(small, tmp_path_factory):
    """A local IVF-PQ index with attributes and tombstones, saved; reopened from the store."""
    xb, _, xt = small
    path = tmp_path_factory.mktemp("filters") / "idx"
    index = shardann.IVFPQIndex(16, 16, 4, 8, "l2", seed=0, keep_vectors=True, niter=6,
                                pq_niter=6).train(xt)
    index.add(xb, attributes=attributes(len(xb), 1))
    index.remove_ids(np.arange(0, len(xb), 11))
    index.save(path)
    return path


def test_one_and_three_shards_equal_local_with_filters(ray_local, small, store):
    _, xq, _ = small
    local = shardann.open_index(store)
    for shards in (1, 3):
        with ShardedIndex.open(store, num_shards=shards) as sharded:
            assert sharded.attribute_schema.equals(local.attribute_schema)
            for f in FILTERS:
                for rf in (0, 2):
                    want = local.search(xq, 8, nprobe=6, refine_factor=rf, filter=f,
                                        columns=COLUMNS)
                    got = sharded.search(xq, 8, nprobe=6, refine_factor=rf, filter=f,
                                         columns=COLUMNS)
                    same(got, want)
            # an Expression works as the string does; filter=None is unchanged
            expr = (pc.field("lang") == "de") & (pc.field("year") > 2018)
            same(sharded.search(xq, 8, nprobe=6, filter=expr),
                        local.search(xq, 8, nprobe=6, filter=expr))
            same(sharded.search(xq, 8, nprobe=6), local.search(xq, 8, nprobe=6))
    got = local.search(xq, 8, nprobe=16, filter="lang = 'xx'", columns=["lang"])
    assert (got[1] == -1).all() and got[2].column("lang").null_count == got[2].num_rows


def test_adds_with_attributes_reach_the_owning_shards(ray_local, small, store, tmp_path):
    xb, xq, _ = small
    import shutil
    path = tmp_path / "idx"
    shutil.copytree(store, path)
    local = shardann.open_index(path)
    new_x = xq + np.float32(0.01)
    new_attrs = attributes(len(new_x), 2)
    with ShardedIndex.open(path, num_shards=3) as sharded:
        ids = sharded.add(new_x, ids=np.arange(10_000, 10_000 + len(new_x)),
                          attributes=new_attrs)
        local.add(new_x, ids=ids, attributes=new_attrs)
        more = sharded.add(xq[:3] - np.float32(0.01))  # without attributes: nulls
        local.add(xq[:3] - np.float32(0.01), ids=more)
        for f in ("lang = 'en'", "year >= 2020", "lang IS NULL"):
            same(sharded.search(xq, 8, nprobe=16, filter=f),
                        local.search(xq, 8, nprobe=16, filter=f))
        D, I, A = sharded.search(new_x, 1, nprobe=16, columns=["lang", "year"])
        hit = I[:, 0] >= 10_000
        assert hit.mean() >= 0.8
        want = new_attrs.select(["lang", "year"]).take(pa.array(I[hit, 0] - 10_000))
        assert A.filter(pa.array(hit)).equals(want)
        with pytest.raises(ValueError, match="year"):
            sharded.add(xq[:2], attributes={"lang": ["en", "de"]})  # year etc. missing
    # the adds were committed: a fresh coordinator sees them
    with ShardedIndex.open(path, num_shards=2) as reopened:
        same(reopened.search(xq, 8, nprobe=16, filter="lang = 'fr'", columns=COLUMNS),
                    local.search(xq, 8, nprobe=16, filter="lang = 'fr'", columns=COLUMNS))


def test_bad_filters_and_columns_are_refused(ray_local, small, store):
    _, xq, _ = small
    with ShardedIndex.open(store, num_shards=2) as sharded:
        with pytest.raises(ValueError, match="nope"):
            sharded.search(xq, 5, filter="nope = 1")
        with pytest.raises(ValueError, match="year"):
            sharded.search(xq, 5, filter="year = 'abc'")
        with pytest.raises(ValueError, match="syntax|position|line"):
            sharded.search(xq, 5, filter="lang = = 'en'")
        with pytest.raises(ValueError, match="title"):
            sharded.search(xq, 5, columns=["title"])
        with pytest.raises(TypeError):
            sharded.search(xq, 5, filter=3)


def test_first_attributes_fix_the_schema_on_every_shard(ray_local, small, tmp_path):
    # the first add with attributes reaches some shards; the others learn the schema,
    # and their rows (added without attributes) are nulls that `IS NULL` finds
    xb, xq, xt = small
    index = shardann.IVFPQIndex(16, 16, 4, 8, "l2", seed=0, niter=6, pq_niter=6).train(xt)
    index.add(xb)
    index.save(tmp_path / "idx")
    local = shardann.open_index(tmp_path / "idx")
    with ShardedIndex.open(tmp_path / "idx", num_shards=3) as sharded:
        assert sharded.attribute_schema is None
        with pytest.raises(ValueError, match="no attributes"):
            sharded.search(xq, 5, filter="lang = 'en'")
        attrs = attributes(2, 3).select(["lang", "year"])
        ids = sharded.add(xq[:2], attributes=attrs)
        local.add(xq[:2], ids=ids, attributes=attrs)
        assert sharded.attribute_schema.equals(local.attribute_schema)
        for f in ("lang IS NULL", "year >= 2000", "lang IS NOT NULL OR year < 2000"):
            same(sharded.search(xq, 8, nprobe=16, filter=f, columns=["year"]),
                        local.search(xq, 8, nprobe=16, filter=f, columns=["year"]))
