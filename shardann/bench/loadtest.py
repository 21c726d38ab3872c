"""A bounded HTTP load generator for the search service (aiohttp + asyncio).

::

    # a synthetic index to serve (1M vectors, d=64, IVF-PQ nlist=1024, M=16)
    python -m shardann.bench.loadtest build /tmp/idx-1m --n 1000000
    # serve it (2 shards) in another terminal
    python -m shardann.cli serve /tmp/idx-1m --shards 2
    # closed loop: 64 clients, each sending its next request when the last answered
    python -m shardann.bench.loadtest run --url http://127.0.0.1:8000 --d 64 \\
        --concurrency 64 --requests 20000 --duration 30
    # open loop: a fixed arrival rate (requests/s), at most --concurrency in flight
    python -m shardann.bench.loadtest run ... --rate 300,600,900

Every run is bounded by ``--requests`` *and* ``--duration`` (whichever comes
first) and only talks to the URL given (use loopback). Latency of open-loop
requests is measured from the moment each was scheduled, so a stalled server
shows up as latency instead of hiding in the client (no coordinated omission).
Prints one line per stage and, with ``--out``, writes the figures as JSON.

The client is aiohttp, not httpx (which ``shardann.Client`` uses): on this
project's 2-core test machine one httpx ``AsyncClient`` could not send more
than ~200 requests/s even to a server answering 503 at once (p50 2 s at
300/s), so overload figures measured the load generator; aiohttp sent
1000/s there with a p50 of 1 ms.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import time

import numpy as np

logger = logging.getLogger(__name__)


# -- building a test index -----------------------------------------------------------------
def build_index(path, *, n, d, nlist, M, nbits, seed=0, train_n=None, block=100_000):
    """Train an IVF-PQ index on synthetic structured data, add ``n`` vectors in blocks
    and save it at ``path``. Returns the index's ntotal."""
    import shardann

    from .datasets import synthetic

    t0 = time.perf_counter()
    train_n = train_n or min(n, max(64 * nlist, 50_000))
    xt = synthetic(train_n, d, seed=seed + 1)
    index = shardann.IVFPQIndex(d, nlist, M, nbits, "l2", seed=seed, niter=10, pq_niter=10)
    index.train(xt)
    logger.info("trained in %.1fs", time.perf_counter() - t0)
    xb = synthetic(n, d, seed=seed)
    for s in range(0, n, block):
        index.add(xb[s:s + block])
    logger.info("added %d vectors in %.1fs", index.ntotal, time.perf_counter() - t0)
    index.save(path)
    logger.info("saved to %s in %.1fs", path, time.perf_counter() - t0)
    return index.ntotal


def _queries(nq, d, seed):
    from .datasets import synthetic
    return synthetic(nq, d, seed=seed + 1000)


# -- load --------------------------------------------------------------------------------------
class Stage:
    """Outcomes of one load stage."""

    def __init__(self, name):
        self.name = name
        self.lat = {}  # status -> list of seconds
        self.errors = {}  # exception type -> count
        self.elapsed = 0.0
        self.load_before = os.getloadavg()[0]
        self.load_after = None

    def record(self, status, seconds):
        self.lat.setdefault(status, []).append(seconds)

    def summary(self):
        ok = np.asarray(self.lat.get(200, []), dtype=np.float64) * 1e3
        rej = np.asarray(self.lat.get(503, []), dtype=np.float64) * 1e3
        total = sum(len(v) for v in self.lat.values()) + sum(self.errors.values())

        def pct(a, q):
            return round(float(np.percentile(a, q)), 2) if len(a) else None

        return {
            "stage": self.name, "requests": total, "elapsed_s": round(self.elapsed, 2),
            "ok": int(len(ok)), "qps_ok": round(len(ok) / self.elapsed, 1) if self.elapsed else 0,
            "status": {str(k): len(v) for k, v in sorted(self.lat.items())},
            "client_errors": dict(self.errors),
            "p50_ms": pct(ok, 50), "p90_ms": pct(ok, 90), "p99_ms": pct(ok, 99),
            "max_ms": round(float(ok.max()), 2) if len(ok) else None,
            "rejected_p50_ms": pct(rej, 50), "rejected_p99_ms": pct(rej, 99),
            "rejected_max_ms": round(float(rej.max()), 2) if len(rej) else None,
            "loadavg_1m": [round(self.load_before, 2),
                           round(self.load_after if self.load_after is not None
                                 else os.getloadavg()[0], 2)],
        }


async def _one(session, url, body, stage, t_sched):
    import aiohttp
    try:
        async with session.post(url, data=body) as r:
            await r.read()
            stage.record(r.status, time.perf_counter() - t_sched)
    except (TimeoutError, aiohttp.ClientError) as exc:
        name = type(exc).__name__
        stage.errors[name] = stage.errors.get(name, 0) + 1


def _session(headers, concurrency):
    import aiohttp
    return aiohttp.ClientSession(headers=headers,
                                 connector=aiohttp.TCPConnector(limit=concurrency),
                                 timeout=aiohttp.ClientTimeout(total=60.0))


def _bodies(xq, k, nprobe, nq_per_request):
    out = []
    for s in range(0, len(xq) - nq_per_request + 1, nq_per_request):
        body = {"vectors": xq[s:s + nq_per_request].tolist(), "k": k}
        if nprobe:
            body["nprobe"] = nprobe
        out.append(json.dumps(body).encode())
    return out


async def run_closed(url, headers, bodies, *, concurrency, requests, duration, name):
    """``concurrency`` clients, each sending its next request when the last answered."""
    stage = Stage(name)
    counter = iter(range(requests))
    target = url.rstrip("/") + "/v1/search"
    async with _session(headers, concurrency) as session:
        t0 = time.perf_counter()
        deadline = t0 + duration

        async def worker():
            for i in counter:
                if time.perf_counter() >= deadline:
                    return
                await _one(session, target, bodies[i % len(bodies)], stage, time.perf_counter())

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        stage.elapsed = time.perf_counter() - t0
    return stage


async def run_open(url, headers, bodies, *, rate, concurrency, requests, duration, name):
    """Requests scheduled at ``rate`` per second (uniform), at most ``concurrency`` in
    flight; latency counts from the scheduled time."""
    stage = Stage(name)
    slots = asyncio.Semaphore(concurrency)
    n = min(requests, int(rate * duration))
    target = url.rstrip("/") + "/v1/search"
    async with _session(headers, concurrency) as session:
        t0 = time.perf_counter()
        tasks = []

        async def fire(i, t_sched):
            async with slots:
                await _one(session, target, bodies[i % len(bodies)], stage, t_sched)

        for i in range(n):
            t_sched = t0 + i / rate
            wait = t_sched - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.ensure_future(fire(i, t_sched)))
        await asyncio.gather(*tasks)
        stage.elapsed = time.perf_counter() - t0
    return stage


def _print(summary):
    s = summary
    rej = ""
    if s["rejected_p99_ms"] is not None:
        rej = (f"  503: p50 {s['rejected_p50_ms']} ms p99 {s['rejected_p99_ms']} ms "
               f"max {s['rejected_max_ms']} ms")
    print(f"{s['stage']:<22} {s['requests']:>7} req {s['elapsed_s']:>7.1f} s  "
          f"ok {s['ok']:>7} ({s['qps_ok']:>7.1f}/s)  p50 {s['p50_ms']} ms  "
          f"p99 {s['p99_ms']} ms  max {s['max_ms']} ms  status {s['status']}"
          f"{'  errors ' + str(s['client_errors']) if s['client_errors'] else ''}{rej}"
          f"  loadavg {s['loadavg_1m'][0]}->{s['loadavg_1m'][1]}", flush=True)


def _ints(text):
    return [int(float(x)) for x in str(text).split(",") if x.strip()]


def run(args):
    token = args.token or os.environ.get("SHARDANN_TOKEN")
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    xq = _queries(max(args.queries, args.nq), args.d, args.seed)
    bodies = _bodies(xq, args.k, args.nprobe, args.nq)
    results = []
    if args.warmup:
        stage = asyncio.run(run_closed(args.url, headers, bodies, concurrency=4,
                                       requests=args.warmup, duration=60, name="warmup"))
        _print(stage.summary())
    if args.rate:
        for rate in _ints(args.rate):
            stage = asyncio.run(run_open(args.url, headers, bodies, rate=rate,
                                         concurrency=args.concurrency, requests=args.requests,
                                         duration=args.duration,
                                         name=f"open {rate}/s c={args.concurrency}"))
            results.append(stage.summary())
            _print(results[-1])
    else:
        for c in _ints(args.concurrency_list or args.concurrency):
            stage = asyncio.run(run_closed(args.url, headers, bodies, concurrency=c,
                                           requests=args.requests, duration=args.duration,
                                           name=f"closed c={c}"))
            results.append(stage.summary())
            _print(results[-1])
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "token"},
                       "stages": results}, f, indent=2)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m shardann.bench.loadtest", allow_abbrev=False,
                                description=__doc__.split("\n")[0])
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a synthetic IVF-PQ index to serve")
    b.add_argument("--log-level", default=argparse.SUPPRESS)
    b.add_argument("path")
    b.add_argument("--n", type=int, default=1_000_000)
    b.add_argument("--d", type=int, default=64)
    b.add_argument("--nlist", type=int, default=1024)
    b.add_argument("--M", type=int, default=16)
    b.add_argument("--nbits", type=int, default=8)
    b.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="send a bounded load to a running service")
    r.add_argument("--log-level", default=argparse.SUPPRESS)
    r.add_argument("--url", default="http://127.0.0.1:8000")
    r.add_argument("--token", default=None, help="bearer token (default $SHARDANN_TOKEN)")
    r.add_argument("--d", type=int, default=64, help="vector dimension of the index")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--nprobe", type=int, default=16)
    r.add_argument("--nq", type=int, default=1, help="vectors per request (default 1)")
    r.add_argument("--queries", type=int, default=2000, help="distinct query vectors")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--concurrency", type=int, default=64,
                   help="clients (closed loop) or the in-flight cap (open loop)")
    r.add_argument("--concurrency-list", default=None,
                   help="closed-loop stages, e.g. 16,64,192")
    r.add_argument("--rate", default=None,
                   help="open loop: requests per second, one stage per value (e.g. 300,900)")
    r.add_argument("--requests", type=int, default=20_000, help="most requests per stage")
    r.add_argument("--duration", type=float, default=30.0, help="most seconds per stage")
    r.add_argument("--warmup", type=int, default=200, help="warm-up requests (not counted)")
    r.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "build":
        build_index(args.path, n=args.n, d=args.d, nlist=args.nlist, M=args.M,
                    nbits=args.nbits, seed=args.seed)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
