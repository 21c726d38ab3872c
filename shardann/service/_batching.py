"""A micro-batcher for asyncio: concurrent single calls become one batched call.

:class:`MicroBatcher` gives ``@ray.serve.batch`` semantics where no Serve
replica context exists (tests, a plain FastAPI app): the service uses it to
turn concurrent single-vector searches into one fan-out to the shards.
"""

import asyncio
import collections
import time


class MicroBatcher:
    """``@serve.batch`` semantics outside a Serve replica: calls made while fewer than
    ``max_batch_size`` wait for at most ``batch_wait_timeout_s`` are passed to
    ``fn`` as one list; at most ``max_concurrent_batches`` run at once.

    Parameters
    ----------
    fn : async callable taking a list of items and returning a list of results in
        the same order. A result that is an exception is raised to its caller
        alone; an exception raised by ``fn`` reaches every caller of the batch.
    max_batch_size, batch_wait_timeout_s, max_concurrent_batches : as for
        ``ray.serve.batch``.

    ``await batcher(item)`` returns ``item``'s result. Callers that were
    cancelled while waiting are left out of their batch.
    """

    def __init__(self, fn, *, max_batch_size, batch_wait_timeout_s, max_concurrent_batches):
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.wait_s = batch_wait_timeout_s
        self.max_concurrent = max_concurrent_batches
        self._pending = collections.deque()
        self._wakeup = None
        self._worker = None
        self._slots = None

    async def __call__(self, item):
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._slots = asyncio.Semaphore(self.max_concurrent)
            self._worker = loop.create_task(self._run())
        fut = loop.create_future()
        self._pending.append((item, fut))
        self._wakeup.set()
        return await fut

    async def _run(self):
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._slots.acquire()
                deadline = time.monotonic() + self.wait_s
                while len(self._pending) < self.max_batch_size:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    await asyncio.sleep(min(left, 0.0005))
                batch = [self._pending.popleft()
                         for _ in range(min(self.max_batch_size, len(self._pending)))]
                batch = [(item, fut) for item, fut in batch if not fut.done()]
                asyncio.get_running_loop().create_task(self._one(batch))

    async def _one(self, batch):
        try:
            if batch:
                try:
                    results = await self.fn([item for item, _ in batch])
                except Exception as exc:  # every caller gets the error
                    results = [exc] * len(batch)
                for (_, fut), res in zip(batch, results, strict=True):
                    if not fut.done():
                        if isinstance(res, BaseException):
                            fut.set_exception(res)
                        else:
                            fut.set_result(res)
        finally:
            self._slots.release()
