"""The load generator (``shardann.bench.loadtest``) against a tiny aiohttp server:
every request is counted under its status, open-loop latency counts from the
scheduled time, and a run stays within its bounds."""

import asyncio
import json

import pytest

aiohttp_web = pytest.importorskip("aiohttp.web")

from shardann.bench.loadtest import run_closed, run_open  # noqa: E402


async def _serve_then(fn, delay_s=0.0):
    """Run a server answering /v1/search with 200 (odd k) or 503 (even k), then ``fn(url)``."""
    seen = []

    async def search(request):
        body = json.loads(await request.read())
        seen.append(body)
        await asyncio.sleep(delay_s)
        status = 200 if body["k"] % 2 else 503
        return aiohttp_web.json_response({"ids": [[1]]}, status=status)

    app = aiohttp_web.Application()
    app.router.add_post("/v1/search", search)
    runner = aiohttp_web.AppRunner(app)
    await runner.setup()
    site = aiohttp_web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        return await fn(f"http://127.0.0.1:{port}"), seen
    finally:
        await runner.cleanup()


def test_open_loop_counts_every_status_and_respects_the_bounds():
    bodies = [json.dumps({"vectors": [[0.0]], "k": k}).encode() for k in (1, 2)]

    async def go(url):
        return await run_open(url, {"content-type": "application/json"}, bodies, rate=200,
                              concurrency=8, requests=60, duration=10, name="t")

    stage, seen = asyncio.run(_serve_then(go))
    s = stage.summary()
    assert len(seen) == 60 and s["requests"] == 60  # bounded by requests, not duration
    assert s["status"] == {"200": 30, "503": 30} and s["ok"] == 30
    assert s["rejected_p50_ms"] is not None and s["p99_ms"] >= s["p50_ms"] > 0
    assert 0.25 <= s["elapsed_s"] < 5  # 60 requests at 200/s take ~0.3 s


def test_latency_counts_from_the_scheduled_time():
    # 1 connection, 50 ms per answer, 40 requests/s offered: the requests queue in the
    # client, and that wait is part of their latency (no coordinated omission)
    bodies = [json.dumps({"vectors": [[0.0]], "k": 1}).encode()]

    async def go(url):
        return await run_open(url, {}, bodies, rate=40, concurrency=1, requests=12,
                              duration=10, name="t")

    stage, _ = asyncio.run(_serve_then(go, delay_s=0.05))
    s = stage.summary()
    assert s["ok"] == 12 and s["max_ms"] > 150  # the last waited for ~11 x 25 ms of backlog


def test_closed_loop_is_bounded_by_duration():
    bodies = [json.dumps({"vectors": [[0.0]], "k": 1}).encode()]

    async def go(url):
        return await run_closed(url, {}, bodies, concurrency=2, requests=10_000,
                                duration=0.5, name="t")

    stage, seen = asyncio.run(_serve_then(go, delay_s=0.01))
    s = stage.summary()
    assert 0 < s["ok"] == len(seen) < 10_000 and s["elapsed_s"] < 2
