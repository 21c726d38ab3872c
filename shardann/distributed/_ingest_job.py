"""Large offline ingest on Ray Data: :func:`ingest` and ``shardann ingest``.

Builds an index from tens of millions to billions of embeddings in Parquet
(a file, a directory or a glob; the embedding column ``fixed_size_list<float>``,
``list<float>`` or float32 bytes; an optional int64 id column), ``.npy``
(memory-mapped) or ``.fvecs`` / ``.bvecs`` / ``.ivecs`` files — local, or on
any filesystem URI pyarrow reads (``s3://bucket/emb/*.parquet``, ``gs://``;
``_ingest_fs``) — or from a ``ray.data.Dataset`` (the output of an embedding
``map_batches``, ``ray.data.read_sql``; staged once as local Parquet in the job
directory, ``_ingest_source``) — or appends such inputs to an existing index
with its codebooks, as a new version.

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
   appended to, or of ``codebooks=``); its k-means iterations are logged at
   INFO. The model is ``ray.put`` once.
4. **encode**: Ray Data ``map_batches`` over the blocks, at most one task
   per CPU, each of up to four blocks (one at the end, so the workers finish
   together); for each block it assigns lists and encodes with the core
   index's kernels, writes its rows sorted by list as a run in
   ``INDEX/_ingest/<job>/`` plus a done-marker, and finds the exact top-k of
   the check queries and of the calibration queries among its rows.
   It first asks the kernel for the bytes of its block and of the next two
   (``posix_fadvise(WILLNEED)``), so that the disk reads while the CPU encodes.
5. **merge**: one worker per list range gathers that range from every run
   (memory-mapped) into one store segment, row groups cut at list boundaries.
6. **commit**: one manifest naming all new segments and the calibration set
   (the blocks' exact top-k of its queries merged; ``_ingest_calibration``) —
   the only moment the index changes. Then the recall spot check and the summary.

Parquet embedding columns of float32 (``list`` or ``fixed_size_list`` with d
values in every row) are read by ``shardann._parquet``, which checks the
repetition and definition levels run by run and copies the values, about 3x
faster than Arrow's nested-column reader; a row group it does not handle
(nulls, rows of other lengths, other encodings or codecs) is read with Arrow,
which also names the bad rows.

Memory stays bounded: a worker holds one part of at most ``block_rows`` rows
(encode) or one list range of at most ``merge_bytes`` (merge); the driver
holds the training sample and per-list counts, never the data.

The index may be a directory or a store URI (``s3://bucket/idx``, ``gs://``,
``az://``): the merge workers then upload the segments, and the commit puts
the codebooks and the manifest (create-if-absent), as any commit to an object
store does. The job's scratch (runs, markers, ``state.json``) is always a
filesystem directory: ``INDEX/_ingest/<job>/`` for a directory index, else
under ``work_dir`` (default ``~/.cache/shardann/ingest/<store>/``, on this
machine only: the tasks then run on the driver's node; ``_ingest_state``).

A job is named by a hash of its inputs (paths, sizes, modification times)
and options. Killed and started again with the same arguments, it skips the
blocks and ranges whose markers exist and resumes; if the index changed in
between, it starts over. Segment files carry the job's name, so a job that
was committed before it was killed is recognised and not committed twice.
Until the commit the index is its old version (or absent); uncommitted
segment files are debris that ``IndexStore.vacuum`` removes, and
:func:`clean_ingest_jobs` removes abandoned job directories.

The job is spread over modules of one task each; each imports only modules
above it in this list:

- ``_ingest_fs``: list and open inputs on filesystem URIs (pyarrow filesystems).
- ``_ingest_plan / _ingest_read``: plan the inputs, read blocks (files, Parquet, NumPy, vecs).
- ``_ingest_work``: the work Ray Data workers do (sample, encode, merge a unit).
- ``_ingest_source``: a ``ray.data.Dataset`` input staged as Parquet; ``sample_dataset``.
- ``_ingest_state``: the job directory, its lock, ``state.json``, resume, cleanup.
- ``_ingest_calibration``: the job's calibration set (its draw, checkpoint, file).
- ``_ingest_runtime``: what the stages share (``JobRun``: progress, timings, Ray Data).
- ``_ingest_model`` (sample, train), ``_ingest_encode`` (encode, check_ids),
  ``_ingest_merge``, ``_ingest_commit``, ``_ingest_check`` (spot check): the stages.
- ``_ingest_job`` (this module): :func:`ingest`, :class:`IngestJob`,
  :class:`IngestSummary`; it checks the options and runs the stages in order.
"""


import dataclasses
import hashlib
import json
import logging
import os
import time

import numpy as np

from .._text import format_bytes as _human
from .._validation import check_int
from ..errors import InputError
from ..filters import as_attribute_table
from ..index import DEFAULT_CALIBRATION, load_index
from ..storage import IndexStore, location
from ._ingest_calibration import calibration_file
from ._ingest_check import spot_check
from ._ingest_commit import commit_stage
from ._ingest_encode import aggregate, check_ids, encode_stage
from ._ingest_fs import is_remote
from ._ingest_merge import merge_stage
from ._ingest_model import codebooks_source, model_stage, new_model
from ._ingest_plan import check_attribute_columns, default_block_rows, plan_inputs
from ._ingest_runtime import JobRun, run_on_ray
from ._ingest_source import dataset_dimension, dataset_job_id, is_dataset, stage_dataset
from ._ingest_state import STATE, JobScratch, check_empty_dir, clean_ingest_jobs, jobs_dir
from ._ingest_work import SEGMENT_PREFIX, STAGE_DIR

logger = logging.getLogger(__name__)

__all__ = ["IngestJob", "IngestSummary", "clean_ingest_jobs", "ingest"]

#: a merge range holds about this many bytes (codes, ids, vectors)
MERGE_BYTES = 128 << 20


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
            order = ("stage", "sample", "train", "encode", "check_ids", "merge", "calibration",
                     "commit", "check")
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
def ingest(path, inputs, *, column="embedding", id_column=None, attributes=None, d=None,
           nlist=None, M=None,
           nbits=8, metric="l2", opq=False, keep_vectors=False, pca=None, codebooks=None,
           calibration=None, sample_size=None, seed=0, niter=25, pq_niter=25, skip_bad_rows=False,
           block_rows=None, num_workers=None, merge_bytes=MERGE_BYTES, spot_check=100,
           spot_check_k=10, spot_check_nprobe=None, progress=True, job_id=None,
           work_dir=None, storage_options=None):
    """Build (or append to) the index at ``path`` from files of vectors, on Ray Data.

    Parameters
    ----------
    path : str, the index: a directory, or a store URI (``s3://bucket/idx``,
        ``gs://``, ``az://``, ``file://``; see :func:`shardann.storage.location`).
        If it holds an index, the inputs are
        appended with its codebooks (no retraining) as a new version; the
        index parameters below must then be left unset (or match).
    inputs : str or list of str — Parquet files, directories or globs,
        ``.npy``, ``.fvecs``, ``.bvecs``, ``.ivecs`` files; local paths or URIs
        (``s3://bucket/emb/*.parquet``, read with pyarrow's filesystems and the
        environment's credentials; a job is named by the objects' paths, sizes
        and modification times, so it resumes) — or a ``ray.data.Dataset`` with
        the vector column ``column`` (fixed-size list, list of floats, float32
        binary or a Ray tensor column) and optionally ``id_column``; it is run
        once, in order, and staged as Parquet in the job directory (bounded
        memory; local disk of about its float bytes until the job ends). A
        Dataset job resumes only when ``job_id`` names it.
    column : Parquet (or Dataset) column holding the vectors: ``fixed_size_list<float>``,
        ``list<float>`` or binary (little-endian float32).
    id_column : Parquet (or Dataset) int64 column of ids; default ids are the global row
        order (plus the index's ``next_id`` when appending), stable across runs.
    attributes : list of Parquet (or Dataset, or SQL query) column names to store
        beside the vectors as attributes (filters, ``columns=`` in results);
        every input file must hold them with the same types. Appending to an
        index with attributes needs the same columns (their values are cast
        to the index's types); without ``attributes`` the new rows get nulls.
        Attributes appended to an index without any become its columns, and
        the rows it held have nulls (as with ``index.add``).
    d : expected dimension (default: the first file's).
    nlist, M, nbits, metric, opq, keep_vectors, seed, niter, pq_niter : the
        new index, as for :class:`shardann.IVFPQIndex` (``M=None``: IVF-Flat).
        ``keep_vectors`` True/"float32" or "float16" keeps raw vectors for refine.
    pca : int or None, project the vectors onto their ``pca`` principal
        directions (learnt on the training sample) before the coarse quantizer
        and the PQ, as :class:`shardann.IVFPQIndex`'s ``pca`` (a multiple of
        ``M``; with ``keep_vectors`` refine re-ranks on the original vectors).
    codebooks : path of an index (or of its ``codebooks-*.parquet`` file)
        whose trained model to reuse instead of training.
    calibration : int >= 0, queries of the new index's calibration set (for
        ``estimate_recall``, ``shardann info --recall`` and the service's
        recall estimate; 0: none), as :class:`shardann.IVFPQIndex`'s
        ``calibration`` (default 1,000, or the ``codebooks`` index's). They
        are drawn from the input rows as a local ``index.add`` of the same rows
        draws them (seeded by ``seed``), and the encode workers find their
        exact neighbours among every block; the set then equals a local
        index's. Appending brings the index's set up to date (the new rows'
        neighbours merged in), or keeps none when the index has rows but no set.
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
    work_dir : directory for the job's scratch (encode runs, markers, state for
        resume; about the size of the new segments until the commit). Default:
        ``path/_ingest/`` for a directory store; for an object store
        ``~/.cache/shardann/ingest/<store>/`` on this machine, and then the
        job's tasks run on this node only. On a multi-node cluster pass a
        directory every node mounts to use all nodes. A killed job resumes when
        run again with the same ``work_dir``.
    storage_options : dict, credentials and settings of an object store
        ``path`` (see :func:`shardann.storage.location`; default the
        environment's); they travel to the Ray workers in memory, never to the
        store or the logs.

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
    job = _Job(path, inputs, column=column, id_column=id_column, attributes=attributes, d=d,
               nlist=nlist, M=M,
               nbits=nbits, metric=metric, opq=opq, keep_vectors=keep_vectors, pca=pca,
               codebooks=codebooks, calibration=calibration, sample_size=sample_size,
               seed=seed, niter=niter,
               pq_niter=pq_niter, skip_bad_rows=skip_bad_rows, block_rows=block_rows,
               num_workers=num_workers, merge_bytes=merge_bytes, spot_check=spot_check,
               spot_check_k=spot_check_k, spot_check_nprobe=spot_check_nprobe,
               progress=progress, job_id=job_id, work_dir=work_dir,
               storage_options=storage_options)
    return run_on_ray(job.run)



# -- the job -----------------------------------------------------------------------------------
def _inside(path, loc):
    """Whether the input file ``path`` (a local path or a URI) lies inside the
    store at location ``loc``."""
    if loc.local:
        return not is_remote(path) and os.path.commonpath([path, loc.root]) == loc.root
    return path.startswith(loc.root.rstrip("/") + "/")


def job_attribute_schema(given, have, root):
    """The attribute columns a job stores: the inputs' (``given``), or when
    appending to an index that has attribute columns (``have``), those; the
    inputs must then name the same columns, or none (their rows get nulls).
    Attributes appended to an index without become its columns, the rows it
    held reading as nulls (as with ``index.add``). Raises ``ValueError``
    naming a missing or extra column, or one of a type attributes cannot have."""
    if have is None:
        # the types the index holds (e.g. large_string as string)
        return None if given is None else as_attribute_table(given.empty_table(), 0).schema
    if given is not None and set(given.names) != set(have.names):
        missing = sorted(set(have.names) - set(given.names))
        extra = sorted(set(given.names) - set(have.names))
        what = f"missing {missing[0]!r}" if missing else f"extra column {extra[0]!r}"
        raise ValueError(f"{root} has the attribute columns {have.names}; the inputs' "
                         f"attributes must be the same ({what})")
    return have


class _Job:
    """One ingest job: its options checked and its inputs planned (in the
    constructor, without Ray); :meth:`run` runs the stages in order."""

    def __init__(self, path, inputs, *, progress, work_dir, storage_options, **opts):
        t0 = time.perf_counter()
        # ValueError for an unsupported scheme; credentials stay in the location
        loc = self.loc = location(path, storage_options)
        if not loc.local:
            loc.check_writable()  # a backend that cannot commit: say so before the work
        root = self.root = loc.root
        self.opts = o = opts
        for name in ("spot_check", "spot_check_k", "seed", "niter", "pq_niter"):
            check_int(name, o[name], low=0 if name != "spot_check_k" else 1)
        for name in ("nlist", "M", "d", "pca", "sample_size", "block_rows", "num_workers",
                     "spot_check_nprobe"):
            if o[name] is not None:
                check_int(name, o[name], low=1)
        if o["calibration"] is not None:
            check_int("calibration", o["calibration"], low=0)
        if o["keep_vectors"] is True:
            o["keep_vectors"] = "float32"
        existing = IndexStore.open(loc).config if IndexStore.exists(loc) else None
        d = o["d"]
        if existing is not None:
            d = existing["d"]
            if o["d"] is not None and o["d"] != d:
                raise ValueError(f"d={o['d']} but the index at {root} has d={d}")
        elif o["codebooks"] is not None:
            d = codebooks_source(o["codebooks"])[1]["d"]
        self.existing, self.d = existing, d
        # a Dataset is staged (executed) when the job runs; files are planned now
        self.dataset = inputs if is_dataset(inputs) else None
        if self.dataset is None:
            self.plan = plan_inputs(inputs, column=o["column"], id_column=o["id_column"], d=d,
                                    block_rows=o["block_rows"],
                                    skip_bad_files=o["skip_bad_rows"],
                                    attributes=o["attributes"])
            inside = [f.path for f in self.plan.files if _inside(f.path, loc)]
            if inside:
                raise InputError(f"{inside[0]}: an input inside the index directory {root}")
            self._check_model_options(self.plan.d)
            # attributes that cannot be stored are refused before Ray starts
            job_attribute_schema(self.plan.attribute_schema,
                                 None if existing is None
                                 else IndexStore.open(loc).attribute_schema, root)
            self.job_id = o["job_id"] or self._job_hash()
        else:
            self.plan = None
            o["attributes"] = check_attribute_columns(o["attributes"], o["column"],
                                                      o["id_column"])
            self._check_model_options(d or dataset_dimension(self.dataset, o["column"]))
            self.job_id = o["job_id"] or dataset_job_id()
        jobs = jobs_dir(loc, work_dir)
        self.scratch = JobScratch(loc, jobs, self.job_id)
        self.job_dir = self.scratch.dir
        # the default scratch of an object store is on this machine only
        self.run_state = JobRun(loc, self.job_id, self.plan, opts, self.scratch, progress,
                                t0=t0, local_scratch=not loc.local and work_dir is None)

    def _check_model_options(self, d):
        """The parameters are checked before anything runs (``d`` None: not known yet)."""
        o = self.opts
        if self.existing is not None:
            self._check_append_options(self.existing)
        elif o["codebooks"] is None and o["nlist"] is not None and d is not None:
            new_model(d, o)

    def _stage(self):
        """Stage the Dataset input as Parquet in the job directory and plan it (driver)."""
        o = self.opts
        t = time.perf_counter()
        run = self.run_state
        bar = run.bar("stage", None)
        try:
            rows = o["block_rows"] or default_block_rows(self.d or 128)
            files = stage_dataset(self.dataset, self.scratch.path(STAGE_DIR), column=o["column"],
                                  id_column=o["id_column"], attributes=o["attributes"],
                                  rows_per_file=rows, bar=bar)
        finally:
            bar.close()
        self.plan = run.plan = plan_inputs(
            files, column=o["column"], id_column=o["id_column"], d=self.d,
            block_rows=o["block_rows"], skip_bad_files=o["skip_bad_rows"],
            attributes=o["attributes"])
        self._check_model_options(self.plan.d)
        run.timed("stage", t)

    def _job_hash(self):
        o = self.opts
        keys = ("nlist", "M", "nbits", "metric", "opq", "keep_vectors", "sample_size", "seed",
                "niter", "pq_niter", "skip_bad_rows", "spot_check", "spot_check_k")
        ident = {"inputs": self.plan.identity(), **{k: o[k] for k in keys}}
        for name in ("pca", "calibration"):  # only when set: older jobs keep their names
            if o[name] is not None:
                ident[name] = o[name]
        if o["codebooks"] is not None:
            ident["codebooks"] = codebooks_source(o["codebooks"])[3]
        text = json.dumps(ident, sort_keys=True, default=str).encode()
        return hashlib.sha256(text).hexdigest()[:16]

    def _check_append_options(self, cfg):
        """Appending uses the index's own model: refuse options that contradict it."""
        o = self.opts
        given = {"nlist": o["nlist"], "M": o["M"], "pca": o["pca"], "codebooks": o["codebooks"],
                 "calibration": o["calibration"]}
        defaults = {"calibration": DEFAULT_CALIBRATION}  # (the config leaves defaults out)
        clash = [f"{k}={v!r}" for k, v in given.items()
                 if v is not None and (k == "codebooks" or cfg.get(k, defaults.get(k)) != v)]
        if o["metric"] != "l2" and o["metric"] != cfg["metric"]:
            clash.append(f"metric={o['metric']!r}")
        if o["keep_vectors"] and o["keep_vectors"] != cfg.get("keep_vectors"):
            clash.append(f"keep_vectors={o['keep_vectors']!r}")
        if clash:
            raise ValueError(f"{self.root} holds an index; appending uses its own model "
                             f"(config {cfg}), so do not pass {', '.join(clash)}")

    # -- driver --------------------------------------------------------------------------
    def run(self):
        scratch, run = self.scratch, self.run_state
        record = scratch.record()
        if record is not None:
            return self._finished(record)
        with scratch.lock():
            record = scratch.record()
            if record is not None:  # finished by another process meanwhile
                return self._finished(record)
            scratch.warn_abandoned()
            if not os.path.exists(scratch.path(STATE)):
                found = scratch.committed_in_store()
                if found is not None:  # committed from another work directory
                    return self._committed_elsewhere(*found)
            if self.dataset is not None:
                self._stage()
            state = scratch.resume_or_start(self._fresh_state)
            run.attribute_schema = self._attribute_schema(state)
            if state.get("committed_version"):
                return self._after_commit(state, IndexStore.open(self.loc,
                                                                 state["committed_version"]))
            model = model_stage(run, state)
            agg = encode_stage(run, state, model)
            check_ids(run, state, agg)
            entries = merge_stage(run, state, model, agg)
            t = time.perf_counter()
            cal = calibration_file(run, agg, model)
            run.timed("calibration", t)
            store = commit_stage(run, state, model, entries, drift=agg["drift"],
                                 calibration=cal)
            return self._after_commit(state, store, agg)

    def _fresh_state(self):
        """The fields of a new job's ``state.json``: create or append, and from what."""
        o = self.opts
        if IndexStore.exists(self.loc):
            store = IndexStore.open(self.loc)
            if store.kind not in ("ivfpq", "ivfflat") or not store.is_trained:
                raise ValueError(f"{self.root}: can append only to a trained IVF index; "
                                 f"it holds a {'trained' if store.is_trained else 'untrained'}"
                                 f" {store.kind} index")
            self._check_append_options(store.config)
            state = {"mode": "append", "base_version": store.version,
                     "id_base": store.next_id if self.plan.id_column is None else 0,
                     "codebooks_crc": store.manifest["files"]["codebooks"]["crc32"]}
        else:
            check_empty_dir(self.loc)
            if o["codebooks"] is None and o["nlist"] is None:
                raise ValueError(f"no index at {self.root}: give nlist (and M) to train a new "
                                 "one, or codebooks= to reuse a trained model")
            state = {"mode": "create", "base_version": 0, "id_base": 0, "codebooks_crc": None}
        state.update({"blocks": len(self.plan.blocks), "total_rows": self.plan.total_rows})
        return state

    def _attribute_schema(self, state):
        """The attribute columns this job stores (see :func:`job_attribute_schema`)."""
        have = None
        if state["mode"] == "append":
            have = IndexStore.open(self.loc, state["base_version"]).attribute_schema
        return job_attribute_schema(self.plan.attribute_schema, have, self.root)

    def _finished(self, record):
        logger.info("ingest job %s was committed as version %s of %s; nothing to do",
                    self.job_id, record.get("version"), self.root)
        self.scratch.cleanup(keep_record=True)
        record = dict(record)
        record["already_committed"] = True
        fields = {f.name for f in dataclasses.fields(IngestSummary)}
        return IngestSummary(**{k: v for k, v in record.items() if k in fields})

    def _committed_elsewhere(self, version, ours):
        """The summary of this job found committed in the store (as ``version``) by
        a run with another work directory; nothing is redone."""
        logger.info("ingest job %s was committed as version %d of %s (by a run with "
                    "another work directory); nothing to do", self.job_id, version, self.root)
        summary = IngestSummary(
            path=self.root, version=version, job_id=self.job_id,
            mode="create" if version == 1 else "append",
            vectors=int(sum(s["rows"] for s in ours)),
            bytes_written=int(sum(s["size"] for s in ours)), segments=len(ours),
            blocks=len(self.plan.blocks) if self.plan is not None else 0,
            already_committed=True)
        self.scratch.write_record(summary.to_dict())
        self.scratch.cleanup(keep_record=True)
        return summary

    # -- after the commit ------------------------------------------------------------------
    def _after_commit(self, state, store, agg=None):
        """The spot check and the summary (kept as the job's record), then cleanup."""
        run = self.run_state
        prefix = f"segments/{SEGMENT_PREFIX}{self.job_id}-"
        ours = [s for s in store.manifest["files"]["segments"] if s["path"].startswith(prefix)]
        model = load_index(store, lists=np.zeros(0, np.int64))
        if agg is None:
            try:
                model_stage(run, state)
                agg = aggregate(run, model)
            except (OSError, RuntimeError, ValueError) as exc:
                logger.info("no recall check: the job's records are gone (%s)", exc)
                run.queries = (np.zeros(0, np.int64), np.zeros((0, model.d), np.float32))
        t = time.perf_counter()
        recall, nprobe = None, 0
        qrows, qx = run.queries
        if agg is not None and agg["gt"] is not None and qx.shape[0]:
            nprobe = self.opts["spot_check_nprobe"] or min(16, model.nlist)
            nprobe = min(nprobe, model.nlist)
            recall = spot_check(store, ours, model, qx, agg["gt"][1],
                                self.opts["spot_check_k"], nprobe)
        run.timed("check", t)
        bytes_written = int(sum(s["size"] for s in ours))
        if state["mode"] == "create" and store.manifest["files"]["codebooks"]:
            bytes_written += int(store.manifest["files"]["codebooks"]["size"])
        skipped_files = [[f.path, f.skipped] for f in self.plan.files if f.skipped]
        summary = IngestSummary(
            path=self.root, version=store.version, job_id=self.job_id, mode=state["mode"],
            vectors=int(sum(s["rows"] for s in ours)),
            skipped_rows=int(agg["skipped"]) if agg else 0, skipped_files=skipped_files,
            bad_rows=list(agg["examples"]) if agg else [],
            seconds=time.perf_counter() - run.t0, stage_seconds=dict(run.stage_seconds),
            worker_seconds={k: round(v, 2) for k, v in agg["worker_seconds"].items()}
            if agg else {},
            bytes_written=bytes_written, scratch_bytes=int(agg["scratch"]) if agg else 0,
            blocks=len(self.plan.blocks), resumed_blocks=run.resumed_blocks,
            segments=len(ours), recall=recall, recall_k=self.opts["spot_check_k"],
            recall_nprobe=nprobe, recall_queries=int(qx.shape[0]),
            already_committed=bool(state.get("committed_version")))
        self.scratch.write_record(summary.to_dict())
        self.scratch.cleanup(keep_record=True)
        # one line: the caller has the summary (the command prints all of it)
        logger.info("ingest job %s: %d vectors into %s, version %d, in %.1f s", self.job_id,
                    summary.vectors, self.root, summary.version, summary.seconds)
        return summary


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
        return run_on_ray(self._job.run)
