"""Ingest on Ray Data: the result equals the core index built from the same vectors and
model; inputs in every supported format; append; ids; bad input; the CLI handler;
attribute columns taken from Parquet, a Dataset or a SQL query."""

import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_support import (
    NPROBE,
    TRAIN,
    D,
    K,
    assert_same_index,
    data,
    embedding_array,
    write_mixed,
    write_parquet,
)

import shardann
from shardann.bench.datasets import write_fvecs
from shardann.cli import ingest as ingest_command
from shardann.distributed import InputError, clean_ingest_jobs, ingest
from shardann.index import load_index
from shardann.storage import IndexStore

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_local")]

N = 12000


@pytest.fixture(scope="module")
def xb():
    x = data(N)
    x.flags.writeable = False
    return x


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory, xb):
    """Parquet files of three encodings and different row-group sizes."""
    d = tmp_path_factory.mktemp("pq")
    write_mixed(d, xb, [3000, 4500, 2500, 2000], row_groups=[700, 1500, None, 333])
    return str(d)


def test_parquet_equals_core_index(tmp_path, xb, parquet_dir):
    path = str(tmp_path / "idx")
    s = ingest(path, parquet_dir, block_rows=2000, merge_bytes=64 << 10, **TRAIN)
    assert (s.version, s.mode, s.vectors, s.skipped_rows) == (1, "create", N, 0)
    assert s.blocks >= 6 and s.segments > 1 and s.bytes_written > 0
    assert s.recall is not None and s.recall > 0.5  # observed 0.75 (nprobe=16 of 16 lists)
    assert s.vectors_per_second > 0 and set(s.stage_seconds) >= {"sample", "train", "encode",
                                                                "merge", "commit"}
    store, got = assert_same_index(path, xb)
    # default ids are the input row order
    np.testing.assert_array_equal(np.sort(store.read_lists()[1]), np.arange(N))
    assert store.next_id == N
    # the job's scratch is gone; only its small record is left
    job_dir = os.path.join(path, "_ingest", s.job_id)
    assert os.listdir(job_dir) == ["committed.json"]
    # row groups are cut at list boundaries: a shard reads only its lists' row groups
    for seg in store.manifest["files"]["segments"]:
        assert all(g["first_list"] <= g["last_list"] for g in seg["row_groups"])
    # running the same job again does nothing
    again = ingest(path, parquet_dir, block_rows=2000, merge_bytes=64 << 10, **TRAIN)
    assert again.already_committed and again.version == 1
    assert IndexStore.open(path).version == 1


def test_sharded_search_over_ingested_index(tmp_path, xb, parquet_dir):
    from shardann.distributed import ShardedIndex

    path = str(tmp_path / "idx")
    ingest(path, parquet_dir, **TRAIN)
    local = load_index(IndexStore.open(path))
    q = data(40, seed=5)
    with ShardedIndex.open(path, num_shards=2) as sharded:
        D2, I2 = sharded.search(q, K, nprobe=NPROBE)
    D1, I1 = local.search(q, K, nprobe=NPROBE)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)


def test_array_formats_equal_core_index(tmp_path):
    """.npy (memory-mapped), .fvecs and .bvecs inputs, ids in input order."""
    x = data(5000)
    b = np.clip(np.round((x[:1500] + 4) * 30), 0, 255).astype(np.uint8)
    np.save(tmp_path / "a.npy", x[:2000])
    write_fvecs(tmp_path / "b.fvecs", x[2000:])
    rows = np.empty((b.shape[0], 4 + D), np.uint8)
    rows[:, :4] = np.array([D], np.int32).view(np.uint8)
    rows[:, 4:] = b
    rows.tofile(tmp_path / "c.bvecs")
    path = str(tmp_path / "idx")
    s = ingest(path, [str(tmp_path / "a.npy"), str(tmp_path / "b.fvecs"),
                      str(tmp_path / "c.bvecs")], block_rows=1200, **TRAIN)
    assert s.vectors == 6500
    assert_same_index(path, np.concatenate([x, b.astype(np.float32)]))


@pytest.mark.parametrize("opts", [
    {"keep_vectors": "float16", "metric": "l2"},
    {"keep_vectors": True, "metric": "cosine", "opq": True},
    {"metric": "ip", "nbits": 4},
])
def test_options_equal_core_index(tmp_path, xb, parquet_dir, opts):
    path = str(tmp_path / "idx")
    ingest(path, parquet_dir, block_rows=3000, **{**TRAIN, **opts})
    kw = {"refine_factor": 2} if opts.get("keep_vectors") else {}
    store, _ = assert_same_index(path, xb, **kw)
    if opts.get("keep_vectors") == "float16":
        assert store.columns["vector"]["dtype"] == "float16"


@pytest.mark.parametrize("opts", [
    {"pca": 16, "keep_vectors": True, "metric": "cosine", "opq": True},
    {"pca": 16, "keep_vectors": "float16", "nbits": 4},
    {"pca": 12, "M": None, "metric": "ip"},
])
def test_pca_equals_local_index(tmp_path, xb, parquet_dir, opts):
    """With ``pca`` the job trains the local index's model (the projection
    included) and its index answers as that index does, refining on the
    original vectors when they are kept."""
    path = str(tmp_path / "idx")
    # the whole input is the sample, in row order: the local index trains on xb itself
    ingest(path, parquet_dir, sample_size=N, spot_check=0, **{**TRAIN, **opts})
    store = IndexStore.open(path)
    assert store.config["pca"] == opts["pca"]
    o = {**TRAIN, **opts}
    kw = {"metric": o.get("metric", "l2"), "seed": 0, "niter": o["niter"], "pca": o["pca"]}
    if o["M"] is None:
        local = shardann.IVFFlatIndex(D, o["nlist"], **kw)
    else:
        local = shardann.IVFPQIndex(D, o["nlist"], o["M"], o.get("nbits", 8), **kw,
                                    opq=o.get("opq", False), keep_vectors=o["keep_vectors"],
                                    pq_niter=o["pq_niter"])
    local.train(xb)
    local.add(xb, ids=np.arange(N))
    mine = local.to_state(lists=False).arrays
    assert set(store.trained_arrays()) == set(mine) >= {"pca_matrix", "pca_mean"}
    for k, v in store.trained_arrays().items():
        np.testing.assert_array_equal(v, mine[k], err_msg=k)
    got = load_index(store)
    q = data(50, seed=99)
    kw = {"nprobe": NPROBE, "refine_factor": 2 if opts.get("keep_vectors") else 0}
    for a, b in zip(got.search(q, K, **kw), local.search(q, K, **kw), strict=True):
        np.testing.assert_array_equal(a, b)
    assert_same_index(path, xb, **kw)
    # appending keeps the projection; a different one is refused
    with pytest.raises(ValueError, match="pca=8"):
        ingest(path, parquet_dir, pca=8, progress=False)


def test_pca_is_checked_before_ray(tmp_path, parquet_dir):
    with pytest.raises(ValueError, match="multiple of M"):
        ingest(str(tmp_path / "idx"), parquet_dir, pca=12, **TRAIN)
    assert not os.path.exists(tmp_path / "idx" / "_ingest")


def test_ivf_flat(tmp_path, xb, parquet_dir):
    path = str(tmp_path / "idx")
    ingest(path, parquet_dir, **{**TRAIN, "M": None})
    assert IndexStore.open(path).kind == "ivfflat"
    assert_same_index(path, xb)


def test_id_column(tmp_path, xb):
    ids = np.random.default_rng(0).permutation(10 * N)[:N].astype(np.int64) + 5
    (tmp_path / "in").mkdir()
    write_mixed(tmp_path / "in", xb, [5000, 7000], ids=ids, row_groups=[900, 4000])
    path = str(tmp_path / "idx")
    s = ingest(path, str(tmp_path / "in"), id_column="id", block_rows=2500, **TRAIN)
    assert s.vectors == N
    store, _ = assert_same_index(path, xb, ids=ids)
    assert store.next_id == int(ids.max()) + 1


def test_duplicate_ids_are_an_error(tmp_path, xb):
    ids = np.arange(N, dtype=np.int64)
    ids[9000] = 17  # in another file than row 17
    (tmp_path / "in").mkdir()
    write_mixed(tmp_path / "in", xb, [6000, 6000], ids=ids)
    path = str(tmp_path / "idx")
    with pytest.raises(InputError, match="id 17 appears more than once"):
        ingest(path, str(tmp_path / "in"), id_column="id", **TRAIN)
    assert not IndexStore.exists(path)


def test_append_reuses_the_model_as_a_new_version(tmp_path, xb):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_mixed(a, xb[:7000], [3000, 4000])
    write_mixed(b, xb[7000:], [2000, 3000], encodings=("list",))
    path = str(tmp_path / "idx")
    first = ingest(path, str(a), **TRAIN)
    cb = IndexStore.open(path).manifest["files"]["codebooks"]
    second = ingest(path, str(b), progress=False)
    assert (second.mode, second.version, second.vectors) == ("append", 2, 5000)
    assert IndexStore.open(path, version=1).ntotal == 7000  # the old version stays
    store, _ = assert_same_index(path, xb)  # ids continue: 7000.. for the second batch
    assert store.manifest["files"]["codebooks"] == cb
    assert first.job_id != second.job_id
    # appending with index parameters that contradict the index is refused
    with pytest.raises(ValueError, match="do not pass"):
        ingest(path, str(b), nlist=99, progress=False)


def test_append_ids_already_in_index(tmp_path, xb):
    write_parquet(str(tmp_path / "a.parquet"), xb[:6000], ids=np.arange(6000))
    write_parquet(str(tmp_path / "b.parquet"), xb[6000:], ids=np.arange(5990, 11990))
    path = str(tmp_path / "idx")
    ingest(path, str(tmp_path / "a.parquet"), id_column="id", **TRAIN)
    with pytest.raises(InputError, match="already in the index"):
        ingest(path, str(tmp_path / "b.parquet"), id_column="id", progress=False)
    assert IndexStore.open(path).version == 1


def test_codebooks_from_another_index(tmp_path, xb, parquet_dir):
    first = str(tmp_path / "first")
    ingest(first, parquet_dir, **TRAIN)
    np.save(tmp_path / "x.npy", xb[:3000])
    path = str(tmp_path / "idx")
    s = ingest(path, str(tmp_path / "x.npy"), codebooks=first, progress=False)
    assert "train" not in s.stage_seconds
    a, b = IndexStore.open(first), IndexStore.open(path)
    for k, v in a.trained_arrays().items():
        np.testing.assert_array_equal(v, b.trained_arrays()[k])
    assert_same_index(path, xb[:3000])


# -- bad input ---------------------------------------------------------------------------
def _bad_inputs(tmp_path, xb):
    """Three good files and one with a NaN row (3) and a short row (7)."""
    write_parquet(str(tmp_path / "a.parquet"), xb[:4000], row_group_size=1000)
    bad = xb[4000:8000].copy()
    bad[3, 5] = np.nan
    arr = pa.array([r for r in bad], pa.list_(pa.float32()))
    short = pa.array([bad[7][:-1]], pa.list_(pa.float32()))
    arr = pa.concat_arrays([arr.slice(0, 7), short, arr.slice(8)])
    pq.write_table(pa.table({"embedding": arr}), tmp_path / "b.parquet", row_group_size=1500)
    write_parquet(str(tmp_path / "c.parquet"), xb[8000:], "binary")
    return str(tmp_path / "*.parquet")


def test_bad_rows_name_file_and_row(tmp_path, xb):
    inputs = _bad_inputs(tmp_path, xb)
    path = str(tmp_path / "idx")
    with pytest.raises(InputError, match=r"b\.parquet: row [37] .*(NaN|has 31 values)"):
        ingest(path, inputs, **TRAIN)
    assert not IndexStore.exists(path)


def test_skip_bad_rows(tmp_path, xb):
    inputs = _bad_inputs(tmp_path, xb)
    (tmp_path / "d.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    path = str(tmp_path / "idx")
    s = ingest(path, inputs, skip_bad_rows=True, **TRAIN)
    assert s.skipped_rows == 2 and s.vectors == N - 2
    assert [os.path.basename(p) for p, _ in s.skipped_files] == ["d.parquet"]
    assert any("row 3" in m for m in s.bad_rows) and any("row 7" in m for m in s.bad_rows)
    keep = np.setdiff1d(np.arange(N), [4003, 4007])  # ids stay the input row numbers
    assert_same_index(path, xb[keep], ids=keep)


@pytest.mark.parametrize("case", ["dimension", "column", "unreadable", "nan-npy"])
def test_bad_files_name_the_file(tmp_path, xb, case):
    write_parquet(str(tmp_path / "a.parquet"), xb[:5000])
    if case == "dimension":
        write_parquet(str(tmp_path / "b.parquet"), xb[5000:6000, :D - 1])
        want = r"b\.parquet: vectors have dimension 31; expected d=32"
    elif case == "column":
        write_parquet(str(tmp_path / "b.parquet"), xb[5000:6000], column="vec")
        want = r"b\.parquet: no column 'embedding' \(columns: vec\)"
    elif case == "unreadable":
        (tmp_path / "b.parquet").write_bytes(b"\x00" * 100)
        want = r"b\.parquet: cannot read Parquet file"
    else:
        y = xb[5000:6000].copy()
        y[321, 0] = np.inf
        np.save(tmp_path / "b.npy", y)
        want = r"b\.npy: row 321 \(input row 5321, id 5321\): embedding contains NaN"
    path = str(tmp_path / "idx")
    with pytest.raises(InputError, match=want):
        ingest(path, str(tmp_path / "*"), **TRAIN)
    assert not IndexStore.exists(path)


def test_failed_append_leaves_the_old_version(tmp_path, xb):
    write_parquet(str(tmp_path / "a.parquet"), xb[:5000])
    path = str(tmp_path / "idx")
    ingest(path, str(tmp_path / "a.parquet"), **TRAIN)
    y = xb[5000:].copy()
    y[-1, 3] = np.nan
    np.save(tmp_path / "b.npy", y)
    with pytest.raises(InputError, match=r"b\.npy: row 6999"):
        ingest(path, str(tmp_path / "b.npy"), block_rows=1000, progress=False)
    store = IndexStore.open(path)
    assert (store.version, store.ntotal) == (1, 5000)
    # the interrupted job's scratch can be cleaned up
    removed, freed = clean_ingest_jobs(path, committed=False)
    assert len(removed) == 1 and freed > 0


# -- command line ------------------------------------------------------------------------
def _parse(argv):
    parser = argparse.ArgumentParser()
    ingest_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_handler(tmp_path, xb, parquet_dir, capsys):
    path = str(tmp_path / "idx")
    args = _parse([path, parquet_dir, "--nlist", "16", "--M", "8", "--niter", "6",
                   "--keep-vectors", "--no-progress", "--spot-check", "20"])
    assert ingest_command.run(args) == 0
    out = capsys.readouterr().out
    assert f"ingested {N:,} vectors" in out and "recall@10" in out
    store = IndexStore.open(path)
    assert store.ntotal == N and store.columns["vector"]["dtype"] == "float32"


def test_cli_pca(tmp_path, xb, parquet_dir, capsys):
    from shardann.cli import UsageError

    path = str(tmp_path / "idx")
    argv = [path, parquet_dir, "--nlist", "16", "--M", "8", "--niter", "6", "--no-progress",
            "--spot-check", "20", "--keep-vectors"]
    with pytest.raises(UsageError, match="multiple of M"):
        ingest_command.run(_parse([*argv, "--pca", "20"]))
    assert ingest_command.run(_parse([*argv, "--pca", "16"])) == 0
    assert "recall@10" in capsys.readouterr().out
    store = IndexStore.open(path)
    assert store.ntotal == N and store.config["pca"] == 16
    assert store.trained_arrays()["pca_matrix"].shape == (D, 16)


def test_cli_bad_input_is_one_line(tmp_path, xb):
    from shardann.cli import CommandError, UsageError

    y = xb[:3000].copy()
    y[10] = np.nan
    np.save(tmp_path / "a.npy", y)
    argv = [str(tmp_path / "idx"), str(tmp_path / "a.npy"), "--nlist", "16"]
    with pytest.raises(CommandError, match=r"a\.npy: row 10 .*nothing was committed"):
        ingest_command.run(_parse([*argv, "--M", "8", "--no-progress"]))
    with pytest.raises(UsageError, match="--M"):
        ingest_command.run(_parse(argv))


# -- attribute columns (issue 21) -----------------------------------------------------------
ATTR_N = 4000
ATTR_COLUMNS = ["lang", "year", "tags"]
ATTR_FILTERS = ["lang = 'en'", "year >= 2020 AND tags CONTAINS 'news'", "lang IS NULL"]


def _attributes(n, seed=0):
    rng = np.random.default_rng(seed)
    lang = np.array(["en", "de", "fr"], object)[rng.integers(0, 3, n)].tolist()
    for i in range(0, n, 13):
        lang[i] = None
    return pa.table({"lang": pa.array(lang, pa.string()),
                     "year": pa.array(rng.integers(2015, 2025, n), pa.int64()),
                     "tags": pa.array([["news"] if i % 3 == 0 else ["blog"] for i in range(n)],
                                      pa.list_(pa.string()))})


def _write_attrs(path, x, table, encoding="fsl", row_group_size=None, ids=None):
    cols = {"embedding": embedding_array(x, encoding), "other": np.arange(len(x))}
    if ids is not None:
        cols["id"] = pa.array(ids, pa.int64())
    t = pa.table(cols)
    for name in table.column_names:
        t = t.append_column(name, table.column(name))
    pq.write_table(t, path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def attr_rows():
    return data(ATTR_N, seed=5), _attributes(ATTR_N)


@pytest.fixture(scope="module")
def attr_parquet_dir(tmp_path_factory, attr_rows):
    """Three files: the fast reader's encodings (fsl, list) and Arrow's (binary)."""
    x, attrs = attr_rows
    d = tmp_path_factory.mktemp("attrs")
    cuts = [0, 1500, 2600, ATTR_N]
    for i, (enc, rg) in enumerate([("fsl", 400), ("list", None), ("binary", 333)]):
        a, b = cuts[i], cuts[i + 1]
        _write_attrs(d / f"part-{i}.parquet", x[a:b], attrs.slice(a, b - a), enc, rg)
    return str(d)


def _attr_reference(path, x, attrs, ids=None):
    ref = load_index(IndexStore.open(path), lists=np.zeros(0, np.int64))
    ref.add(x, ids=np.arange(len(x)) if ids is None else ids, attributes=attrs)
    return ref


def _assert_same_attr_answers(path, ref, queries):
    got = shardann.open_index(path)
    assert got.attribute_schema.equals(ref.attribute_schema)
    for f in ATTR_FILTERS:
        a = got.search(queries, K, nprobe=NPROBE, filter=f, columns=ATTR_COLUMNS)
        b = ref.search(queries, K, nprobe=NPROBE, filter=f, columns=ATTR_COLUMNS)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
        assert a[2].equals(b[2]), f
    return got


def test_parquet_attributes_equal_core_index(tmp_path, attr_rows, attr_parquet_dir):
    x, attrs = attr_rows
    path = str(tmp_path / "idx")
    s = ingest(path, attr_parquet_dir, attributes=ATTR_COLUMNS, block_rows=700,
               merge_bytes=32 << 10, **TRAIN)
    assert s.vectors == ATTR_N and s.segments > 1
    ref = _attr_reference(path, x, attrs)
    _assert_same_attr_answers(path, ref, data(30, seed=9))
    store = IndexStore.open(path)
    assert store.attribute_schema.names == ATTR_COLUMNS  # only the named columns ("other" not)
    ids = np.array([0, 13, 1600, ATTR_N - 1, 10**9])
    got = shardann.open_index(path).get_attributes(ids, ["lang", "year"])
    want = attrs.select(["lang", "year"]).take(pa.array([0, 13, 1600, ATTR_N - 1, None]))
    assert got.equals(want)



@pytest.mark.slow  # 10 s: two more ingest jobs
def test_append_attributes(tmp_path, attr_rows, attr_parquet_dir):
    x, attrs = attr_rows
    path = str(tmp_path / "idx")
    ingest(path, attr_parquet_dir, attributes=ATTR_COLUMNS, **TRAIN)
    ref = _attr_reference(path, x, attrs)
    # append: the same columns (values cast to the index's types), or none (nulls)
    more_x, more_attrs = data(600, seed=6), _attributes(600, seed=1)
    _write_attrs(tmp_path / "more.parquet", more_x, more_attrs.set_column(
        1, "year", more_attrs.column("year").cast(pa.int32())))
    ingest(path, str(tmp_path / "more.parquet"), attributes=ATTR_COLUMNS, progress=False)
    _write_attrs(tmp_path / "bare.parquet", more_x[:100] + 1, pa.table({}))
    ingest(path, str(tmp_path / "bare.parquet"), progress=False)
    ref.add(more_x, ids=np.arange(ATTR_N, ATTR_N + 600), attributes=more_attrs)
    ref.add(more_x[:100] + 1, ids=np.arange(ATTR_N + 600, ATTR_N + 700))
    _assert_same_attr_answers(path, ref, data(30, seed=9))
    with pytest.raises(ValueError, match="lang"):
        ingest(path, str(tmp_path / "more.parquet"), attributes=["year", "tags"],
               progress=False)


@pytest.mark.slow  # 8 s: two ingest jobs
def test_append_attributes_to_an_index_without(tmp_path, attr_rows):
    # as index.add: the appended columns become the index's, the rows it held are nulls
    x, attrs = attr_rows
    path = str(tmp_path / "idx")
    _write_attrs(tmp_path / "bare.parquet", x[:1500], pa.table({}))
    ingest(path, str(tmp_path / "bare.parquet"), **TRAIN)
    assert IndexStore.open(path).attribute_schema is None
    ref = load_index(IndexStore.open(path), lists=np.zeros(0, np.int64))
    ref.add(x[:1500], ids=np.arange(1500))
    more = attrs.slice(1500, 1000)
    _write_attrs(tmp_path / "more.parquet", x[1500:2500], more)
    ingest(path, str(tmp_path / "more.parquet"), attributes=ATTR_COLUMNS, progress=False)
    ref.add(x[1500:2500], ids=np.arange(1500, 2500), attributes=more)
    got = _assert_same_attr_answers(path, ref, data(30, seed=9))
    years = got.get_attributes([0, 1499, 1500], ["year"]).column("year").to_pylist()
    assert years == [None, None, more.column("year")[0].as_py()]


def test_bad_rows_are_skipped_with_their_attributes(tmp_path, attr_rows):
    x, attrs = attr_rows
    x = x[:1000].copy()
    x[[3, 500]] = np.nan
    _write_attrs(tmp_path / "bad.parquet", x, attrs.slice(0, 1000), row_group_size=300)
    path = str(tmp_path / "idx")
    s = ingest(path, str(tmp_path / "bad.parquet"), attributes=ATTR_COLUMNS, skip_bad_rows=True,
               **TRAIN)
    assert s.skipped_rows == 2
    keep = np.setdiff1d(np.arange(1000), [3, 500])
    ref = _attr_reference(path, x[keep], attrs.take(pa.array(keep)), ids=keep)
    _assert_same_attr_answers(path, ref, data(20, seed=9))


def test_attribute_errors_name_file_and_column(tmp_path, attr_rows):
    x, attrs = attr_rows
    _write_attrs(tmp_path / "a.parquet", x[:500], attrs.slice(0, 500))
    with pytest.raises(InputError, match="a.parquet.*title"):
        ingest(str(tmp_path / "i1"), str(tmp_path / "a.parquet"), attributes=["title"],
               **TRAIN)
    _write_attrs(tmp_path / "b.parquet", x[500:900], attrs.slice(500, 400).set_column(
        1, "year", pa.array(["x"] * 400)))
    with pytest.raises(InputError, match="year"):
        ingest(str(tmp_path / "i2"), [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")],
               attributes=ATTR_COLUMNS, **TRAIN)
    with pytest.raises(ValueError, match="vector"):
        ingest(str(tmp_path / "i3"), str(tmp_path / "a.parquet"), attributes=["embedding"],
               **TRAIN)
    np.save(tmp_path / "x.npy", x[:500])
    with pytest.raises(InputError, match="Parquet"):
        ingest(str(tmp_path / "i4"), str(tmp_path / "x.npy"), attributes=["lang"], **TRAIN)


def test_dataset_attributes(tmp_path, attr_rows):
    import ray.data

    x, attrs = attr_rows
    n = 2000
    table = attrs.slice(0, n).append_column("id", pa.array(np.arange(n) * 3, pa.int64()))
    table = table.append_column("embedding", embedding_array(x[:n], "fsl"))
    ds = ray.data.from_arrow(table).repartition(3)
    path = str(tmp_path / "idx")
    ingest(path, ds, id_column="id", attributes=ATTR_COLUMNS, **TRAIN)
    ref = _attr_reference(path, x[:n], attrs.slice(0, n), ids=np.arange(n) * 3)
    _assert_same_attr_answers(path, ref, data(20, seed=9))


def test_cli_attributes(tmp_path, attr_rows, attr_parquet_dir, capsys):
    from shardann.cli import main

    path = str(tmp_path / "idx")
    code = main(["ingest", path, attr_parquet_dir, "--attributes", "lang,year", "--nlist", "16",
                 "--M", "8", "--niter", "4", "--no-progress", "--spot-check", "0"])
    assert code == 0, capsys.readouterr()
    assert IndexStore.open(path).attribute_schema.names == ["lang", "year"]
    assert main(["ingest", str(tmp_path / "i2"), attr_parquet_dir, "--attributes", " , ",
                 "--nlist", "16", "--M", "8"]) == 2


def test_sql_attributes(tmp_path, attr_rows, postgresql_dsn):
    psycopg = pytest.importorskip("psycopg")
    from shardann.distributed import read_sql_vectors

    x, attrs = attr_rows
    n = 1500
    lang, year = attrs.column("lang").to_pylist(), attrs.column("year").to_pylist()
    with psycopg.connect(postgresql_dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS docs")
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, embedding real[] NOT NULL, "
                     "lang text, year bigint)")
        with conn.cursor() as cur, cur.copy("COPY docs FROM STDIN") as cp:
            for i in range(n):
                cp.write_row((i, x[i].tolist(), lang[i], year[i]))
    ds = read_sql_vectors("SELECT id, embedding, lang, year FROM docs", postgresql_dsn,
                          key="id", rows_per_read=600)
    path = str(tmp_path / "idx")
    ingest(path, ds, id_column="id", attributes=["lang", "year"], **TRAIN)
    got = shardann.open_index(path)
    want = attrs.select(["lang", "year"]).slice(0, n)
    assert got.get_attributes(np.arange(n), ["lang", "year"]).equals(want)
    ref = _attr_reference(path, x[:n], want)
    q = data(20, seed=9)
    for f in ("lang = 'de' AND year < 2020", "lang IS NULL"):
        a = got.search(q, K, nprobe=NPROBE, filter=f, columns=["lang"])
        b = ref.search(q, K, nprobe=NPROBE, filter=f, columns=["lang"])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[2].equals(b[2])
