"""What the service searches: a sharded index on Ray actors, or one local index.

Both backends offer the same blocking interface, which the service runs in
worker threads:

``search(q, k, nprobe=, refine_factor=, probe_ratio=, filter=, columns=, timeout_s=,
allow_partial=)``
    -> ``(D, I, A, missing_shards)`` (``A``: the hits' columns as a
    ``pyarrow.Table`` of nq * k rows, or None without ``columns``)
``attribute_schema`` -> ``pyarrow.Schema`` or None;
``add(x, ids, attributes)`` -> ids; ``remove_ids(ids)`` -> count; ``stats()`` -> dict;
``health(timeout_s)`` -> dict; ``newest_version()`` -> int;
``reopen(version)`` -> a new backend beside this one; ``retire()`` stops
what ``reopen`` replaced; ``close()``.

:class:`ShardedBackend` keeps the :class:`~shardann.distributed.ShardedIndex`
coordinator in the Serve replica and its shard actors detached and named, so
a restarted replica attaches to them instead of loading the shards again.
:class:`LocalBackend` wraps an in-process index (tests, small indexes).
"""

import logging
import os
import threading

import numpy as np

from ..distributed.placement import health_status
from ..errors import DuplicateIdError

logger = logging.getLogger(__name__)


# -- sharded ------------------------------------------------------------------------------
class ShardedBackend:
    """A :class:`~shardann.distributed.ShardedIndex` opened for serving."""

    kind = "sharded"

    def __init__(self, config, version=None):
        from ..distributed import ShardedIndex

        self.config = config
        self.index = ShardedIndex.open(
            config.path, num_shards=config.num_shards, replicas=config.replicas,
            version=version, timeout_s=config.request_timeout_s * config.shard_timeout_fraction,
            max_restarts=config.max_restarts, name=config.index_name, detached=True,
            shard_num_cpus=config.shard_num_cpus)
        self.name = self.index.name
        self.open_version = int(self.index.version)  # names this backend's actors
        self.d = int(self.index.d)
        self.metric = self.index.metric
        self.nlist = int(self.index.nlist)
        self._warm_up()

    def _warm_up(self):
        """One search touching every shard, so the first request does not pay for
        loading the kernels in the shard processes."""
        q = np.zeros((1, self.d), np.float32)
        if self.metric == "cosine":
            q[0, 0] = 1.0
        try:
            self.index.search(q, 1, nprobe=self.nlist, timeout_s=max(60.0, self.index.timeout_s))
        except Exception as exc:  # serving can start anyway; the shards answer or fail later
            logger.warning("warm-up search failed: %s", exc)

    @property
    def ntotal(self):
        return int(self.index.ntotal)

    @property
    def version(self):
        """The served version: the one opened, or the last one a write committed."""
        return int(self.index.version)

    @property
    def actor_prefix(self):
        """Name prefix of the shard actors this backend opened (named by the version
        opened, whatever version writes have moved them to since)."""
        return f"{self.name}/v{self.open_version}/s{self.index.num_shards}/"

    @property
    def attribute_schema(self):
        return self.index.attribute_schema

    def search(self, q, k, *, nprobe=None, refine_factor=0, probe_ratio=None, filter=None,
               columns=None, timeout_s=None, allow_partial=False, probe_gap=None):
        res = self.index.search(q, k, nprobe=nprobe, refine_factor=refine_factor,
                                probe_ratio=probe_ratio, probe_gap=probe_gap, filter=filter,
                                columns=columns,
                                timeout_s=timeout_s,
                                allow_partial=allow_partial)
        D, I, A = res if len(res) == 3 else (*res, None)
        return D, I, A, list(getattr(res, "missing_shards", []))

    def add(self, x, ids=None, attributes=None):
        return self.index.add(x, ids, attributes=attributes)

    def remove_ids(self, ids):
        return self.index.remove_ids(ids)

    def contains(self, ids):
        return self.index.contains(ids)

    def estimate_recall(self, k, nprobe=None, refine_factor=0, probe_ratio=None):
        """Recall@k estimate from the calibration set (``ValueError`` without one)."""
        return self.index.estimate_recall(k, nprobe, refine_factor, probe_ratio=probe_ratio)

    def newest_version(self):
        from ..storage import IndexStore
        return int(IndexStore.open(self.config.path).version)

    def versions(self):
        from ..storage import IndexStore
        try:
            return [int(v) for v in IndexStore.open(self.config.path).versions()]
        except Exception as exc:  # the store is read for information only here
            logger.warning("cannot list the versions of %s: %s", self.config.path, exc)
            return [self.version]

    def reopen(self, version=None):
        return ShardedBackend(self.config, version)

    def stats(self):
        s = self.index.stats()
        s.update(backend=self.kind, name=self.name, d=self.d, metric=self.metric,
                 read_only=bool(self.index.read_only), versions=self.versions(),
                 drift=self.index.drift())
        return s

    def health(self, timeout_s=2.0):
        """Ping every shard replica; per shard how many answered within ``timeout_s``."""
        return self.index.health(timeout_s=timeout_s)

    def retire(self):
        """Stop this version's shard actors (after the service switched away)."""
        self.index.close()
        stop_index_actors(self.name, prefix=self.actor_prefix)

    def close(self):
        """Nothing to release: the detached shard actors keep serving (``retire`` or
        :func:`stop_index_actors` stop them)."""

    def stop_stale_actors(self):
        """Stop shard actors of this index name that belong to other versions or shard
        counts (left by an earlier run or a crashed replica)."""
        return stop_index_actors(self.name, keep_prefix=self.actor_prefix)


def list_index_actors(name=None):
    """Names of the live shard actors in the ``shardann`` namespace (of index ``name``)."""
    import ray
    from ray.util import list_named_actors

    from ..distributed import NAMESPACE

    if not ray.is_initialized():
        return []
    out = []
    for a in list_named_actors(all_namespaces=True):
        if a.get("namespace") != NAMESPACE:
            continue
        if name is None or a["name"].startswith(f"{name}/"):
            out.append(a["name"])
    return sorted(out)


def stop_index_actors(name, *, prefix=None, keep_prefix=None):
    """Kill the detached shard actors of index ``name`` (all of them, or those
    starting with ``prefix``, or all but those starting with ``keep_prefix``).
    Returns how many were stopped."""
    import ray

    from ..distributed import NAMESPACE

    stopped = 0
    for actor_name in list_index_actors(name):
        if prefix is not None and not actor_name.startswith(prefix):
            continue
        if keep_prefix is not None and actor_name.startswith(keep_prefix):
            continue
        try:
            ray.kill(ray.get_actor(actor_name, namespace=NAMESPACE), no_restart=True)
            stopped += 1
        except ValueError:  # gone meanwhile
            pass
    if stopped:
        logger.info("stopped %d shard actor(s) of %s", stopped, name)
    return stopped


# -- local --------------------------------------------------------------------------------
class LocalBackend:
    """One in-process index behind the same interface (no Ray).

    ``index`` is a trained shardann index; or give ``path`` to open one
    with :func:`shardann.open_index`. Writes change the in-memory index and,
    when ``path`` is given, are saved as a new version of the store. Calls are
    serialised by a lock.
    """

    kind = "local"

    def __init__(self, index=None, *, path=None, version=None, name="local"):
        if index is None:
            if path is None:
                raise ValueError("LocalBackend needs an index or a path")
            import shardann
            index = shardann.open_index(path, version)
            if version is None:
                version = self._store_version(path)
        self.index = index
        self.path = None if path is None else os.fspath(path)
        self.name = name
        self.version = int(version or 0)
        self.d = int(index.d)
        self.metric = index.metric
        self.nlist = int(getattr(index, "nlist", 1))
        self.calls = {"search": 0, "add": 0, "remove": 0}
        self.unavailable = False  # tests switch this on to simulate a dead shard
        self.delay_s = 0.0  # and this to simulate a slow one
        self._lock = threading.Lock()

    @staticmethod
    def _store_version(path):
        from ..storage import IndexStore
        return IndexStore.open(path).version

    @property
    def ntotal(self):
        return int(self.index.ntotal)

    def _check_up(self):
        from ..errors import ShardUnavailableError
        if self.delay_s:
            import time
            time.sleep(self.delay_s)
        if self.unavailable:
            raise ShardUnavailableError("shard(s) [0] of the local index did not answer")

    @property
    def attribute_schema(self):
        return self.index.attribute_schema

    def search(self, q, k, *, nprobe=None, refine_factor=0, probe_ratio=None, filter=None,
               columns=None, timeout_s=None, allow_partial=False, probe_gap=None):
        kwargs = {"refine_factor": refine_factor, "probe_ratio": probe_ratio, "filter": filter,
                  "columns": columns, "probe_gap": probe_gap}
        if nprobe is not None:
            kwargs["nprobe"] = nprobe
        with self._lock:
            self._check_up()
            self.calls["search"] += 1
            res = self.index.search(q, k, **kwargs)
        D, I, A = res if columns is not None else (*res, None)
        return D, I, A, []

    def add(self, x, ids=None, attributes=None):
        with self._lock:
            self._check_up()
            if ids is not None:
                present = self.index.contains(np.asarray(ids, np.int64))
                if present.any():
                    raise DuplicateIdError(f"ids already in the index, e.g. "
                                           f"{int(np.asarray(ids)[present][0])}")
            out = self.index.add(x, ids, attributes=attributes)
            self.calls["add"] += 1
            self._commit()
            return out

    def remove_ids(self, ids):
        with self._lock:
            self._check_up()
            n = self.index.remove_ids(ids)
            self.calls["remove"] += 1
            if n:
                self._commit()
            return n

    def contains(self, ids):
        with self._lock:
            return self.index.contains(ids)

    def estimate_recall(self, k, nprobe=None, refine_factor=0, probe_ratio=None):
        """Recall@k estimate from the calibration set (``ValueError`` without one)."""
        fn = getattr(self.index, "estimate_recall", None)
        if fn is None:
            raise ValueError(f"a {type(self.index).__name__} is exact: no recall estimate")
        with self._lock:
            self._check_up()
            return fn(k, nprobe, refine_factor, probe_ratio=probe_ratio)

    def _commit(self):
        if self.path is None:
            self.version += 1
            return
        try:
            # another writer may have committed meanwhile: replay this write on top
            self.version = int(self.index.save(self.path, merge=True))
        except Exception:
            # not committed: drop it from memory too, so memory and store agree
            import shardann
            self.index = shardann.open_index(self.path)
            self.version = self._store_version(self.path)
            raise

    def newest_version(self):
        return self._store_version(self.path) if self.path is not None else self.version

    def reopen(self, version=None):
        if self.path is None:
            return self
        return LocalBackend(path=self.path, version=version, name=self.name)

    def stats(self):
        rows = [int(self.index.ntotal)]
        return {"backend": self.kind, "path": self.path, "name": self.name,
                "version": self.version, "versions": [self.version], "ntotal": self.ntotal,
                "d": self.d, "metric": self.metric, "nlist": self.nlist, "num_shards": 1,
                "replicas": 1, "read_only": False, "shard_rows": rows, "balance": 1.0,
                "shards": [{"shard": 0, "replica": 0, "ntotal": self.ntotal,
                            "calls": dict(self.calls), "scanned_lists": None,
                            "list_bytes": self.index.memory_bytes()["list_bytes"]}],
                "drift": self.index.drift()}

    def health(self, timeout_s=2.0):
        alive = 0 if self.unavailable else 1
        shards = [{"shard": 0, "replicas": 1, "alive": alive}]
        return {"status": health_status([alive], 1), "shards": shards}

    def retire(self):
        pass

    def close(self):
        pass

    def stop_stale_actors(self):
        return 0


def open_backend(config, version=None):
    """The backend ``config.backend`` names, opened on ``config.path``."""
    if config.backend == "local":
        return LocalBackend(path=config.path, version=version, name=config.index_name)
    return ShardedBackend(config, version)
