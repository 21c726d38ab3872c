"""The **encode** stage of an ingest job (Ray Data tasks assign, encode and
write every block as sorted runs, see ``_ingest_work.encode_block``), the
totals over the blocks' markers (:func:`aggregate`), and **check_ids**: with
an id column, no id twice among the new rows nor already in the index.
"""

import logging
import os
import time

import numpy as np

from ..drift import merge_stats
from ..errors import InputError
from ..results import merge_results
from ..storage import IndexStore, crash_point
from ._ingest_runtime import task_groups
from ._ingest_work import ITEMS_DIR, block_marker, encode_batch, read_block_marker

logger = logging.getLogger(__name__)

#: most blocks one encode task takes (see :func:`task_groups`)
ENCODE_TASK_BLOCKS = 4


def encode_stage(run, state, model):
    """Encode the blocks not done yet (by an earlier run); return :func:`aggregate`."""
    t = time.perf_counter()
    plan = run.plan
    nblocks = len(plan.blocks)
    done = [b for b in range(nblocks) if os.path.exists(block_marker(run.job_dir, b))]
    todo = sorted(set(range(nblocks)) - set(done))
    run.resumed_blocks = len(done)
    if done:
        logger.info("ingest job %s: %d of %d blocks were done by an earlier run",
                    run.job_id, len(done), nblocks)
    qrows, qx = run.queries
    ctx = run.work_context(model)
    ctx.update(id_base=state["id_base"], k=run.opts["spot_check_k"],
               queries=model.prepare(qx) if qx.shape[0] else None)
    job_cal = run.calibration
    if job_cal is not None and job_cal.nqueries:
        ctx["calibration"] = job_cal.worker_queries(model)
    sizes = np.array([b.stop - b.start for b in plan.blocks], np.int64)
    bar = run.bar("encode", int(sizes.sum()), int(sizes[done].sum()) if done else 0)
    try:
        def on_row(row):
            if row["error"]:
                raise InputError(row["error"])
            bar.update(int(sizes[int(row["block"])]))
            crash_point("ingest.block_done")

        run.map(task_groups(todo, run.workers(), ENCODE_TASK_BLOCKS), encode_batch, ctx,
                on_row)
    finally:
        bar.close()
    agg = aggregate(run, model)
    logger.info("encode: worker seconds summed over blocks: %s",
                {k: round(v, 1) for k, v in agg["worker_seconds"].items()})
    crash_point("ingest.encoded")
    run.timed("encode", t)
    return agg


def aggregate(run, model):
    """Totals over every block's marker, in block order: ``{"counts"`` (rows per
    list), ``"rows"``, ``"skipped"``, ``"examples"`` (bad rows explained),
    ``"runs"`` (run names), ``"intervals"`` (min id, max id, block, runs),
    ``"drift"`` (the rows' drift stats, :func:`shardann.drift.merge_stats`),
    ``"scratch"`` (bytes), ``"worker_seconds"``, ``"gt"`` (exact top-k of the
    check queries, or None), ``"calibration"`` (exact top-k_max of the
    calibration queries, merged over the blocks; None when a block has none)``}``."""
    nlist = model.nlist
    k = run.opts["spot_check_k"]
    agg = {"counts": np.zeros(nlist, np.int64), "rows": 0, "skipped": 0, "examples": [],
           "runs": [], "intervals": [], "scratch": 0,
           "worker_seconds": {"read": 0.0, "encode": 0.0, "write": 0.0}, "drift": None}
    gt = None
    job_cal = run.calibration
    cal = None
    cal_missing = False
    for b in range(len(run.plan.blocks)):
        path = block_marker(run.job_dir, b)
        if not os.path.exists(path):
            raise RuntimeError(f"{path}: block {b} has no marker after the encode stage")
        meta, counts, found = read_block_marker(path)
        gk, gi = found["gt"]
        agg["counts"] += counts
        agg["rows"] += meta["rows"]
        agg["skipped"] += meta["skipped"]
        agg["scratch"] += meta["bytes"]
        agg["drift"] = merge_stats(agg["drift"], meta.get("drift"))
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
        if job_cal is not None and job_cal.nqueries:
            part = found["calibration"]
            if part is None or part[0].shape[0] != job_cal.nqueries:
                cal_missing = True
            elif not cal_missing:
                cal = part if cal is None else merge_results([cal, part], job_cal.cal.k_max,
                                                             "l2")
    agg["gt"] = gt
    agg["calibration"] = None if cal_missing else cal
    return agg


def check_ids(run, state, agg, store=None):
    """With an id column: no id twice among the new rows, nor already in the
    index (``store``, default the version appended to). Raises :class:`InputError`."""
    plan = run.plan
    if plan.id_column is None:
        return
    t = time.perf_counter()
    runs_dir = run.scratch.path(ITEMS_DIR)

    def ids_of(names):
        parts = [np.load(os.path.join(runs_dir, f"{n}.ids.npy"), mmap_mode="r")
                 for n in names]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    ivs = sorted(agg["intervals"])
    for cl in _overlapping(ivs):
        if len(cl) == 1 and len(cl[0][3]) <= 1:
            continue  # one part: checked by its worker
        ids = np.sort(ids_of([n for iv in cl for n in iv[3]]))
        rep = ids[1:][ids[1:] == ids[:-1]]
        if rep.size:
            x = int(rep[0])
            where = [plan.files[plan.blocks[iv[2]].file].path for iv in cl
                     if x in ids_of(iv[3])]
            raise InputError(f"id {x} appears more than once in the inputs "
                             f"({', '.join(sorted(set(where)))}); ids must be unique")
    if store is None and state["mode"] == "append":
        store = IndexStore.open(run.loc, state["base_version"])
    if store is not None:
        segs = store.manifest["files"]["segments"]
        for lo, hi, b, names in ivs:
            near = [s for s in segs if s["rows"] and s["min_id"] <= hi and s["max_id"] >= lo]
            if not near:
                continue
            live = store.live_ids(near)
            new = ids_of(names)
            hit = np.isin(new, live)
            if hit.any():
                f = plan.files[plan.blocks[b].file].path
                raise InputError(f"{f}: id {int(new[hit][0])} is already in the index at "
                                 f"{run.root} ({int(hit.sum())} such ids in this block)")
    run.timed("check_ids", t)


def _overlapping(intervals):
    """Sorted ``(lo, hi, ...)`` intervals grouped into clusters that overlap."""
    clusters, cluster, hi = [], [], None
    for iv in intervals:
        if cluster and iv[0] <= hi:
            cluster.append(iv)
            hi = max(hi, iv[1])
        else:
            if cluster:
                clusters.append(cluster)
            cluster, hi = [iv], iv[1]
    if cluster:
        clusters.append(cluster)
    return clusters
