"""The public index methods the coordinator, shard actors and ingest build on:
prepare / encode / add_preassigned, probe / search_preassigned / scan_candidates,
check_search, refines, next_id, columns — each gives exactly what the local
index does inside ``add`` and ``search``."""

import copy

import numpy as np
import pytest
from core_support import NB, NLIST, D, K

import shardann
from shardann.index import index_from_state
from shardann.results import merge_results

IVF = [("ivfflat", {"metric": "ip"}), ("ivfpq", {}),
       ("ivfpq", {"metric": "cosine", "opq": True, "keep_vectors": True}),
       ("ivfpq", {"nbits": 4}), ("ivfpq", {"nbits": 4, "by_residual": False})]
IVF_IDS = ["ivfflat-ip", "ivfpq", "ivfpq-cosine-opq-keep", "ivfpq-4bit", "ivfpq-4bit-raw"]


def _kw(index):
    return {"nprobe": 6, "refine_factor": 3 if index.refines else 0}


@pytest.mark.parametrize("kind,kw", IVF + [("flat", {"metric": "cosine"})],
                         ids=IVF_IDS + ["flat-cosine"])
def test_prepare_encode_add_preassigned_equal_add(data, fresh, built, kind, kw):
    xb, xq, _ = data
    index = built(kind, **kw)
    twin = fresh(kind, **kw)
    x = twin.prepare(xb)
    assert x.dtype == np.float32 and x.shape == xb.shape and x.flags.c_contiguous
    if kw.get("metric") == "cosine" and not kw.get("opq"):
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-5)
    list_no, payload = twin.encode(x)
    assert list_no.dtype == np.int64 and list_no.shape == (NB,)
    assert {k: (v.shape[1], v.dtype) for k, v in payload.items()} == twin.columns
    half = NB // 2  # in two calls, as two coordinator batches would arrive
    twin.add_preassigned(list_no[:half], np.arange(half), {k: v[:half] for k, v in
                                                           payload.items()})
    twin.add_preassigned(list_no[half:], np.arange(half, NB), {k: v[half:] for k, v in
                                                               payload.items()})
    assert twin.ntotal == NB and twin.next_id == index.next_id == NB
    a, b = index.to_state(), twin.to_state()
    np.testing.assert_array_equal(a.list_sizes, b.list_sizes)
    np.testing.assert_array_equal(a.ids, b.ids)
    for name in a.payload:
        np.testing.assert_array_equal(a.payload[name], b.payload[name])
    kwargs = {} if kind == "flat" else _kw(index)
    np.testing.assert_array_equal(twin.search(xq, K, **kwargs)[1],
                                  index.search(xq, K, **kwargs)[1])


@pytest.mark.parametrize("kind,kw", IVF, ids=IVF_IDS)
def test_probe_and_search_preassigned_equal_search(data, built, kind, kw):
    _, xq, _ = data
    index = built(kind, **kw)
    kwargs = _kw(index)
    k, nprobe, refine = index.check_search(K, **kwargs)
    q = index.prepare(xq, "queries")
    dis0, probes = index.probe(q, nprobe)
    assert dis0.shape == probes.shape == (len(xq), nprobe)
    assert dis0.dtype == np.float32 and probes.dtype == np.int64
    D0, I0 = index.search(xq, K, **kwargs)
    D1, I1 = index.search_preassigned(q, dis0, probes, k, refine)
    np.testing.assert_array_equal(I1, I0)
    np.testing.assert_array_equal(D1, D0)
    # skipped probes (-1): the lists another shard owns
    mine = probes % 2 == 0
    part = index.search_preassigned(q, dis0, np.where(mine, probes, -1), k, refine)
    other = index.search_preassigned(q, dis0, np.where(mine, -1, probes), k, refine)
    if not refine:  # refine re-ranks per call: merge candidates instead (below)
        Dm, Im = merge_results([part, other], k, index.metric)
        np.testing.assert_array_equal(Im, I0)
        np.testing.assert_array_equal(Dm, D0)


@pytest.mark.parametrize("kind,kw", IVF, ids=IVF_IDS)
def test_two_partial_indexes_merge_to_the_full_result(data, built, kind, kw):
    """What the coordinator does: shards hold some lists (index_from_state of a
    partial state), scan_candidates answers per shard, one merge (and refine)."""
    _, xq, _ = data
    index = built(kind, **kw)
    kwargs = _kw(index)
    k, nprobe, refine = index.check_search(K, **kwargs)
    state = index.to_state()
    owner = np.arange(NLIST) % 2
    shards = []
    for s in range(2):
        keep = np.repeat(owner == s, state.list_sizes)
        part = copy.copy(state)
        part.list_sizes = np.where(owner == s, state.list_sizes, 0)
        part.ids = state.ids[keep]
        part.payload = {n: v[keep] for n, v in state.payload.items()}
        shards.append(index_from_state(part))
    q = index.prepare(xq)
    dis0, probes = index.probe(q, nprobe)
    exact = bool(refine) and index.refines
    kk = k * refine if exact else k
    parts, exacts = [], []
    for s, shard in enumerate(shards):
        keys, ids, exact_keys = shard.scan_candidates(
            q, dis0, np.where(owner[probes] == s, probes, -1), kk, exact=exact)
        assert keys.shape == ids.shape == (len(xq), kk)
        parts.append((keys, ids))
        exacts.append(exact_keys)
    if exact:  # the best kk by scan key over all shards, re-ranked by their exact keys
        _, short, src = merge_results(parts, kk, "l2", return_source=True)
        all_exact = np.concatenate(exacts, axis=1)
        short_exact = np.where(src >= 0, np.take_along_axis(all_exact, np.maximum(src, 0), 1),
                               np.inf).astype(np.float32)
        parts = [(short_exact, short)]
    _, I = merge_results(parts, k, "l2")
    np.testing.assert_array_equal(I, index.search(xq, K, **kwargs)[1])


def test_check_search_refines_next_id_columns(built, fresh):
    pq = built("ivfpq")
    keep = built("ivfpq", keep_vectors=True)
    flat = built("flat")
    assert pq.check_search(5) == (5, pq.nprobe, 0)
    assert keep.check_search(5, nprobe=3, refine_factor=2) == (5, 3, 2)
    assert flat.check_search(5, nprobe=3, refine_factor=2) == (5, None, 2)
    with pytest.raises(ValueError, match="keep_vectors"):
        pq.check_search(5, refine_factor=2)
    with pytest.raises(ValueError, match="nprobe"):
        pq.check_search(5, nprobe=NLIST + 1)
    with pytest.raises(ValueError):
        pq.check_search(0)
    assert (keep.refines, pq.refines, built("ivfflat").refines, flat.refines) == \
        (True, False, False, False)
    with pytest.raises(AttributeError):
        keep.refines = False  # read-only
    assert pq.columns == {"codes": (pq.code_size, np.dtype(np.uint8))}
    assert keep.columns == {"codes": (keep.code_size, np.dtype(np.uint8)),
                            "vectors": (D, np.dtype(np.float32))}
    assert flat.columns == {"vectors": (D, np.dtype(np.float32))}
    index = fresh("ivfpq")
    assert index.next_id == 0
    index.add(np.zeros((3, D), np.float32) + 1, ids=[10, 20, 7])
    index.remove_ids([20])
    assert index.next_id == 21  # never reused
    assert index.add(np.ones((1, D), np.float32))[0] == 21


def test_public_methods_validate_their_inputs(data, fresh):
    xb, xq, _ = data
    untrained = shardann.IVFPQIndex(D, NLIST, 8)
    for call in (lambda: untrained.prepare(xq), lambda: untrained.encode(xq),
                 lambda: untrained.add_preassigned([], [], {})):
        with pytest.raises(shardann.NotTrainedError):
            call()
    index = fresh("ivfpq", keep_vectors=True)
    with pytest.raises(ValueError, match=f"dimension|{D}"):
        index.prepare(xq[:, :-1])
    with pytest.raises(ValueError, match="prepared float32"):
        index.encode(xq.astype(np.float64))
    list_no, payload = index.encode(index.prepare(xb[:10]))
    ids = np.arange(10)
    with pytest.raises(ValueError, match="list_no must be in"):
        index.add_preassigned(list_no + NLIST, ids, payload)
    with pytest.raises(ValueError, match="columns"):
        index.add_preassigned(list_no, ids, {"codes": payload["codes"]})
    with pytest.raises(ValueError, match=r"payload\['codes'\]"):
        index.add_preassigned(list_no, ids, {**payload, "codes": payload["codes"][:, :3]})
    assert index.ntotal == 0
    q = index.prepare(xq)
    dis0, probes = index.probe(q, 4)
    with pytest.raises(ValueError, match="search_preassigned takes"):
        index.search_preassigned(q, dis0, probes.astype(np.int32), K)
    with pytest.raises(ValueError, match="keep_vectors|refine"):
        fresh("ivfpq").search_preassigned(q, dis0, probes, K, refine_factor=2)
