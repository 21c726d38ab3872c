"""The asyncio micro-batcher (``shardann.service._batching``): concurrent calls share
one batch, batches are bounded in size and in number running, and results and
errors reach the right callers."""

import asyncio

import pytest

from shardann.service._batching import MicroBatcher


def _batcher(fn, size=4, wait=0.05, concurrent=1):
    return MicroBatcher(fn, max_batch_size=size, batch_wait_timeout_s=wait,
                        max_concurrent_batches=concurrent)


def test_concurrent_calls_share_batches_of_at_most_max_size():
    batches = []

    async def double(items):
        batches.append(list(items))
        return [2 * i for i in items]

    async def go():
        b = _batcher(double, size=4, wait=0.05)
        return await asyncio.gather(*[b(i) for i in range(10)])

    assert asyncio.run(go()) == [2 * i for i in range(10)]
    assert sorted(i for batch in batches for i in batch) == list(range(10))
    assert max(len(batch) for batch in batches) <= 4
    assert len(batches) == 3  # 4 + 4 + 2


def test_a_lone_call_waits_at_most_the_timeout():
    async def go():
        b = _batcher(lambda items: asyncio.sleep(0, result=items), size=64, wait=0.02)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await b("x")
        return out, loop.time() - t0

    out, seconds = asyncio.run(go())
    assert out == "x" and seconds < 0.5  # the batch never fills; the wait ends it


def test_at_most_max_concurrent_batches_run():
    running, most = [0], [0]

    async def slow(items):
        running[0] += 1
        most[0] = max(most[0], running[0])
        await asyncio.sleep(0.02)
        running[0] -= 1
        return items

    async def go():
        b = _batcher(slow, size=1, wait=0.0, concurrent=2)
        return await asyncio.gather(*[b(i) for i in range(8)])

    assert asyncio.run(go()) == list(range(8))
    assert most[0] == 2


def test_errors_reach_their_callers():
    async def picky(items):
        if "boom" in items:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad {i}") if i < 0 else i for i in items]

    async def go():
        b = _batcher(picky, size=3, wait=0.05)
        mixed = await asyncio.gather(b(1), b(-1), b(2), return_exceptions=True)
        failed = await asyncio.gather(b(3), b("boom"), return_exceptions=True)
        return mixed, failed

    mixed, failed = asyncio.run(go())
    assert mixed[0] == 1 and mixed[2] == 2
    assert isinstance(mixed[1], ValueError) and str(mixed[1]) == "bad -1"
    assert all(isinstance(e, RuntimeError) for e in failed)


def test_a_cancelled_caller_is_left_out():
    seen = []

    async def record(items):
        seen.extend(items)
        return items

    async def go():
        b = _batcher(record, size=8, wait=0.05)
        gone = asyncio.ensure_future(b("gone"))
        await asyncio.sleep(0)  # queued
        gone.cancel()
        out = await b("kept")
        with pytest.raises(asyncio.CancelledError):
            await gone
        return out

    assert asyncio.run(go()) == "kept"
    assert seen == ["kept"]
