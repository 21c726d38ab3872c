"""The libraries of ``shardann bench core`` and ``bench frontier`` behind one interface.

:class:`FaissRunner` and :class:`ShardannRunner` build, train, fill, search,
time the parts of and describe one index kind each, with the same nlist / M /
nbits / metric and training iterations; :func:`make_runners` gives the pair
(or shardann's alone when FAISS is not installed). :class:`ScannRunner` (ScaNN,
for ``bench frontier``) builds and searches a ScaNN tree + AH searcher the same way.
``search(..., refine_factor=r)`` overrides a refining runner's shortlist factor
(r = 0: the plain scan, without re-ranking).
"""

import numpy as np

from . import _timing

KINDS = ("ivfflat", "ivfpq8", "ivfpq4", "ivfpq8-refine")
KIND_LABELS = {"ivfflat": "IVF-Flat", "ivfpq8": "IVF-PQ 8-bit", "ivfpq4": "IVF-PQ 4-bit",
               "ivfpq8-refine": "IVF-PQ 8-bit + refine", "ivfpq4-refine": "IVF-PQ 4-bit + refine"}
#: kinds whose runners re-rank a shortlist (``refine_factor``)
REFINE_KINDS = ("ivfpq8-refine", "ivfpq4-refine")
LIBS = ("faiss", "shardann")

# training settings mirrored from FAISS when it is not installed to read them
# from: IndexIVF's cp.niter, ProductQuantizer's cp.niter, max_points_per_centroid
# (the values of FAISS 1.15)
FAISS_TRAIN_FALLBACK = {"version": None, "ivf.cp.niter": 10, "pq.cp.niter": 25,
                        "ivf.cp.max_points_per_centroid": 256}


def as_f32(x):
    return np.ascontiguousarray(x, dtype=np.float32)


def faiss_defaults(faiss, d, nlist, M, metric):
    """Training defaults of the installed FAISS, read from freshly made indexes."""
    mt = _faiss_metric(faiss, metric)
    owner = faiss.index_factory(d, f"IVF{nlist},PQ{M}x8", mt)
    ivfpq = faiss.downcast_index(owner)
    out = {
        "version": faiss.__version__,
        "ClusteringParameters().niter": faiss.ClusteringParameters().niter,
        "ivf.cp.niter": ivfpq.cp.niter,
        "ivf.cp.max_points_per_centroid": ivfpq.cp.max_points_per_centroid,
        "ivf.cp.seed": ivfpq.cp.seed,
        "pq.cp.niter": ivfpq.pq.cp.niter,
        "pq.cp.max_points_per_centroid": ivfpq.pq.cp.max_points_per_centroid,
        "ivfpq.by_residual": bool(ivfpq.by_residual),
        "ivfpq.use_precomputed_table (before train)": int(ivfpq.use_precomputed_table),
        "ivfpq.polysemous_ht": int(ivfpq.polysemous_ht),
        "ivfpq.do_polysemous_training (factory 'PQ{M}')": bool(ivfpq.do_polysemous_training),
    }
    owner4 = faiss.index_factory(d, f"IVF{nlist},PQ{M}x4fs", mt)
    fs = faiss.downcast_index(owner4)
    out.update({"ivfpq4fs.by_residual": bool(fs.by_residual), "ivfpq4fs.bbs": int(fs.bbs),
                "ivfpq4fs.implem": int(fs.implem), "ivfpq4fs.pq.cp.niter": fs.pq.cp.niter})
    try:
        out["simd_level"] = faiss.SIMDConfig.get_level_name()
    except Exception:  # older FAISS
        out["compile_options"] = faiss.get_compile_options()
    return out


def _faiss_metric(faiss, metric):
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


class FaissRunner:
    """Builds and queries one FAISS index kind via ``faiss.index_factory``."""

    lib = "faiss"

    def __init__(self, faiss, kind, d, nlist, M, metric, refine_factor, fs_residual=False):
        self.faiss, self.kind, self.d, self.nlist, self.M = faiss, kind, d, nlist, M
        self.metric, self.refine_factor = metric, refine_factor
        self.key = {
            "ivfflat": f"IVF{nlist},Flat",
            # "np": no polysemous training (an extra code re-ordering the
            # factory does by default and search does not use with
            # polysemous_ht=0); this matches a directly constructed IndexIVFPQ
            "ivfpq8": f"IVF{nlist},PQ{M}x8np",
            "ivfpq4": f"IVF{nlist},PQ{M}x4fs" + ("r" if fs_residual else ""),
            "ivfpq8-refine": f"IVF{nlist},PQ{M}x8np,RFlat",
            "ivfpq4-refine": f"IVF{nlist},PQ{M}x4fs" + ("r" if fs_residual else "") + ",RFlat",
        }[kind]

    def make(self, nlist=None, warm_up=False):
        key = self.key if nlist is None else self.key.replace(f"IVF{self.nlist},",
                                                              f"IVF{nlist},", 1)
        index = self.faiss.index_factory(self.d, key, _faiss_metric(self.faiss, self.metric))
        if self.kind in REFINE_KINDS:
            index.k_factor = float(self.refine_factor)
        if warm_up:  # one k-means iteration is enough to exercise the code
            ivf = self.faiss.extract_index_ivf(index)
            ivf.cp.niter = 1
            inner = self.faiss.downcast_index(ivf)
            if hasattr(inner, "pq"):
                inner.pq.cp.niter = 1
        return index

    def train(self, index, x):
        index.train(x)

    def add(self, index, x):
        index.add(x)

    def search(self, index, q, k, nprobe, refine_factor=None, sel=None):
        """``index.search`` at ``nprobe``; ``sel`` (a ``faiss.IDSelector``, IVF kinds
        without refine) keeps the scan to the ids it selects."""
        if sel is not None:
            if self.kind in REFINE_KINDS:
                raise ValueError("an IDSelector is passed to the IVF kinds without refine")
            params = self.faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
            return index.search(q, k, params=params)
        self.faiss.extract_index_ivf(index).nprobe = nprobe
        if self.kind in REFINE_KINDS and refine_factor is not None:
            if not refine_factor:  # the IVF-PQ index under the refine stage
                return self.faiss.downcast_index(index.base_index).search(q, k)
            index.k_factor = float(refine_factor)
        return index.search(q, k)

    def split(self, index, q, k, nprobe):
        """CPU seconds of the parts of a batch search (coarse, scan), or None."""
        if self.kind in REFINE_KINDS:
            return None
        ivf = self.faiss.extract_index_ivf(index)
        ivf.nprobe = nprobe
        _, c_coarse, (Dq, Iq) = _timing.timed(ivf.quantizer.search, q, nprobe)
        _, c_scan, _ = _timing.timed(ivf.search_preassigned, q, k, Iq, Dq)
        return {"coarse": c_coarse, "scan": c_scan}

    def describe(self, index):
        f = self.faiss
        ivf = f.extract_index_ivf(index)
        out = {"index_factory": self.key, "class": type(index).__name__,
               "ivf_class": type(f.downcast_index(ivf)).__name__,
               "cp.niter": ivf.cp.niter, "by_residual": bool(ivf.by_residual)}
        inner = f.downcast_index(ivf)
        if hasattr(inner, "pq"):
            out["pq.cp.niter"] = inner.pq.cp.niter
            out["M"], out["nbits"] = int(inner.pq.M), int(inner.pq.nbits)
        if hasattr(inner, "use_precomputed_table"):
            out["use_precomputed_table (after train)"] = int(inner.use_precomputed_table)
        if hasattr(inner, "polysemous_ht"):
            out["polysemous_ht"] = int(inner.polysemous_ht)
        if hasattr(inner, "do_polysemous_training"):
            out["do_polysemous_training"] = bool(inner.do_polysemous_training)
        if self.kind in REFINE_KINDS:
            out["k_factor"] = float(index.k_factor)
        return out


class ShardannRunner:
    """Builds and queries one shardann index kind."""

    lib = "shardann"

    def __init__(self, kind, d, nlist, M, metric, refine_factor, seed, niter, pq_niter,
                 max_points_per_centroid, keep_vectors="float32", pca=None, opq=False,
                 by_residual=True):
        self.kind, self.d, self.nlist, self.M = kind, d, nlist, M
        self.by_residual = by_residual  # IVF-PQ: codes of residuals (True) or of the vectors
        self.pca, self.opq = pca, opq  # dimension reduction / rotation in front of the index
        self.keep_vectors = keep_vectors  # the dtype refine kinds keep
        self.metric, self.refine_factor, self.seed = metric, refine_factor, seed
        self.niter, self.pq_niter = niter, pq_niter
        self.mppc = max_points_per_centroid

    def make(self, nlist=None, warm_up=False):
        from .. import IVFFlatIndex, IVFPQIndex
        nlist = self.nlist if nlist is None else nlist
        # two coarse iterations: the second is the first with k-means bounds, whose
        # kernels would otherwise load (or compile) inside the timed training
        common = {"seed": self.seed, "niter": min(2, self.niter) if warm_up else self.niter,
                  "max_points_per_centroid": self.mppc, "pca": self.pca}
        if self.kind == "ivfflat":
            return IVFFlatIndex(self.d, nlist, self.metric, **common)
        return IVFPQIndex(self.d, nlist, self.M, 4 if self.kind.startswith("ivfpq4") else 8,
                          self.metric, pq_niter=1 if warm_up else self.pq_niter, opq=self.opq,
                          keep_vectors=self.kind in REFINE_KINDS and self.keep_vectors,
                          by_residual=self.by_residual, **common)

    @property
    def _rf(self):
        return self.refine_factor if self.kind in REFINE_KINDS else 0

    def train(self, index, x):
        index.train(x)

    def add(self, index, x, attributes=None):
        if attributes is None:
            index.add(x)
        else:
            index.add(x, attributes=attributes)

    def search(self, index, q, k, nprobe, refine_factor=None, filter=None):
        rf = self._rf if refine_factor is None else refine_factor
        if filter is None:
            return index.search(q, k, nprobe=nprobe, refine_factor=rf)
        return index.search(q, k, nprobe=nprobe, refine_factor=rf, filter=filter)

    def with_kept_vectors(self, index, keep_vectors, xt, xb):
        """A copy of the trained ``index`` (same centroids and codebooks) that
        keeps ``keep_vectors`` ("float32", "float16" or "int8"; the int8 scale
        trained on ``xt`` as ``index.train`` would), filled with ``xb``: one
        training for several kept-vector types."""
        twin = model_twin(index, xt, keep_vectors=keep_vectors)
        twin.add(xb)
        return twin

    def split(self, index, q, k, nprobe):
        """CPU seconds of the parts of a batch search: coarse (``index.probe``),
        scan (``index.search_preassigned``) and, with refine, the re-ranking on top of a
        plain scan of ``k * refine_factor``."""
        # the bench only uses l2/ip, for which prepared queries are the
        # float32 rows themselves (no normalisation, no OPQ rotation)
        q = as_f32(q)
        _, c_coarse, (dis0, probes) = _timing.timed(index.probe, q, nprobe)
        scan = index.search_preassigned
        if not self._rf:
            _, c_scan, _ = _timing.timed(scan, q, dis0, probes, k)
            return {"coarse": c_coarse, "scan": c_scan}
        _, c_scan, _ = _timing.timed(scan, q, dis0, probes, k * self._rf)
        _, c_all, _ = _timing.timed(scan, q, dis0, probes, k, self._rf)
        return {"coarse": c_coarse, "scan": c_scan, "refine": max(0.0, c_all - c_scan)}

    def describe(self, index):
        cfg = index.get_config()
        out = {"class": type(index).__name__, **cfg}
        if self.kind != "ivfflat":
            # IVFPQIndex precomputes its L2 term tables (FAISS's "term 1") for l2 when
            # nlist * M * 2**nbits float32 fit in precompute_max_bytes
            out["l2_precomputed_tables"] = bool(
                index.metric == "l2"
                and index.nlist * index.M * (1 << index.nbits) * 4 <= index.precompute_max_bytes)
        if self._rf:
            out["refine_factor"] = self._rf
        return out


def model_twin(index, xt, *, keep_vectors=None, M=None, nbits=None):
    """An empty IVF-PQ index with the coarse centroids of the trained ``index``:
    the same codebooks (and OPQ rotation), or for another ``M`` / ``nbits`` codebooks
    trained on the residuals of ``xt`` exactly as ``train`` would train them;
    keeping ``keep_vectors`` (None keeps the index's choice; the int8 scale is
    trained on ``xt``). One k-means for several code and kept-vector layouts.

    Parameters
    ----------
    index : a trained :class:`shardann.IVFPQIndex` (without OPQ for another M / nbits).
    xt : float32 (n, d), the training sample ``index`` was trained on.
    """
    from .. import sq
    from ..index import index_from_state
    from ..pq import ProductQuantizer
    from ..storage import IndexState

    state = index.to_state(lists=False)
    config = dict(state.config)
    arrays = {k: v for k, v in state.arrays.items() if k != "vector_scale"}
    new_pq = (M is not None and M != config["M"]) or (nbits is not None
                                                      and nbits != config["nbits"])
    if new_pq and config.get("opq"):
        # (the rotation is learnt with the codebooks of one M; another kept-vector
        # type alone keeps both, and the scale is trained in the rotated space as
        # ``train`` trains it)
        raise ValueError("model_twin makes other codebooks for an index without OPQ only")
    if keep_vectors is not None:
        config["keep_vectors"] = keep_vectors or False
    x = index.prepare(xt) if new_pq or config["keep_vectors"] == "int8" else None
    if new_pq:
        config["M"] = config["M"] if M is None else M
        config["nbits"] = config["nbits"] if nbits is None else nbits
        pq = ProductQuantizer(config["d"], config["M"], config["nbits"],
                              niter=config["pq_niter"], seed=config["seed"],
                              max_points_per_centroid=config["max_points_per_centroid"])
        # codes of residuals, or of the vectors themselves (by_residual=False)
        rows = x - index.centroids[index.assign(xt)] if index.by_residual else x
        arrays["codebooks"] = pq.train(rows).codebooks
    if config["keep_vectors"] == "int8":
        arrays["vector_scale"] = sq.train_scale(x)
    return index_from_state(IndexState(state.kind, config, True, arrays, state.nlist))


def make_runners(faiss, kind, cfg, fd):
    """The runners of one kind: (FaissRunner, ShardannRunner), or just the
    ShardannRunner without FAISS."""
    d = cfg["d_actual"]
    srun = ShardannRunner(kind, d, cfg["nlist"], cfg["M"], cfg["metric"],
                          cfg["refine_factor"], cfg["seed"], fd["ivf.cp.niter"],
                          fd["pq.cp.niter"], fd["ivf.cp.max_points_per_centroid"],
                          by_residual=not cfg.get("shardann_no_residual", False))
    if faiss is None:
        return (srun,)
    return (FaissRunner(faiss, kind, d, cfg["nlist"], cfg["M"], cfg["metric"],
                        cfg["refine_factor"], cfg["faiss_fs_residual"]), srun)


class ScannRunner:
    """Builds and queries a ScaNN searcher: a k-means tree of ``nlist`` leaves,
    anisotropic hashing with 2 dimensions per 4-bit block ("lut16", the
    configuration ScaNN's documentation recommends), and exact re-ordering of
    ``k * refine_factor`` candidates. ``nprobe`` is ``leaves_to_search``.

    ScaNN samples its own training set from the database
    (``training_sample_size`` = the size of the shared sample); for inner
    product / cosine the anisotropic threshold is 0.2, as in ScaNN's examples
    (for l2 ScaNN has none).
    """

    lib = "scann"
    kind = "scann-ah2"

    def __init__(self, scann, d, nlist, metric, refine_factor, k, ntrain, dims_per_block=2):
        self.scann, self.d, self.nlist, self.metric = scann, d, nlist, metric
        self.refine_factor, self.k, self.ntrain = refine_factor, k, ntrain
        self.dims_per_block = dims_per_block

    def build(self, xb):
        """The searcher over float32 (n, d) ``xb`` (normalised already for cosine)."""
        measure = "squared_l2" if self.metric == "l2" else "dot_product"
        threshold = float("nan") if self.metric == "l2" else 0.2
        builder = self.scann.scann_ops_pybind.builder(xb, self.k, measure)
        searcher = (builder.tree(num_leaves=self.nlist, num_leaves_to_search=1,
                                 training_sample_size=min(self.ntrain, xb.shape[0]))
                    .score_ah(self.dims_per_block, anisotropic_quantization_threshold=threshold)
                    .reorder(self.k * max(1, self.refine_factor)).build())
        searcher.set_num_threads(1)
        return searcher

    def search(self, searcher, q, k, nprobe, refine_factor=None):
        rf = self.refine_factor if refine_factor is None else refine_factor
        ids, dist = searcher.search_batched(q, final_num_neighbors=k,
                                            pre_reorder_num_neighbors=k * max(1, rf),
                                            leaves_to_search=nprobe)
        return dist, ids.astype(np.int64)

    def describe(self):
        return {"library": "scann", "version": getattr(self.scann, "__version__", None),
                "tree.num_leaves": self.nlist, "score_ah.dimensions_per_block":
                self.dims_per_block, "hash_type": "lut16",
                "anisotropic_quantization_threshold": None if self.metric == "l2" else 0.2,
                "reorder": "exact float32, k * refine_factor"}


class LanceRunner:
    """Builds and queries a LanceDB table with an IVF_PQ index, for ``bench filter``.

    The table (an ``id`` column of row numbers, the attribute columns and the
    vectors) is written under ``workdir``; the index has ``nlist`` partitions,
    ``M`` sub-vectors of ``nbits`` bits and ``niter`` k-means iterations, trained on
    ``sample_rate * nlist`` rows LanceDB samples from the table itself. Every
    attribute column gets a BITMAP scalar index (LanceDB's advice for filtered
    columns of few distinct values). LanceDB has no batch search (several query
    vectors become concurrent queries), so :meth:`search` runs one query per call,
    with ``where(filter, prefilter=True)`` when filtered.
    """

    lib = "lancedb"

    def __init__(self, lancedb, d, nlist, M, nbits, metric, niter, sample_rate, workdir):
        self.lancedb, self.d, self.nlist, self.M, self.nbits = lancedb, d, nlist, M, nbits
        self.distance = {"l2": "l2", "ip": "dot"}[metric]  # cosine: normalised rows + dot
        self.niter, self.sample_rate, self.workdir = niter, sample_rate, workdir

    def build(self, xb, attributes):
        """The indexed table of float32 (n, d) ``xb`` and ``attributes`` (a
        ``pyarrow.Table`` of n rows)."""
        import pyarrow as pa
        from lancedb.index import Bitmap, IvfPq

        n = xb.shape[0]
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(as_f32(xb).reshape(-1)), self.d)
        data = pa.table({"id": pa.array(np.arange(n, dtype=np.int64)),
                         **{name: attributes[name] for name in attributes.column_names},
                         "vector": vectors})
        table = self.lancedb.connect(self.workdir).create_table("bench", data, mode="overwrite")
        table.create_index("vector", config=IvfPq(
            distance_type=self.distance, num_partitions=self.nlist, num_sub_vectors=self.M,
            num_bits=self.nbits, max_iterations=self.niter, sample_rate=self.sample_rate))
        for name in attributes.column_names:
            table.create_index(name, config=Bitmap())
        return table

    def search(self, table, q, k, nprobe, where=None):
        """``(D, I)`` float32 / int64 (nq, k) of the queries one by one, -1 padded."""
        nq = q.shape[0]
        D = np.full((nq, k), np.inf, np.float32)
        I = np.full((nq, k), -1, np.int64)
        for i in range(nq):
            query = (table.search(q[i], vector_column_name="vector").distance_type(self.distance)
                     .nprobes(nprobe).limit(k).select(["id", "_distance"]))
            if where is not None:
                query = query.where(where, prefilter=True)
            hits = query.to_arrow()
            m = hits.num_rows
            I[i, :m] = hits["id"].to_numpy()
            D[i, :m] = hits["_distance"].to_numpy()
        return D, I

    def describe(self):
        return {"library": "lancedb", "version": getattr(self.lancedb, "__version__", None),
                "index": "IVF_PQ", "num_partitions": self.nlist, "num_sub_vectors": self.M,
                "num_bits": self.nbits, "distance_type": self.distance,
                "max_iterations": self.niter, "sample_rate": self.sample_rate,
                "scalar_index": "BITMAP on every attribute column",
                "search": "one query per call, where(..., prefilter=True), nprobes"}
