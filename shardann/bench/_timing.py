"""Timing helpers for the benchmarks: single-thread limits, repeated timings and
latency percentiles (recall is :func:`shardann.results.recall_at_k`), and the
optional packages of the ``bench`` extra (faiss-cpu, matplotlib, ScaNN),
which are imported only here and only when asked for.

Nothing here prints; callers log or print.
"""

import contextlib
import importlib
import os
import statistics
import time

import numpy as np
import threadpoolctl

_clock = time.perf_counter

#: how to get the optional packages the benchmarks use (the ``bench`` extra: faiss-cpu,
#: matplotlib, and ScaNN for ``bench frontier``)
BENCH_EXTRA = 'pip install -e ".[bench]"'
#: module name -> the name pip installs it by
_DISTRIBUTION = {"faiss": "faiss-cpu", "matplotlib": "matplotlib", "scann": "scann"}


_cpu = time.process_time


def timed(fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)`` once; return ``(wall_s, cpu_s, result)``.

    ``cpu_s`` is this process's CPU time (all threads). For single-threaded
    work it equals the wall time on an idle machine and stays close to the
    true cost when other processes compete for the cores; a ``cpu_s`` well
    above ``wall_s`` means something ran on more than one thread.
    """
    c0, t0 = _cpu(), _clock()
    out = fn(*args, **kwargs)
    t1, c1 = _clock(), _cpu()
    return t1 - t0, c1 - c0, out


def repeat(fn, reps):
    """Call ``fn()`` ``reps`` (>= 1) times; return ``(walls, cpus, last_result)``."""
    walls, cpus = [], []
    out = None
    for _ in range(max(1, int(reps))):
        w, c, out = timed(fn)
        walls.append(w)
        cpus.append(c)
    return walls, cpus, out


def summarize(walls, cpus):
    """Best and median wall and CPU seconds of repeated timings."""
    return {"best": min(walls), "median": statistics.median(walls), "all": list(walls),
            "cpu_best": min(cpus), "cpu_median": statistics.median(cpus), "cpu_all": list(cpus)}


def load_average():
    """The 1-minute load average, or None where the OS does not report it."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def latencies(search_one, queries, n):
    """Per-query wall-clock seconds of ``search_one(q)`` (q of shape (1, d))
    for the first ``n`` rows of ``queries``, one call per query."""
    n = min(int(n), queries.shape[0])
    out = np.empty(n)
    for i in range(n):
        q = queries[i:i + 1]
        t0 = _clock()
        search_one(q)
        out[i] = _clock() - t0
    return out


def percentiles_ms(lat, ps=(50, 90, 99)):
    """``{"p50": ms, ...}`` of latencies in seconds."""
    if len(lat) == 0:
        return {f"p{p}": None for p in ps}
    return {f"p{p}": float(np.percentile(lat, p) * 1e3) for p in ps}


def optional_import(name):
    """``(module, None)`` for an optional package, or ``(None, why)`` where
    ``why`` says it is not installed or why its import failed."""
    try:
        return importlib.import_module(name), None
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name in (name, None):
            return None, f"{_DISTRIBUTION.get(name, name)} is not installed"
        return None, f"{name} cannot be imported ({exc})"


def skip_note(prog, skipped):
    """One line naming what ``prog`` skipped and how to get it, or None.

    ``skipped`` is a list of ``(what is skipped, why)`` pairs.
    """
    if not skipped:
        return None
    parts = "; ".join(f"{what} ({why})" for what, why in skipped)
    return f"{prog}: skipped {parts}. The bench extra has them: {BENCH_EXTRA}"


def threadpool_summary():
    """The native thread pools loaded in this process (BLAS, OpenMP), short form."""
    keep = ("user_api", "internal_api", "num_threads", "prefix", "version",
            "threading_layer", "architecture")
    return [{k: p.get(k) for k in keep if k in p} for p in threadpoolctl.threadpool_info()]


@contextlib.contextmanager
def single_thread(faiss=None):
    """Run the body on one thread: BLAS and OpenMP pools (threadpoolctl),
    FAISS's OpenMP (``faiss.omp_set_num_threads``) and Numba.

    The previous FAISS and Numba thread counts are restored on exit;
    environment variables are not touched.
    """
    import numba

    old_numba = numba.get_num_threads()
    old_faiss = faiss.omp_get_max_threads() if faiss is not None else None
    numba.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    try:
        with threadpoolctl.threadpool_limits(limits=1):
            yield
    finally:
        numba.set_num_threads(old_numba)
        if faiss is not None:
            faiss.omp_set_num_threads(old_faiss)
