"""The coordinator: a sharded index that looks like a local one.

``ShardedIndex`` holds the trained model (coarse centroids, codebooks, OPQ),
places the inverted lists on ``ShardWorker`` Ray actors, and answers
``search`` with the same signature and the same ``(D, I)`` as the local
index: it quantizes the queries once, sends each shard one call carrying all
of the batch's (query, list) pairs it owns, and merges the shards' top-k with
the one merge routine.
"""

import itertools
import logging
import os
import threading
import time

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from .._validation import MAX_ID, as_id_array, as_ids, as_vectors, check_int, check_probe_ratio
from ..drift import DEFAULT_THRESHOLD, drift_report
from ..errors import DuplicateIdError, ShardUnavailableError, StaleShardError
from ..filters import as_attribute_table, check_columns, compile_filter, filter_key, filter_probes
from ..metric import keys_to_distances
from ..results import empty_results, merge_results
from .attributes import assemble_rows
from .placement import health_status, place_list_ranges, place_lists, shard_loads
from .shard import ShardWorker, pack, unpack, warm_up

logger = logging.getLogger(__name__)

NAMESPACE = "shardann"
_ACTOR_ERRORS = (RayActorError, ActorUnavailableError)
_PROBE_INTERVAL_S = 0.5  # at most one ping this often to a replica that is down
_PROBE_WAIT_S = 0.2  # how long a call waits for a ping when every replica of a shard is down
_STALE_RETRIES = 3  # loads of the served version into one replica before trying the next
_REPLACE_AFTER_S = 10.0  # a replica dead for good this long is replaced by a new actor
_COUNTS_CACHE_SIZE = 16  # filters whose passing rows per list are kept (per version)


class _VersionChanged(Exception):
    """The coordinator switched versions while a call was under way: the call is
    started again at the new version rather than mixing answers of two."""


class SearchResult(tuple):
    """``(D, I)`` — or ``(D, I, A)`` when columns were asked for — that also says
    which shards did not answer.

    Unpacks like the plain tuple; ``missing_shards`` lists the shard numbers
    whose lists were not searched and ``complete`` is True when none were.
    """

    def __new__(cls, D, I, missing_shards=(), attributes=None):
        obj = super().__new__(cls, (D, I) if attributes is None else (D, I, attributes))
        obj.missing_shards = list(missing_shards)
        return obj

    @property
    def complete(self):
        return not self.missing_shards


def _coarse_model(store):
    """The coordinator's model of ``store`` (no lists): Numba runs on one thread.
    Its shards scan on the same node's cores right after the probe, and a
    parallel probe's idle Numba workers keep spinning on them: 2 shards on 2
    cores answered a batch of 256 queries in 26 ms after a 2-thread probe,
    19.5 ms after a 1-thread one (the probe itself: 1.7 vs 2.4 ms). A batch's
    probe is split over two Python threads instead (``probe_threads``), which
    wait on a queue when done."""
    from ..index import load_index

    model = load_index(store, lists=np.zeros(0, np.int64))
    model.num_threads = 1
    model.probe_threads = 2  # 256 queries, 1024 lists, d=128: 1.9 -> 1.2 ms on 2 free cores
    return model


def _index_name(path):
    return os.path.basename(os.path.normpath(os.fspath(path))) or "index"


class ShardedIndex:
    """A sharded IVF index served by Ray actors. Use :meth:`create` / :meth:`open`.

    Searching, adding and removing work like the local index. ``close()``
    (or leaving a ``with`` block) stops the actors this object started.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("use ShardedIndex.create(path, ...) or ShardedIndex.open(path, ...)")

    # -- construction ------------------------------------------------------------
    @classmethod
    def create(cls, path, *, d, nlist, M=None, nbits=8, metric="l2", sample, opq=False,
               keep_vectors=False, pca=None, seed=0, niter=25, pq_niter=25, column="embedding",
               sample_size=None, num_shards=1, replicas=1, storage_options=None,
               calibration=1000, **open_kwargs):
        """Train a new index on ``sample`` on the coordinator, store it at
        ``path`` (no vectors yet) and open it on ``num_shards`` shards.

        ``path`` is a directory every node can read, or a URI (``s3://``,
        ``gs://``, ``az://``, ...) with ``storage_options`` as in :meth:`open`.

        ``M=None`` makes an IVF-Flat index, otherwise IVF-PQ with ``M``
        sub-quantizers of ``nbits``; ``pca`` reduces either to that many
        dimensions (see :class:`~shardann.IVFPQIndex`). ``sample`` is float32 (n, d) or a Ray
        Dataset whose ``column`` holds the vectors (``sample_size`` rows are
        drawn from it, default 256 * nlist). ``calibration``: queries sampled from
        the added rows for :meth:`estimate_recall` (0: none; see
        :class:`~shardann.IVFPQIndex`).
        """
        from ..index import IVFFlatIndex, IVFPQIndex
        from ..storage import IndexStore

        if M is None:
            index = IVFFlatIndex(d, nlist, metric, seed=seed, niter=niter, pca=pca,
                                 calibration=calibration)
        else:
            index = IVFPQIndex(d, nlist, M, nbits, metric, seed=seed, opq=opq,
                               keep_vectors=keep_vectors, niter=niter, pq_niter=pq_niter,
                               pca=pca, calibration=calibration)
        if not isinstance(sample, np.ndarray) and hasattr(sample, "iter_batches"):
            sample = sample_dataset(sample, sample_size or 256 * nlist, column=column,
                                    seed=seed)
        index.train(sample)
        IndexStore.create(path, index, storage_options=storage_options)
        return cls.open(path, num_shards=num_shards, replicas=replicas,
                        storage_options=storage_options, **open_kwargs)

    @classmethod
    def open(cls, path, *, num_shards=1, replicas=1, version=None, timeout_s=30.0,
             max_restarts=-1, name=None, detached=False, shard_num_cpus=0,
             shard_threads=None, replace_after_s=_REPLACE_AFTER_S, storage_options=None):
        """Open the index at ``path`` on ``num_shards`` shards x ``replicas``.

        ``path`` is a directory every node can read (a shared file system), or
        a URI of an object store (``s3://``, ``gs://``, ``az://``/``abfs[s]://``;
        see :func:`shardann.storage.location`): each shard actor then reads only
        the row groups of its lists, with ranged reads, wherever it runs.
        ``storage_options`` (credentials, endpoint) travel to the actors in
        memory, never into the store.

        Shard actors are named ``<name>/v<version>/s<num_shards>/shard-<i>/r<j>``
        in the ``shardann`` namespace; live actors of that name are attached to
        instead of started again (and are then not stopped by ``close``).
        ``version`` opens an older version read-only. Actors restart up to
        ``max_restarts`` times (-1: forever) and reload from the store at the
        version this coordinator serves (every call names it; a restarted
        actor is told to load it before it answers). Only :meth:`reload`, or
        this coordinator's own writes, move the served version. A replica
        that is dead for good (its restarts used up, or killed) is replaced by
        a new actor once it has been down ``replace_after_s`` seconds.
        ``shard_threads`` is the number of kernel threads per shard actor
        (default: the cluster's CPUs divided among the shards, at least 1), so
        shards scanning at once do not oversubscribe the cores.
        """
        from ..index import calibration_source
        from ..storage import IndexStore, location

        self = object.__new__(cls)
        self._loc = location(path, storage_options)
        self.path = self._loc.root
        self.num_shards = check_int("num_shards", num_shards, low=1)
        self.replicas = check_int("replicas", replicas, low=1)
        self.timeout_s = float(timeout_s)
        store = IndexStore.open(self._loc, version=version)
        self.read_only = version is not None and store.version != max(store.versions())
        self.version = store.version
        self._write_lock = threading.Lock()
        self.model = _coarse_model(store)
        self._cal = calibration_source(store)  # read when an estimate (or add) needs it
        self._drift = store.manifest.get("drift")  # the served version's drift section
        self._attribute_schema = store.attribute_schema
        self.metric = self.model.metric
        self.d = self.model.d
        self.nlist = self.model.nlist
        self._list_sizes = np.asarray(store.list_sizes(), np.int64)
        # on an object store a shard reads whole row groups (cut at list boundaries):
        # runs of consecutive lists keep its reads to its share of the segments
        place = place_lists if self._loc.local else place_list_ranges
        self.owner = place(self._list_sizes, self.num_shards)
        self.name = name or _index_name(self.path)
        if not ray.is_initialized():
            ray.init()
        if shard_threads is None:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            shard_threads = max(1, cpus // self.num_shards)
        self._actor_options = dict(
            max_restarts=max_restarts, detached=detached, num_cpus=shard_num_cpus,
            threads=check_int("shard_threads", shard_threads, low=1))
        self.replace_after_s = float(replace_after_s)
        self._actors, self._owned = [], []
        for s in range(self.num_shards):
            group = []
            for r in range(self.replicas):
                actor_name = f"{self.name}/v{self.version}/s{self.num_shards}/shard-{s}/r{r}"
                try:
                    actor = ray.get_actor(actor_name, namespace=NAMESPACE)
                except ValueError:
                    actor = self._start_actor(s, r, actor_name)
                group.append(actor)
            self._actors.append(group)
        self._rr = [itertools.count(s) for s in range(self.num_shards)]
        self._down = {}  # (shard, replica) -> see _mark_down
        self._counts_cache = {}  # (version, filter key) -> (passing, rows) per list
        self._down_lock = threading.Lock()
        # wait until every shard has loaded, so the first query is not a cold start;
        # attached actors may hold another version: they load this one
        ray.get([a.load.remote(self.version) for g in self._actors for a in g])
        self._next_id = max(ray.get([g[0].max_id.remote() for g in self._actors])) + 1
        self.ntotal = int(self._list_sizes.sum())
        logger.info("opened %s v%d: %d vectors, %d lists on %d shards x %d replicas",
                    self.path, self.version, self.ntotal, self.nlist, self.num_shards,
                    self.replicas)
        return self

    def _start_actor(self, s, r, actor_name):
        """Start replica ``r`` of shard ``s`` at the served version; this object owns it."""
        if not self._owned:
            # compile (or load) the scan kernels here, once: shard actors starting
            # together on a cold Numba cache would each compile them on the same
            # cores; they then load this process's cache
            warm_up(self.model)
        opts = self._actor_options
        actor = ray.remote(ShardWorker).options(
            name=actor_name, namespace=NAMESPACE, max_restarts=opts["max_restarts"],
            max_task_retries=0, num_cpus=opts["num_cpus"],
            lifetime="detached" if opts["detached"] else None, scheduling_strategy="SPREAD",
        ).remote(self._loc, np.flatnonzero(self.owner == s), self.version, s, r,
                 threads=opts["threads"])
        self._owned.append(actor)
        return actor

    def _dead_for_good(self, s, r):
        """Replica ``r`` of shard ``s`` (marked down) will not restart: replace it
        once it has been down :attr:`replace_after_s` (a replica that is merely
        slow to come back gets that long)."""
        with self._down_lock:  # concurrent callers: one replaces it
            entry = self._down.get((s, r))
            if entry is not None and time.monotonic() - entry[2] >= self.replace_after_s:
                self._replace(s, r)
                entry[2] = time.monotonic()

    def _replace(self, s, r):
        """Start a new actor in place of replica ``r`` of shard ``s``, dead for good."""
        old = self._actors[s][r]
        self._owned = [a for a in self._owned if a is not old]
        self._replaced = getattr(self, "_replaced", 0) + 1
        name = (f"{self.name}/v{self.version}/s{self.num_shards}/shard-{s}/r{r}"
                f"/n{self._replaced}")
        self._actors[s][r] = self._start_actor(s, r, name)
        logger.warning("shard %d replica %d was dead for good; started a new actor for it",
                       s, r)

    # -- lifecycle -------------------------------------------------------------------
    def close(self):
        """Stop the actors this object started (attached ones keep running)."""
        for actor in getattr(self, "_owned", []):
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._owned = []
        self._actors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"ShardedIndex({self.path!r}, version={self.version}, ntotal={self.ntotal}, "
                f"shards={self.num_shards}, replicas={self.replicas})")

    # -- replica state -----------------------------------------------------------------
    def _mark_down(self, s, r, why):
        with self._down_lock:
            if (s, r) in self._down:
                return
            # [ping in flight or None, when it was sent, since when it is down]
            self._down[(s, r)] = [None, 0.0, time.monotonic()]
        logger.warning("shard %d replica %d is down (%s); skipping it until it answers a ping",
                       s, r, why)

    def _mark_up(self, s, r):
        with self._down_lock:
            if self._down.pop((s, r), None) is None:
                return
        logger.info("shard %d replica %d answers again", s, r)

    def _is_up(self, s, r):
        """Whether replica ``r`` of shard ``s`` may be called: not down, or down and
        its last ping has answered since. Sends a new ping to a down replica at
        most every :data:`_PROBE_INTERVAL_S`."""
        entry = self._down.get((s, r))
        if entry is None:
            return True
        ref, sent, _ = entry
        if ref is not None:
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                return False
            try:
                ray.get(ref, timeout=0)
            except ActorDiedError:  # dead for good: no restart will bring it back
                entry[0] = None
                self._dead_for_good(s, r)
            except Exception:  # still down
                entry[0] = None
            else:
                self._mark_up(s, r)
                return True
        if entry[0] is None and time.monotonic() - sent >= _PROBE_INTERVAL_S:
            entry[0], entry[1] = self._actors[s][r].ping.remote(), time.monotonic()
        return False

    def _pick(self, s, start, wait_s):
        """The replica counter (``start`` or the next up one, round robin) to call
        for shard ``s``; None when every replica is down and none answers a ping
        within ``wait_s`` — the shard fails fast instead of waiting its timeout."""
        for i in range(self.replicas):
            if self._is_up(s, (start + i) % self.replicas):
                return start + i
        pings = [e[0] for r in range(self.replicas)
                 if (e := self._down.get((s, r))) is not None and e[0] is not None]
        if pings and wait_s > 0:
            ray.wait(pings, num_returns=1, timeout=wait_s)
            for i in range(self.replicas):
                if self._is_up(s, (start + i) % self.replicas):
                    return start + i
        return None

    # -- fan-out -----------------------------------------------------------------------
    def _call(self, calls, timeout_s, version=None):
        """Run ``calls`` {shard: (method, args)} on one replica of each shard, at
        ``version`` (default: the served one; passed as ``expected=``).

        A replica that fails is marked down (logged once) and replaced by the
        next one; down replicas are skipped until a ping answers again, and a
        shard whose replicas are all down is given up at once rather than at
        the deadline. A replica holding another version (restarted) is told to load this one
        first. Raises :class:`_VersionChanged` when the coordinator switched
        versions meanwhile. Returns ({shard: result}, [shards that did not answer]).
        """
        version = self.version if version is None else int(version)
        deadline = time.monotonic() + timeout_s
        pending = {}
        stale = {s: 0 for s in calls}

        def submit(s, replica, pick=True):
            if pick:
                replica = self._pick(s, replica, min(_PROBE_WAIT_S,
                                                     max(0.0, deadline - time.monotonic())))
                if replica is None:
                    return
            method, args = calls[s]
            actor = self._actors[s][replica % self.replicas]
            pending[getattr(actor, method).remote(*args, expected=version)] = (s, replica)

        for s in calls:
            submit(s, next(self._rr[s]))
        results = {}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # one wait for all the calls (an error counts as an answer) rather than
            # one per answer, each of which woke this thread and walked the Ray
            # references again; a failed replica's retry now starts once the other
            # shards have answered
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=remaining)
            for ref in ready:
                s, replica = pending.pop(ref)
                try:
                    results[s] = ray.get(ref)
                except StaleShardError as exc:
                    if self.version != version:
                        raise _VersionChanged() from exc
                    stale[s] += 1
                    actor = self._actors[s][replica % self.replicas]
                    logger.info("shard %d replica %d holds another version (restarted?); "
                                "loading version %d into it", s, replica % self.replicas,
                                version)
                    actor.load.remote(version)  # runs before the next call on that actor
                    if stale[s] > _STALE_RETRIES:
                        stale[s] = 0
                        submit(s, replica + 1)
                    else:
                        submit(s, replica, pick=False)
                except _ACTOR_ERRORS as exc:
                    self._mark_down(s, replica % self.replicas, type(exc).__name__)
                    submit(s, replica + 1)
        return results, sorted(set(calls) - set(results))

    # -- search --------------------------------------------------------------------------
    @property
    def attribute_schema(self):
        """The attribute columns' ``pyarrow.Schema``, or None while no vector has
        attributes (fixed by the first add that gives some)."""
        return self._attribute_schema

    def search(self, queries, k=10, *, nprobe=None, refine_factor=0, probe_ratio=None,
               filter=None, columns=None, timeout_s=None, allow_partial=False,
               probe_gap=None):
        """k nearest neighbours, exactly as the local index would answer.

        Returns ``(D, I)`` (float32, int64, (nq, k)); with ``columns=[...]``
        ``(D, I, A)`` where ``A`` is a ``pyarrow.Table`` of those attribute
        columns with nq * k rows, row ``i * k + j`` for hit ``I[i, j]`` (all
        nulls where it is -1), fetched from the shards owning the hits.
        ``filter`` (a SQL-like string or a ``pyarrow.compute.Expression`` over
        the attribute columns) is compiled once here (``ValueError`` naming the
        column or position when it does not fit :attr:`attribute_schema`) and
        applied by every shard inside its scan, as the local index does.
        ``probe_ratio`` (adaptive probing, as the local index's
        :meth:`~shardann.IVFFlatIndex.search`) is applied here, at the coarse
        probe: a shard receives only the lists worth scanning. ``probe_gap``
        is refused (``ValueError``): its rule skips a list by the k-th best
        distance found in the lists before it, which a shard scanning its own
        lists in parallel with the others does not know, so it could not
        answer as the local index does.

        A shard that does not answer within ``timeout_s`` raises
        :class:`ShardUnavailableError`; with ``allow_partial=True`` a
        :class:`SearchResult` flagged with the missing shards is returned
        instead. Every shard answers at the served version (:attr:`version`);
        a search overlapping a write or :meth:`reload` is answered wholly at
        the version served when it finishes.
        """
        if probe_gap is not None:
            raise ValueError("probe_gap is not available on a sharded index (its rule needs "
                             "the running k-th distance over lists scanned on other shards); "
                             "use probe_ratio, or search a local index")
        while True:
            try:
                return self._search(queries, k, nprobe, refine_factor, filter, columns,
                                    timeout_s, allow_partial, self.version, probe_ratio)
            except _VersionChanged:
                continue

    def _search(self, queries, k, nprobe, refine_factor, filter, columns, timeout_s,
                allow_partial, version, probe_ratio=None):
        model = self.model
        k, nprobe, refine_factor = model.check_search(k, nprobe, refine_factor)
        probe_ratio = check_probe_ratio(probe_ratio)
        expr = compile_filter(filter, self.attribute_schema)
        columns = check_columns(columns, self.attribute_schema)
        q = model.prepare(queries, "queries")
        nq = q.shape[0]
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        if nq == 0:
            D, I = empty_results(0, k, self.metric)
            return self._result(D, I, [], columns, None, allow_partial, version, deadline)
        dis0, probes = model.probe(q, nprobe, probe_ratio)
        if expr is not None and probe_ratio is None:
            # the local index's selectivity rule, on the passing rows of every shard
            # (probe_ratio's lists are scanned as chosen, as locally)
            counts, sizes = self._passing_counts(expr, version, deadline, allow_partial)
            dis0, probes = filter_probes(dis0, probes, counts, sizes,
                                         lambda depth, lists: model.probe(q, depth,
                                                                          lists=lists))
        exact = bool(refine_factor) and model.refines
        kk = k * refine_factor if exact else k
        owner = np.where(probes >= 0, self.owner[probes], -1)  # -1: a list probe_ratio skips
        calls, rows_of = {}, {}
        for s in np.unique(owner[owner >= 0]).tolist():
            mine = owner == s
            rows = np.flatnonzero(mine.any(axis=1))
            rows_of[s] = rows
            # the compiled expression travels (pickled) with the batch: shards do not parse
            calls[s] = ("search_packed", pack((q[rows], dis0[rows],
                                               np.where(mine[rows], probes[rows], -1),
                                               kk, exact, expr)))
        results, missing = self._call(calls, timeout_s, version)
        if missing and not allow_partial:
            raise ShardUnavailableError(
                f"shard(s) {missing} of {self.path} did not answer within "
                f"{timeout_s}s; retry, or pass allow_partial=True to accept results without them")
        parts, exacts, shard_of_part = [], [], []
        for s, payload in results.items():
            keys, ids, ex = unpack(payload)
            if len(rows_of[s]) < nq:  # (a shard probed by every query answers all rows)
                full_k, full_i = empty_results(nq, kk, "l2")
                full_k[rows_of[s]], full_i[rows_of[s]] = keys, ids
                keys, ids = full_k, full_i
                if exact:
                    full_e = np.full((nq, kk), np.inf, np.float32)
                    full_e[rows_of[s]] = ex
                    ex = full_e
            parts.append((keys, ids))
            shard_of_part.append(s)
            if exact:
                exacts.append(ex)
        src = None  # the part (shard) each hit came from, for fetching its columns
        if not parts:
            D, I = empty_results(nq, k, self.metric)
        elif exact:
            _, short_ids, src1 = merge_results(parts, kk, "l2", return_source=True)
            all_exact = np.concatenate(exacts, axis=1)
            short_exact = np.where(src1 >= 0, np.take_along_axis(all_exact, np.maximum(src1, 0),
                                                                 axis=1), np.inf)
            keys, I, src2 = merge_results([(short_exact.astype(np.float32), short_ids)], k,
                                          "l2", return_source=True)
            src = np.where(src2 >= 0, np.take_along_axis(src1, np.maximum(src2, 0), axis=1), -1)
            D = keys_to_distances(keys, self.metric)
        else:
            keys, I, src = merge_results(parts, k, "l2", return_source=True)
            D = keys_to_distances(keys, self.metric)
        D[I < 0] = empty_results(1, 1, self.metric)[0][0, 0]
        shard = None
        if src is not None:
            shard = np.where((src >= 0) & (I >= 0),
                             np.asarray(shard_of_part, np.int64)[np.maximum(src, 0) // kk], -1)
        return self._result(D, I, missing, columns, shard, allow_partial, version, deadline)

    def _passing_counts(self, expr, version, deadline, allow_partial=False):
        """(passing, rows) int64 (nlist,): rows passing the compiled filter ``expr``
        and live rows per list, summed over the shards at ``version``; kept for
        the last few filters of the served version. With ``allow_partial``, the
        shards that answered (not kept: the search is flagged partial anyway)."""
        key = (version, filter_key(expr))
        hit = self._counts_cache.get(key)
        if hit is not None:
            return hit
        calls = {s: ("passing_counts", (expr,)) for s in range(self.num_shards)}
        results, missing = self._call(calls, max(0.0, deadline - time.monotonic()), version)
        if missing and not allow_partial:
            raise ShardUnavailableError(
                f"shard(s) {missing} of {self.path} did not count the rows passing the "
                "filter within the timeout; retry, or pass allow_partial=True")
        zero = np.zeros(self.nlist, np.int64)
        out = (sum((results[s][0] for s in results), zero),
               sum((results[s][1] for s in results), zero))
        if missing:
            # their lists count as wholly passing (this coordinator's sizes): the rule
            # still probes them, and the search reports those shards missing
            lost = np.isin(self.owner, missing)
            out[0][lost] = out[1][lost] = self._list_sizes[lost]
            return out
        with self._down_lock:
            self._counts_cache[key] = out
            while len(self._counts_cache) > _COUNTS_CACHE_SIZE:
                self._counts_cache.pop(next(iter(self._counts_cache)))
        return out

    def _result(self, D, I, missing, columns, shard, allow_partial, version, deadline):
        """The answer of a search: ``(D, I)``, with the hits' columns when asked for."""
        A = None
        if columns is not None:
            A = self._fetch_columns(I, shard, columns, version, deadline)
        if allow_partial:
            return SearchResult(D, I, missing, A)
        return (D, I) if A is None else (D, I, A)

    def _fetch_columns(self, I, shard, columns, version, deadline):
        """``pyarrow.Table`` of ``columns`` for the hits ``I`` (nq, k), row-major,
        asked of the shard each hit came from (``shard`` (nq, k), -1: no hit)."""
        flat_ids = I.reshape(-1)
        flat_shard = (np.full(flat_ids.shape, -1, np.int64) if shard is None
                      else shard.reshape(-1))
        wanted = {s: np.flatnonzero(flat_shard == s) for s in np.unique(flat_shard).tolist()
                  if s >= 0}
        calls = {s: ("get_attributes", (flat_ids[rows], columns)) for s, rows in wanted.items()}
        tables = {}
        if calls:
            tables, missing = self._call(calls, max(0.0, deadline - time.monotonic()), version)
            if missing:
                raise ShardUnavailableError(
                    f"shard(s) {missing} of {self.path} did not return the hits' columns "
                    "within the timeout; retry")
        return assemble_rows(flat_ids.size, columns, self.attribute_schema,
                             [(wanted[s], tables[s]) for s in wanted])

    # -- writes ----------------------------------------------------------------------------
    def _check_writable(self):
        if self.read_only:
            raise PermissionError(f"version {self.version} of {self.path} is open read-only")

    def _broadcast(self, calls, what, base, new, new_schema=False):
        """Apply a write committed as version ``new`` on top of ``base`` on every
        replica of the given shards, which then serve ``new``. A replica holding
        another version loads ``new`` from the store instead; one that fails is
        restarted (it is told to load the served version on its next call).
        ``new_schema``: the write fixed the attribute schema (the first add with
        attributes); the other shards then load ``new`` (their rows get nulls)."""
        refs = {}
        for s, (method, args) in calls.items():
            for actor in self._actors[s]:
                refs[getattr(actor, method).remote(*args, base=base, new=new)] = (s, actor)
        out = {}
        for ref, (s, actor) in refs.items():
            try:
                try:
                    out[s] = ray.get(ref, timeout=max(self.timeout_s, 60.0))
                except StaleShardError:
                    ray.get(actor.load.remote(new), timeout=max(self.timeout_s, 60.0))
            except (*_ACTOR_ERRORS, GetTimeoutError) as exc:
                logger.warning("%s on shard %d failed (%s); restarting the replica so it "
                               "reloads the committed version", what, s, type(exc).__name__)
                ray.kill(actor, no_restart=False)
        # the other shards' replicas move to ``new`` too: they hold no rows of this write
        others = [a for s, g in enumerate(self._actors) if s not in calls for a in g]
        for actor, ref in [(a, a.advance.remote(base=base, new=new, reload=new_schema))
                           for a in others]:
            try:
                try:
                    ray.get(ref, timeout=max(self.timeout_s, 60.0))
                except StaleShardError:
                    ray.get(actor.load.remote(new), timeout=max(self.timeout_s, 60.0))
            except (*_ACTOR_ERRORS, GetTimeoutError):
                pass  # restarted; it loads the served version on its next call
        return out

    def _commit(self, stage):
        """Commit ``stage(transaction)`` on top of the served version and serve the
        new one (set before the shards move, so that a search meeting a moved
        shard restarts at the new version). Returns ``(base, new)``."""
        from ..storage import IndexStore

        base = self.version
        txn = IndexStore.open(self._loc, version=base).transaction()
        stage(txn)
        store = txn.commit()
        new = int(store.version)
        self._drift = store.manifest.get("drift")
        self.version = new
        return base, new

    def add(self, x, ids=None, attributes=None):
        """Add float32 (n, d) vectors with int64 ids (default: after the largest id).

        ``attributes``: one row per vector (a ``pyarrow.Table`` / ``RecordBatch``
        or a dict of arrays), as for the local index's ``add``: the first add
        that gives attributes fixes :attr:`attribute_schema`; later adds must
        give the same columns (``ValueError`` naming the column otherwise), and
        vectors added without attributes have nulls. Each shard keeps the rows
        of its lists.

        The rows are committed to the store as the version after the served
        one (:class:`~shardann.CommitConflictError` if another writer took it:
        :meth:`reload` first), then applied to the owning shards, and that
        version is served; the next search sees them. Returns the ids.
        """
        with self._write_lock:
            return self._add(x, ids, attributes)

    def _add(self, x, ids, attributes):
        self._check_writable()
        model = self.model
        cal = self._calibration_for_add()
        raw = None if cal is None else as_vectors(x, self.d)
        x = model.prepare(x if raw is None else raw)
        n = x.shape[0]
        table = (None if attributes is None
                 else as_attribute_table(attributes, n, self._attribute_schema))
        if ids is None:
            if self._next_id + n - 1 > MAX_ID:
                raise ValueError(f"default ids would pass the largest id {MAX_ID} (next id "
                                 f"{self._next_id}, {n} vectors); pass ids explicitly")
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            ids = as_ids(ids, n)
            present = self.contains(ids)
            if present.any():
                raise DuplicateIdError(f"ids already in the index, e.g. "
                                       f"{int(ids[present][0])} ({int(present.sum())} of {n})")
        if n == 0:
            return ids
        list_no, cols = model.encode(x)
        extra = {} if table is None else {"attributes": table}
        drift = model.drift_stats(x, list_no, cols)  # of these rows, for the manifest
        if cal is not None:  # a copy: the served one stays until the commit
            cal = cal.copy()
            cal.add(raw, x, ids, model.prepare, self.contains)

        def stage(txn):
            txn.add(list_no, ids, **cols, **extra)
            txn.record_drift(drift)
            if cal is not None:
                txn.set_calibration(cal.to_bytes())

        base, new = self._commit(stage)
        if cal is not None:
            self._cal = cal
        new_schema = table is not None and self._attribute_schema is None
        if new_schema:  # the first attributes fix the schema
            self._attribute_schema = table.schema
        shard = self.owner[list_no]
        calls = {}
        for s in np.unique(shard).tolist():
            sel = np.flatnonzero(shard == s)
            part = {c: v[sel] for c, v in cols.items()}
            rows = None if table is None else table.take(sel)
            calls[s] = ("add_preassigned", (list_no[sel], ids[sel], part, rows))
        self._broadcast(calls, "add", base, new, new_schema)
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        self.ntotal += n
        np.add.at(self._list_sizes, list_no, 1)
        return ids

    def remove_ids(self, ids):
        """Delete ids (durably, as a tombstone) from every shard; returns how many.
        Committed as the version after the served one, like :meth:`add`."""
        with self._write_lock:
            self._check_writable()
            ids = np.unique(as_id_array(ids))
            present = ids[self.contains(ids)]
            if present.size == 0:
                return 0
            from ..index import CalibrationSet

            cal = self._cal
            if isinstance(cal, CalibrationSet):  # (a stored one is filtered when read)
                cal = cal.copy()
                cal.remove(present)

            def stage(txn):
                txn.delete(present)
                if cal is not self._cal:
                    txn.set_calibration(cal.to_bytes())

            base, new = self._commit(stage)
            self._cal = cal
            out = self._broadcast({s: ("remove_ids", (present,))
                                   for s in range(self.num_shards)}, "remove", base, new)
            self._update_list_sizes(out, new)
        return int(present.size)

    def _update_list_sizes(self, shard_sizes, version):
        """Take the live rows per list the shards report after a removal
        ({shard: int64 (nlist,)}, each holding its own lists' sizes); lists of a
        shard that did not answer (restarted: it reloads) are read from the store."""
        sizes = self._list_sizes.copy()
        for s, got in shard_sizes.items():
            mine = self.owner == s
            sizes[mine] = np.asarray(got, np.int64)[mine]
        if set(shard_sizes) != set(range(self.num_shards)):
            from ..storage import IndexStore

            stored = np.asarray(IndexStore.open(self._loc, version=version).list_sizes(),
                                np.int64)
            missing = ~np.isin(self.owner, list(shard_sizes))
            sizes[missing] = stored[missing]
        self._list_sizes = sizes
        self.ntotal = int(sizes.sum())

    def list_sizes(self):
        """Live rows per inverted list over all shards, int64 (nlist,) — a copy,
        current after this coordinator's adds and removals (:meth:`reload`
        reads them from the store)."""
        return self._list_sizes.copy()

    def _calibration_for_add(self):
        """The calibration set an add keeps up to date (read from the store if need
        be, or started when the index is empty), or None."""
        from ..index import CalibrationSet, load_calibration

        if self._cal is None:
            size = self.model.calibration
            if size and self.ntotal == 0:
                return CalibrationSet(self.d, self.metric, size, seed=self.model.seed)
            return None
        self._cal = load_calibration(self._cal, self.contains)
        return self._cal

    def estimate_recall(self, k=10, nprobe=None, refine_factor=0, *, probe_ratio=None,
                        confidence=0.95):
        """Estimate recall@k of :meth:`search` with a confidence interval, from the
        index's calibration set — as the local index's
        :meth:`~shardann.IVFPQIndex.estimate_recall` (same code path: the
        calibration queries go through this coordinator's search and shards).
        Returns a :class:`~shardann.index.RecallEstimate`; ``ValueError`` when
        the index has no calibration set (e.g. built with ``calibration=0``)."""
        from ..index import estimate_recall, load_calibration

        k, nprobe, refine_factor = self.model.check_search(k, nprobe, refine_factor)
        cal = load_calibration(self._cal, self.contains, required=True)
        self._cal = cal
        return estimate_recall(
            cal, lambda q, kk: self.search(q, kk, nprobe=nprobe, refine_factor=refine_factor,
                                           probe_ratio=probe_ratio),
            self.contains, k, nprobe=nprobe, refine_factor=refine_factor,
            probe_ratio=probe_ratio, confidence=confidence)

    def contains(self, ids):
        """bool (n,): which ids are in the index (asks every shard)."""
        ids = as_id_array(ids)
        calls = {s: ("contains", (ids,)) for s in range(self.num_shards)}
        while True:
            try:
                results, missing = self._call(calls, self.timeout_s)
                break
            except _VersionChanged:
                continue
        if missing:
            raise ShardUnavailableError(f"shard(s) {missing} did not answer")
        return np.logical_or.reduce([results[s] for s in range(self.num_shards)])

    # -- versions ------------------------------------------------------------------------
    def reload(self, version=None):
        """Serve ``version`` of the store (default: the newest) on every shard.

        Every actor loads it; searches under way finish at the new version.
        The list placement is kept (open again to rebalance). Returns the
        version now served.
        """
        from ..index import calibration_source
        from ..storage import IndexStore

        with self._write_lock:
            store = IndexStore.open(self._loc, version=version)
            model = _coarse_model(store)
            if model.d != self.d or model.nlist != self.nlist or model.metric != self.metric:
                raise ValueError(f"version {store.version} of {self.path} has d={model.d}, "
                                 f"nlist={model.nlist}, metric={model.metric!r}; the served "
                                 f"one d={self.d}, nlist={self.nlist}, metric={self.metric!r}"
                                 ": open it as a new ShardedIndex")
            new = int(store.version)
            actors = [(s, r, a) for s, g in enumerate(self._actors) for r, a in enumerate(g)]
            self.model = model
            self._cal = calibration_source(store)
            self._drift = store.manifest.get("drift")
            self._attribute_schema = store.attribute_schema
            self._list_sizes = np.asarray(store.list_sizes(), np.int64)
            self.ntotal = int(self._list_sizes.sum())
            self.read_only = version is not None and new != max(store.versions())
            self.version = new
            for s, r, ref in [(s, r, a.load.remote(new)) for s, r, a in actors]:
                try:
                    ray.get(ref)
                except _ACTOR_ERRORS as exc:  # it loads the served version when back
                    self._mark_down(s, r, type(exc).__name__)
            self._next_id = int(store.next_id)
            logger.info("%s now serves version %d", self.path, new)
            return new

    # -- introspection -----------------------------------------------------------------------
    def health(self, timeout_s=2.0):
        """Ping every replica: ``{"status": "ok"|"degraded"|"unavailable", "shards":
        [{"shard", "replicas", "alive"}]}`` — degraded when some replica of a shard
        is down, unavailable when a shard has no live replica."""
        refs = [(s, r, a.ping.remote()) for s, g in enumerate(self._actors)
                for r, a in enumerate(g)]
        ready, _ = ray.wait([ref for *_, ref in refs], num_returns=len(refs), timeout=timeout_s)
        ready = set(ready)
        alive = [0] * self.num_shards
        for s, r, ref in refs:
            try:
                if ref not in ready:
                    raise GetTimeoutError(f"no answer in {timeout_s} s")
                ray.get(ref, timeout=0)
            except (*_ACTOR_ERRORS, GetTimeoutError) as exc:
                self._mark_down(s, r, type(exc).__name__)  # searches skip it too
                if isinstance(exc, ActorDiedError):
                    self._dead_for_good(s, r)
            else:
                alive[s] += 1
                self._mark_up(s, r)
        shards = [{"shard": s, "replicas": self.replicas, "alive": alive[s]}
                  for s in range(self.num_shards)]
        return {"status": health_status(alive, self.replicas), "shards": shards}

    def drift(self, threshold=None):
        """Drift of the vectors added since training against the training data,
        as :meth:`shardann.IVFPQIndex.drift` reports it for the local index:
        from the served version's manifest (kept current by this
        coordinator's adds) and :meth:`list_sizes`. None when the index has no
        drift baseline."""
        if not self._drift:
            return None
        return drift_report(self._drift, self.list_sizes(),
                            DEFAULT_THRESHOLD if threshold is None else threshold)

    def stats(self):
        """Per-shard and per-replica statistics (rows, calls, memory, node)."""
        refs = [(s, r, a.stats.remote()) for s, g in enumerate(self._actors)
                for r, a in enumerate(g)]
        shards = []
        for s, r, ref in refs:
            try:
                shards.append(ray.get(ref, timeout=self.timeout_s))
            except (*_ACTOR_ERRORS, GetTimeoutError) as exc:
                shards.append({"shard": s, "replica": r, "error": type(exc).__name__})
        loads = shard_loads(self.owner, self._list_sizes, self.num_shards)
        return {"path": self.path, "version": self.version, "ntotal": self.ntotal,
                "nlist": self.nlist, "num_shards": self.num_shards, "replicas": self.replicas,
                "shard_rows": loads.tolist(),
                "balance": float(loads.max() / max(loads.mean(), 1)), "shards": shards}


def sample_dataset(ds, n, *, column="embedding", seed=0):
    """Uniform sample of about ``n`` vectors from a Ray Dataset column, float32 (m, d)."""
    total = ds.count()
    frac = min(1.0, n / max(total, 1))
    batches = []
    for batch in ds.random_sample(frac, seed=seed).iter_batches(batch_format="numpy",
                                                                   batch_size=65536):
        batches.append(np.asarray(np.stack(batch[column]) if batch[column].dtype == object
                                  else batch[column], dtype=np.float32))
    if not batches:
        raise ValueError("the dataset sample is empty")
    return np.concatenate(batches)[:n]
