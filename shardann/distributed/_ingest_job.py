"""Large offline ingest on Ray Data: :func:`ingest` and ``shardann ingest``.

Builds an index from tens of millions to billions of embeddings in Parquet
(a file, a directory or a glob; the embedding column ``fixed_size_list<float>``,
``list<float>`` or float32 bytes; an optional int64 id column), ``.npy``
(memory-mapped) or ``.fvecs`` / ``.bvecs`` / ``.ivecs`` files — or appends
such files to an existing index with its codebooks, as a new version.

Stages, each with a progress bar (vectors/s, ETA):

1. **plan** (driver): list the files in a stable order and count their rows
   from metadata; row ``r`` of a file whose rows start at global row ``o``
   gets id ``o + r`` (plus the index's ``next_id`` when appending) unless an
   id column is given. The rows are cut into blocks of about ``block_rows``.
2. **sample**: a random sample of rows (training) and a disjoint one (the
   recall check), read on the driver by a few threads. Rows are drawn in
   runs of consecutive rows filling 4 KiB (8 rows of 128 floats; single rows
   when rows are larger), the runs uniformly without replacement
   (:func:`draw_rows`): every row is as likely to be drawn, and a run costs
   the disk one read where as many scattered rows cost one each. The stage is
   bound by the disk's reads per second (~20k here): 262k single rows of
   10M x 128 took 8.8 s, in runs of 8 rows 3.2 s.
   Of uncompressed PLAIN Parquet pages only the page headers, the levels and
   the drawn rows are read, with the kernel's readahead off for those reads
   (else each one pulls megabytes in and the whole input comes off disk).
3. **train** on the driver (or take the codebooks of the index being
   appended to, or of ``codebooks=``); the model is ``ray.put`` once.
4. **encode**: Ray Data ``map_batches`` over the blocks, at most one task
   per CPU, each of up to four blocks (one at the end, so the workers finish
   together); for each block it assigns lists and encodes with the core
   index's kernels, writes its rows sorted by list as a run in
   ``INDEX/_ingest/<job>/`` plus a done-marker, and finds the exact top-k of
   the check queries among its rows.
   It first asks the kernel for the bytes of its block and of the next two
   (``posix_fadvise(WILLNEED)``), so that the disk reads while the CPU encodes.
5. **merge**: one worker per list range gathers that range from every run
   (memory-mapped) into one store segment, row groups cut at list boundaries.
6. **commit**: one manifest naming all new segments — the only moment the
   index changes. Then the recall spot check and the summary.

Parquet embedding columns of float32 (``list`` or ``fixed_size_list`` with d
values in every row) are read by ``shardann._parquet``, which checks the
repetition and definition levels run by run and copies the values, about 3x
faster than Arrow's nested-column reader; a row group it does not handle
(nulls, rows of other lengths, other encodings or codecs) is read with Arrow,
which also names the bad rows.

Memory stays bounded: a worker holds one part of at most ``block_rows`` rows
(encode) or one list range of at most ``merge_bytes`` (merge); the driver
holds the training sample and per-list counts, never the data.

A job is named by a hash of its inputs (paths, sizes, modification times)
and options. Killed and started again with the same arguments, it skips the
blocks and ranges whose markers exist and resumes; if the index changed in
between, it starts over. Segment files carry the job's name, so a job that
was committed before it was killed is recognised and not committed twice.
Until the commit the index is its old version (or absent); uncommitted
segment files are debris that ``IndexStore.vacuum`` removes, and
:func:`clean_ingest_jobs` removes abandoned job directories.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._text import format_bytes as _human
from ..errors import CommitConflictError, IngestJobBusyError, InputError
from ..results import merge_results, recall_at_k
from ..storage import IndexStore, _codebooks
from ..storage._crash import crash_point
from ..storage._files import fast_crc32
from ..storage._manifest import FORMAT_VERSION, list_versions
from ..storage._manifest import read as read_manifest
from ..storage._segments import column_spec
from ._ingest_plan import plan_inputs
from ._ingest_work import (
    ITEMS_DIR,
    RANGES_DIR,
    SEGMENT_PREFIX,
    block_marker,
    build_model,
    draw_rows,
    encode_batch,
    merge_batch,
    plan_ranges,
    range_marker,
    read_block_marker,
    read_json,
    replace_into,
    sample_block,
    write_json,
)

logger = logging.getLogger(__name__)

__all__ = ["IngestJob", "IngestSummary", "clean_ingest_jobs", "ingest"]

JOBS_DIR = "_ingest"
#: largest default training sample, in bytes of float32 vectors
SAMPLE_MAX_BYTES = 1 << 30
#: threads that read the drawn rows on the driver (mostly waiting on the disk)
SAMPLE_THREADS = 4
#: the sample is drawn in runs of consecutive rows of about this many bytes
SAMPLE_RUN_BYTES = 4096
#: most blocks one encode task takes (see :func:`task_groups`)
ENCODE_TASK_BLOCKS = 4
#: a merge range holds about this many bytes (codes, ids, vectors)
MERGE_BYTES = 128 << 20
#: a recall-check chunk of lists loaded at once holds about this many bytes
CHECK_BYTES = 256 << 20
_MAX_SEGMENT_ROWS = 1 << 24


@dataclasses.dataclass
class IngestSummary:
    """What an ingest job did. ``str(summary)`` is a readable report."""

    path: str
    version: int
    job_id: str
    mode: str                       # "create" or "append"
    vectors: int                    # rows this job added
    skipped_rows: int = 0
    skipped_files: list = dataclasses.field(default_factory=list)  # [[path, reason]]
    bad_rows: list = dataclasses.field(default_factory=list)       # the first few, explained
    seconds: float = 0.0            # wall time of the call (of this run, when resumed)
    stage_seconds: dict = dataclasses.field(default_factory=dict)
    #: time the encode workers spent reading, encoding and writing, summed over blocks
    worker_seconds: dict = dataclasses.field(default_factory=dict)
    bytes_written: int = 0          # index files added: segments (+ codebooks on create)
    scratch_bytes: int = 0          # runs written to the job directory (removed at the end)
    blocks: int = 0
    resumed_blocks: int = 0         # blocks an interrupted run had finished
    segments: int = 0
    recall: float | None = None     # recall@k of the held-out queries vs exact search
    recall_k: int = 0
    recall_nprobe: int = 0
    recall_queries: int = 0
    already_committed: bool = False  # the job had been committed before this call

    @property
    def vectors_per_second(self):
        return self.vectors / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        lines = [f"ingested {self.vectors:,} vectors into {self.path} (version {self.version}, "
                 f"{self.mode}) in {self.seconds:.1f} s: {self.vectors_per_second:,.0f} "
                 "vectors/s"]
        if self.already_committed:
            lines.append("  (this job had been committed already; nothing was redone)")
        if self.stage_seconds:
            order = ("sample", "train", "encode", "check_ids", "merge", "commit", "check")
            stages = sorted(self.stage_seconds.items(),
                            key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
            lines.append("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages))
        lines.append(f"  written: {_human(self.bytes_written)} in {self.segments} segment(s); "
                     f"{self.blocks} blocks ({self.resumed_blocks} done by an earlier run)")
        if self.recall is not None:
            lines.append(f"  recall@{self.recall_k} at nprobe={self.recall_nprobe} on "
                         f"{self.recall_queries} held-out input rows vs exact search: "
                         f"{self.recall:.4f}")
        if self.skipped_rows or self.skipped_files:
            lines.append(f"  skipped: {self.skipped_rows:,} bad rows, "
                         f"{len(self.skipped_files)} unreadable file(s)")
            lines += [f"    {p}: {why}" for p, why in self.skipped_files[:10]]
            lines += [f"    {m}" for m in self.bad_rows[:10]]
        return "\n".join(lines)


# -- the public entry point ------------------------------------------------------------------
def ingest(path, inputs, *, column="embedding", id_column=None, d=None, nlist=None, M=None,
           nbits=8, metric="l2", opq=False, keep_vectors=False, codebooks=None,
           sample_size=None, seed=0, niter=25, pq_niter=25, skip_bad_rows=False,
           block_rows=None, num_workers=None, merge_bytes=MERGE_BYTES, spot_check=100,
           spot_check_k=10, spot_check_nprobe=None, progress=True, job_id=None):
    """Build (or append to) the index at ``path`` from files of vectors, on Ray Data.

    Parameters
    ----------
    path : str, the index directory. If it holds an index, the inputs are
        appended with its codebooks (no retraining) as a new version; the
        index parameters below must then be left unset (or match).
    inputs : str or list of str — Parquet files, directories or globs,
        ``.npy``, ``.fvecs``, ``.bvecs``, ``.ivecs`` files.
    column : Parquet column holding the vectors: ``fixed_size_list<float>``,
        ``list<float>`` or binary (little-endian float32).
    id_column : Parquet int64 column of ids; default ids are the global row
        order (plus the index's ``next_id`` when appending), stable across runs.
    d : expected dimension (default: the first file's).
    nlist, M, nbits, metric, opq, keep_vectors, seed, niter, pq_niter : the
        new index, as for :class:`shardann.IVFPQIndex` (``M=None``: IVF-Flat).
        ``keep_vectors`` True/"float32" or "float16" keeps raw vectors for refine.
    codebooks : path of an index (or of its ``codebooks-*.parquet`` file)
        whose trained model to reuse instead of training.
    sample_size : training sample (default ``256 * nlist``, at most 1 GiB),
        drawn in runs of consecutive rows filling 4 KiB (every row equally
        likely; see the module docstring).
    skip_bad_rows : skip (and count) rows with the wrong length, NaN/inf,
        null or bad ids, and unreadable files, instead of failing.
    block_rows : rows per block (default: 64 MiB of float32 vectors).
    num_workers : Ray Data actors (default: the cluster's CPUs).
    merge_bytes : about the size of one merged list range (one segment).
    spot_check, spot_check_k, spot_check_nprobe : held-out queries (0: no
        check), k and nprobe (default ``min(nlist, 16)``) of the recall check.
    progress : show progress bars (tqdm, on stderr).
    job_id : name the job yourself (default: a hash of the inputs and options).

    Returns
    -------
    :class:`IngestSummary`.

    Raises
    ------
    InputError (a ``ValueError``) naming the file and row of bad input;
    nothing is committed then. ``FileExistsError`` if ``path`` holds other files.

    Examples
    --------
    >>> from shardann.distributed import ingest                             # doctest: +SKIP
    >>> s = ingest("idx", "emb/*.parquet", nlist=4096, M=32)               # doctest: +SKIP
    >>> print(s)                                                           # doctest: +SKIP
    """
    job = _Job(path, inputs, column=column, id_column=id_column, d=d, nlist=nlist, M=M,
               nbits=nbits, metric=metric, opq=opq, keep_vectors=keep_vectors,
               codebooks=codebooks, sample_size=sample_size, seed=seed, niter=niter,
               pq_niter=pq_niter, skip_bad_rows=skip_bad_rows, block_rows=block_rows,
               num_workers=num_workers, merge_bytes=merge_bytes, spot_check=spot_check,
               spot_check_k=spot_check_k, spot_check_nprobe=spot_check_nprobe,
               progress=progress, job_id=job_id)
    return _run_on_ray(job.run)


def _run_on_ray(fn, **init_options):
    """``fn()`` on the connected Ray, or on a local Ray started (and stopped) for it."""
    import ray

    started = not ray.is_initialized()
    if started:
        if not init_options.get("address"):
            init_options = {"include_dashboard": False, **init_options}
        ray.init(configure_logging=False, log_to_driver=False, **init_options)
    try:
        return fn()
    finally:
        if started:
            ray.shutdown()


def clean_ingest_jobs(path, *, interrupted=True, committed=True):
    """Remove ingest job directories under ``path/_ingest`` that no job is using.

    ``interrupted``: scratch of jobs that never committed (their progress is
    lost: a rerun starts over). ``committed``: the small records that let a
    rerun of a finished job return at once. Returns ``(removed dirs, bytes)``.
    """
    root = os.path.join(os.path.abspath(os.fspath(path)), JOBS_DIR)
    removed, freed = [], 0
    if not os.path.isdir(root):
        return removed, freed
    for name in sorted(os.listdir(root)):
        job_dir = os.path.join(root, name)
        if not os.path.isdir(job_dir):
            continue
        is_done = os.path.exists(os.path.join(job_dir, "committed.json"))
        if (is_done and not committed) or (not is_done and not interrupted):
            continue
        try:
            with _JobLock(job_dir, name):
                size = _dir_bytes(job_dir)
                shutil.rmtree(job_dir)
        except IngestJobBusyError:
            continue
        removed.append(job_dir)
        freed += size
    return removed, freed


def _dir_bytes(path):
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(dirpath, n))
    return total


class _JobLock:
    """An exclusive ``flock`` on ``job_dir/lock``; released when the process dies."""

    def __init__(self, job_dir, job_id):
        self.path = os.path.join(job_dir, "lock")
        self.job_id = job_id
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise IngestJobBusyError(f"ingest job {self.job_id} is running in another process "
                           f"({os.path.dirname(self.path)}); wait for it or stop it") from None
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# -- the job -----------------------------------------------------------------------------------
class _Job:
    def __init__(self, path, inputs, *, progress, **opts):
        from .._validation import check_int

        self.root = os.path.abspath(os.fspath(path))
        self.progress = bool(progress)
        self.opts = opts
        o = opts
        for name in ("spot_check", "spot_check_k", "seed", "niter", "pq_niter"):
            check_int(name, o[name], low=0 if name != "spot_check_k" else 1)
        for name in ("nlist", "M", "d", "sample_size", "block_rows", "num_workers",
                     "spot_check_nprobe"):
            if o[name] is not None:
                check_int(name, o[name], low=1)
        if o["keep_vectors"] is True:
            o["keep_vectors"] = "float32"
        self.t0 = time.perf_counter()
        self.stage_seconds = {}
        existing = self._existing_config()
        d = o["d"]
        if existing is not None:
            d = existing["d"]
            if o["d"] is not None and o["d"] != d:
                raise ValueError(f"d={o['d']} but the index at {self.root} has d={d}")
        elif o["codebooks"] is not None:
            d = self._codebooks_source()[1]["d"]
        self.plan = plan_inputs(inputs, column=o["column"], id_column=o["id_column"], d=d,
                                block_rows=o["block_rows"], skip_bad_files=o["skip_bad_rows"])
        # the parameters are checked before anything runs
        if existing is not None:
            self._check_append_options(existing)
        elif o["codebooks"] is None and o["nlist"] is not None:
            self._new_model()
        inside = [f.path for f in self.plan.files
                  if os.path.commonpath([f.path, self.root]) == self.root]
        if inside:
            raise InputError(f"{inside[0]}: an input inside the index directory {self.root}")
        self.job_id = o["job_id"] or self._job_hash()
        self.job_dir = os.path.join(self.root, JOBS_DIR, self.job_id)

    # -- identity ----------------------------------------------------------------------
    def _existing_config(self):
        if not IndexStore.exists(self.root):
            return None
        return IndexStore.open(self.root).config

    def _codebooks_source(self):
        """(kind, config, arrays, identity) of ``codebooks=``: an index or its codebooks file."""
        src = os.path.abspath(os.fspath(self.opts["codebooks"]))
        if os.path.isdir(src):
            store = IndexStore.open(src)
            if not store.is_trained:
                raise ValueError(f"codebooks={src!r}: that index is not trained")
            cb = store.manifest["files"]["codebooks"]
            return store.kind, store.config, store.trained_arrays(), [src, cb["crc32"]]
        if not os.path.isfile(src):
            raise FileNotFoundError(f"codebooks={src!r}: no index directory or codebooks file")
        with open(src, "rb") as f:
            data = f.read()
        arrays, meta = _codebooks.decode(data, src)
        return meta["kind"], meta["config"], arrays, [src, fast_crc32(data)]

    def _job_hash(self):
        o = self.opts
        keys = ("nlist", "M", "nbits", "metric", "opq", "keep_vectors", "sample_size", "seed",
                "niter", "pq_niter", "skip_bad_rows", "spot_check", "spot_check_k")
        ident = {"inputs": self.plan.identity(), **{k: o[k] for k in keys}}
        if o["codebooks"] is not None:
            ident["codebooks"] = self._codebooks_source()[3]
        text = json.dumps(ident, sort_keys=True, default=str).encode()
        return hashlib.sha256(text).hexdigest()[:16]

    def _p(self, *names):
        return os.path.join(self.job_dir, *names)

    # -- driver --------------------------------------------------------------------------
    def run(self):
        done = self._p("committed.json")
        if os.path.exists(done):
            return self._finished(read_json(done))
        os.makedirs(self.job_dir, exist_ok=True)
        with _JobLock(self.job_dir, self.job_id):
            if os.path.exists(done):  # finished by another process meanwhile
                return self._finished(read_json(done))
            self._warn_abandoned()
            state = self._state()
            if state.get("committed_version"):
                return self._after_commit(state, IndexStore.open(self.root,
                                                                 state["committed_version"]))
            model = self._model(state)
            agg = self._encode(state, model)
            self._check_ids(state, agg)
            entries = self._merge(state, model, agg)
            store = self._commit(state, model, entries)
            return self._after_commit(state, store, agg)

    def _finished(self, record):
        logger.info("ingest job %s was committed as version %s of %s; nothing to do",
                    self.job_id, record.get("version"), self.root)
        self._cleanup(keep_record=True)
        record = dict(record)
        record["already_committed"] = True
        fields = {f.name for f in dataclasses.fields(IngestSummary)}
        return IngestSummary(**{k: v for k, v in record.items() if k in fields})

    def _warn_abandoned(self):
        jobs = os.path.join(self.root, JOBS_DIR)
        for name in sorted(os.listdir(jobs)):
            other = os.path.join(jobs, name)
            if name != self.job_id and os.path.isdir(other) and not os.path.exists(
                    os.path.join(other, "committed.json")):
                logger.warning("%s: scratch of another, interrupted ingest job (%s); "
                               "clean_ingest_jobs(path) or `shardann ingest PATH --clean` "
                               "removes it", other, _human(_dir_bytes(other)))

    def _newest_version(self):
        if not IndexStore.exists(self.root):
            return 0
        return IndexStore.open(self.root).version

    def _find_commit(self, base_version):
        """The version that committed this job's segments, if any (after ``base_version``)."""
        prefix = f"segments/{SEGMENT_PREFIX}{self.job_id}-"
        for v in reversed(list_versions(self.root)):
            if v <= base_version:
                break
            try:
                m = read_manifest(self.root, v)
            except (OSError, ValueError):
                continue
            if any(s["path"].startswith(prefix) for s in m["files"]["segments"]):
                return v
        return None

    def _state(self):
        """This job's state: resumed from ``state.json`` or started afresh."""
        path = self._p("state.json")
        if os.path.exists(path):
            state = read_json(path)
            v = self._find_commit(state["base_version"])
            if v is not None:
                logger.info("ingest job %s had committed version %d before it was stopped",
                            self.job_id, v)
                state["committed_version"] = v
                return state
            if self._newest_version() == state["base_version"]:
                logger.info("resuming ingest job %s (%s)", self.job_id, self.job_dir)
                return state
            logger.warning("the index at %s changed since ingest job %s was interrupted; "
                           "starting the job over", self.root, self.job_id)
            self._cleanup(keep_record=False, keep_lock=True)
        return self._new_state(path)

    def _new_state(self, path):
        o = self.opts
        if IndexStore.exists(self.root):
            store = IndexStore.open(self.root)
            if store.kind not in ("ivfpq", "ivfflat") or not store.is_trained:
                raise ValueError(f"{self.root}: can append only to a trained IVF index; "
                                 f"it holds a {'trained' if store.is_trained else 'untrained'}"
                                 f" {store.kind} index")
            self._check_append_options(store.config)
            state = {"mode": "append", "base_version": store.version,
                     "id_base": store.next_id if self.plan.id_column is None else 0,
                     "codebooks_crc": store.manifest["files"]["codebooks"]["crc32"]}
        else:
            self._check_empty_dir()
            if o["codebooks"] is None and o["nlist"] is None:
                raise ValueError(f"no index at {self.root}: give nlist (and M) to train a new "
                                 "one, or codebooks= to reuse a trained model")
            state = {"mode": "create", "base_version": 0, "id_base": 0, "codebooks_crc": None}
        state.update({"job_id": self.job_id, "attempt": uuid.uuid4().hex[:8],
                      "created_at": time.time(), "blocks": len(self.plan.blocks),
                      "total_rows": self.plan.total_rows})
        for sub in ("", ITEMS_DIR, RANGES_DIR):
            os.makedirs(self._p(sub), exist_ok=True)
        write_json(path, state)
        return state

    def _check_append_options(self, cfg):
        """Appending uses the index's own model: refuse options that contradict it."""
        o = self.opts
        given = {"nlist": o["nlist"], "M": o["M"], "codebooks": o["codebooks"]}
        clash = [f"{k}={v!r}" for k, v in given.items()
                 if v is not None and (k == "codebooks" or cfg.get(k) != v)]
        if o["metric"] != "l2" and o["metric"] != cfg["metric"]:
            clash.append(f"metric={o['metric']!r}")
        if o["keep_vectors"] and o["keep_vectors"] != cfg.get("keep_vectors"):
            clash.append(f"keep_vectors={o['keep_vectors']!r}")
        if clash:
            raise ValueError(f"{self.root} holds an index; appending uses its own model "
                             f"(config {cfg}), so do not pass {', '.join(clash)}")

    def _check_empty_dir(self):
        if not os.path.isdir(self.root):
            return
        ours = {JOBS_DIR, "_manifests", "segments", "tombstones"}
        foreign = [n for n in os.listdir(self.root)
                   if n not in ours and not n.startswith("codebooks-")]
        if foreign:
            raise FileExistsError(f"{self.root} is a non-empty directory that is not a shardann "
                                  f"index (holds {sorted(foreign)[:5]})")

    def _cleanup(self, keep_record, keep_lock=False):
        if not os.path.isdir(self.job_dir):
            return
        for name in os.listdir(self.job_dir):
            if (keep_record and name == "committed.json") or (keep_lock and name == "lock"):
                continue
            p = self._p(name)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(p)
        for sub in ("", ITEMS_DIR, RANGES_DIR):
            if not keep_record:
                os.makedirs(self._p(sub), exist_ok=True)

    # -- stage helpers ---------------------------------------------------------------------
    def _bar(self, desc, total, initial=0):
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit="vec", unit_scale=True,
                    disable=not self.progress, file=sys.stderr, dynamic_ncols=True,
                    smoothing=0.05, mininterval=0.5)

    def _workers(self):
        import ray
        n = self.opts["num_workers"]
        if n is None:
            n = max(1, int(ray.cluster_resources().get("CPU", 1)))
        return n

    def _map(self, groups, fn, ctx, on_row):
        """Run ``fn`` with Ray Data, one task per group of units (block or range
        numbers) and at most one task per worker CPU; call ``on_row`` with each
        output row.

        Tasks (not actors) so that worker processes, with shardann imported and
        the kernels loaded, are reused from stage to stage; ``ctx`` (with the
        groups) is put in the object store once and cached per process
        (``job_context``). An exception from ``on_row`` stops the dataset and
        propagates.
        """
        import ray
        import ray.data

        if len(groups) == 0:
            return
        ctx = {**ctx, "groups": [np.asarray(g, np.int64) for g in groups]}
        dctx = ray.data.DataContext.get_current()
        saved = (dctx.enable_progress_bars, dctx.enable_operator_progress_bars)
        dctx.enable_progress_bars = False
        dctx.enable_operator_progress_bars = False
        quiet = logging.getLogger("ray.data")
        level = quiet.level
        if not logger.isEnabledFor(logging.DEBUG):
            quiet.setLevel(logging.ERROR)  # "Starting execution of Dataset ..." and the like
        try:
            ds = ray.data.from_items([{"group": i} for i in range(len(groups))],
                                     override_num_blocks=len(groups))
            ds = ds.map_batches(
                fn, batch_size=1, batch_format="numpy", num_cpus=1,
                compute=ray.data.TaskPoolStrategy(size=min(self._workers(), len(groups))),
                fn_kwargs={"ctx": [ray.put(ctx)]})
            rows = ds.iter_rows()
            try:
                for row in rows:
                    on_row(row)
            finally:
                close = getattr(rows, "close", None)
                if close is not None:
                    close()
        finally:
            dctx.enable_progress_bars, dctx.enable_operator_progress_bars = saved
            quiet.setLevel(level)

    def _timed(self, name, t):
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - t

    # -- model ---------------------------------------------------------------------------
    def _model(self, state):
        """The trained model (checkpointed in the job directory) and the check queries."""
        mpath = self._p("model.parquet")
        qpath = self._p("queries.npz")
        if os.path.exists(mpath) and os.path.exists(qpath):
            with open(mpath, "rb") as f:
                arrays, meta = _codebooks.decode(f.read(), mpath)
            with np.load(qpath) as z:
                self.queries = (z["rows"], z["x"])
            return build_model(meta["kind"], meta["config"], arrays)
        o = self.opts
        source = None
        if state["mode"] == "append":
            store = IndexStore.open(self.root, state["base_version"])
            source = (store.kind, store.config, store.trained_arrays())
        elif o["codebooks"] is not None:
            source = self._codebooks_source()[:3]
        if source is not None:
            kind, config, arrays = source
            config = dict(config)
            if kind == "ivfpq" and state["mode"] == "create":
                config["keep_vectors"] = o["keep_vectors"] or False
            model = build_model(kind, config, arrays)
            if model.d != self.plan.d:
                raise ValueError(f"the model has d={model.d} but the inputs have "
                                 f"d={self.plan.d}")
            _, queries = self._sample(0, model.nlist)
        else:
            model = self._new_model()
            sample, queries = self._sample(self._sample_size(model.nlist), model.nlist)
            t = time.perf_counter()
            logger.info("training %r on %d vectors", model, sample.shape[0])
            model.train(sample)
            del sample
            self._timed("train", t)
        self.queries = queries
        buf = _codebooks.encode(model._trained_arrays(), model.kind, model.get_config(),
                                FORMAT_VERSION)
        rows, x = queries
        replace_into(qpath, lambda f: np.savez(f, rows=rows, x=x))
        replace_into(mpath, lambda f: f.write(buf))  # last: the model stage is done
        return model

    def _new_model(self):
        from ..index.ivf import IVFFlatIndex, IVFPQIndex

        o = self.opts
        if o["M"] is None:
            return IVFFlatIndex(self.plan.d, o["nlist"], o["metric"], seed=o["seed"],
                                niter=o["niter"])
        return IVFPQIndex(self.plan.d, o["nlist"], o["M"], o["nbits"], o["metric"],
                          seed=o["seed"], opq=o["opq"], keep_vectors=o["keep_vectors"] or False,
                          niter=o["niter"], pq_niter=o["pq_niter"])

    def _sample_size(self, nlist):
        s = self.opts["sample_size"]
        if s is None:
            s = min(256 * nlist, max(nlist, SAMPLE_MAX_BYTES // (4 * self.plan.d)))
        return int(min(s, max(0, self.plan.total_rows - self.opts["spot_check"])))

    def _sample(self, size, nlist):
        """Read a uniform sample of ``size`` rows and the disjoint check queries.

        Returns ``(sample float32 (m, d), (query rows int64, queries float32))``.
        """
        t = time.perf_counter()
        total = self.plan.total_rows
        nq = min(self.opts["spot_check"], max(0, total - size)) if total else 0
        if size and size < nlist:
            raise ValueError(f"training needs at least nlist={nlist} vectors; the inputs hold "
                             f"{total} rows (sample_size={size})")
        drawn = draw_rows(total, size + nq, max(1, SAMPLE_RUN_BYTES // (4 * self.plan.d)),
                          np.random.default_rng(self.opts["seed"]))
        qrows = np.sort(drawn[:nq])
        drawn = np.sort(drawn)
        starts = self.plan.block_offsets()
        ends = starts + np.array([b.stop - b.start for b in self.plan.blocks], np.int64)
        lo = np.searchsorted(drawn, starts)
        hi = np.searchsorted(drawn, ends)
        todo = np.flatnonzero(hi > lo)
        ctx = self._ctx_common(None)
        ctx["drawn"] = drawn
        rows_parts, x_parts = [], []
        bar = self._bar("sample", int((ends - starts)[todo].sum()))
        try:
            def on_row(row):
                if row["error"]:
                    raise InputError(row["error"])
                rows_parts.append(row["rows"])
                x_parts.append(row["x"])
                b = self.plan.blocks[int(row["block"])]
                bar.update(b.stop - b.start)

            # the drawn rows are a small part of each block and their reads mostly wait
            # on the disk: the driver reads them with a few threads
            pool = ThreadPoolExecutor(SAMPLE_THREADS, thread_name_prefix="shardann-sample")
            try:
                for row in pool.map(lambda b: sample_block(ctx, int(b)), todo):
                    on_row(row)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            bar.close()
        rows = np.concatenate(rows_parts) if rows_parts else np.zeros(0, np.int64)
        x = np.concatenate(x_parts) if x_parts else np.zeros((0, self.plan.d), np.float32)
        order = np.argsort(rows)
        rows, x = rows[order], x[order]
        is_q = np.isin(rows, qrows)
        self._timed("sample", t)
        if size:
            logger.info("sampled %d training rows and %d check rows from %d blocks",
                        int((~is_q).sum()), int(is_q.sum()), todo.size)
        return x[~is_q], (rows[is_q], np.ascontiguousarray(x[is_q]))

    def _ctx_common(self, model):
        o = self.opts
        ctx = {"plan": self.plan, "skip_bad_rows": o["skip_bad_rows"], "threads": 1,
               "id_base": 0, "root": self.root, "job_dir": self.job_dir, "job_id": self.job_id}
        if model is None:  # sampling needs no model; give a trivial one
            ctx.update(kind=None)
        else:
            ctx.update(kind=model.kind, config=model.get_config(),
                       arrays=model._trained_arrays(), nlist=model.nlist, metric=model.metric)
        return ctx

    # -- encode ----------------------------------------------------------------------------
    def _encode(self, state, model):
        t = time.perf_counter()
        nblocks = len(self.plan.blocks)
        done = [b for b in range(nblocks) if os.path.exists(block_marker(self.job_dir, b))]
        todo = sorted(set(range(nblocks)) - set(done))
        self.resumed_blocks = len(done)
        if done:
            logger.info("ingest job %s: %d of %d blocks were done by an earlier run",
                        self.job_id, len(done), nblocks)
        qrows, qx = self.queries
        ctx = self._ctx_common(model)
        ctx.update(id_base=state["id_base"], k=self.opts["spot_check_k"],
                   queries=model._prepare(qx) if qx.shape[0] else None)
        sizes = np.array([b.stop - b.start for b in self.plan.blocks], np.int64)
        bar = self._bar("encode", int(sizes.sum()), int(sizes[done].sum()) if done else 0)
        try:
            def on_row(row):
                if row["error"]:
                    raise InputError(row["error"])
                bar.update(int(sizes[int(row["block"])]))
                crash_point("ingest.block_done")

            self._map(task_groups(todo, self._workers(), ENCODE_TASK_BLOCKS), encode_batch,
                      ctx, on_row)
        finally:
            bar.close()
        agg = self._aggregate(model)
        logger.info("encode: worker seconds summed over blocks: %s",
                    {k: round(v, 1) for k, v in agg["worker_seconds"].items()})
        crash_point("ingest.encoded")
        self._timed("encode", t)
        return agg

    def _aggregate(self, model):
        """Totals over every block's marker, in block order."""
        nlist = model.nlist
        k = self.opts["spot_check_k"]
        agg = {"counts": np.zeros(nlist, np.int64), "rows": 0, "skipped": 0, "examples": [],
               "runs": [], "intervals": [], "scratch": 0,
               "worker_seconds": {"read": 0.0, "encode": 0.0, "write": 0.0}}
        gt = None
        for b in range(len(self.plan.blocks)):
            path = block_marker(self.job_dir, b)
            if not os.path.exists(path):
                raise RuntimeError(f"{path}: block {b} has no marker after the encode stage")
            meta, counts, gk, gi = read_block_marker(path)
            agg["counts"] += counts
            agg["rows"] += meta["rows"]
            agg["skipped"] += meta["skipped"]
            agg["scratch"] += meta["bytes"]
            for key, v in meta.get("seconds", {}).items():
                agg["worker_seconds"][key] += v
            room = 20 - len(agg["examples"])
            if room > 0:
                agg["examples"] += meta["examples"][:room]
            agg["runs"] += [p["name"] for p in meta["parts"]]
            if meta["min_id"] is not None:
                agg["intervals"].append((meta["min_id"], meta["max_id"], b,
                                         [p["name"] for p in meta["parts"]]))
            if gk.size:
                gt = (gk, gi) if gt is None else merge_results([gt, (gk, gi)], k, "l2")
        agg["gt"] = gt
        return agg

    # -- ids ----------------------------------------------------------------------------------
    def _check_ids(self, state, agg, store=None):
        """With an id column: no id twice among the new rows, nor already in the index."""
        if self.plan.id_column is None:
            return
        t = time.perf_counter()
        runs_dir = self._p(ITEMS_DIR)

        def ids_of(names):
            parts = [np.load(os.path.join(runs_dir, f"{n}.ids.npy"), mmap_mode="r")
                     for n in names]
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)

        ivs = sorted(agg["intervals"])
        cluster, hi = [], None
        clusters = []
        for iv in ivs:
            if cluster and iv[0] <= hi:
                cluster.append(iv)
                hi = max(hi, iv[1])
            else:
                if cluster:
                    clusters.append(cluster)
                cluster, hi = [iv], iv[1]
        if cluster:
            clusters.append(cluster)
        for cl in clusters:
            if len(cl) == 1 and len(cl[0][3]) <= 1:
                continue  # one part: checked by its worker
            ids = np.sort(ids_of([n for iv in cl for n in iv[3]]))
            rep = ids[1:][ids[1:] == ids[:-1]]
            if rep.size:
                x = int(rep[0])
                where = [self.plan.files[self.plan.blocks[iv[2]].file].path for iv in cl
                         if x in ids_of(iv[3])]
                raise InputError(f"id {x} appears more than once in the inputs "
                                 f"({', '.join(sorted(set(where)))}); ids must be unique")
        if store is None and state["mode"] == "append":
            store = IndexStore.open(self.root, state["base_version"])
        if store is not None:
            segs = store.manifest["files"]["segments"]
            for lo, hi, b, names in ivs:
                near = [s for s in segs if s["rows"] and s["min_id"] <= hi and s["max_id"] >= lo]
                if not near:
                    continue
                live = np.concatenate([p["id"] for p in store._live_rows(near, names=[])]
                                      or [np.zeros(0, np.int64)])
                new = ids_of(names)
                hit = np.isin(new, live)
                if hit.any():
                    f = self.plan.files[self.plan.blocks[b].file].path
                    raise InputError(f"{f}: id {int(new[hit][0])} is already in the index at "
                                     f"{self.root} ({int(hit.sum())} such ids in this block)")
        self._timed("check_ids", t)

    # -- merge ----------------------------------------------------------------------------------
    def _merge(self, state, model, agg):
        t = time.perf_counter()
        columns = {k: (int(w), np.dtype(dt)) for k, (w, dt) in model._columns().items()}
        spec = column_spec(model._columns())
        rpath = self._p("ranges.json")
        if os.path.exists(rpath):
            ranges = [tuple(r) for r in read_json(rpath)]
        else:
            row_bytes = 12 + sum(w * dt.itemsize for w, dt in columns.values())
            total_bytes = int(agg["counts"].sum()) * row_bytes
            target = int(min(self.opts["merge_bytes"],
                             max(16 << 20, total_bytes // max(1, 2 * self._workers()))))
            ranges = plan_ranges(agg["counts"], row_bytes, target, _MAX_SEGMENT_ROWS)
            write_json(rpath, [list(r) for r in ranges])
        done = [r for r in range(len(ranges)) if os.path.exists(range_marker(self.job_dir, r))]
        todo = sorted(set(range(len(ranges))) - set(done))
        ctx = {"root": self.root, "job_dir": self.job_dir, "job_id": self.job_id,
               "attempt": state["attempt"], "ranges": ranges, "counts": agg["counts"],
               "spec": spec, "columns": columns, "runs": agg["runs"]}
        os.makedirs(os.path.join(self.root, "segments"), exist_ok=True)
        rows_of = [int(agg["counts"][a:b + 1].sum()) for a, b in ranges]
        bar = self._bar("merge", int(sum(rows_of)), int(sum(rows_of[r] for r in done)))
        try:
            def on_row(row):
                bar.update(int(row["rows"]))
                crash_point("ingest.range_done")

            self._map([[r] for r in todo], merge_batch, ctx, on_row)
        finally:
            bar.close()
        entries = [read_json(range_marker(self.job_dir, r)) for r in range(len(ranges))]
        self._timed("merge", t)
        return entries

    # -- commit ---------------------------------------------------------------------------------
    def _commit(self, state, model, entries):
        t = time.perf_counter()
        crash_point("ingest.before_commit")
        if state["mode"] == "create":
            store = IndexStore.create_from_segments(self.root, model, entries)
        else:
            for attempt in range(5):
                store = IndexStore.open(self.root)
                if store.version != state["base_version"]:
                    cb = store.manifest["files"]["codebooks"]
                    if cb is None or cb["crc32"] != state["codebooks_crc"]:
                        raise RuntimeError(
                            f"the model of {self.root} changed (version {store.version}) while "
                            "this ingest ran; its codes no longer fit. Rerun the ingest.")
                    self._check_new_commits(state, store, entries)
                txn = store.transaction()
                txn.add_segments(entries)
                try:
                    store = txn.commit()
                    break
                except CommitConflictError:
                    if attempt == 4:
                        raise
                    logger.info("another writer committed first; retrying the commit")
        crash_point("ingest.committed")
        self._timed("commit", t)
        logger.info("committed version %d of %s", store.version, self.root)
        return store

    def _check_new_commits(self, state, store, entries):
        """Ids of rows committed since the job started must not meet the job's ids."""
        base = read_manifest(self.root, state["base_version"])
        old = {s["path"] for s in base["files"]["segments"]}
        new = [s for s in store.manifest["files"]["segments"] if s["path"] not in old]
        if not new:
            return
        lo = min(e["min_id"] for e in entries)
        hi = max(e["max_id"] for e in entries)
        near = [s for s in new if s["rows"] and s["min_id"] <= hi and s["max_id"] >= lo]
        if not near:
            return
        theirs = np.concatenate([p["id"] for p in store._live_rows(near, names=[])]
                                or [np.zeros(0, np.int64)])
        view = IndexStore(self.root, {**store.manifest, "files": {
            **store.manifest["files"], "segments": entries, "tombstones": []}})
        ours = np.concatenate([p["id"] for p in view._live_rows(entries, names=[])]
                              or [np.zeros(0, np.int64)])
        if np.isin(ours, theirs).any():
            raise RuntimeError(f"{self.root} gained rows with this job's ids while it ran; "
                               "rerun the ingest (it will start over with fresh ids)")

    # -- after the commit ------------------------------------------------------------------
    def _after_commit(self, state, store, agg=None):
        prefix = f"segments/{SEGMENT_PREFIX}{self.job_id}-"
        ours = [s for s in store.manifest["files"]["segments"] if s["path"].startswith(prefix)]
        model = store.load_index(lists=np.zeros(0, np.int64))
        if agg is None:
            try:
                self._model(state)
                agg = self._aggregate(model)
            except (OSError, RuntimeError, ValueError) as exc:
                logger.info("no recall check: the job's records are gone (%s)", exc)
                self.queries = (np.zeros(0, np.int64), np.zeros((0, model.d), np.float32))
        t = time.perf_counter()
        recall, nprobe = None, 0
        qrows, qx = self.queries
        if agg is not None and agg["gt"] is not None and qx.shape[0]:
            nprobe = self.opts["spot_check_nprobe"] or min(16, model.nlist)
            nprobe = min(nprobe, model.nlist)
            recall = _spot_check(store, ours, model, qx, agg["gt"][1],
                                 self.opts["spot_check_k"], nprobe)
        self._timed("check", t)
        bytes_written = int(sum(s["size"] for s in ours))
        if state["mode"] == "create" and store.manifest["files"]["codebooks"]:
            bytes_written += int(store.manifest["files"]["codebooks"]["size"])
        skipped_files = [[f.path, f.skipped] for f in self.plan.files if f.skipped]
        summary = IngestSummary(
            path=self.root, version=store.version, job_id=self.job_id, mode=state["mode"],
            vectors=int(sum(s["rows"] for s in ours)),
            skipped_rows=int(agg["skipped"]) if agg else 0, skipped_files=skipped_files,
            bad_rows=list(agg["examples"]) if agg else [],
            seconds=time.perf_counter() - self.t0, stage_seconds=dict(self.stage_seconds),
            worker_seconds={k: round(v, 2) for k, v in agg["worker_seconds"].items()}
            if agg else {},
            bytes_written=bytes_written, scratch_bytes=int(agg["scratch"]) if agg else 0,
            blocks=len(self.plan.blocks), resumed_blocks=getattr(self, "resumed_blocks", 0),
            segments=len(ours), recall=recall, recall_k=self.opts["spot_check_k"],
            recall_nprobe=nprobe, recall_queries=int(qx.shape[0]),
            already_committed=bool(state.get("committed_version")))
        write_json(self._p("committed.json"), summary.to_dict())
        self._cleanup(keep_record=True)
        # one line: the caller has the summary (the command prints all of it)
        logger.info("ingest job %s: %d vectors into %s, version %d, in %.1f s", self.job_id,
                    summary.vectors, self.root, summary.version, summary.seconds)
        return summary


def task_groups(units, workers, most):
    """Cut ``units`` into the groups that make Ray Data tasks, in order.

    Ray Data takes 0.1-0.2 s from one task's end to the next one's start on a
    worker (its scheduling loop polls): a task of several units pays that once.
    Groups shrink to one unit as the work runs out (guided self-scheduling), so
    the workers still finish together, and hold at most ``most`` units so that
    progress is reported often.
    """
    units = list(units)
    groups, i = [], 0
    while i < len(units):
        size = max(1, min(most, (len(units) - i) // (2 * max(1, workers))))
        groups.append(units[i:i + size])
        i += size
    return groups


def _spot_check(store, ours, model, queries, gt_ids, k, nprobe):
    """recall@k of the queries searched in this job's segments, against exact top-k ids."""
    m = store.manifest
    view = IndexStore(store.path, {**m, "files": {**m["files"], "segments": ours,
                                                   "tombstones": []},
                                   "ntotal": int(sum(s["rows"] for s in ours))})
    q = model._prepare(queries)
    dis0, probes = model.probe(q, nprobe)
    lists = np.unique(probes)
    sizes = view.list_sizes()
    cols = view.columns
    row_bytes = 8 + sum(c["width"] * np.dtype(c["dtype"]).itemsize for c in cols.values())
    parts, chunk, acc = [], [], 0
    for li in lists.tolist() + [None]:
        if li is not None and (not chunk or acc + sizes[li] * row_bytes <= CHECK_BYTES):
            chunk.append(li)
            acc += sizes[li] * row_bytes
            continue
        sub = view.load_index(lists=np.array(chunk, np.int64))
        chosen = np.where(np.isin(probes, chunk), probes, -1)
        keys, ids = sub.scan(q, dis0, chosen, k)
        parts.append((keys, ids))
        del sub
        chunk, acc = ([li], sizes[li] * row_bytes) if li is not None else ([], 0)
    _, I = merge_results(parts, k, "l2")
    return recall_at_k(I, gt_ids, k) if (gt_ids >= 0).any() else None


# -- two steps: check, then run ------------------------------------------------------------------
class IngestJob:
    """An ingest job whose arguments and inputs are checked, ready to :meth:`run`.

    ``IngestJob(path, inputs, **options).run()`` is ``ingest(path, inputs, **options)``
    in two steps: the constructor takes the same arguments, checks all of them and
    plans the inputs (file metadata only) on the driver without Ray, so a caller can
    tell bad arguments apart from failures of the job and start Ray only when they
    are fine — as ``shardann ingest`` does.

    Raises
    ------
    TypeError, ValueError for bad arguments; :class:`~shardann.errors.InputError`
    (a ``ValueError``) naming a bad input file; ``FileExistsError`` if ``path``
    holds other files.
    """

    def __init__(self, path, inputs, **options):
        import inspect

        bound = inspect.signature(ingest).bind(path, inputs, **options)
        bound.apply_defaults()
        self._job = _Job(**bound.arguments)
        self.path = self._job.root
        self.job_id = self._job.job_id

    def run(self):
        """Run the job on the connected Ray, or on a local Ray started and stopped for it.

        Returns an :class:`IngestSummary`; raises :class:`~shardann.errors.InputError` on
        bad input rows (nothing committed) and :class:`~shardann.errors.IngestJobBusyError`
        if the same job is running in another process.
        """
        return _run_on_ray(self._job.run)
