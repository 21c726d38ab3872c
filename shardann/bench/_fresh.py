"""``shardann bench core --fresh-process-latency``: build and save each index
kind, then time import, open and the first searches in brand-new Python
processes (Numba's on-disk cache warm, empty, and just filled).

The child process is :mod:`._fresh_child`, run as a script by its path.
"""

import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import shardann

from . import _fresh_child, _timing
from ._report import json_default
from ._runners import make_runners
from ._suite import environment, prepare

logger = logging.getLogger(__name__)

FRESH_JSON_NAME = "core-fresh-latency.json"


def _child_env(cache_dir=None):
    env = dict(os.environ)
    env.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    # the child imports the shardann this process runs, wherever it comes from
    root = os.path.dirname(os.path.dirname(os.path.abspath(shardann.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _spawn(lib, args, env):
    proc = subprocess.run([sys.executable, "-P", _fresh_child.__file__, lib, *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"child process failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_fresh_latency(cfg, faiss=None, skipped=()):
    """Build and save each kind (both libraries; shardann alone when ``faiss``
    is None), then time import, open and the first three single-query
    searches in new processes."""
    prep = prepare(cfg, faiss)
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
            for runner in make_runners(faiss, kind, cfg, fd):
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
                             **_spawn("shardann", [paths["shardann"], *args],
                                      _child_env())})
            with tempfile.TemporaryDirectory(prefix="shardann-numba-cache-") as tmp:
                logger.info("%s: fresh process with an empty NUMBA_CACHE_DIR", kind)
                runs.append({"lib": "shardann", "numba_cache": "empty (compiles)",
                             **_spawn("shardann", [paths["shardann"], *args],
                                      _child_env(tmp))})
                runs.append({"lib": "shardann", "numba_cache": "just filled by previous run",
                             **_spawn("shardann", [paths["shardann"], *args],
                                      _child_env(tmp))})
            for _ in range(cfg["fresh_runs"] if faiss is not None else 0):
                runs.append({"lib": "faiss", "numba_cache": "n/a",
                             **_spawn("faiss", [paths["faiss"], *args], _child_env())})
            report["results"][kind] = {"paths": paths, "runs": runs}
    return report


def format_fresh(report):
    c = report["config"]
    lines = [f"first-query latency in fresh processes (python -P: import, open index, then 3 "
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


def write_fresh(report, out_dir):
    """Write the report as JSON in ``out_dir``; return its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, FRESH_JSON_NAME)
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=json_default)
    return path
