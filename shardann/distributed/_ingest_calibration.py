"""The calibration set of an ingest job: held-out queries and their exact
neighbours, so that an ingest-built index estimates its recall as a local one
does (:class:`shardann.index.CalibrationSet`, ``estimate_recall``).

The job's rows are one batch of the set, as if they were added with one
``index.add`` in input order:

- **model stage** (driver): the set before the job (a new one for a new index
  or an empty index; the stored one when appending; none when the index has
  rows but no set) *draws* its queries for a batch of the job's input rows
  (``CalibrationSet.draw``: a seeded uniform sample, the same draw a local
  index makes for an add of those rows); the sample stage reads the drawn rows
  with their ids and raw vectors beside the training rows. The choice is
  checkpointed (``calibration.npz``) so a resumed job keeps it.
- **encode**: every block computes the exact top-``k_max`` of all the set's
  queries (the kept ones and the new ones) among its rows, each query's own
  id left out (:func:`shardann.index.exact_neighbours`, the local add's own
  function), and keeps it in its marker: ``m x k_max`` keys and ids (1.2 MB
  for the default 1,000 queries), whatever the block's size.
- **commit** (driver): the blocks' partial top-k are merged (one
  ``merge_results``, block after block: two partial results in memory) and the
  set takes them in (``CalibrationSet.absorb``: a kept query's truth merged
  with its stored one under its distance bound, as a local add does); its file
  is written through the store's transaction with the segments.

An append that another writer's commit overtook keeps no set (it would miss
that writer's rows): the new version has none, and a warning says so.
"""

import logging
import os

import numpy as np

from ..index import CalibrationSet
from ..storage import IndexStore, decode_calibration
from ._ingest_work import replace_into

logger = logging.getLogger(__name__)

CHECKPOINT = "calibration.npz"


class JobCalibration:
    """The set an ingest job keeps up to date and the queries it drew.

    Attributes: ``cal`` the :class:`~shardann.index.CalibrationSet` before the
    job; ``keep`` int64, its queries that stay; ``rows`` int64 (sorted), the
    job's input rows drawn as new queries; ``ids`` int64 (j,) and ``x``
    float32 (j, d) the ids and raw vectors of those that were read (bad rows
    skipped); ``n`` the input rows of the job (the batch the draw was for).
    """

    def __init__(self, cal, n):
        self.cal = cal
        self.n = int(n)
        self.keep, self.rows = cal.draw(self.n)
        self.ids = np.zeros(0, np.int64)
        self.x = np.zeros((0, cal.d), np.float32)

    @property
    def nqueries(self):
        """Queries whose neighbours the workers find (kept, then new)."""
        return int(self.keep.size + self.ids.size)

    def take_rows(self, rows, ids, x):
        """The drawn rows as read: global rows int64, ids int64, raw float32 (j, d)."""
        self.ids = np.ascontiguousarray(ids, np.int64)
        self.x = np.ascontiguousarray(x, np.float32).reshape(-1, self.cal.d)

    def worker_queries(self, model):
        """``(queries float32 (m, d) prepared by ``model``, own ids int64 (m,),
        k_max)``: what every encode worker searches its block's rows for."""
        raw = np.concatenate([self.cal.vectors[self.keep], self.x])
        q = model.prepare(raw) if raw.shape[0] else raw
        own = np.concatenate([self.cal.ids[self.keep], self.ids])
        return np.ascontiguousarray(q, np.float32), own, self.cal.k_max

    def finish(self, found, model):
        """The calibration file's bytes once the job's rows are in: ``found``
        the blocks' merged ``(keys, ids)`` (m, k_max), or None when a block
        has none (a marker of an older run)."""
        if found is None:
            logger.warning("no calibration set: some blocks were encoded by a run that "
                           "did not compute its neighbours; the new version has none")
            return None
        cal = self.cal.copy()

        def before(ids):  # an open set: which of its queries' rows are still live
            return np.isin(ids, cal.ids[cal.live])

        cal.absorb(self.keep, self.x, self.ids, found, self.n, model.prepare, before)
        return cal.to_bytes()

    # -- checkpoint ----------------------------------------------------------------------------
    def save(self, path):
        base = np.frombuffer(self.cal.to_bytes(), np.uint8)
        replace_into(path, lambda f: np.savez(f, base=base, n=np.int64(self.n), keep=self.keep,
                                              rows=self.rows, ids=self.ids, x=self.x))

    @classmethod
    def load(cls, path):
        with np.load(path) as z:
            cal = CalibrationSet.from_file(*decode_calibration(z["base"].tobytes(), path))
            out = cls(cal, int(z["n"]))
            if not (np.array_equal(out.keep, z["keep"]) and np.array_equal(out.rows, z["rows"])):
                raise ValueError(f"{path}: the checkpoint's draw is not the set's")
            out.take_rows(z["rows"], z["ids"], z["x"])
        return out


def base_set(run, state, model):
    """The calibration set before the job (empty for a new or empty index), or
    None: ``calibration=0``, or an append to an index with rows and no set.

    A stored set that is still open holds every row of the index as a query:
    which of them are live is read from the store (a few ids). A closed one is
    taken as stored: neighbours removed by a writer that did not update it stay
    in its lists until a reader drops them (``estimate_recall`` does), as they
    would in the store, rather than reading every id of a large index here.
    """
    size = run.opts["calibration"]
    if state["mode"] == "append":
        store = IndexStore.open(run.loc, state["base_version"])
        if store.calibration_file is not None:
            cal = CalibrationSet.from_file(*store.read_calibration())
            if not cal.closed:
                live = store.live_ids()
                cal.forget_dead(lambda ids: np.isin(ids, live))
            return cal
        if store.ntotal:
            logger.warning("%s has no calibration set (rows added without one); the "
                           "appended version has none either, so it cannot estimate its "
                           "recall", run.root)
            return None
        # an empty index starts one, as a local add does
        size = model.calibration if size is None else size
    elif size is None:
        size = model.calibration
    if not size:
        return None
    return CalibrationSet(model.d, model.metric, size, seed=model.seed)


def plan_calibration(run, state, model):
    """The job's :class:`JobCalibration` (its queries drawn, not read yet), or None."""
    cal = base_set(run, state, model)
    return None if cal is None else JobCalibration(cal, run.plan.total_rows)


def save_checkpoint(run, job_cal):
    """Keep the job's draw (or that it keeps no set) for a resumed run."""
    path = run.scratch.path(CHECKPOINT)
    if job_cal is None:
        replace_into(path, lambda f: np.savez(f, none=np.int64(1)))
    else:
        job_cal.save(path)


def load_checkpoint(run):
    """The checkpointed :class:`JobCalibration`, or None: the job keeps no set,
    or its model stage ran before ingest kept one (then a warning says so)."""
    path = run.scratch.path(CHECKPOINT)
    if not os.path.exists(path):
        logger.warning("ingest job %s: its model stage ran without a calibration set; the "
                       "new version has none", run.job_id)
        return None
    with np.load(path) as z:
        if "none" in z.files:
            return None
    return JobCalibration.load(path)


def calibration_file(run, agg, model):
    """The new version's calibration file (bytes) once the blocks are encoded
    (``agg``: ``_ingest_encode.aggregate``), or None when the job keeps no set."""
    job_cal = run.calibration
    if job_cal is None:
        return None
    k = job_cal.cal.k_max
    found = agg["calibration"] if job_cal.nqueries else (
        np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
    return job_cal.finish(found, model)
