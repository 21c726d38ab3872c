"""Ingest benchmark: throughput and peak memory of the whole Ray job vs FAISS ``add``.

Not a test (speed is not asserted); run it by hand::

    python tests/ingest/bench_ingest.py --n 1000000 --work /tmp/ingbench

1. writes ``--n`` x ``--d`` synthetic float32 vectors to Parquet (once; reused);
2. runs ``shardann.distributed.ingest`` in a child process with its own local Ray
   (``--cpus`` CPUs, one worker each) and samples the memory of the child's whole
   process tree (driver, raylet, GCS, workers) every 0.5 s: the sum of RSS and the
   sum of PSS (shared pages split between the processes that map them);
3. in another child with one thread (``OMP_NUM_THREADS=1``), loads the same
   vectors and times FAISS ``IndexIVFPQ.add`` (same nlist, M, nbits; trained on
   a sample, training not timed), and the core ``IVFPQIndex`` encode on one thread.

Prints a JSON report with the ratios.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

INGEST_CHILD = r"""
import json, sys, time
import ray
from shardann.distributed import ingest
a = json.loads(sys.argv[1])
ray.init(num_cpus=a["cpus"], include_dashboard=False, log_to_driver=False,
         configure_logging=False)
t = time.perf_counter()
s = ingest(a["index"], a["data"], nlist=a["nlist"], M=a["M"], nbits=8, niter=a["niter"],
           pq_niter=a["niter"], sample_size=a["sample"], progress=a["progress"],
           num_workers=a["cpus"])
out = s.to_dict()
out["wall"] = time.perf_counter() - t
print("RESULT " + json.dumps(out), flush=True)
ray.shutdown()
"""

FAISS_CHILD = r"""
import json, os, sys, time
import numpy as np, pyarrow.parquet as pq
a = json.loads(sys.argv[1])
xs = []
for name in sorted(os.listdir(a["data"])):
    t = pq.read_table(os.path.join(a["data"], name)).column(0).combine_chunks()
    xs.append(t.values.to_numpy().reshape(len(t), -1))
x = np.concatenate(xs); del xs
import faiss
faiss.omp_set_num_threads(1)
rng = np.random.default_rng(0)
xt = x[np.sort(rng.choice(x.shape[0], min(x.shape[0], a["sample"]), replace=False))]
q = faiss.IndexFlatL2(x.shape[1])
index = faiss.IndexIVFPQ(q, x.shape[1], a["nlist"], a["M"], 8)
index.cp.niter = a["niter"]
index.train(xt)
t = time.perf_counter(); index.add(x); faiss_add = time.perf_counter() - t
import numba; numba.set_num_threads(1)
import shardann
core = shardann.IVFPQIndex(x.shape[1], a["nlist"], a["M"], 8, niter=a["niter"],
                           pq_niter=a["niter"]).train(xt)
sub = x[: min(x.shape[0], 500_000)]
core.encode(core.prepare(sub[:1000]))
t = time.perf_counter(); core.encode(core.prepare(sub)); core_s = time.perf_counter() - t
print("RESULT " + json.dumps({"n": int(x.shape[0]), "faiss_add_s": faiss_add,
      "faiss_add_vps": x.shape[0] / faiss_add, "core_encode_1thread_vps": sub.shape[0] / core_s}),
      flush=True)
"""


def write_data(directory, n, d, files, chunk=250_000):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardann.bench.datasets import synthetic_chunk

    os.makedirs(directory, exist_ok=True)
    per_file = -(-n // files)
    for f in range(files):
        lo, hi = f * per_file, min(n, (f + 1) * per_file)
        schema = pa.schema([("embedding", pa.list_(pa.float32(), d))])
        # mixed row-group sizes, as real writers produce
        rg = (50_000, 128_000, 250_000)[f % 3]
        with pq.ParquetWriter(os.path.join(directory, f"part-{f:04d}.parquet"), schema,
                              compression="none") as w:
            for s in range(lo, hi, chunk):
                x = synthetic_chunk(s, min(hi, s + chunk), d)
                col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
                w.write_table(pa.table({"embedding": col}), row_group_size=rg)


def set_cache(directory, how):
    """Evict the files of ``directory`` from the page cache ("cold") or read them
    into it ("warm")."""
    if how == "as-is":
        return
    for name in sorted(os.listdir(directory)):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            if how == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 16 << 20):
                    pass
        finally:
            os.close(fd)


# -- memory of a process tree --------------------------------------------------------------
def _children():
    kids = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(pid))
    return kids


def tree(root):
    kids, out, todo = _children(), [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _kb(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    def __init__(self, pid, every=0.5):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            rss = pss = 0
            snap = {}
            for p in tree(self.pid):
                r = _kb(f"/proc/{p}/status", "VmRSS:")
                rss += r
                pss += _kb(f"/proc/{p}/smaps_rollup", "Pss:")
                try:
                    with open(f"/proc/{p}/cmdline", "rb") as f:
                        name = f.read().split(b"\0")[0].decode(errors="replace")[-40:]
                except OSError:
                    name = "?"
                snap[f"{p}:{name}"] = r
            if rss > self.peak_rss:
                self.peak_procs = snap
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.stop.wait(self.every)


def run_child(code, args, env=None, sample=False):
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], env=env,
                            stdout=subprocess.PIPE, text=True)
    sampler = MemorySampler(proc.pid) if sample else None
    if sampler:
        sampler.start()
    out, _ = proc.communicate()
    if sampler:
        sampler.stop.set()
        sampler.join()
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode})")
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    return res, sampler


def _cpu_has(flag):
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--niter", type=int, default=10)
    p.add_argument("--sample", type=int, default=None, help="training sample (default 64 x nlist)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--work", default="/tmp/shardann-ingest-bench")
    p.add_argument("--skip-faiss", action="store_true")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--cache", choices=("cold", "warm", "as-is"), default="cold",
                   help="input files before each ingest run: evicted from the page cache "
                        "(cold: read from disk, as inputs larger than memory are), read once "
                        "(warm), or left as they are")
    p.add_argument("--repeat", type=int, default=1,
                   help="ingest and FAISS runs, alternated; the median is reported")
    p.add_argument("--faiss-openblas-coretype", default="auto",
                   help="OPENBLAS_CORETYPE for the FAISS run. faiss-cpu bundles an older "
                        "OpenBLAS (0.3.15 in faiss-cpu 1.15.1) that picks a slow kernel on "
                        "newer AVX-512 CPUs: on a Sapphire Rapids VM its coarse assignment "
                        "took 18 us/vector, 3 with SKYLAKEX, and IndexIVFPQ.add 17 vs 8. "
                        "auto: SKYLAKEX when the CPU has AVX-512 (unless OPENBLAS_CORETYPE "
                        "is set), so FAISS runs at its best; none: leave it unset")
    a = p.parse_args()
    coretype = a.faiss_openblas_coretype
    if coretype == "auto":
        coretype = os.environ.get("OPENBLAS_CORETYPE") or (
            "SKYLAKEX" if _cpu_has("avx512f") else None)
    elif coretype == "none":
        coretype = None
    sample = a.sample or 64 * a.nlist
    data = os.path.join(a.work, f"data-{a.n}x{a.d}")
    if not os.path.isdir(data):
        t = time.perf_counter()
        write_data(data, a.n, a.d, a.files)
        print(f"wrote {data} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    index = os.path.join(a.work, f"index-{a.n}x{a.d}-{int(time.time())}")
    args = {"data": data, "index": index, "nlist": a.nlist, "M": a.M, "niter": a.niter,
            "sample": sample, "cpus": a.cpus, "progress": a.progress}
    report = {"n": a.n, "d": a.d, "nlist": a.nlist, "M": a.M, "cpus": a.cpus, "cache": a.cache,
              "faiss_openblas_coretype": coretype,
              "parquet_bytes": sum(os.path.getsize(os.path.join(data, f))
                                   for f in os.listdir(data))}
    runs = []
    for r in range(a.repeat):
        args["index"] = f"{index}-{r}"
        set_cache(data, a.cache)
        res, mem = run_child(INGEST_CHILD, args, sample=True)
        runs.append((res, mem))
        shutil.rmtree(args["index"], ignore_errors=True)
        if not a.skip_faiss:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                   "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
            if coretype:
                env["OPENBLAS_CORETYPE"] = coretype
            fres, _ = run_child(FAISS_CHILD, args, env=env)
            runs[-1] += (fres,)
        print(f"run {r}: ingest {res['wall']:.1f} s (encode {res['stage_seconds']['encode']:.1f} s)"
              + (f", faiss add {fres['faiss_add_s']:.1f} s" if not a.skip_faiss else ""),
              file=sys.stderr)
    # the median run by ingest wall time
    runs.sort(key=lambda t: t[0]["wall"])
    res, mem = runs[len(runs) // 2][:2]
    report["repeat"] = a.repeat
    report["all_runs"] = [{"ingest_wall_s": t[0]["wall"],
                           "encode_s": t[0]["stage_seconds"]["encode"],
                           "peak_rss_sum_gib": t[1].peak_rss / 2**20,
                           **({"faiss_add_s": t[2]["faiss_add_s"],
                               # paired: this ingest run against the FAISS run right after it
                               "ratio_ingest_vs_faiss_add": t[2]["faiss_add_s"] / t[0]["wall"],
                               "ratio_encode_stage_vs_faiss_add":
                                   t[2]["faiss_add_s"] / t[0]["stage_seconds"]["encode"]}
                              if len(t) > 2 else {})}
                          for t in runs]
    st = res["stage_seconds"]
    report.update({
        "ingest_wall_s": res["wall"], "ingest_vps": res["vectors"] / res["wall"],
        "stages_s": st,
        "encode_merge_vps": res["vectors"] / (st.get("encode", 0) + st.get("merge", 0)),
        "data_path_vps": res["vectors"] / (res["wall"] - st.get("train", 0)),
        "worker_seconds": res["worker_seconds"],
        "encode_stage_vps": res["vectors"] / st["encode"],
        "recall": res["recall"], "bytes_written": res["bytes_written"],
        "peak_rss_sum_gib": mem.peak_rss / 2**20, "peak_pss_sum_gib": mem.peak_pss / 2**20,
        "processes_at_peak": len(mem.peak_procs),
        "largest_at_peak_mib": sorted(((v / 1024, k) for k, v in mem.peak_procs.items()),
                                      reverse=True)[:6]})
    if not a.skip_faiss:
        fres = sorted((t[2] for t in runs), key=lambda f: f["faiss_add_s"])[len(runs) // 2]
        report.update(fres)
        report["ratio_ingest_vs_faiss_add"] = report["ingest_vps"] / fres["faiss_add_vps"]
        report["ratio_encode_stage_vs_faiss_add"] = (report["encode_stage_vps"]
                                                     / fres["faiss_add_vps"])
        report["ratio_encode_merge_vs_faiss_add"] = (report["encode_merge_vps"]
                                                     / fres["faiss_add_vps"])
        report["ratio_data_path_vs_faiss_add"] = (report["data_path_vps"]
                                                  / fres["faiss_add_vps"])
    report["peak_rss_sum_gib_max"] = max(t[1].peak_rss for t in runs) / 2**20
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
