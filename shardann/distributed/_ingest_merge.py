"""The **merge** stage of an ingest job: the lists are cut into contiguous
ranges of about ``merge_bytes`` (saved in ``ranges.json``, so a resumed job
cuts them the same), and one Ray Data task per range gathers that range from
every run into one store segment (``_ingest_work.merge_range``), written into
the store's ``segments/`` (uploaded, for a store on an object store). Returns
the segments' manifest entries, for the commit.
"""

import os
import time

from ..storage import MAX_SEGMENT_ROWS, crash_point
from ._ingest_work import merge_batch, plan_ranges, range_marker, read_json, write_json


def merge_stage(run, state, model, agg):
    """Write the segments of the ranges not done yet; return every range's entry."""
    t = time.perf_counter()
    columns = model.columns
    rpath = run.scratch.path("ranges.json")
    if os.path.exists(rpath):
        ranges = [tuple(r) for r in read_json(rpath)]
    else:
        row_bytes = 12 + sum(w * dt.itemsize for w, dt in columns.values())
        if run.attribute_schema is not None:  # a guess: their size is known only once read
            row_bytes += 8 * len(run.attribute_schema)
        total_bytes = int(agg["counts"].sum()) * row_bytes
        target = int(min(run.opts["merge_bytes"],
                         max(16 << 20, total_bytes // max(1, 2 * run.workers()))))
        ranges = plan_ranges(agg["counts"], row_bytes, target, MAX_SEGMENT_ROWS)
        write_json(rpath, [list(r) for r in ranges])
    done = [r for r in range(len(ranges)) if os.path.exists(range_marker(run.job_dir, r))]
    todo = sorted(set(range(len(ranges))) - set(done))
    ctx = {"store": run.loc, "job_dir": run.job_dir, "job_id": run.job_id,
           "attempt": state["attempt"], "ranges": ranges, "counts": agg["counts"],
           "columns": columns, "runs": agg["runs"], "attribute_schema": run.attribute_schema}
    run.loc.makedirs("segments")
    rows_of = [int(agg["counts"][a:b + 1].sum()) for a, b in ranges]
    bar = run.bar("merge", int(sum(rows_of)), int(sum(rows_of[r] for r in done)))
    try:
        def on_row(row):
            bar.update(int(row["rows"]))
            crash_point("ingest.range_done")

        run.map([[r] for r in todo], merge_batch, ctx, on_row)
    finally:
        bar.close()
    entries = [read_json(range_marker(run.job_dir, r)) for r in range(len(ranges))]
    run.timed("merge", t)
    return entries
