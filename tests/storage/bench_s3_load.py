"""Open + load from an S3-compatible server vs a local directory, whole and per shard.

Not a test (pytest does not collect it). Usage::

    flock /tmp/cpu.lock .venv/bin/python tests/storage/bench_s3_load.py \
        [--n 200000] [--d 128] [--shards 4] [--row-group-rows 65536 4096]

Builds one IVF-PQ index (nlist=1024, M=16, nbits=8), saves it to a local directory
and to a moto S3 server started on 127.0.0.1 (moto is a Python server: its
throughput is far below real S3's, so the seconds are an upper bound; the bytes and
requests are what a real store would serve), once per ``--row-group-rows``. Then, in
a fresh process each (no caches shared):

* ``whole``: ``IndexStore.open`` + ``load_state()`` of every list;
* ``shard i``: what a shard actor does on load (``ShardWorker._load`` without Ray):
  open, the model, then ``read_lists`` of the lists ``place_lists`` gives shard i,
  with the bytes and GET requests it read from the store (counted by the store's
  location object).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

CHILD = r"""
import json, sys, time
import numpy as np
from shardann.index import load_index
from shardann.storage import IndexStore
uri, lists = sys.argv[1], json.loads(sys.argv[2])
t0 = time.perf_counter()
store = IndexStore.open(uri)
if lists is None:
    state = store.load_state()
    n = state.ntotal
else:
    index = load_index(store, lists=np.zeros(0, np.int64))
    sizes, ids, cols = store.read_lists(np.asarray(lists, np.int64))
    n = int(ids.size)
t1 = time.perf_counter()
stats = store.location.stats()
print(json.dumps({"seconds": t1 - t0, "rows": n, **stats}))
"""


def run_child(uri, lists, env):
    out = subprocess.run([sys.executable, "-c", CHILD, uri, json.dumps(lists)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--row-group-rows", type=int, nargs="+", default=[65536, 4096])
    args = ap.parse_args()

    import numpy as np
    from s3_support import MotoServer

    import shardann
    from shardann.bench.datasets import synthetic_split
    from shardann.distributed.placement import place_lists
    from shardann.storage import IndexStore

    xb, _, xt = synthetic_split(args.n, 10, args.d, nt=50_000, seed=1)
    index = shardann.IVFPQIndex(args.d, 1024, 16, 8, "l2", seed=0, niter=6, pq_niter=6)
    t = time.perf_counter()
    index.train(xt)
    index.add(xb)
    print(f"built {args.n} x {args.d} IVF-PQ (nlist 1024, M 16) in "
          f"{time.perf_counter() - t:.1f}s")
    server = MotoServer()
    env = {**os.environ, **server.env}
    os.environ.update(server.env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rgr in args.row_group_rows:
                local = os.path.join(tmp, f"local-{rgr}")
                uri = f"s3://{server.new_bucket()}/idx"
                IndexStore.save(local, index, row_group_rows=rgr)
                store = IndexStore.save(uri, index, row_group_rows=rgr)
                m = store.manifest["files"]
                seg = sum(s["size"] for s in m["segments"])
                groups = sum(len(s["row_groups"]) for s in m["segments"])
                print(f"\nrow_group_rows={rgr}: segments {seg / 1e6:.2f} MB in {groups} row "
                      f"groups, codebooks {m['codebooks']['size'] / 1e6:.2f} MB")
                for name, where in (("local", local), ("s3", uri)):
                    r = run_child(where, None, env)
                    extra = ("" if r["bytes_read"] is None else
                             f", {r['bytes_read'] / 1e6:.2f} MB in {r['read_requests']} GETs")
                    print(f"  whole  {name:5s} open+load {r['seconds']:.3f}s "
                          f"({r['rows']} rows{extra})")
                owner = place_lists(store.list_sizes(), args.shards)
                for s in range(args.shards):
                    lists = np.flatnonzero(owner == s).tolist()
                    for name, where in (("local", local), ("s3", uri)):
                        r = run_child(where, lists, env)
                        extra = ("" if r["bytes_read"] is None else
                                 f", read {r['bytes_read'] / 1e6:.2f} MB "
                                 f"({r['bytes_read'] / (seg + m['codebooks']['size']):.0%} of "
                                 f"the store) in {r['read_requests']} GETs")
                        print(f"  shard {s} {name:5s} open+load {r['seconds']:.3f}s "
                              f"({r['rows']} rows{extra})")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
