"""The state of an ingest job on disk: its scratch directory under
``INDEX/_ingest/<job>/``, the lock that keeps one process on a job,
``state.json`` (started afresh or resumed), the record of a committed job
(``committed.json``), cleanup, and :func:`clean_ingest_jobs`.

A job directory holds ``state.json`` (mode, base version, id base, attempt),
the model checkpoint (``model.parquet``, ``queries.npz``), the encode runs and
block markers (``blocks/``), the merge ranges and their markers
(``ranges.json``, ``ranges/``) and, once the job is committed, only
``committed.json``.
"""

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid

from .._text import format_bytes
from ..errors import IngestJobBusyError
from ..storage import IndexStore, list_versions, read_manifest
from ._ingest_work import (
    ITEMS_DIR,
    RANGES_DIR,
    SEGMENT_PREFIX,
    STAGE_DIR,
    read_json,
    write_json,
)

logger = logging.getLogger(__name__)

#: job directories live in ``INDEX/_ingest/``
JOBS_DIR = "_ingest"
STATE = "state.json"
RECORD = "committed.json"


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
    """The directory of job ``job_id`` of the index at ``root`` (absolute)."""

    def __init__(self, root, job_id):
        self.root = root
        self.job_id = job_id
        self.dir = os.path.join(root, JOBS_DIR, job_id)

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
            if newest_version(self.root) == state["base_version"]:
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
        jobs = os.path.join(self.root, JOBS_DIR)
        for name in sorted(os.listdir(jobs)):
            other = os.path.join(jobs, name)
            if name != self.job_id and os.path.isdir(other) and not os.path.exists(
                    os.path.join(other, RECORD)):
                logger.warning("%s: scratch of another, interrupted ingest job (%s); "
                               "clean_ingest_jobs(path) or `shardann ingest PATH --clean` "
                               "removes it", other, format_bytes(dir_bytes(other)))


def newest_version(root):
    """The newest version of the index at ``root``, 0 when there is none."""
    if not IndexStore.exists(root):
        return 0
    return IndexStore.open(root).version


def check_empty_dir(root):
    """A new index may go only into a missing directory or one holding a
    shardann index's own names (debris of an interrupted create)."""
    if not os.path.isdir(root):
        return
    ours = {JOBS_DIR, "_manifests", "segments", "tombstones"}
    foreign = [n for n in os.listdir(root) if n not in ours and not n.startswith("codebooks-")]
    if foreign:
        raise FileExistsError(f"{root} is a non-empty directory that is not a shardann "
                              f"index (holds {sorted(foreign)[:5]})")


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
