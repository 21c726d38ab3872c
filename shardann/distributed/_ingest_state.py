"""The state of an ingest job on disk: its scratch directory (:func:`jobs_dir`:
``INDEX/_ingest/<job>/`` for a store in a local directory; a local work
directory for a store on an object store), the lock that keeps one process on a
job, ``state.json`` (started afresh or resumed), the record of a committed job
(``committed.json``), cleanup, and :func:`clean_ingest_jobs`.

The scratch is always a filesystem directory, never objects: the encode runs
are written once and read back once by the merge, at local-disk speed and
without object-store requests, ``flock`` keeps one process on a job, and the
store itself only ever receives the job's segments, codebooks and manifest.
A job committed to an object store is still recognised when its work directory
is gone (another machine, a wiped cache): the newest manifest names its
segments (:meth:`JobScratch.committed_in_store`).

A job directory holds ``state.json`` (mode, base version, id base, attempt),
the model checkpoint (``model.parquet``, ``queries.npz``), the encode runs and
block markers (``blocks/``), the merge ranges and their markers
(``ranges.json``, ``ranges/``) and, once the job is committed, only
``committed.json``.
"""

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
import uuid

from .._text import format_bytes
from ..errors import IngestJobBusyError
from ..storage import IndexStore, list_versions, location, read_manifest
from ._ingest_work import (
    ITEMS_DIR,
    RANGES_DIR,
    SEGMENT_PREFIX,
    STAGE_DIR,
    read_json,
    write_json,
)

logger = logging.getLogger(__name__)

#: job directories of a local store live in ``INDEX/_ingest/``
JOBS_DIR = "_ingest"
STATE = "state.json"
RECORD = "committed.json"


def default_work_root():
    """Where the job directories of stores on object stores go by default:
    ``$XDG_CACHE_HOME/shardann/ingest`` (``~/.cache/shardann/ingest``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "shardann", "ingest")


def store_key(loc):
    """A directory name for the store at location ``loc``: readable and unique
    (its URI with other characters replaced, plus a hash of the URI)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", loc.root).strip("-")[-80:]
    return f"{name}-{hashlib.sha256(loc.root.encode()).hexdigest()[:12]}"


def jobs_dir(loc, work_dir=None):
    """The directory holding the job directories of the store at location ``loc``.

    ``work_dir`` given: ``work_dir/<store key>/`` (one work directory serves many
    stores). Else ``INDEX/_ingest`` for a store in a local directory (as always),
    and ``~/.cache/shardann/ingest/<store key>/`` (:func:`default_work_root`)
    for a store on an object store.
    """
    if work_dir is not None:
        return os.path.join(os.path.abspath(os.fspath(work_dir)), store_key(loc))
    if loc.local:
        return loc.path(JOBS_DIR)
    return os.path.join(default_work_root(), store_key(loc))


class JobLock:
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


class JobScratch:
    """The directory of job ``job_id`` of the store at location ``loc``, under
    ``jobs`` (see :func:`jobs_dir`)."""

    def __init__(self, loc, jobs, job_id):
        self.loc = loc
        self.root = loc.root
        self.job_id = job_id
        self.jobs = jobs
        self.dir = os.path.join(jobs, job_id)

    def path(self, *names):
        """A path inside the job directory."""
        return os.path.join(self.dir, *names)

    def lock(self):
        """The job's lock (a context manager); creates the job directory."""
        os.makedirs(self.dir, exist_ok=True)
        return JobLock(self.dir, self.job_id)

    # -- the record of a committed job ---------------------------------------------------
    def record(self):
        """The ``committed.json`` record of a finished job (a dict), or None."""
        path = self.path(RECORD)
        return read_json(path) if os.path.exists(path) else None

    def write_record(self, record):
        write_json(self.path(RECORD), record)

    # -- state.json ---------------------------------------------------------------------
    def resume_or_start(self, fresh):
        """This job's state: resumed from ``state.json``, or started afresh.

        A saved state is resumed when the index is still at its base version;
        when the job's segments were committed meanwhile, the state comes back
        with ``committed_version`` set; when the index moved on otherwise, the
        job starts over. ``fresh()`` returns the fields of a new state
        (``mode``, ``base_version``, ``id_base``, ``codebooks_crc``, ...); the
        job id and a new attempt name are added, and the state is saved.
        """
        path = self.path(STATE)
        if os.path.exists(path):
            state = read_json(path)
            v = self.find_commit(state["base_version"])
            if v is not None:
                logger.info("ingest job %s had committed version %d before it was stopped",
                            self.job_id, v)
                state["committed_version"] = v
                return state
            if newest_version(self.loc) == state["base_version"]:
                logger.info("resuming ingest job %s (%s)", self.job_id, self.dir)
                return state
            logger.warning("the index at %s changed since ingest job %s was interrupted; "
                           "starting the job over", self.root, self.job_id)
            self.cleanup(keep_record=False, keep_lock=True)
        state = dict(fresh())
        state.update({"job_id": self.job_id, "attempt": uuid.uuid4().hex[:8],
                      "created_at": time.time()})
        for sub in ("", ITEMS_DIR, RANGES_DIR):
            os.makedirs(self.path(sub), exist_ok=True)
        write_json(path, state)
        return state

    def find_commit(self, base_version):
        """The version that committed this job's segments, if any (after ``base_version``)."""
        prefix = segment_prefix(self.job_id)
        for v in reversed(list_versions(self.loc)):
            if v <= base_version:
                break
            try:
                m = read_manifest(self.loc, v)
            except (OSError, ValueError):
                continue
            if any(s["path"].startswith(prefix) for s in m["files"]["segments"]):
                return v
        return None

    def committed_in_store(self):
        """``(version, segment entries)`` of this job in the store's newest
        version, or None: a job committed from another work directory (another
        machine, a wiped cache) is not run twice. One manifest is read, so a job
        whose segments were compacted away since is not recognised."""
        versions = list_versions(self.loc)
        if not versions:
            return None
        m = read_manifest(self.loc, versions[-1])
        prefix = segment_prefix(self.job_id)
        ours = [s for s in m["files"]["segments"] if s["path"].startswith(prefix)]
        return (min(s["seq"] for s in ours), ours) if ours else None

    # -- cleanup ------------------------------------------------------------------------
    def cleanup(self, keep_record, keep_lock=False):
        """Remove the job's scratch (all but ``committed.json`` with ``keep_record``,
        and the lock and a staged Dataset with ``keep_lock``); without ``keep_record`` the empty
        directories of a new start are made again."""
        if not os.path.isdir(self.dir):
            return
        for name in os.listdir(self.dir):
            # a restart (keep_lock) keeps a staged Dataset: the input did not change
            if (keep_record and name == RECORD) or (keep_lock and name in ("lock", STAGE_DIR)):
                continue
            p = self.path(name)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(p)
        for sub in ("", ITEMS_DIR, RANGES_DIR):
            if not keep_record:
                os.makedirs(self.path(sub), exist_ok=True)

    def warn_abandoned(self):
        """Log the scratch of other jobs of this index that never committed."""
        jobs = self.jobs
        for name in sorted(os.listdir(jobs)):
            other = os.path.join(jobs, name)
            if name != self.job_id and os.path.isdir(other) and not os.path.exists(
                    os.path.join(other, RECORD)):
                logger.warning("%s: scratch of another, interrupted ingest job (%s); "
                               "clean_ingest_jobs(path) or `shardann ingest PATH --clean` "
                               "removes it", other, format_bytes(dir_bytes(other)))


def segment_prefix(job_id):
    """The start of the store paths of job ``job_id``'s segments."""
    return f"segments/{SEGMENT_PREFIX}{job_id}-"


def newest_version(loc):
    """The newest version of the store at ``loc``, 0 when there is none."""
    if not IndexStore.exists(loc):
        return 0
    return IndexStore.open(loc).version


def check_empty_dir(loc):
    """A new index may go only into a missing (or empty) directory or prefix, or
    one holding a shardann index's own names (debris of an interrupted create)."""
    if loc.local and not os.path.isdir(loc.root):
        return
    ours = {JOBS_DIR, "_manifests", "segments", "tombstones"}
    foreign = [n for n in loc.listdir() if n not in ours and not n.startswith("codebooks-")]
    if foreign:
        raise FileExistsError(f"{loc.root} is a non-empty directory that is not a shardann "
                              f"index (holds {sorted(foreign)[:5]})")


def clean_ingest_jobs(path, *, interrupted=True, committed=True, work_dir=None,
                      storage_options=None):
    """Remove ingest job directories of the store at ``path`` that no job is using.

    They are under ``path/_ingest`` for a store in a local directory, else in
    the work directory (``work_dir`` as given to the ingest, default
    ``~/.cache/shardann/ingest/<store>``; see :func:`shardann.distributed.ingest`).
    ``interrupted``: scratch of jobs that never committed (their progress is
    lost: a rerun starts over). ``committed``: the small records that let a
    rerun of a finished job return at once. Returns ``(removed dirs, bytes)``.
    """
    root = jobs_dir(location(path, storage_options), work_dir)
    removed, freed = [], 0
    if not os.path.isdir(root):
        return removed, freed
    for name in sorted(os.listdir(root)):
        job_dir = os.path.join(root, name)
        if not os.path.isdir(job_dir):
            continue
        is_done = os.path.exists(os.path.join(job_dir, RECORD))
        if (is_done and not committed) or (not is_done and not interrupted):
            continue
        try:
            with JobLock(job_dir, name):
                size = dir_bytes(job_dir)
                shutil.rmtree(job_dir)
        except IngestJobBusyError:
            continue
        removed.append(job_dir)
        freed += size
    return removed, freed


def dir_bytes(path):
    """Bytes of the files under ``path``."""
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(dirpath, n))
    return total
