"""The shard: a slice of the inverted lists, loaded from the store and scanned
with the kernels. ``ShardWorker`` is a plain class (testable without Ray);
the coordinator runs it as a Ray actor."""

import ctypes
import logging
import os
import pickle
import time

import numba
import numpy as np
import pyarrow.compute as pc

from ..errors import StaleShardError

logger = logging.getLogger(__name__)


class ShardWorker:
    """Owns the lists ``lists`` of the index stored at ``path``.

    Parameters
    ----------
    path : the store: a directory, a URI or a location object
        (:func:`shardann.storage.location`, which carries its storage options).
    lists : int64 array of the list numbers this shard owns.
    version : store version to load, or None for the newest. A restarted
        actor is constructed again with the same arguments, so it comes back at
        that version; every call names the version it expects and a shard
        holding another one raises :class:`~shardann.errors.StaleShardError`
        (the coordinator then calls :meth:`load` and retries).
    shard_id, replica : for naming and stats.
    threads : kernel threads for this shard's scans (None: Numba's default,
        every core), capped at the cores Numba found.
    """

    def __init__(self, path, lists, version=None, shard_id=0, replica=0, threads=None):
        if threads is not None:
            numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
        self.path = path
        self.shard_id = int(shard_id)
        self.replica = int(replica)
        self.lists = np.asarray(lists, dtype=np.int64)
        self.calls = {"search": 0, "add": 0, "remove": 0, "attributes": 0}
        self.scanned_lists = 0
        self.loads = 0
        self._load(version)

    def _load(self, version):
        from ..index import load_index
        from ..storage import IndexStore

        t0 = time.perf_counter()
        store = IndexStore.open(self.path, version=version)
        read0 = store.location.stats()
        self.index = None
        # the model (centroids, codebooks, L2 term tables) first: its size does not
        # depend on the lists, and load_rss_bytes below is what the lists cost
        index = load_index(store, lists=np.zeros(0, np.int64))
        _release_free_memory()  # so the growth below is not offset by trimming older garbage
        rss0 = _rss_bytes()
        sizes, ids, payload = store.read_lists(self.lists, attributes=True)
        attributes = payload.pop("attributes", None)  # a table when the index has some
        index.set_lists(sizes, ids, payload, next_id=store.next_id, attributes=attributes)
        _release_free_memory()
        self.index = index
        self.version = store.version
        self.loads += 1
        self.load_rss_bytes = None if rss0 is None else _rss_bytes() - rss0
        self.load_seconds = time.perf_counter() - t0
        read1 = store.location.stats()
        # what this load read from an object store (None for a local directory)
        self.load_bytes_read = (None if read1["bytes_read"] is None
                                else read1["bytes_read"] - read0["bytes_read"])
        self.load_read_requests = (None if read1["read_requests"] is None
                                   else read1["read_requests"] - read0["read_requests"])
        t1 = time.perf_counter()
        warm_up(self.index)
        self.warmup_seconds = time.perf_counter() - t1
        logger.info("shard %d/r%d loaded %d vectors of %d lists (version %d) in %.2fs",
                    self.shard_id, self.replica, self.index.ntotal, len(self.lists),
                    self.version, self.load_seconds)

    def load(self, version):
        """Serve ``version`` of the store (a no-op when already serving it): the
        coordinator calls this on a restarted actor, which comes back at the
        version it was constructed with, and on every actor for a reload.
        Returns the version now served."""
        if version is None or int(version) != self.version:
            self._load(version)
        return self.version

    def _check_version(self, expected):
        if expected is not None and int(expected) != self.version:
            raise StaleShardError(f"shard {self.shard_id}/r{self.replica} holds version "
                                  f"{self.version}, version {expected} was asked for")

    def search(self, q, dis0, probes, kk, exact, filter=None, expected=None):
        """Scan this shard's part of a batch (of version ``expected``).

        q float32 (nq, d) prepared queries; dis0 float32 / probes int64
        (nq, nprobe) with -1 for lists of other shards; ``filter`` a compiled
        ``pyarrow.compute.Expression`` (or None); returns
        ``(keys, ids, exact_keys)`` (nq, kk) — see ``IVFIndex.scan_candidates``.
        """
        self._check_version(expected)
        self.calls["search"] += 1
        self.scanned_lists += int((probes >= 0).sum())
        return self.index.scan_candidates(q, dis0, probes, kk, exact=exact, filter=filter)

    def passing_counts(self, expr, expected=None):
        """``(passing, rows)``, int64 (nlist,) each: rows of this shard's lists that
        pass the compiled filter ``expr``, and their live rows (0 for other
        lists) — what the coordinator's selectivity rule sums over shards."""
        self._check_version(expected)
        index = self.index
        # every live row passes a constant true: its counts are the list sizes (cached
        # with the filter's masks until the rows change)
        rows = index.passing_counts(pc.scalar(True))
        return index.passing_counts(expr), rows

    def get_attributes(self, ids, columns, expected=None):
        """``pyarrow.Table`` of ``columns`` for int64 ``ids`` (one row each, nulls
        for ids this shard does not hold), at version ``expected``."""
        self._check_version(expected)
        self.calls["attributes"] += 1
        return self.index.get_attributes(ids, columns)

    def search_packed(self, *chunks, expected=None):
        """:meth:`search` with its arguments as the chunks of :func:`pack` and
        its result as one pickled bytes object: Ray serializes each top-level
        NumPy argument separately at about 0.4 ms apiece, which dominated
        single-query latency."""
        return pickle.dumps(self.search(*unpack(chunks), expected=expected), protocol=5)

    def _write(self, base, new):
        """Whether a write committed as version ``new`` on top of ``base`` is still
        to be applied here (False: this shard already loaded ``new``)."""
        if base is not None and self.version == int(new):
            return False
        self._check_version(base)
        return True

    def add_preassigned(self, list_no, ids, payload, attributes=None, base=None, new=None):
        """Apply an add the coordinator committed as version ``new`` on ``base``
        (``attributes``: the rows' attribute table, or None)."""
        self.calls["add"] += 1
        if self._write(base, new):
            self.index.add_preassigned(list_no, ids, payload, attributes=attributes)
            if new is not None:
                self.version = int(new)
        return len(ids)

    def remove_ids(self, ids, base=None, new=None):
        """Apply a removal the coordinator committed as version ``new`` on
        ``base``; returns this shard's live rows per list afterwards, int64
        (nlist,) (0 for other shards' lists), which the coordinator keeps."""
        self.calls["remove"] += 1
        if self._write(base, new):
            self.index.remove_ids(ids)
            if new is not None:
                self.version = int(new)
        return self.index.list_sizes()

    def advance(self, base=None, new=None, reload=False):
        """Serve version ``new``, committed on top of ``base`` by a write that
        touched none of this shard's lists. ``reload``: that write fixed the
        index's attribute schema, which a shard learns by loading ``new`` (once
        in an index's life: its rows then have null attributes)."""
        if self._write(base, new) and new is not None:
            if reload and self.index.attribute_schema is None:
                self._load(int(new))
            self.version = int(new)
        return self.version

    def contains(self, ids, expected=None):
        self._check_version(expected)
        return self.index.contains(ids)

    def max_id(self):
        return self.index.next_id - 1

    def ping(self):
        return True

    def stats(self):
        memory = self.index.memory_bytes()
        return {
            "shard": self.shard_id, "replica": self.replica, "pid": os.getpid(),
            "node_id": _node_id(), "version": self.version, "ntotal": self.index.ntotal,
            "lists": int(len(self.lists)), "calls": dict(self.calls), "loads": self.loads,
            "scanned_lists": self.scanned_lists, "list_bytes": memory["list_bytes"],
            "allocated_bytes": memory["allocated_bytes"],
            "rss_bytes": _rss_bytes(),
            "load_rss_bytes": self.load_rss_bytes,
            "load_bytes_read": self.load_bytes_read,
            "load_read_requests": self.load_read_requests,
            "threads": numba.get_num_threads(), "load_seconds": self.load_seconds,
            "warmup_seconds": self.warmup_seconds,
        }


# Ray sends task arguments under 100 KB inside the call itself; a larger one
# goes through the object store, which cost 1.5-5 ms more a call here (a batch
# of 256 queries of d=128 with its probes is about 180 KB)
INLINE_CHUNK_BYTES = 64 << 10


def pack(obj):
    """An in-band pickle (protocol 5) of ``obj`` as a list of bytes chunks of at
    most :data:`INLINE_CHUNK_BYTES`, to pass as separate arguments; see
    :meth:`ShardWorker.search_packed`."""
    blob = pickle.dumps(obj, protocol=5)
    view = memoryview(blob)
    return [bytes(view[i:i + INLINE_CHUNK_BYTES])
            for i in range(0, max(len(blob), 1), INLINE_CHUNK_BYTES)]


def unpack(chunks):
    """The object :func:`pack` split into ``chunks`` (a bytes object also works)."""
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        return pickle.loads(chunks)
    return pickle.loads(chunks[0] if len(chunks) == 1 else b"".join(chunks))


def warm_up(index):
    """Load (or compile) the scan kernels before the first query arrives, so
    a new or restarted shard does not answer its first search seconds late.

    Scans one and two dummy queries with every probe skipped: the serial and
    parallel kernel variants, and the refine path when vectors are kept.
    """
    d = index.d
    for nq in (1, 2):
        q = np.zeros((nq, d), np.float32)
        probes = np.full((nq, 1), -1, np.int64)
        dis0 = np.zeros((nq, 1), np.float32)
        index.scan_candidates(q, dis0, probes, 1, exact=index.refines)


def _release_free_memory():
    """Hand memory freed after a load back to the OS: Arrow's allocator and
    glibc keep freed pages for reuse, which in a long-lived shard would
    otherwise stay resident as about as much again as the lists themselves."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _rss_bytes():
    """Anonymous (private) resident memory of this process, from Linux /proc;
    None elsewhere. File pages mapped while reading segments are page cache the
    kernel can drop, so they are not counted."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _node_id():
    try:
        import ray
        return ray.get_runtime_context().get_node_id()
    except Exception:  # not inside Ray
        return None
