"""The ``shardann bench core`` comparison: data, ground truth, then every index
kind of both libraries measured single-threaded into one report dict."""

import gc
import logging
import os
import platform
import sys
import time

import numpy as np

from . import _timing
from ._measure import equal_recall, measure, ratios
from ._report import PNG_NAME
from ._runners import FAISS_TRAIN_FALLBACK, LIBS, as_f32, faiss_defaults, make_runners

logger = logging.getLogger(__name__)


def load_data(cfg):
    """Return ``(xb, xq, xt, description)``, float32 C-contiguous arrays."""
    from .datasets import read_vectors, synthetic_split

    if cfg["base"]:
        xb = as_f32(read_vectors(cfg["base"]))
        xq = as_f32(read_vectors(cfg["queries"]))
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
        xt = as_f32(pool[sel])
        desc = {"source": "files", "base": cfg["base"], "queries": cfg["queries"],
                "train": src.format(take)}
    else:
        xb, xq, xt = synthetic_split(cfg["n"], cfg["nq"], cfg["d"], nt=cfg["train_size"],
                                     seed=cfg["seed"])
        xb, xq, xt = as_f32(xb), as_f32(xq), as_f32(xt)
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


def environment(faiss):
    import numba

    import shardann
    cpu = None
    flags = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu is None:
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and flags is None:
                    have = set(line.split(":", 1)[1].split())
                    # the SIMD extensions the kernels (and FAISS / ScaNN) can use
                    flags = sorted(f for f in have if f.startswith(("avx", "amx"))
                                   or f in ("fma", "f16c", "sse4_2", "popcnt", "bmi2"))
    except OSError:
        pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu,
            "cpu_flags": flags,
            "os_cpu_count": os.cpu_count(), "numpy": np.__version__,
            "numba": numba.__version__, "shardann": shardann.__version__,
            "faiss": getattr(faiss, "__version__", None),
            "env": {k: os.environ.get(k) for k in (
                "OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_CACHE_DIR")
                if os.environ.get(k) is not None}}


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


def prepare(cfg, faiss):
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
    prep = prepare(cfg, faiss)
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
            for runner in make_runners(faiss, kind, cfg, fd):
                entry[runner.lib] = measure(runner, xb, xq, xt, gt, cfg)
                gc.collect()
            if faiss is not None:
                fres, sres = entry["faiss"], entry["shardann"]
                entry["ratio"] = ratios(fres, sres)
                entry["equal_recall"] = equal_recall(fres, sres, cfg["nprobe"], xq.shape[0],
                                                     cfg["k"])
            report["results"][kind] = entry
    return report
