"""Measure the store on a 1M x 128 IVF-PQ index (M=32, nbits=8: 32-byte codes).

Not a test (pytest does not collect it). Usage::

    .venv/bin/python tests/storage/bench_open_load.py [--n 1000000] [--dir /tmp/shardann-bench]

Builds the index once (kept in --dir), then reports, each in a fresh process:
bytes on disk per vector, ``IndexStore.open`` + ``read_lists()`` throughput
(GB/s of codes), ``shardann.open_index`` (open + load into an index) and the
first search after open against later ones (the kernels are warmed first on a
tiny in-memory index, so the difference is what opening from the store adds).
Wall times on a shared machine are noisy: compare best and median, and CPU time.
"""

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import numpy as np
import shardann
from shardann.storage import IndexStore
path, mode = sys.argv[1], sys.argv[2]
out = {}
if mode in ("store", "store-fast"):
    t1, c1 = time.perf_counter(), time.process_time()
    store = IndexStore.open(path, check_chunks=(mode == "store"))
    t2 = time.perf_counter()
    sizes, ids, cols = store.read_lists()
    t3, c3 = time.perf_counter(), time.process_time()
    codes = cols["codes"]
    out = {"open_s": t2 - t1, "read_lists_s": t3 - t2, "total_s": t3 - t1, "cpu_s": c3 - c1,
           "code_bytes": int(codes.nbytes), "n": int(ids.size),
           "zero_copy": bool(codes.base is not None and not codes.flags.owndata)}
else:
    q = np.load(sys.argv[3])
    # warm the kernels first on a tiny in-memory index of the same shape, so that what
    # follows shows only what opening from the store adds
    rng = np.random.default_rng(0)
    tiny = shardann.IVFPQIndex(q.shape[1], 16, 32, 8, "l2", niter=2, pq_niter=2)
    tiny.train(rng.standard_normal((2000, q.shape[1])).astype(np.float32))
    tiny.add(rng.standard_normal((2000, q.shape[1])).astype(np.float32))
    s = time.perf_counter(); tiny.search(q[:1], 10, nprobe=4); w1 = time.perf_counter() - s
    s = time.perf_counter(); tiny.search(q[:50], 10, nprobe=4); w2 = time.perf_counter() - s
    t1 = time.perf_counter()
    index = shardann.open_index(path)
    t2 = time.perf_counter()
    lat = []
    for i in range(6):
        s = time.perf_counter()
        index.search(q[i:i + 1], 10, nprobe=16)
        lat.append(time.perf_counter() - s)
    s = time.perf_counter(); index.search(q, 10, nprobe=16); b1 = time.perf_counter() - s
    s = time.perf_counter(); index.search(q, 10, nprobe=16); b2 = time.perf_counter() - s
    out = {"warmup_ms": [w1 * 1e3, w2 * 1e3], "open_index_s": t2 - t1,
           "search_ms": [x * 1e3 for x in lat],
           "batch_first_ms": b1 * 1e3, "batch_again_ms": b2 * 1e3, "nq": len(q),
           "code_bytes": int(index._lists.data["codes"].nbytes)}
print(json.dumps(out))
"""


def build(path, n, d, seed=0):
    import numpy as np

    import shardann
    from shardann.bench.datasets import synthetic
    t0 = time.perf_counter()
    x = synthetic(n + 1000, d, seed=seed)
    xb, xq = x[:n], x[n:]
    index = shardann.IVFPQIndex(d, 1024, 32, 8, "l2", seed=seed, niter=10, pq_niter=10)
    index.train(xb[:65536])
    index.add(xb)
    t1 = time.perf_counter()
    index.save(path)
    t2 = time.perf_counter()
    np.save(os.path.join(os.path.dirname(path), "queries.npy"), xq[:200])
    print(f"built {n} vectors in {t1 - t0:.1f}s, saved in {t2 - t1:.2f}s", flush=True)


def disk_usage(path):
    from shardann.storage import IndexStore
    store = IndexStore.open(path)
    m = store.manifest
    seg = sum(s["size"] for s in m["files"]["segments"])
    total = 0
    for dirpath, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return store.ntotal, store.code_size, seg, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--dir", default="/tmp/shardann-bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--modes", default="store,store-fast,index",
                    help="comma-separated: store (open + read_lists), store-fast (the same with "
                         "check_chunks=False), index (open_index + search)")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f"ivfpq-{args.n}")
    if not os.path.isdir(path):
        build(path, args.n, args.d)
    n, cs, seg, total = disk_usage(path)
    print(f"on disk: segments {seg / n:.3f} B/vector, whole index {total / n:.3f} B/vector "
          f"(code {cs} + id 8 = {cs + 8}; budget {1.05 * (cs + 8):.2f})")
    env = dict(os.environ)
    modes = args.modes.split(",")
    results = {mode: [] for mode in modes}
    # modes take turns, so that the machine's load changes hit each of them alike
    for _ in range(args.runs):
        for mode in modes:
            extra = [os.path.join(args.dir, "queries.npy")] if mode == "index" else []
            p = subprocess.run([sys.executable, "-c", CHILD, path, mode, *extra],
                               capture_output=True, text=True, env=env, timeout=600)
            if p.returncode:
                raise SystemExit(p.stderr)
            results[mode].append(json.loads(p.stdout.strip().splitlines()[-1]))
    for mode in modes:
        runs = results[mode]
        if mode.startswith("store"):
            best = min(runs, key=lambda r: r["total_s"])
            med = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]
            print(f"  {mode} GB/s of codes, all runs: " + " ".join(
                f"{r['code_bytes'] / r['total_s'] / 1e9:.2f}"
                for r in sorted(runs, key=lambda r: r["total_s"])))
            for label, r in (("best", best), ("median", med)):
                what = "check_chunks=False" if mode == "store-fast" else "chunk CRCs on"
                print(f"IndexStore.open + read_lists() ({what}) [{label} of {len(runs)}]: open "
                      f"{r['open_s'] * 1e3:.1f} ms + read {r['read_lists_s'] * 1e3:.1f} ms "
                      f"= {r['total_s'] * 1e3:.1f} ms -> "
                      f"{r['code_bytes'] / r['total_s'] / 1e9:.2f} GB/s of codes; cpu "
                      f"{r['cpu_s'] * 1e3:.1f} ms (zero-copy: {r['zero_copy']})")
        else:
            runs.sort(key=lambda r: r["open_index_s"])
            r = runs[len(runs) // 2]
            print(f"shardann.open_index [median of {len(runs)}]: {r['open_index_s'] * 1e3:.1f} ms"
                  f" -> {r['code_bytes'] / r['open_index_s'] / 1e9:.2f} GB/s of codes "
                  f"(best {runs[0]['open_index_s'] * 1e3:.1f} ms)")
            for r in runs:
                print("  kernel warm-up on a tiny index (1 query, 50 queries) ms:",
                      " ".join(f"{x:.1f}" for x in r["warmup_ms"]))
                print("  single-query search ms after open:",
                      " ".join(f"{x:.2f}" for x in r["search_ms"]),
                      f"| batch of {r['nq']}: first {r['batch_first_ms']:.1f} ms, "
                      f"again {r['batch_again_ms']:.1f} ms")


if __name__ == "__main__":
    main()
