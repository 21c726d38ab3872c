"""The **commit** stage of an ingest job: one manifest naming every new
segment — the only moment the index changes. A new index is created with its
model, segments and calibration set in one commit; an append commits on top of
the newest version after checking that the model did not change and that rows
committed meanwhile do not share the job's ids, with the calibration set
brought up to date (none when other writers committed meanwhile: the set would
miss their rows).
"""

import logging
import time

import numpy as np

from ..drift import merge_stats
from ..errors import CommitConflictError
from ..storage import IndexStore, crash_point, read_manifest

logger = logging.getLogger(__name__)

#: commits tried when other writers keep committing first
COMMIT_ATTEMPTS = 5


def commit_stage(run, state, model, entries, drift=None, calibration=None):
    """Publish the segments ``entries`` (manifest entries); return the new store version.
    ``drift``: the new rows' drift stats, recorded in the manifest;
    ``calibration``: the new version's calibration file (bytes), or None for none."""
    t = time.perf_counter()
    crash_point("ingest.before_commit")
    if state["mode"] == "create":
        model_state = model.to_state(lists=False)
        model_state.attribute_schema = run.attribute_schema  # the segments' columns
        model_state.calibration = calibration
        if model_state.drift is not None and drift:  # the rows come with the model
            d = model_state.drift
            d["pending"] = merge_stats(d.get("pending"), drift)
            d["since_training"] = merge_stats(d.get("since_training"), drift)
        store = IndexStore.create_from_segments(run.loc, model_state, entries)
    else:
        for attempt in range(COMMIT_ATTEMPTS):
            store = IndexStore.open(run.loc)
            if store.version != state["base_version"]:
                cb = store.manifest["files"]["codebooks"]
                if cb is None or cb["crc32"] != state["codebooks_crc"]:
                    raise RuntimeError(
                        f"the model of {run.root} changed (version {store.version}) while "
                        "this ingest ran; its codes no longer fit. Rerun the ingest.")
                check_new_commits(run.loc, state, store, entries)
            txn = store.transaction()
            # attributes appended to an index without: the store takes their columns
            txn.add_segments(entries, attribute_schema=run.attribute_schema)
            txn.record_drift(drift)
            if calibration is not None:
                if store.version == state["base_version"]:
                    txn.set_calibration(calibration)
                else:  # (without it the transaction drops the set: it adds rows)
                    logger.warning("%s: other writers committed while this ingest ran; the "
                                   "calibration set it kept up to date misses their rows, so "
                                   "the new version has none", run.root)
            try:
                store = txn.commit()
                break
            except CommitConflictError:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                logger.info("another writer committed first; retrying the commit")
    crash_point("ingest.committed")
    run.timed("commit", t)
    logger.info("committed version %d of %s", store.version, run.root)
    return store


def check_new_commits(loc, state, store, entries):
    """Ids of rows committed since the job started must not meet the job's ids."""
    base = read_manifest(loc, state["base_version"])
    old = {s["path"] for s in base["files"]["segments"]}
    new = [s for s in store.manifest["files"]["segments"] if s["path"] not in old]
    if not new:
        return
    lo = min(e["min_id"] for e in entries)
    hi = max(e["max_id"] for e in entries)
    near = [s for s in new if s["rows"] and s["min_id"] <= hi and s["max_id"] >= lo]
    if not near:
        return
    theirs = store.live_ids(near)
    ours = store.segment_view(entries).live_ids()
    if np.isin(ours, theirs).any():
        raise RuntimeError(f"{loc.root} gained rows with this job's ids while it ran; "
                           "rerun the ingest (it will start over with fresh ids)")
