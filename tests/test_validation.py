"""Input validation at the public boundary.

Bad input raises ``ValueError`` / ``TypeError`` / ``shardann.NotTrainedError``
with a message that says what was expected — never an ``AssertionError``, a
Numba typing error or a crash deep inside a kernel.
"""

import numpy as np
import pytest
from core_support import NB, NLIST, D
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import shardann
from shardann import NotTrainedError

ALLOWED = (ValueError, TypeError, NotTrainedError)
KINDS = [("flat", {}), ("ivfflat", {}), ("ivfpq", {"nbits": 4})]
KIND_IDS = ["flat", "ivfflat", "ivfpq4"]
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _call(fn, *args, **kwargs):
    """Run fn; return the exception it raised (checked to be an allowed type) or None."""
    try:
        fn(*args, **kwargs)
    except ALLOWED as exc:
        mod = type(exc).__module__
        assert not mod.startswith("numba"), f"numba error leaked: {exc!r}"
        assert str(exc), "error without a message"
        return exc
    except Exception as exc:  # noqa: BLE001 - the point is to catch everything else
        pytest.fail(f"{fn.__qualname__} raised {type(exc).__name__}: {exc}")
    return None


def _raises(exc_type, fn, *args, match=None, **kwargs):
    exc = _call(fn, *args, **kwargs)
    assert exc is not None, f"{fn.__qualname__} accepted bad input"
    assert isinstance(exc, exc_type), f"expected {exc_type.__name__}, got {exc!r}"
    if match is not None:
        import re
        assert re.search(match, str(exc)), f"{str(exc)!r} does not mention {match!r}"
    return exc


@pytest.fixture(scope="module")
def small(data):
    """A tiny matrix of valid vectors."""
    return np.array(data[0][:5])


# ---------------------------------------------------------------------------
# vectors: NaN / inf, dimension, dtype, shape, emptiness
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(fresh, built, small, kind, kw, bad):
    x = small.copy()
    x[3, 7] = bad
    index = fresh(kind, **kw)
    _raises(ValueError, index.add, x, match="NaN or infinite")
    assert index.ntotal == 0  # a refused add changes nothing
    _raises(ValueError, built(kind, **kw).search, x, 3, match=r"NaN or infinite.*row 3")
    if kind != "flat":
        _raises(ValueError, shardann.IVFFlatIndex(D, 2).train, x, match="NaN or infinite")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_overflow_to_inf_rejected(built):
    # finite float64 that overflows float32 is caught after conversion
    _raises(ValueError, built("ivfflat").search, np.full((1, D), 1e300), 3, match="infinite")


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("shape", [(4, D + 1), (4, D - 1), (4, 1), (D + 3,), (2, 2, D), ()])
def test_wrong_dimension(fresh, built, kind, kw, shape):
    x = np.ones(shape, np.float32)
    exc = _raises(ValueError, built(kind, **kw).search, x, 3)
    assert f"{D}" in str(exc)  # says which dimension was expected
    _raises(ValueError, fresh(kind, **kw).add, x, match=f"{D}")


@pytest.mark.parametrize("bad", [
    np.array([["a"] * D]),
    np.array([[b"a"] * D]),
    np.array([[1.0] * D], dtype=object),
    np.ones((2, D), np.complex64),
    np.ones((2, D), np.complex128),
    np.ones((2, D), bool),
    np.ones((2, D), "datetime64[s]"),
    None,
    "not vectors",
], ids=["str", "bytes", "object", "complex64", "complex128", "bool", "datetime", "None", "text"])
@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_wrong_dtype(fresh, built, kind, kw, bad):
    index = fresh(kind, **kw)
    exc = _call(index.add, bad)
    assert isinstance(exc, (TypeError, ValueError)), exc
    assert index.ntotal == 0
    exc = _call(built(kind, **kw).search, bad, 2)
    assert isinstance(exc, (TypeError, ValueError)), exc
    if isinstance(bad, np.ndarray) and bad.ndim == 2:
        # the dtype is the problem, and the message says so
        _raises(TypeError, built(kind, **kw).search, bad, 2, match="dtype")


def test_ragged_lists(built):
    ragged = [[0.0] * D, [0.0] * (D - 1)]
    _raises(TypeError, built("ivfflat").search, ragged, 2, match=f"{D}")


def test_accepted_input_types(built, data):
    """Lists, float64, float16, ints, Fortran order and one 1-D vector all work."""
    index = built("ivfflat")
    xq = np.array(data[1][:4])
    ref = index.search(xq, 5)
    for q in (xq.tolist(), xq.astype(np.float64), np.asfortranarray(xq)):
        np.testing.assert_array_equal(index.search(q, 5)[1], ref[1])
    D1, I1 = index.search(xq[0], 5)
    assert I1.shape == (1, 5)
    np.testing.assert_array_equal(I1[0], ref[1][0])
    assert index.search(np.rint(xq * 10).astype(np.int32), 5)[1].shape == (4, 5)
    assert index.search(xq.astype(np.float16), 5)[1].shape == (4, 5)


def test_search_does_not_modify_queries(built, data):
    for kind, kw in [("flat", {"metric": "cosine"}), ("ivfpq", {"metric": "cosine"}),
                     ("ivfflat", {"metric": "l2"})]:
        q = np.array(data[1][:6])
        before = q.copy()
        built(kind, **kw).search(q, 3)
        np.testing.assert_array_equal(q, before)


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_empty_add_is_noop(fresh, small, kind, kw):
    index = fresh(kind, **kw)
    index.add(small)
    ids = index.add(np.zeros((0, D), np.float32))
    assert len(ids) == 0
    assert index.ntotal == 5
    ids = index.add(np.zeros((0, D), np.float32), ids=np.zeros(0, np.int64))
    assert len(ids) == 0 and index.ntotal == 5
    np.testing.assert_array_equal(index.add(small[:2]), [5, 6])


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_empty_search(built, fresh, kind, kw, metric):
    for index in (built(kind, metric=metric, **kw), fresh(kind, metric=metric, **kw)):
        D_, I = index.search(np.zeros((0, D), np.float32), 7)
        assert D_.shape == I.shape == (0, 7)
        assert D_.dtype == np.float32 and I.dtype == np.int64


@pytest.mark.parametrize("metric,pad", [("l2", np.inf), ("ip", -np.inf), ("cosine", -np.inf)])
def test_search_empty_index_pads(fresh, small, metric, pad):
    for kind, kw in KINDS:
        D_, I = fresh(kind, metric=metric, **kw).search(small, 4)
        assert (I == -1).all() and (D_ == pad).all(), kind


def test_train_on_empty_raises():
    empty = np.zeros((0, D), np.float32)
    for obj in (shardann.IVFFlatIndex(D, 4), shardann.IVFPQIndex(D, 4, 8, nbits=4),
                shardann.KMeans(D, 4), shardann.ProductQuantizer(D, 8, 4),
                shardann.OPQ(D, 8, nbits=4, niter=1)):
        _raises(ValueError, obj.train, empty, match="empty|at least")


# ---------------------------------------------------------------------------
# k, nprobe, refine_factor
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_k_validation(built, small, kind, kw):
    index = built(kind, **kw)
    for k in (0, -1, -100):
        _raises(ValueError, index.search, small, k, match=r"k must be >= 1")
    for k in (2.0, "3", None, True, [3]):
        _raises(TypeError, index.search, small, k, match="k must be an int")
    assert index.search(small, np.int32(3))[1].shape == (5, 3)


@pytest.mark.parametrize("metric,pad", [("l2", np.inf), ("ip", -np.inf), ("cosine", -np.inf)])
@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_k_larger_than_ntotal_pads(fresh, small, data, kind, kw, metric, pad):
    index = fresh(kind, metric=metric, **kw)
    index.add(data[0][:7])
    search_kw = {} if kind == "flat" else {"nprobe": NLIST}
    D_, I = index.search(small, 12, **search_kw)
    assert D_.shape == I.shape == (5, 12)
    assert (I[:, 7:] == -1).all() and (D_[:, 7:] == pad).all()
    assert (I[:, :7] >= 0).all() and np.isfinite(D_[:, :7]).all()
    assert all(sorted(r) == list(range(7)) for r in I[:, :7].tolist())


def test_k_larger_than_probed_lists_pads(built, small):
    index = built("ivfflat")
    D_, I = index.search(small, NB, nprobe=1)
    got = (I >= 0).sum(1)
    assert (got < NB).all()
    for row_d, row_i, n in zip(D_, I, got, strict=True):
        assert (row_i[n:] == -1).all() and np.isposinf(row_d[n:]).all()
        assert (row_i[:n] >= 0).all()


@pytest.mark.parametrize("kind,kw", KINDS[1:], ids=KIND_IDS[1:])
def test_nprobe_validation(built, small, kind, kw):
    index = built(kind, **kw)
    for bad in (0, -1):
        _raises(ValueError, index.search, small, 3, nprobe=bad, match="nprobe must be >= 1")
    _raises(ValueError, index.search, small, 3, nprobe=NLIST + 1,
            match=f"nprobe must be <= {NLIST}")
    _raises(TypeError, index.search, small, 3, nprobe=2.5, match="nprobe")
    assert index.search(small, 3, nprobe=NLIST)[1].shape == (5, 3)
    _raises(ValueError, shardann.IVFFlatIndex, D, 4, nprobe=5, match="nprobe")
    import copy
    other = copy.deepcopy(index)
    _raises(ValueError, setattr, other, "nprobe", 0)
    _raises(ValueError, setattr, other, "nprobe", NLIST + 1)


def test_refine_factor_validation(built, small):
    index = built("ivfpq", nbits=4, keep_vectors=True)
    _raises(ValueError, index.search, small, 3, refine_factor=-1, match="refine_factor")
    _raises(TypeError, index.search, small, 3, refine_factor=1.5, match="refine_factor")


# ---------------------------------------------------------------------------
# construction parameters
# ---------------------------------------------------------------------------


def test_d_multiple_of_M():
    _raises(ValueError, shardann.IVFPQIndex, D, 4, 5, match=r"multiple of M.*d=32.*M=5")
    _raises(ValueError, shardann.ProductQuantizer, 10, 4, match="multiple of M")
    _raises(ValueError, shardann.OPQ, 10, 4, match="multiple of M")


@pytest.mark.parametrize("nbits", [0, 9, -1, 16])
def test_nbits_out_of_range(nbits):
    _raises(ValueError, shardann.IVFPQIndex, D, 4, 8, nbits, match="nbits")
    _raises(ValueError, shardann.ProductQuantizer, D, 8, nbits, match="nbits")
    _raises(ValueError, shardann.OPQ, D, 8, nbits=nbits, match="nbits")


def test_nbits_wrong_type():
    _raises(TypeError, shardann.IVFPQIndex, D, 4, 8, 4.0, match="nbits")
    _raises(TypeError, shardann.ProductQuantizer, D, 8, "8", match="nbits")


@pytest.mark.parametrize("ctor", [
    lambda: shardann.FlatIndex(0),
    lambda: shardann.FlatIndex(-3),
    lambda: shardann.IVFFlatIndex(D, 0),
    lambda: shardann.IVFPQIndex(D, 4, 0),
    lambda: shardann.KMeans(D, 0),
    lambda: shardann.KMeans(D, 4, niter=-1),
    lambda: shardann.KMeans(D, 4, init="kmeans-parallel"),
    lambda: shardann.FlatIndex(D, "hamming"),
    lambda: shardann.IVFPQIndex(D, 4, 8, keep_vectors="float64"),
], ids=["d0", "d-3", "nlist0", "M0", "k0", "niter-1", "init", "metric", "keep_vectors"])
def test_bad_values(ctor):
    _raises(ValueError, ctor)


@pytest.mark.parametrize("ctor", [
    lambda: shardann.FlatIndex(32.0),
    lambda: shardann.FlatIndex("32"),
    lambda: shardann.IVFFlatIndex(D, 4.0),
    lambda: shardann.FlatIndex(D, None),
    lambda: shardann.FlatIndex(D, 2),
    lambda: shardann.IVFFlatIndex(D, 4, seed=1.5),
], ids=["d-float", "d-str", "nlist-float", "metric-None", "metric-int", "seed-float"])
def test_bad_types(ctor):
    _raises(TypeError, ctor)


def test_metric_aliases():
    assert shardann.FlatIndex(D, "L2").metric == "l2"
    assert shardann.FlatIndex(D, "inner_product").metric == "ip"
    assert shardann.FlatIndex(D, "COSINE").metric == "cosine"


# ---------------------------------------------------------------------------
# training state
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: shardann.IVFFlatIndex(D, 4),
    lambda: shardann.IVFPQIndex(D, 4, 8, nbits=4),
    lambda: shardann.IVFPQIndex(D, 4, 8, nbits=8, opq=True, keep_vectors=True),
], ids=["ivfflat", "ivfpq", "ivfpq-opq"])
def test_untrained_index(make, small):
    index = make()
    assert not index.is_trained and index.ntotal == 0
    _raises(NotTrainedError, index.add, small, match="train")
    _raises(NotTrainedError, index.search, small, 3, match="train")
    _raises(NotTrainedError, index.assign, small, match="train")
    # even a zero-row request must not pretend the index works
    _raises(NotTrainedError, index.search, np.zeros((0, D), np.float32), 3)
    assert isinstance(NotTrainedError("x"), shardann.ShardannError)


def test_untrained_quantizers(small):
    pq = shardann.ProductQuantizer(D, 8, 4)
    _raises(NotTrainedError, pq.compute_codes, small)
    _raises(NotTrainedError, pq.decode, np.zeros((1, 4), np.uint8))
    _raises(NotTrainedError, pq.distance_tables, small)
    _raises(NotTrainedError, pq.save, "/nonexistent/never-written.parquet")
    km = shardann.KMeans(D, 3)
    _raises(NotTrainedError, km.assign, small)
    _raises(NotTrainedError, km.save, "/nonexistent/never-written.parquet")
    opq = shardann.OPQ(D, 8)
    _raises(NotTrainedError, opq.apply, small)
    _raises(NotTrainedError, opq.reverse, small)
    _raises(NotTrainedError, opq.save, "/nonexistent/never-written.parquet")


def test_training_set_too_small(data):
    xt = data[2]
    _raises(ValueError, shardann.IVFFlatIndex(D, 16).train, xt[:15], match=r"nlist=16.*got 15")
    _raises(ValueError, shardann.IVFPQIndex(D, 16, 8, nbits=4).train, xt[:10], match="nlist=16")
    # enough for the lists but not for 2**nbits sub-centroids
    _raises(ValueError, shardann.IVFPQIndex(D, 4, 8, nbits=8).train, xt[:100],
            match=r"2\*\*nbits=256")
    _raises(ValueError, shardann.KMeans(D, 50).train, xt[:49], match="k=50")
    _raises(ValueError, shardann.ProductQuantizer(D, 8, 6).train, xt[:63], match="64")


def test_train_wrong_dimension(data):
    _raises(ValueError, shardann.IVFPQIndex(D, 4, 8, nbits=4).train, data[2][:, :16],
            match=f"d={D}")
    _raises(ValueError, shardann.KMeans(D, 4).train, data[2][:, :16], match=f"d={D}")


# ---------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_duplicate_ids(fresh, small, kind, kw):
    index = fresh(kind, **kw)
    _raises(ValueError, index.add, small[:3], ids=[4, 9, 4], match="duplicate.*4")
    assert index.ntotal == 0
    index.add(small[:3], ids=[10, 11, 12])
    _raises(ValueError, index.add, small[3:5], ids=[13, 11], match="already in the index.*11")
    assert index.ntotal == 3  # the refused batch added nothing, not even id 13
    index.add(small[3:5], ids=[13, 14])
    assert index.ntotal == 5


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
def test_bad_ids(fresh, small, kind, kw):
    index = fresh(kind, **kw)
    _raises(ValueError, index.add, small[:2], ids=[-1, 3], match=">= 0")
    _raises(ValueError, index.add, small[:2], ids=[-(2**40), 3], match=">= 0")
    _raises(ValueError, index.add, small[:2], ids=[1, 2, 3], match=r"shape \(2,\)")
    _raises(ValueError, index.add, small[:2], ids=[[1, 2]], match=r"shape \(2,\)")
    _raises(TypeError, index.add, small[:2], ids=[1.0, 2.0], match="integer")
    _raises(TypeError, index.add, small[:2], ids=["a", "b"], match="integer")
    _raises(TypeError, index.add, small[:2], ids=[True, False], match="integer")
    _raises(ValueError, index.add, small[:2], ids=np.array([1, 2**64 - 1], np.uint64),
            match="int64")
    assert index.ntotal == 0
    _raises(TypeError, index.remove_ids, [1.5])
    _raises(ValueError, index.remove_ids, [[1, 2]])
    _raises(TypeError, index.reconstruct, 1.0)
    index.add(small[:2], ids=np.array([3, 4], np.uint8))  # any integer dtype is fine
    assert index.ntotal == 2


def test_reconstruct_missing_id_raises_keyerror(built):
    with pytest.raises(KeyError, match="123456789"):
        built("ivfflat").reconstruct(123456789)
    assert built("ivfflat").reconstruct(np.zeros(0, np.int64)).shape == (0, D)


def test_default_ids_stay_in_range(fresh, small):
    """Ids are in [0, 2**63 - 2] (``-1`` pads, int64 max is the heap sentinel):
    default ids after the largest allowed id cannot be allocated and must be
    refused with a ValueError, not wrap or overflow."""
    index = fresh("flat")
    top = 2**63 - 2
    index.add(small[:1], ids=[top])
    _raises(ValueError, index.add, small[1:3])
    assert index.ntotal == 1


def test_int64_max_id_refused(fresh, small):
    """The documented id range ends at 2**63 - 2 (see ``_validation.as_ids``)."""
    index = fresh("flat")
    _raises(ValueError, index.add, small[:1], ids=np.array([2**63 - 1], np.int64))


# ---------------------------------------------------------------------------
# quantizers at their own public boundary
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def opq_trained(data):
    return shardann.OPQ(D, 8, nbits=4, niter=1, seed=0).train(data[2][:500])


def test_opq_apply_rejects_bad_vectors(opq_trained, small):
    x = small.copy()
    x[1, 2] = np.nan
    _raises(ValueError, opq_trained.apply, x, match="NaN or infinite")
    _raises(ValueError, opq_trained.reverse, x, match="NaN or infinite")
    _raises(ValueError, opq_trained.apply, small[:, :16], match=f"d={D}")
    _raises(TypeError, opq_trained.apply, small.astype(np.complex64), match="dtype")


def test_pq_codes_validation(data):
    pq = shardann.ProductQuantizer(D, 8, 4, niter=2).train(data[2][:300])
    _raises(TypeError, pq.decode, np.zeros((2, 4), np.int64), match="uint8")
    _raises(ValueError, pq.decode, np.zeros((2, 5), np.uint8), match=r"\(n, 4\)")
    _raises(ValueError, pq.compute_codes, np.ones((2, 16), np.float32), match=f"d={D}")
    _raises(ValueError, pq.distance_tables, data[1][:2], "cosine", match="kind")
    assert pq.decode(np.zeros(4, np.uint8)).shape == (1, D)


def test_kmeans_validation(data):
    km = shardann.KMeans(D, 4, niter=2).train(data[2][:400])
    _raises(ValueError, km.assign, data[1][:, :5], match=f"d={D}")
    x = np.array(data[1][:3])
    x[0, 0] = np.inf
    _raises(ValueError, km.assign, x, match="NaN or infinite")
    _raises(ValueError, shardann.KMeans(D, 4).train, data[2][:100],
            init_centroids=np.zeros((3, D)), match="4 rows")


# ---------------------------------------------------------------------------
# hypothesis: random bad input never escapes as the wrong kind of error
# ---------------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
bad_value = st.sampled_from([np.nan, np.inf, -np.inf])


@FUZZ
@given(n=st.integers(1, 6), cells=st.lists(st.tuples(st.integers(0, 10**6), bad_value),
                                          min_size=1, max_size=4),
       kind=st.sampled_from(["flat", "ivfflat", "ivfpq"]), seed=st.integers(0, 2**16))
def test_fuzz_non_finite(built, n, cells, kind, seed):
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    for pos, v in cells:
        x.flat[pos % x.size] = v
    _raises(ValueError, built(kind).search, x, 3, match="NaN or infinite")


@FUZZ
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
       kind=st.sampled_from(["flat", "ivfflat", "ivfpq"]))
def test_fuzz_shapes(built, shape, kind):
    x = np.ones(shape, np.float32)
    valid = (len(shape) == 2 and shape[1] == D) or shape in ((D,), (0,))  # (0,): no rows
    exc = _call(built(kind).search, x, 2)
    if valid:
        assert exc is None, exc
    else:
        assert isinstance(exc, ValueError), exc


bad_dtypes = st.one_of(
    hnp.boolean_dtypes(), hnp.complex_number_dtypes(), hnp.unicode_string_dtypes(),
    hnp.byte_string_dtypes(), hnp.datetime64_dtypes(), hnp.timedelta64_dtypes(),
    st.just(np.dtype(object)))


@FUZZ
@given(dtype=bad_dtypes, n=st.integers(1, 3), kind=st.sampled_from(["flat", "ivfflat"]))
def test_fuzz_dtypes(built, fresh, dtype, n, kind):
    x = np.zeros((n, D), dtype=dtype)
    _raises(TypeError, built(kind).search, x, 2, match="dtype")
    _raises(TypeError, fresh(kind).add, x, match="dtype")


@FUZZ
@given(dtype=st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                       hnp.floating_dtypes()), n=st.integers(0, 3))
def test_fuzz_good_dtypes(built, dtype, n):
    D_, I = built("ivfflat").search(np.ones((n, D), dtype=dtype), 2)
    assert I.shape == (n, 2) and D_.dtype == np.float32


garbage = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
    st.lists(finite, max_size=40),
    st.lists(st.lists(st.one_of(finite, st.text(max_size=1), st.none()), max_size=D + 1),
             max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@FUZZ
@given(queries=garbage, k=st.one_of(st.integers(-3, 5), st.floats(), st.none(), st.text()),
       nprobe=st.one_of(st.none(), st.integers(-2, NLIST + 2), st.floats()),
       kind=st.sampled_from(["ivfflat", "ivfpq"]))
def test_fuzz_search_garbage(built, queries, k, nprobe, kind):
    exc = _call(built(kind).search, queries, k, nprobe=nprobe)
    if exc is None:
        assert isinstance(k, int) and k >= 1


@FUZZ
@given(ids=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=5)
       .filter(lambda v: len(set(v)) < len(v) or min(v) < 0))
def test_fuzz_bad_ids(fresh, small, ids):
    index = fresh("flat")
    x = np.repeat(small[:1], len(ids), axis=0)
    _raises(ValueError, index.add, x, ids=ids)
    assert index.ntotal == 0
