"""``shardann bench core``: shardann against FAISS, same data, same parameters,
one thread each.

For every index kind (IVF-Flat, IVF-PQ 8-bit, IVF-PQ 4-bit, IVF-PQ + refine)
both libraries build an index with the same nlist / M / nbits / metric, trained
on the same sample with the same k-means iteration counts (read from FAISS's
defaults), and report recall@k, batch QPS, single-query latency, train
seconds, add vectors/second and first-call latency, plus the shardann/FAISS
ratio. An nprobe sweep gives a recall-QPS curve per kind and library (plotted
to a PNG) and an equal-recall comparison. Everything lands in a JSON file.

``--fresh-process-latency`` instead saves indexes and times the first search
in brand-new Python processes (Numba's on-disk cache vs a cold cache).

FAISS, matplotlib and threadpoolctl are optional (``pip install -e ".[bench]"``).
Without them shardann is still measured; the run says in one line what it
skipped: the FAISS columns, ratios and ground truth (exact search uses
``shardann.FlatIndex``; training iterations fall back to FAISS's usual
defaults), the PNG, or the one-thread limit of the BLAS pools.

Usage::

    python -m shardann.bench.core --quick
    python -m shardann.bench.core --base base.fvecs --queries query.fvecs
"""

import argparse
import gc
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

from . import _timing

logger = logging.getLogger(__name__)

KINDS = ("ivfflat", "ivfpq8", "ivfpq4", "ivfpq8-refine")
KIND_LABELS = {"ivfflat": "IVF-Flat", "ivfpq8": "IVF-PQ 8-bit", "ivfpq4": "IVF-PQ 4-bit",
               "ivfpq8-refine": "IVF-PQ 8-bit + refine"}
LIBS = ("faiss", "shardann")

DEFAULTS = {"n": 500_000, "nlist": 1024, "nq": 1000, "train_size": 262_144}
QUICK = {"n": 50_000, "nlist": 256, "nq": 200, "train_size": 65_536}

JSON_NAME = "core.json"
PNG_NAME = "core-recall-qps.png"
FRESH_JSON_NAME = "core-fresh-latency.json"

# training settings mirrored from FAISS when it is not installed to read them
# from: IndexIVF's cp.niter, ProductQuantizer's cp.niter, max_points_per_centroid
# (the values of FAISS 1.15)
FAISS_TRAIN_FALLBACK = {"version": None, "ivf.cp.niter": 10, "pq.cp.niter": 25,
                        "ivf.cp.max_points_per_centroid": 256}

# untimed warm-up index: small enough to build in about a second
_WARM_NLIST = 32
_WARM_POINTS = 10_240


# --------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------
def _int_list(text):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sorted(set(vals))


def _kind_list(text):
    kinds = [v.strip() for v in text.split(",") if v.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {bad or text!r}; choose from {','.join(KINDS)}")
    return list(dict.fromkeys(kinds))


def add_arguments(parser):
    """Add the ``bench core`` options to an ``argparse`` parser."""
    parser.epilog = (
        "FAISS, matplotlib and threadpoolctl are optional (the bench extra: "
        f"{_timing.BENCH_EXTRA}); without them shardann is measured alone, with no PNG and "
        "no 1-thread limit on the BLAS pools, and the run says in one line what it skipped.")
    data = parser.add_argument_group("data")
    data.add_argument("--base", metavar="PATH",
                      help="database vectors (.npy / .fvecs / .bvecs); default: generate "
                           "structured synthetic data")
    data.add_argument("--queries", metavar="PATH", help="query vectors (with --base)")
    data.add_argument("--train", metavar="PATH",
                      help="training vectors (default: a random sample of --base)")
    data.add_argument("--n", type=int, default=None,
                      help=f"synthetic database size (default {DEFAULTS['n']})")
    data.add_argument("--d", type=int, default=128, help="synthetic dimension (default 128)")
    data.add_argument("--nq", type=int, default=None,
                      help=f"number of queries (default {DEFAULTS['nq']})")
    data.add_argument("--train-size", type=int, default=None,
                      help=f"training sample, the same for both libraries "
                           f"(default {DEFAULTS['train_size']})")
    data.add_argument("--seed", type=int, default=0, help="data and training seed")

    idx = parser.add_argument_group("index")
    idx.add_argument("--kinds", type=_kind_list, default=list(KINDS),
                     help=f"comma-separated index kinds (default {','.join(KINDS)})")
    idx.add_argument("--nlist", type=int, default=None,
                     help=f"IVF lists (default {DEFAULTS['nlist']})")
    idx.add_argument("--M", type=int, default=32, help="PQ sub-quantizers (default 32)")
    idx.add_argument("--metric", choices=("l2", "ip"), default="l2",
                     help="distance: l2 (squared Euclidean) or ip (inner product); default l2")
    idx.add_argument("--refine-factor", type=int, default=4,
                     help="ivfpq8-refine: shortlist k*refine_factor (FAISS k_factor); default 4")
    idx.add_argument("--faiss-fs-residual", action="store_true",
                     help="ivfpq4: use FAISS 'PQ{M}x4fsr' (by_residual=True) instead of the "
                          "factory default 'PQ{M}x4fs' (by_residual=False)")

    srch = parser.add_argument_group("search")
    srch.add_argument("--nprobe", type=int, default=16, help="lists probed (default 16)")
    srch.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    srch.add_argument("--nprobe-sweep", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64],
                      help="nprobe values for the recall-QPS curve (default 1,2,4,8,16,32,64)")
    srch.add_argument("--reps", type=int, default=3,
                      help="repetitions of the timed batch search (best is reported); default 3")
    srch.add_argument("--sweep-reps", type=int, default=2,
                      help="repetitions per sweep point (default 2)")
    srch.add_argument("--latency-queries", type=int, default=200,
                      help="queries searched one at a time for latency percentiles (default 200)")

    run = parser.add_argument_group("run")
    run.add_argument("--quick", action="store_true",
                     help="smoke-test preset: n=50000, nlist=256, nq=200, train-size=65536 "
                          "(explicit options still win)")
    run.add_argument("--out", default="bench-results",
                     help=f"output directory for {JSON_NAME} and {PNG_NAME} "
                          "(default bench-results/)")
    run.add_argument("--no-plot", action="store_true",
                     help=f"skip the PNG (written only when matplotlib is installed: "
                          f"{_timing.BENCH_EXTRA})")
    run.add_argument("--fresh-process-latency", action="store_true",
                     help="instead of the benchmark: save indexes, then time import, open and "
                          "the first searches in new Python processes (Numba on-disk cache "
                          "vs an empty cache)")
    run.add_argument("--fresh-runs", type=int, default=3,
                     help="fresh processes per index with the normal Numba cache (default 3)")
    return parser


def _resolve(args):
    """Fill preset-dependent defaults; return a plain dict of the settings."""
    preset = QUICK if args.quick else DEFAULTS
    cfg = {k: v for k, v in vars(args).items() if not callable(v)}
    for key, val in preset.items():
        if cfg.get(key) is None:
            cfg[key] = val
    return cfg


def _validate(cfg):
    """Return an error message or None."""
    if cfg["base"] and not cfg["queries"]:
        return "--base needs --queries"
    if cfg["queries"] and not cfg["base"]:
        return "--queries needs --base"
    for name in ("n", "d", "nq", "train_size", "nlist", "M", "nprobe", "k", "reps",
                 "sweep_reps", "fresh_runs"):
        if cfg[name] < 1:
            return f"--{name.replace('_', '-')} must be >= 1; got {cfg[name]}"
    if cfg["refine_factor"] < 1:
        return f"--refine-factor must be >= 1; got {cfg['refine_factor']}"
    if cfg["nprobe"] > cfg["nlist"]:
        return f"--nprobe {cfg['nprobe']} is larger than --nlist {cfg['nlist']}"
    return None


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def _as_f32(x):
    return np.ascontiguousarray(x, dtype=np.float32)


def load_data(cfg):
    """Return ``(xb, xq, xt, description)``, float32 C-contiguous arrays."""
    from .datasets import read_vectors, synthetic_split

    if cfg["base"]:
        xb = _as_f32(read_vectors(cfg["base"]))
        xq = _as_f32(read_vectors(cfg["queries"]))
        if xq.shape[1] != xb.shape[1]:
            raise ValueError(f"queries have d={xq.shape[1]}, base has d={xb.shape[1]}")
        xq = xq[:cfg["nq"]]
        rng = np.random.default_rng(cfg["seed"])
        if cfg["train"]:
            pool = read_vectors(cfg["train"])
            if pool.shape[1] != xb.shape[1]:
                raise ValueError(f"train has d={pool.shape[1]}, base has d={xb.shape[1]}")
            src = f"random {{}} of {cfg['train']}"
        else:
            pool = xb
            src = "random {} of the base vectors"
        take = min(cfg["train_size"], pool.shape[0])
        sel = np.sort(rng.choice(pool.shape[0], take, replace=False))
        xt = _as_f32(pool[sel])
        desc = {"source": "files", "base": cfg["base"], "queries": cfg["queries"],
                "train": src.format(take)}
    else:
        xb, xq, xt = synthetic_split(cfg["n"], cfg["nq"], cfg["d"], nt=cfg["train_size"],
                                     seed=cfg["seed"])
        xb, xq, xt = _as_f32(xb), _as_f32(xq), _as_f32(xt)
        desc = {"source": "shardann.bench.datasets.synthetic_split", "seed": cfg["seed"],
                "train": f"{xt.shape[0]} separate points from the same manifold"}
    desc.update(n=int(xb.shape[0]), d=int(xb.shape[1]), nq=int(xq.shape[0]),
                ntrain=int(xt.shape[0]))
    return xb, xq, xt, desc


def ground_truth(faiss, xb, xq, k, metric):
    """Exact top-k ids with FAISS's flat index (falls back to shardann.FlatIndex)."""
    t0 = time.perf_counter()
    if faiss is not None:
        flat = faiss.IndexFlatL2(xb.shape[1]) if metric == "l2" else \
            faiss.IndexFlatIP(xb.shape[1])
        flat.add(xb)
        _, ids = flat.search(xq, k)
        how = f"faiss.{type(flat).__name__} (exact, all threads, untimed)"
    else:
        from .. import FlatIndex
        flat = FlatIndex(xb.shape[1], metric)
        flat.add(xb)
        _, ids = flat.search(xq, k)
        how = "shardann.FlatIndex (exact, untimed)"
    return ids, {"method": how, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------
# the two libraries behind one interface
# --------------------------------------------------------------------------
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
        }[kind]

    def make(self, nlist=None, warm_up=False):
        key = self.key if nlist is None else self.key.replace(f"IVF{self.nlist},",
                                                              f"IVF{nlist},", 1)
        index = self.faiss.index_factory(self.d, key, _faiss_metric(self.faiss, self.metric))
        if self.kind == "ivfpq8-refine":
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

    def search(self, index, q, k, nprobe):
        self.faiss.extract_index_ivf(index).nprobe = nprobe
        return index.search(q, k)

    def split(self, index, q, k, nprobe):
        """CPU seconds of the parts of a batch search (coarse, scan), or None."""
        if self.kind == "ivfpq8-refine":
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
        if self.kind == "ivfpq8-refine":
            out["k_factor"] = float(index.k_factor)
        return out


class ShardannRunner:
    """Builds and queries one shardann index kind."""

    lib = "shardann"

    def __init__(self, kind, d, nlist, M, metric, refine_factor, seed, niter, pq_niter,
                 max_points_per_centroid):
        self.kind, self.d, self.nlist, self.M = kind, d, nlist, M
        self.metric, self.refine_factor, self.seed = metric, refine_factor, seed
        self.niter, self.pq_niter = niter, pq_niter
        self.mppc = max_points_per_centroid

    def make(self, nlist=None, warm_up=False):
        from .. import IVFFlatIndex, IVFPQIndex
        nlist = self.nlist if nlist is None else nlist
        common = {"seed": self.seed, "niter": 1 if warm_up else self.niter,
                  "max_points_per_centroid": self.mppc}
        if self.kind == "ivfflat":
            return IVFFlatIndex(self.d, nlist, self.metric, **common)
        return IVFPQIndex(self.d, nlist, self.M, 4 if self.kind == "ivfpq4" else 8,
                          self.metric, pq_niter=1 if warm_up else self.pq_niter,
                          keep_vectors=self.kind == "ivfpq8-refine", **common)

    @property
    def _rf(self):
        return self.refine_factor if self.kind == "ivfpq8-refine" else 0

    def train(self, index, x):
        index.train(x)

    def add(self, index, x):
        index.add(x)

    def search(self, index, q, k, nprobe):
        return index.search(q, k, nprobe=nprobe, refine_factor=self._rf)

    def split(self, index, q, k, nprobe):
        """CPU seconds of the parts of a batch search: coarse (``index.probe``),
        scan (``index.scan``) and, with refine, the re-ranking on top of a
        plain scan of ``k * refine_factor``."""
        # the bench only uses l2/ip, for which prepared queries are the
        # float32 rows themselves (no normalisation, no OPQ rotation)
        q = _as_f32(q)
        _, c_coarse, (dis0, probes) = _timing.timed(index.probe, q, nprobe)
        if not self._rf:
            _, c_scan, _ = _timing.timed(index.scan, q, dis0, probes, k)
            return {"coarse": c_coarse, "scan": c_scan}
        _, c_scan, _ = _timing.timed(index.scan, q, dis0, probes, k * self._rf)
        _, c_all, _ = _timing.timed(index.scan, q, dis0, probes, k, self._rf)
        return {"coarse": c_coarse, "scan": c_scan, "refine": max(0.0, c_all - c_scan)}

    def describe(self, index):
        cfg = index.get_config()
        out = {"class": type(index).__name__, **cfg}
        if self.kind != "ivfflat":
            out["l2_precomputed_tables"] = getattr(index, "_list_terms", None) is not None
        if self._rf:
            out["refine_factor"] = self._rf
        return out


# --------------------------------------------------------------------------
# measuring one index
# --------------------------------------------------------------------------
def _warm_up(runner, xt, xb, xq, k, nprobe):
    """Untimed tiny index of the same kind (one k-means iteration): loads or
    compiles every kernel the timed run uses. Returns the wall seconds of its
    first single-query search."""
    nw = min(_WARM_POINTS, xt.shape[0])
    nlist = max(1, min(_WARM_NLIST, runner.nlist, nw // 39))
    tiny = runner.make(nlist=nlist, warm_up=True)
    runner.train(tiny, xt[:nw])
    runner.add(tiny, xb[:min(2048, xb.shape[0])])
    t_first, _, _ = _timing.timed(runner.search, tiny, xq[:1], k, min(nprobe, nlist))
    runner.search(tiny, xq[:min(16, xq.shape[0])], k, min(nprobe, nlist))
    return t_first


def measure(runner, xb, xq, xt, gt, cfg):
    """Build, time and sweep one (library, kind). Returns a result dict."""
    k, nprobe, reps = cfg["k"], cfg["nprobe"], cfg["reps"]
    nq = xq.shape[0]
    res = {"lib": runner.lib, "kind": runner.kind, "load_avg_start": _timing.load_average()}
    tag = f"{runner.kind}/{runner.lib}"

    res["first_call_ms"] = _warm_up(runner, xt, xb, xq, k, nprobe) * 1e3
    logger.info("%s: warm-up done (first single-query search %.1f ms)", tag,
                res["first_call_ms"])

    index = runner.make()
    res["train_s"], res["train_cpu_s"], _ = _timing.timed(runner.train, index, xt)
    logger.info("%s: trained on %d vectors in %.2f s (%.2f s CPU)", tag, xt.shape[0],
                res["train_s"], res["train_cpu_s"])

    res["add_s"], res["add_cpu_s"], _ = _timing.timed(runner.add, index, xb)
    res["add_vps"] = xb.shape[0] / res["add_s"]
    res["add_vps_cpu"] = xb.shape[0] / res["add_cpu_s"]
    logger.info("%s: added %d vectors in %.2f s (%.0f vec/s; %.2f s CPU)", tag, xb.shape[0],
                res["add_s"], res["add_vps"], res["add_cpu_s"])
    res["params"] = runner.describe(index)

    runner.search(index, xq[:min(32, nq)], k, nprobe)  # untimed: touch the lists
    walls, cpus, (_, ids) = _timing.repeat(lambda: runner.search(index, xq, k, nprobe), reps)
    res["search_s"] = _timing.summarize(walls, cpus)
    res["qps"] = nq / res["search_s"]["best"]
    res["qps_median"] = nq / res["search_s"]["median"]
    res["qps_cpu"] = nq / res["search_s"]["cpu_best"]
    res["recall"] = _timing.recall_at_k(ids, gt, k)
    logger.info("%s: nprobe=%d recall@%d=%.4f QPS=%.0f (CPU-time QPS %.0f)", tag, nprobe, k,
                res["recall"], res["qps"], res["qps_cpu"])

    lat = _timing.latencies(lambda q: runner.search(index, q, k, nprobe), xq,
                            cfg["latency_queries"])
    res["latency_ms"] = _timing.percentiles_ms(lat)
    res["latency_queries"] = int(lat.size)

    splits = [runner.split(index, xq, k, nprobe) for _ in range(reps)]
    if splits[0] is not None:
        res["time_split_cpu_s"] = {part: min(sp[part] for sp in splits) for part in splits[0]}

    sweep = []
    for p in cfg["nprobe_sweep"]:
        walls, cpus, (_, ids) = _timing.repeat(lambda p=p: runner.search(index, xq, k, p),
                                               cfg["sweep_reps"])
        sweep.append({"nprobe": p, "recall": _timing.recall_at_k(ids, gt, k),
                      "qps": nq / min(walls), "qps_cpu": nq / min(cpus)})
        logger.info("%s: sweep nprobe=%d recall=%.4f QPS=%.0f (CPU-time QPS %.0f)", tag, p,
                    sweep[-1]["recall"], sweep[-1]["qps"], sweep[-1]["qps_cpu"])
    res["sweep"] = sweep
    res["load_avg_end"] = _timing.load_average()
    return res


# --------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------
def qps_at_recall(sweep, target, key="qps"):
    """QPS (``sweep[i][key]``) a sweep curve reaches at ``target`` recall.

    Recall is made monotone in nprobe (running max); between the two sweep
    points that bracket ``target`` log(QPS) is interpolated linearly in recall.
    Returns ``(qps, how)``: how is "interpolated", "exact", "lower bound" (the
    smallest nprobe already exceeds the target: at least this QPS) or
    "not reached" (qps None).
    """
    pts = sorted(sweep, key=lambda s: s["nprobe"])
    rec = np.maximum.accumulate([s["recall"] for s in pts])
    qps = [s[key] for s in pts]
    eps = 1e-12
    if target > rec[-1] + eps:
        return None, "not reached"
    if target < rec[0] - eps:
        return qps[0], "lower bound"
    i = int(np.argmax(rec >= target - eps))
    if i == 0 or abs(rec[i] - target) <= eps:
        return qps[i], "exact"
    f = (target - rec[i - 1]) / (rec[i] - rec[i - 1])
    return (float(math.exp((1 - f) * math.log(qps[i - 1]) + f * math.log(qps[i]))),
            "interpolated")


def recall_se(recall, nq, k):
    """Standard error of a recall@k estimate from nq queries (binomial)."""
    return math.sqrt(max(recall * (1.0 - recall), 0.0) / max(nq * k, 1))


def equal_recall(fres, sres, nprobe, nq, k):
    """Both directions of the equal-recall comparison at ``nprobe``.

    Row 1: the recall FAISS reaches at ``nprobe``; FAISS's QPS there against
    the QPS shardann needs to reach the same recall (interpolated on its
    sweep). Row 2: the same with the roles swapped. Only sweep points are
    used (the sweep always includes ``nprobe``), for wall and CPU-time QPS.

    Where a curve is flat (recall saturated by PQ error) a strict target a
    hair above the other library's plateau sends the interpolation to a much
    larger nprobe, so each row also gives the comparison "within one standard
    error": the other library's smallest sweep nprobe whose recall is at least
    ``target - SE`` (SE = binomial standard error of recall@k over nq queries).
    """
    def at(sweep):
        return next(s for s in sweep if s["nprobe"] == nprobe)

    out = []
    for ref_lib, ref, other in (("faiss", fres, sres), ("shardann", sres, fres)):
        point = at(ref["sweep"])
        se = recall_se(point["recall"], nq, k)
        row = {"recall": point["recall"], "recall_se": se, "reached_by": ref_lib,
               "at_nprobe": nprobe,
               "interpolated_lib": "shardann" if ref_lib == "faiss" else "faiss"}
        for key in ("qps", "qps_cpu"):
            q_other, how = qps_at_recall(other["sweep"], point["recall"], key)
            q_f, q_s = (point[key], q_other) if ref_lib == "faiss" else (q_other, point[key])
            sfx = "" if key == "qps" else "_cpu"
            row[f"faiss_qps{sfx}"] = q_f
            row[f"shardann_qps{sfx}"] = q_s
            row[f"ratio_shardann_over_faiss{sfx}"] = (q_s / q_f) if q_s and q_f else None
            row["interpolation"] = how
        near = [s for s in sorted(other["sweep"], key=lambda s: s["nprobe"])
                if s["recall"] >= point["recall"] - se]
        if near:
            o = near[0]
            q_f, q_s = ((point["qps_cpu"], o["qps_cpu"]) if ref_lib == "faiss"
                        else (o["qps_cpu"], point["qps_cpu"]))
            row["within_se"] = {"nprobe": o["nprobe"], "recall": o["recall"],
                                "ratio_shardann_over_faiss_cpu": q_s / q_f}
        else:
            row["within_se"] = None
        out.append(row)
    return out


def ratios(fres, sres):
    """shardann / FAISS of each reported figure."""
    def r(a, b):
        return a / b if a is not None and b else None
    lat_f, lat_s = fres["latency_ms"], sres["latency_ms"]
    return {key: r(sres[key], fres[key]) for key in (
        "recall", "qps", "qps_cpu", "train_s", "train_cpu_s", "add_vps", "add_vps_cpu",
        "first_call_ms")} | {"latency_p50": r(lat_s["p50"], lat_f["p50"]),
                             "latency_p99": r(lat_s["p99"], lat_f["p99"])}


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------
def _fmt(v, kind):
    if v is None:
        return "-"
    if kind == "recall":
        return f"{v:.4f}"
    if kind == "ratio":
        return f"{v:.2f}x"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "ms":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if kind == "s":
        return f"{v:.2f}"
    return str(v)


_COLUMNS = (  # header, result key (tuple = nested), ratio key, format, width
    ("recall@{k}", "recall", "recall", "recall", 10),
    ("QPS", "qps", "qps", "int", 9),
    ("QPS cpu", "qps_cpu", "qps_cpu", "int", 9),
    ("p50 ms", ("latency_ms", "p50"), "latency_p50", "ms", 8),
    ("p99 ms", ("latency_ms", "p99"), "latency_p99", "ms", 8),
    ("train s", "train_s", "train_s", "s", 9),
    ("train cpu", "train_cpu_s", "train_cpu_s", "s", 10),
    ("add vec/s", "add_vps", "add_vps", "int", 11),
    ("1st ms", "first_call_ms", "first_call_ms", "ms", 10),
)


def _get(res, key):
    return res[key[0]][key[1]] if isinstance(key, tuple) else res[key]


def _within(e):
    w = e.get("within_se")
    if not w:
        return "-"
    return f"{w['ratio_shardann_over_faiss_cpu']:.2f}x @nprobe={w['nprobe']}"


def format_report(report):
    """The printed summary of a benchmark report (a string)."""
    c = report["config"]
    ds = report["dataset"]
    fd = report["faiss_defaults"]
    sh = report["shardann_settings"]
    libs = report.get("libs", LIBS)
    with_faiss = "faiss" in libs
    blas_limited = report.get("blas_limited", True)
    threads = ", ".join(["FAISS OpenMP"] * with_faiss + ["Numba"]
                        + ["BLAS via threadpoolctl"] * blas_limited)
    lines = [
        f"shardann bench core: n={ds['n']:,} d={ds['d']} nq={ds['nq']} ntrain={ds['ntrain']:,} "
        f"nlist={c['nlist']} M={c['M']} nprobe={c['nprobe']} k={c['k']} metric={c['metric']}; "
        f"1 thread{' each' if with_faiss else ''} ({threads})"
        + ("" if blas_limited else "; BLAS pools not limited (no threadpoolctl)"),
        f"data: {ds['source']}; train: {ds['train']}"
        + (" (the same sample for both)" if with_faiss else ""),
        f"ground truth: {report['ground_truth']['method']}",
    ]
    if with_faiss:
        lines.append(
            f"training iterations (FAISS {fd['version']} defaults, mirrored in shardann): "
            f"coarse k-means niter={sh['niter']}, PQ niter={sh['pq_niter']}, "
            f"max_points_per_centroid={sh['max_points_per_centroid']}; FAISS SIMD level "
            f"{fd.get('simd_level', '?')}")
    else:
        lines.append(
            f"training iterations (FAISS's defaults, built in): coarse k-means "
            f"niter={sh['niter']}, PQ niter={sh['pq_niter']}, max_points_per_centroid="
            f"{sh['max_points_per_centroid']}; FAISS not installed: shardann alone, no ratios")
    for kind, entry in report["results"].items() if with_faiss else ():
        fp = entry["faiss"]["params"]
        extra = ", ".join(f"{k}={v}" for k, v in fp.items()
                          if k in ("by_residual", "use_precomputed_table (after train)",
                                   "do_polysemous_training", "k_factor"))
        lines.append(f"  {kind:<14} FAISS {fp['index_factory']} ({fp['ivf_class']}; {extra})")
    env = report["environment"]
    la = [r[key] for e in report["results"].values() for r in (e[lib] for lib in libs)
          for key in ("load_avg_start", "load_avg_end") if r.get(key) is not None]
    if la:
        lines.append(f"machine: {env['cpu']}, {env['os_cpu_count']} CPUs; 1-min load average "
                     f"during the run {min(la):.1f}..{max(la):.1f}")
        if max(la) > 1.5:
            lines.append("  NOTE: other processes were running; wall-clock figures are noisy. "
                         "'QPS cpu' / 'train cpu' use this process's CPU time, which competing "
                         "load disturbs much less.")
    lines.append("")

    k = c["k"]
    head = f"{'kind':<15}{'':<16}" + "".join(f"{h.format(k=k):>{w}}"
                                             for h, _, _, _, w in _COLUMNS)
    lines += [head, "-" * len(head)]
    for kind, entry in report["results"].items():
        for i, lib in enumerate(libs):
            r = entry[lib]
            lines.append(f"{kind if i == 0 else '':<15}"
                         f"{'FAISS' if lib == 'faiss' else 'shardann':<16}"
                         + "".join(f"{_fmt(_get(r, key), fmt):>{w}}"
                                   for _, key, _, fmt, w in _COLUMNS))
        if with_faiss:
            ra = entry["ratio"]
            lines.append(f"{'':<15}{'shardann/FAISS':<16}"
                         + "".join(f"{_fmt(ra[rk], 'ratio'):>{w}}"
                                   for _, _, rk, _, w in _COLUMNS))
        lines.append("")
    if with_faiss:
        lines.append("ratio rows = shardann / FAISS per column: above 1x is better for recall, "
                     "QPS and add vec/s; below 1x is better for ms and train seconds.")
    lines += [
        f"QPS = nq / best-of-{c['reps']} wall seconds of one batch search call; QPS cpu = the "
        "same with process CPU seconds; p50/p99 = one query per call "
        f"({c['latency_queries']} queries); train/add = one call each; 1st ms = the first "
        "single-query search in this process, on a tiny warm-up index (shardann: Numba loads "
        "its on-disk cache, or compiles; kernels shared by kinds load only once).",
    ]
    if with_faiss:
        lines += _format_equal_recall(report)
    lines += _format_split(report)
    return "\n".join(lines)


def _format_equal_recall(report):
    c = report["config"]
    lines = [
        "",
        f"equal-recall comparison (nprobe sweep {c['nprobe_sweep']}, best of {c['sweep_reps']} "
        "per point; the other library's QPS is interpolated in log-QPS between sweep points):",
    ]
    head = (f"{'kind':<15}{'recall':>8}  {'= recall of':<21}{'FAISS QPS':>11}"
            f"{'shardann QPS':>14}{'shardann/FAISS':>16}{'(CPU-time)':>12}"
            f"{'within 1 SE (CPU)':>20}")
    lines += [head, "-" * len(head)]
    marks = {"interpolated": "~", "exact": "", "lower bound": ">=", "not reached": "n/r "}
    for kind, entry in report["results"].items():
        for i, e in enumerate(entry["equal_recall"]):
            who = "FAISS" if e["reached_by"] == "faiss" else "shardann"
            f_q, s_q = _fmt(e["faiss_qps"], "int"), _fmt(e["shardann_qps"], "int")
            if e["interpolated_lib"] == "faiss":
                f_q = marks[e["interpolation"]] + f_q
            else:
                s_q = marks[e["interpolation"]] + s_q
            lines.append(f"{kind if i == 0 else '':<15}{e['recall']:>8.4f}  "
                         f"{who + ' @nprobe=' + str(e['at_nprobe']):<21}{f_q:>11}{s_q:>14}"
                         f"{_fmt(e['ratio_shardann_over_faiss'], 'ratio'):>16}"
                         f"{_fmt(e['ratio_shardann_over_faiss_cpu'], 'ratio'):>12}"
                         f"{_within(e):>20}")
    lines += [
        "~ interpolated; >= that library already exceeds the recall at its smallest nprobe "
        "(its QPS there is a lower bound); n/r that library never reaches the recall in the "
        "sweep. 'within 1 SE': the other library at its smallest sweep nprobe whose recall "
        "is within one binomial standard error (sqrt(r(1-r)/(nq*k))) of the target - use "
        "it where a curve is flat and the strict ratio hinges on a few hits.",
    ]
    return lines


def _format_split(report):
    c, ds = report["config"], report["dataset"]
    libs = report.get("libs", LIBS)
    lines = [
        "",
        f"where the batch search time goes at nprobe={c['nprobe']} (CPU ms for all "
        f"{ds['nq']} queries, best of {c['reps']}): coarse = quantizer.search / index.probe; "
        "scan = search_preassigned / index.scan; refine = exact re-ranking on top of the scan",
    ]
    for kind, entry in report["results"].items():
        for i, lib in enumerate(libs):
            ts = entry[lib].get("time_split_cpu_s")
            name = kind if i == 0 else ""
            libn = "FAISS" if lib == "faiss" else "shardann"
            if ts is None:
                lines.append(f"{name:<15}{libn:<10} (not split: IndexRefineFlat)")
                continue
            total = sum(ts.values())
            parts = "   ".join(f"{part} {v * 1e3:8.1f} ms ({v / total * 100:4.1f}%)"
                               for part, v in ts.items())
            lines.append(f"{name:<15}{libn:<10} {parts}")
    return lines


def recall_qps_figure(report):
    """The matplotlib figure of :func:`plot` (needs matplotlib)."""
    from matplotlib.figure import Figure

    kinds = list(report["results"])
    libs = report.get("libs", LIBS)
    ncols = min(2, len(kinds))
    nrows = math.ceil(len(kinds) / ncols)
    fig = Figure(figsize=(6.2 * ncols, 4.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    c, ds = report["config"], report["dataset"]
    style = {"faiss": ("tab:blue", "s", "FAISS"), "shardann": ("tab:orange", "o", "shardann")}
    for ax, kind in zip(axes.flat, kinds, strict=False):
        entry = report["results"][kind]
        for lib in libs:
            color, marker, label = style[lib]
            sw = entry[lib]["sweep"]
            rec = [s["recall"] for s in sw]
            qps = [s["qps"] for s in sw]
            ax.plot(rec, qps, marker=marker, color=color, label=f"{label} (wall)")
            if all("qps_cpu" in s for s in sw):
                ax.plot(rec, [s["qps_cpu"] for s in sw], marker=marker, color=color,
                        linestyle="--", alpha=0.45, markersize=4, label=f"{label} (CPU time)")
            for s in sw:
                ax.annotate(str(s["nprobe"]), (s["recall"], s["qps"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3), color=color)
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{c['k']}")
        ax.set_ylabel("QPS (1 thread, batch)")
        key = entry["faiss"]["params"].get("index_factory", "") if "faiss" in entry else ""
        ax.set_title(KIND_LABELS[kind] + (f"  [{key}]" if key else ""), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    title = (f"{'shardann vs FAISS' if 'faiss' in libs else 'shardann (FAISS not installed)'}"
             f", 1 thread: n={ds['n']:,} d={ds['d']} nq={ds['nq']} metric={c['metric']}, "
             f"nprobe sweep {c['nprobe_sweep']} (point labels)")
    # wrapped to the figure's width (about 11 characters per inch at 10 pt),
    # then laid out with the panels so that no line is cut off
    fig.suptitle(textwrap.fill(title, width=int(11 * fig.get_figwidth())), fontsize=10)
    fig.tight_layout()
    return fig


def plot(report, path):
    """Recall-QPS curves, one panel per kind, each library present; a PNG at ``path``."""
    recall_qps_figure(report).savefig(path, dpi=120)


def environment(faiss):
    import numba

    import shardann
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu,
            "os_cpu_count": os.cpu_count(), "numpy": np.__version__,
            "numba": numba.__version__, "shardann": shardann.__version__,
            "faiss": getattr(faiss, "__version__", None),
            "env": {k: os.environ.get(k) for k in (
                "OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_CACHE_DIR")
                if os.environ.get(k) is not None}}


# --------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------
def optional_packages(cfg):
    """Import the optional packages this run uses. Returns ``(faiss or None,
    skipped)``, ``skipped`` a list of ``(what is skipped, why)`` pairs."""
    skipped = []
    faiss, why = _timing.optional_import("faiss")
    if faiss is None:
        skipped.append(("the FAISS comparison", why))
    tpc, why = _timing.optional_import("threadpoolctl")
    if tpc is None:
        skipped.append(("the 1-thread limit of the BLAS pools", why))
    if not cfg["fresh_process_latency"] and not cfg["no_plot"]:
        mpl, why = _timing.optional_import("matplotlib")
        if mpl is None:
            skipped.append((f"the plot {PNG_NAME}", why))
    return faiss, skipped


def _runners(faiss, kind, cfg, fd):
    """The runners of one kind: (FaissRunner, ShardannRunner), or just the
    ShardannRunner without FAISS."""
    d = cfg["d_actual"]
    srun = ShardannRunner(kind, d, cfg["nlist"], cfg["M"], cfg["metric"],
                          cfg["refine_factor"], cfg["seed"], fd["ivf.cp.niter"],
                          fd["pq.cp.niter"], fd["ivf.cp.max_points_per_centroid"])
    if faiss is None:
        return (srun,)
    return (FaissRunner(faiss, kind, d, cfg["nlist"], cfg["M"], cfg["metric"],
                        cfg["refine_factor"], cfg["faiss_fs_residual"]), srun)


def _prepare(cfg, faiss):
    """Shared set-up of both modes: data, checks, training settings. Returns a
    dict or an error string. ``faiss`` may be None (shardann alone)."""
    xb, xq, xt, desc = load_data(cfg)
    d = xb.shape[1]
    cfg["d_actual"] = d
    if any(k != "ivfflat" for k in cfg["kinds"]) and d % cfg["M"]:
        return f"d={d} is not a multiple of --M {cfg['M']}"
    if xt.shape[0] < cfg["nlist"]:
        return f"the training sample has {xt.shape[0]} vectors, fewer than nlist={cfg['nlist']}"
    sweep = [p for p in cfg["nprobe_sweep"] if p <= cfg["nlist"]]
    if cfg["nprobe"] not in sweep:
        sweep = sorted(sweep + [cfg["nprobe"]])
    cfg["nprobe_sweep"] = sweep
    cfg["latency_queries"] = min(cfg["latency_queries"], xq.shape[0])
    fd = (faiss_defaults(faiss, d, cfg["nlist"], cfg["M"], cfg["metric"]) if faiss is not None
          else dict(FAISS_TRAIN_FALLBACK))
    return {"faiss": faiss, "xb": xb, "xq": xq, "xt": xt, "dataset": desc, "fd": fd}


def run_benchmark(cfg, faiss=None, skipped=()):
    """Run the comparison (shardann alone when ``faiss`` is None); return the
    report dict (also written as JSON). ``skipped`` lands in the report."""
    prep = _prepare(cfg, faiss)
    if isinstance(prep, str):
        raise ValueError(prep)
    faiss, xb, xq, xt, fd = prep["faiss"], prep["xb"], prep["xq"], prep["xt"], prep["fd"]
    logger.info("data: %s", prep["dataset"])
    gt, gt_info = ground_truth(faiss, xb, xq, cfg["k"], cfg["metric"])
    logger.info("ground truth: %s in %.1f s", gt_info["method"], gt_info["seconds"])

    report = {
        "benchmark": "shardann bench core",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {k: v for k, v in cfg.items() if k != "d_actual"},
        "libs": [lib for lib in LIBS if faiss is not None or lib != "faiss"],
        "skipped": [{"what": what, "why": why} for what, why in skipped],
        "blas_limited": _timing.optional_import("threadpoolctl")[0] is not None,
        "dataset": prep["dataset"], "ground_truth": gt_info,
        "environment": environment(faiss), "faiss_defaults": fd,
        "shardann_settings": {"niter": fd["ivf.cp.niter"], "pq_niter": fd["pq.cp.niter"],
                              "max_points_per_centroid": fd["ivf.cp.max_points_per_centroid"],
                              "seed": cfg["seed"]},
        "threadpools": {"default": _timing.threadpool_summary()},
        "results": {},
    }
    with _timing.single_thread(faiss):
        report["threadpools"]["during_timing"] = _timing.threadpool_summary()
        import numba
        report["threadpools"]["numba_threads_during_timing"] = numba.get_num_threads()
        if faiss is not None:
            report["threadpools"]["faiss_omp_threads_during_timing"] = \
                faiss.omp_get_max_threads()
        for kind in cfg["kinds"]:
            logger.info("=== %s ===", kind)
            entry = {}
            for runner in _runners(faiss, kind, cfg, fd):
                entry[runner.lib] = measure(runner, xb, xq, xt, gt, cfg)
                gc.collect()
            if faiss is not None:
                fres, sres = entry["faiss"], entry["shardann"]
                entry["ratio"] = ratios(fres, sres)
                entry["equal_recall"] = equal_recall(fres, sres, cfg["nprobe"], xq.shape[0],
                                                     cfg["k"])
            report["results"][kind] = entry
    return report


def write_outputs(report, out_dir, make_plot=True):
    """Write the JSON (and the PNG when ``make_plot`` and matplotlib is
    installed); return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, JSON_NAME)}
    if make_plot and _timing.optional_import("matplotlib")[0] is not None:
        paths["png"] = os.path.join(out_dir, PNG_NAME)
        plot(report, paths["png"])
    report["outputs"] = paths
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1, default=_json_default)
    return paths


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# --------------------------------------------------------------------------
# fresh-process first-query latency
# --------------------------------------------------------------------------
_CHILD_SHARDANN = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import shardann
t1 = time.perf_counter()
index = shardann.open_index(sys.argv[1])
t2 = time.perf_counter()
q = np.load(sys.argv[2])
k, nprobe, rf = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lat = []
for i in range(3):
    s = time.perf_counter()
    index.search(q[i:i + 1], k, nprobe=nprobe, refine_factor=rf)
    lat.append(time.perf_counter() - s)
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "search_ms": [x * 1e3 for x in lat]}))
"""

_CHILD_FAISS = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import faiss
t1 = time.perf_counter()
index = faiss.read_index(sys.argv[1])
t2 = time.perf_counter()
q = np.load(sys.argv[2])
k, nprobe, rf = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
faiss.extract_index_ivf(index).nprobe = nprobe
if rf:
    index.k_factor = float(rf)
lat = []
for i in range(3):
    s = time.perf_counter()
    index.search(q[i:i + 1], k)
    lat.append(time.perf_counter() - s)
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "search_ms": [x * 1e3 for x in lat]}))
"""


def _child_env(cache_dir=None):
    env = dict(os.environ)
    env.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    return env


def _spawn(script, args, env):
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"child process failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_fresh_latency(cfg, faiss=None, skipped=()):
    """Build and save each kind (both libraries; shardann alone when ``faiss``
    is None), then time import, open and the first three single-query
    searches in new processes."""
    prep = _prepare(cfg, faiss)
    if isinstance(prep, str):
        raise ValueError(prep)
    faiss, xb, xq, xt, fd = prep["faiss"], prep["xb"], prep["xq"], prep["xt"], prep["fd"]
    out_dir = os.path.join(cfg["out"], "fresh-latency")
    os.makedirs(out_dir, exist_ok=True)
    qpath = os.path.join(out_dir, "queries.npy")
    np.save(qpath, xq[:3])
    report = {"benchmark": "shardann bench core --fresh-process-latency",
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "config": {k: v for k, v in cfg.items() if k != "d_actual"},
              "skipped": [{"what": what, "why": why} for what, why in skipped],
              "dataset": prep["dataset"], "environment": environment(faiss), "results": {}}
    with _timing.single_thread(faiss):
        for kind in cfg["kinds"]:
            rf = cfg["refine_factor"] if kind == "ivfpq8-refine" else 0
            paths = {}
            for runner in _runners(faiss, kind, cfg, fd):
                logger.info("%s/%s: building the index to save", kind, runner.lib)
                index = runner.make()
                runner.train(index, xt)
                runner.add(index, xb)
                runner.search(index, xq[:2], cfg["k"], cfg["nprobe"])  # fills the Numba cache
                path = os.path.join(out_dir, f"{kind}.{runner.lib}")
                if runner.lib == "faiss":
                    faiss.write_index(index, path)
                else:
                    index.save(path)
                paths[runner.lib] = path
                del index
                gc.collect()
            args = [qpath, cfg["k"], cfg["nprobe"], rf]
            runs = []
            for i in range(cfg["fresh_runs"]):
                logger.info("%s: fresh process %d/%d", kind, i + 1, cfg["fresh_runs"])
                runs.append({"lib": "shardann", "numba_cache": "default (warm)",
                             **_spawn(_CHILD_SHARDANN, [paths["shardann"], *args],
                                      _child_env())})
            with tempfile.TemporaryDirectory(prefix="shardann-numba-cache-") as tmp:
                logger.info("%s: fresh process with an empty NUMBA_CACHE_DIR", kind)
                runs.append({"lib": "shardann", "numba_cache": "empty (compiles)",
                             **_spawn(_CHILD_SHARDANN, [paths["shardann"], *args],
                                      _child_env(tmp))})
                runs.append({"lib": "shardann", "numba_cache": "just filled by previous run",
                             **_spawn(_CHILD_SHARDANN, [paths["shardann"], *args],
                                      _child_env(tmp))})
            for _ in range(cfg["fresh_runs"] if faiss is not None else 0):
                runs.append({"lib": "faiss", "numba_cache": "n/a",
                             **_spawn(_CHILD_FAISS, [paths["faiss"], *args], _child_env())})
            report["results"][kind] = {"paths": paths, "runs": runs}
    return report


def format_fresh(report):
    c = report["config"]
    lines = [f"first-query latency in fresh processes (python -c: import, open index, then 3 "
             f"single-query searches; nprobe={c['nprobe']} k={c['k']}, 1 thread):"]
    head = (f"{'kind':<15}{'lib':<10}{'Numba cache':<29}{'import s':>9}{'open s':>8}"
            f"{'1st ms':>10}{'2nd ms':>9}{'3rd ms':>9}")
    lines += [head, "-" * len(head)]
    for kind, entry in report["results"].items():
        for i, r in enumerate(entry["runs"]):
            s = r["search_ms"]
            lines.append(f"{kind if i == 0 else '':<15}{r['lib']:<10}{r['numba_cache']:<29}"
                         f"{r['import_s']:>9.2f}{r['open_s']:>8.2f}{s[0]:>10.1f}{s[1]:>9.2f}"
                         f"{s[2]:>9.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------
def run(args):
    """Run ``bench core`` with parsed ``args``; print the summary. Returns an exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    cfg = _resolve(args)
    err = _validate(cfg)
    if err:
        print(f"shardann bench core: error: {err}", file=sys.stderr)
        return 2
    faiss, skipped = optional_packages(cfg)
    note = _timing.skip_note("shardann bench core", skipped)
    if note:
        print(note, flush=True)
    try:
        if cfg["fresh_process_latency"]:
            report = run_fresh_latency(cfg, faiss, skipped)
            os.makedirs(cfg["out"], exist_ok=True)
            path = os.path.join(cfg["out"], FRESH_JSON_NAME)
            with open(path, "w") as f:
                json.dump(report, f, indent=1, default=_json_default)
            print(format_fresh(report))
            print(f"\nwrote {path}")
            return 0
        report = run_benchmark(cfg, faiss, skipped)
    except (ValueError, OSError) as exc:
        print(f"shardann bench core: error: {exc}", file=sys.stderr)
        return 2
    paths = write_outputs(report, cfg["out"], make_plot=not cfg["no_plot"])
    print(format_report(report))
    print("\nwrote " + ", ".join(paths.values()))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m shardann.bench.core",
        description="Compare shardann with FAISS (recall, QPS, train and add speed), "
                    "single-threaded, on the same data and parameters.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
