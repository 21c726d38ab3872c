"""The work of an ingest job, as run by Ray Data workers (and by tests, directly).

Three kinds of work, each on a unit named by a number so a rerun can skip it
(a Ray Data task takes a group of units):

- **sample** a block (on the driver): read only the rows drawn for training
  and the recall check.
- **encode** a block: read it in parts of at most ``block_rows`` rows, assign
  lists and encode with the broadcast model (the core index's own
  ``prepare`` / ``encode``, so codes are exactly the local index's),
  sort each part by (list, id) and write it as a *run* — ``.npy`` files in
  the job directory, memory-mapped later — then a marker (``b<block>.npz``)
  that says the block is done. Each block also computes the exact top-k of
  the recall-check queries among its rows.
- **merge** a list range: gather the rows of lists ``[first, last]`` from
  every run (memory-mapped slices) and write one store segment
  (``segments/ingest-<job>-<attempt>-r<range>.parquet``; on an object store
  written to a local temporary file, then uploaded), then a marker holding the
  segment's manifest entry.

Every file is written under a temporary name, fsynced and renamed into
place; a marker is written last, so a killed job leaves either a complete
unit or one that is simply done again.
"""

import json
import logging
import os
import time
import uuid

import numpy as np
import pyarrow as pa

from .._rows import scatter_rows, take_rows
from ..drift import merge_stats
from ..errors import InputError
from ..filters import as_attribute_table, null_table
from ..index import exact_neighbours
from ..index.flat import exact_search_keys
from ..metric import uses_ip
from ..results import merge_results
from ..storage import IndexState, fsync_dir, write_segment
from ._ingest_read import prefetch_block, read_block

logger = logging.getLogger(__name__)

ITEMS_DIR = "blocks"
RANGES_DIR = "ranges"
#: a Dataset input staged as Parquet (see ``_ingest_source``)
STAGE_DIR = "stage"
SEGMENT_PREFIX = "ingest-"
#: bad rows named in a block's report (the count is always exact)
MAX_EXAMPLES = 10
#: blocks after the one being encoded whose bytes are asked from disk ahead of time
PREFETCH_BLOCKS = 2


# -- files -----------------------------------------------------------------------------------
def replace_into(path, write):
    """Write a file through ``write(f)`` under a temporary name, fsync, rename into place."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path, obj):
    replace_into(path, lambda f: f.write(json.dumps(obj, sort_keys=True).encode()))


def read_json(path):
    with open(path, "rb") as f:
        return json.loads(f.read())


def save_npy(path, arr):
    replace_into(path, lambda f: np.save(f, np.ascontiguousarray(arr), allow_pickle=False))


def block_marker(job_dir, block):
    return os.path.join(job_dir, ITEMS_DIR, f"b{block:07d}.npz")


def range_marker(job_dir, r):
    return os.path.join(job_dir, RANGES_DIR, f"r{r:05d}.json")


def segment_name(job_id, attempt, r):
    return f"segments/{SEGMENT_PREFIX}{job_id}-{attempt}-r{r:05d}.parquet"


def read_block_marker(path):
    """``(meta dict, counts int64 (nlist,), found)`` of a finished block; ``found``
    maps ``"gt"`` (the check queries' exact top-k among its rows) and
    ``"calibration"`` (the calibration queries', or None: the job keeps no
    set, or a run before ingest kept one wrote the marker) to (keys, ids)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        cal = (z["cal_keys"], z["cal_ids"]) if "cal_keys" in z.files else None
        return meta, z["counts"], {"gt": (z["gt_keys"], z["gt_ids"]), "calibration": cal}


def _write_block_marker(path, meta, counts, gt, cal):
    extra = {} if cal is None else {"cal_keys": cal[0], "cal_ids": cal[1]}

    def write(f):
        np.savez(f, meta=np.array(json.dumps(meta, sort_keys=True)), counts=counts,
                 gt_keys=gt[0], gt_ids=gt[1], **extra)
    replace_into(path, write)


# -- the model in a worker ---------------------------------------------------------------------
def build_model(kind, config, arrays, *, for_encoding=False, drift=None):
    """A trained, empty core index from its kind, config and trained arrays
    (and its drift bookkeeping, ``IndexState.drift``, when given)."""
    from ..index import index_from_state

    if kind not in ("ivfpq", "ivfflat"):
        raise ValueError(f"ingest builds IVF indexes (ivfpq, ivfflat); got kind {kind!r}")
    config = dict(config)
    if for_encoding and "precompute_max_bytes" in config:
        config["precompute_max_bytes"] = 0  # search tables are not needed to encode
    return index_from_state(IndexState(kind, config, True, arrays, config["nlist"],
                                       drift=drift))


_CONTEXT = {}


def job_context(ctx):
    """The job context in this worker process: ``ctx`` is ``[ObjectRef]`` (or the dict).

    Fetched and its model built once per process and job stage; only the
    latest context is kept.
    """
    if isinstance(ctx, dict):
        c = ctx
        key = id(ctx)
    else:
        key = ctx[0].hex()
        c = None
    hit = _CONTEXT.get(key)
    if hit is None:
        import numba
        import ray

        if c is None:
            c = ray.get(ctx[0])
        # one Ray CPU per task: Numba to one thread (Ray sets BLAS's to one)
        numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS,
                                         int(c.get("threads", 1)))))
        model = (build_model(c["kind"], c["config"], c["arrays"], for_encoding=True,
                             drift=c.get("drift")) if c.get("kind") else None)
        _CONTEXT.clear()
        hit = _CONTEXT[key] = (c, model)
    return hit


def batch_units(batch, c):
    """The units (block or range numbers) of the task groups in a Ray Data batch."""
    return [int(u) for g in batch["group"] for u in c["groups"][int(g)]]


def _rows_out(results):
    out = {}
    for key in results[0]:
        vals = [r[key] for r in results]
        out[key] = np.array(vals, dtype=object if isinstance(vals[0], (str, bytes)) else None)
    return out


def _bad_message(f, file_rows, part, gids, i):
    return (f"{f.path}: row {int(file_rows[i])} (input row {int(f.offset + file_rows[i])}"
            f", id {int(gids[i])}): {part.reasons.get(int(i), 'bad row')}")


def _ids_for(ctx, f, part, file_rows):
    if part.ids is not None:
        return part.ids
    return ctx["id_base"] + f.offset + file_rows


# -- sample ------------------------------------------------------------------------------------
def draw_rows(total, count, run, rng):
    """``count`` distinct rows of ``range(total)``, int64, in random order.

    They come in runs ``[k * run, (k + 1) * run)`` drawn uniformly without
    replacement, the last run needed giving a random part of its rows: every
    row is as likely to be drawn as any other (but the input's last run, which
    may be short), while the disk reads about ``count / run`` places. The
    order is random, so any prefix is a random subset too.
    """
    count = min(int(count), int(total))
    if count <= 0:
        return np.zeros(0, np.int64)
    runs = -(-int(total) // run)
    # one run more than needed: the input's last run may be short
    picked = rng.choice(runs, size=min(runs, -(-count // run) + 1), replace=False)
    sizes = np.minimum(run, total - picked * run)
    j = int(np.searchsorted(np.cumsum(sizes), count))  # the run that completes the count
    whole = (picked[:j, None] * run + np.arange(run)).reshape(-1)
    whole = whole[whole < total]
    part = picked[j] * run + rng.choice(int(sizes[j]), count - whole.size, replace=False)
    return rng.permutation(np.concatenate((whole, part))).astype(np.int64)


def sample_block(c, b):
    """The drawn rows of block ``b``: ``{"block", "error", "rows", "ids", "x"}``.

    ``c`` holds the ``plan``, the sorted global rows ``drawn``, ``id_base`` and
    ``skip_bad_rows``; ``rows`` are global row numbers (int64), ``ids`` their
    ids (int64: the id column's, or ``id_base`` + row) and ``x`` the raw
    float32 vectors. Bad input is reported in ``error``, not raised.
    """
    plan = c["plan"]
    block = plan.blocks[b]
    f = plan.files[block.file]
    drawn = c["drawn"]  # sorted global rows
    lo, hi = np.searchsorted(drawn, [f.offset + block.start, f.offset + block.stop])
    want = drawn[lo:hi] - f.offset
    rows, ids, xs = [], [], []
    out = {"block": b, "error": "", "rows": np.zeros(0, np.int64),
           "ids": np.zeros(0, np.int64), "x": np.zeros((0, plan.d), np.float32)}
    try:
        for part in read_block(plan, block, rows=want):
            file_rows = part.file_rows()
            if part.bad.any() and not c["skip_bad_rows"]:
                i = int(np.flatnonzero(part.bad)[0])
                gids = _ids_for(c, f, part, file_rows)
                return {**out, "error": _bad_message(f, file_rows, part, gids, i)}
            keep = ~part.bad
            rows.append(f.offset + file_rows[keep])
            ids.append(np.asarray(_ids_for(c, f, part, file_rows), np.int64)[keep])
            xs.append(np.asarray(part.x[keep], np.float32))
    except InputError as exc:
        return {**out, "error": str(exc)}
    except Exception as exc:
        if not c["skip_bad_rows"]:
            return {**out, "error": f"{f.path}: cannot read rows {block.start}.."
                    f"{block.stop - 1} ({type(exc).__name__}: {exc})"}
        return out
    if rows:
        out.update(rows=np.concatenate(rows), ids=np.concatenate(ids), x=np.concatenate(xs))
    return out


# -- encode ------------------------------------------------------------------------------------
def encode_batch(batch, ctx):
    """Ray Data task: encode the blocks of the groups in ``batch`` into runs.

    Returns rows ``{"block", "rows", "error"}`` (the details are in the
    block's marker); bad input is reported in ``error``, not raised.
    """
    c, model = job_context(ctx)
    results = []
    for b in batch_units(batch, c):
        try:
            rows = encode_block(c, model, int(b))
            results.append({"block": int(b), "rows": rows, "error": ""})
        except InputError as exc:
            results.append({"block": int(b), "rows": 0, "error": str(exc)})
            break  # the job stops at this error: the group's other blocks would be wasted
    return _rows_out(results)


def _run_paths(job_dir, block, j):
    base = os.path.join(job_dir, ITEMS_DIR, f"b{block:07d}-p{j:03d}")
    paths = {k: f"{base}.{k}.npy" for k in ("ids", "offsets", "codes", "vectors")}
    paths["attributes"] = f"{base}.attributes.arrow"
    return paths


def _save_table(path, table):
    """An Arrow IPC file (uncompressed, so that it memory-maps)."""
    def write(f):
        with pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)
    replace_into(path, write)


def _load_table(path):
    """The table of :func:`_save_table`, memory-mapped (the map lives as long as
    the table's buffers)."""
    return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()


def _calibration_topk(ctx, xp, gids, acc):
    """A part's rows (prepared float32 (n, d), ids int64 (n,)) taken into
    ``acc``, the block's running exact top-k_max of the calibration queries
    (``ctx["calibration"]``: prepared queries, own ids, k_max; see
    ``_ingest_calibration``), own ids left out."""
    q, own, k = ctx["calibration"]
    top = exact_neighbours(q, xp, gids, own, k, ctx["metric"])
    return merge_results([acc, top], k, "l2")


def _exact_topk(ctx, xp, gids):
    q = ctx["queries"]
    k = ctx["k"]
    if q is None or q.shape[0] == 0:
        return None
    keys, ids = exact_search_keys(q, xp, gids, min(k, xp.shape[0]), uses_ip(ctx["metric"]))
    return keys, ids


def encode_block(ctx, model, b):
    """Encode block ``b`` into runs and write its marker; returns the rows written.

    Raises :class:`InputError` naming the file and row of the first bad row
    (unless ``skip_bad_rows``) or an unreadable file.
    """
    plan = ctx["plan"]
    block = plan.blocks[b]
    f = plan.files[block.file]
    job_dir = ctx["job_dir"]
    nlist = ctx["nlist"]
    k = ctx["k"]
    counts = np.zeros(nlist, np.int64)
    nq = 0 if ctx["queries"] is None else ctx["queries"].shape[0]
    gt = [(np.full((nq, k), np.inf, np.float32), np.full((nq, k), -1, np.int64))]
    cal = None
    if ctx.get("calibration") is not None:
        m, kc = ctx["calibration"][0].shape[0], ctx["calibration"][2]
        cal = (np.full((m, kc), np.inf, np.float32), np.full((m, kc), -1, np.int64))
    meta = {"block": b, "file": f.path, "rows": 0, "skipped": 0, "examples": [], "parts": [],
            "min_id": None, "max_id": None, "bytes": 0, "unreadable": None,
            "seconds": {"read": 0.0, "encode": 0.0, "write": 0.0}, "pid": os.getpid(),
            "drift": None}
    secs = meta["seconds"]
    skip = ctx["skip_bad_rows"]
    # this block's bytes and the next ones' (likely this worker's next tasks)
    # start coming from disk while this one is encoded
    for ahead in plan.blocks[b:b + 1 + PREFETCH_BLOCKS]:
        prefetch_block(plan, ahead)
    reader = read_block(plan, block)
    j = 0
    while True:
        t = time.perf_counter()
        try:
            part = next(reader)
            secs["read"] += time.perf_counter() - t
        except StopIteration:
            break
        except InputError:
            raise
        except Exception as exc:
            where = f"{f.path}: cannot read rows {block.start}..{block.stop - 1}"
            if not skip:
                raise InputError(f"{where} ({type(exc).__name__}: {exc})") from exc
            # the rest of the block is lost; ids stay those of the rows that were read
            done = sum(p["rows"] + p["skipped"] for p in meta["parts"])
            lost = (block.stop - block.start) - done
            meta["skipped"] += lost
            meta["unreadable"] = f"{where} ({type(exc).__name__}: {exc}); {lost} rows skipped"
            meta["examples"].append(meta["unreadable"])
            break
        file_rows = part.file_rows()
        gids = _ids_for(ctx, f, part, file_rows)
        x = part.x
        attrs = _attributes_of(ctx, f, part)
        bad = part.bad
        if part.ids is not None and gids.size > 1:
            bad = bad | _repeated(gids, bad)
            for i in np.flatnonzero(bad & ~part.bad):
                part.reasons[int(i)] = f"id {int(gids[i])} appears more than once"
        nbad = int(bad.sum())
        if nbad:
            first = np.flatnonzero(bad)[:MAX_EXAMPLES]
            if not skip:
                raise InputError(_bad_message(f, file_rows, part, gids, int(first[0])))
            room = MAX_EXAMPLES - len(meta["examples"])
            meta["examples"] += [_bad_message(f, file_rows, part, gids, int(i))
                                 for i in first[:max(room, 0)]]
            keep = ~bad
            x, gids = x[keep], gids[keep]
            if attrs is not None:
                attrs = attrs.filter(pa.array(keep))
        n = int(gids.size)
        part_meta = {"rows": n, "skipped": nbad, "name": None}
        if n:
            t = time.perf_counter()
            xp = model.prepare(x)
            del x
            labels, cols = model.encode(xp)
            # the rows' quantization errors (shardann.drift), summed over the block
            meta["drift"] = merge_stats(meta["drift"], model.drift_stats(xp, labels, cols))
            top = _exact_topk(ctx, xp, gids)
            if top is not None:
                gt = [merge_results(gt + [top], k, "l2")]
            if cal is not None:
                cal = _calibration_topk(ctx, xp, gids, cal)
            del xp
            t2 = time.perf_counter()
            secs["encode"] += t2 - t
            part_meta["name"] = _write_run(job_dir, b, j, labels, gids, cols, nlist, counts,
                                           meta, attrs)
            secs["write"] += time.perf_counter() - t2
            meta["min_id"] = int(gids.min()) if meta["min_id"] is None else min(
                meta["min_id"], int(gids.min()))
            meta["max_id"] = int(gids.max()) if meta["max_id"] is None else max(
                meta["max_id"], int(gids.max()))
        meta["rows"] += n
        meta["skipped"] += nbad
        meta["parts"].append(part_meta)
        j += 1
    meta["parts"] = [p for p in meta["parts"] if p["name"]]
    fsync_dir(os.path.join(job_dir, ITEMS_DIR))
    _write_block_marker(block_marker(job_dir, b), meta, counts, gt[0], cal)
    return meta["rows"]


def _attributes_of(ctx, f, part):
    """The part's attribute table as the index stores it (``ctx["attribute_schema"]``),
    all nulls when the input has none, or None when the index stores none;
    InputError naming the file and column when a column does not convert."""
    schema = ctx.get("attribute_schema")
    if schema is None:
        return None
    n = part.x.shape[0]
    if part.attrs is None:  # the index has attributes, this input none
        return null_table(schema, n)
    try:
        return as_attribute_table(part.attrs, n, schema)
    except ValueError as exc:
        raise InputError(f"{f.path}: {exc}") from None


def _repeated(ids, bad):
    """Rows whose id already appeared on an earlier good row of the same part."""
    good = np.flatnonzero(~bad)
    order = np.argsort(ids[good], kind="stable")
    s = ids[good][order]
    later = np.concatenate([[False], s[1:] == s[:-1]])
    rep = np.zeros(ids.size, bool)
    rep[good[order[later]]] = True
    return rep


def _write_run(job_dir, b, j, labels, gids, cols, nlist, counts, meta, attrs=None):
    """Sort one encoded part by (list, id) and write it as .npy files (and its
    attribute rows as an Arrow file); return its name."""
    if gids.size > 1 and (np.diff(gids) > 0).all():
        order = np.argsort(labels, kind="stable")  # default ids: already ascending
    else:
        order = np.lexsort((gids, labels))
    labels = labels[order]
    paths = _run_paths(job_dir, b, j)
    offsets = np.searchsorted(labels, np.arange(nlist + 1)).astype(np.int64)
    counts += np.diff(offsets)
    save_npy(paths["ids"], gids[order])
    for name, arr in cols.items():
        save_npy(paths[name], take_rows(arr, order))
    if attrs is not None:
        _save_table(paths["attributes"], attrs.take(pa.array(order)))
    save_npy(paths["offsets"], offsets)  # last: the run is complete once this exists
    meta["bytes"] += sum(os.path.getsize(p) for p in paths.values() if os.path.exists(p))
    return os.path.basename(paths["ids"])[: -len(".ids.npy")]


# -- merge -------------------------------------------------------------------------------------
def merge_batch(batch, ctx):
    """Ray Data task: write one store segment per list range of the groups in ``batch``.

    Returns rows ``{"range", "rows", "bytes"}``.
    """
    c, _ = job_context(ctx)
    return _rows_out([merge_range(c, r) for r in batch_units(batch, c)])


def merge_range(ctx, r):
    """Gather lists ``ctx["ranges"][r]`` from every run into one segment; write its marker."""
    job_dir = ctx["job_dir"]
    first, last = ctx["ranges"][r]
    a, b = int(first), int(last) + 1
    totals = np.asarray(ctx["counts"][a:b], np.int64)
    n = int(totals.sum())
    names = [name for name in ("codes", "vectors") if name in ctx["columns"]]
    out_ids = np.empty(n, np.int64)
    out = {name: np.empty((n, ctx["columns"][name][0]), ctx["columns"][name][1])
           for name in names}
    fill = np.concatenate([[0], np.cumsum(totals)[:-1]]).astype(np.int64)
    schema = ctx.get("attribute_schema")
    pieces, where = [], []  # attribute rows of each run, and their places in the segment
    for run in ctx["runs"]:
        base = os.path.join(job_dir, ITEMS_DIR, run)
        off = np.load(f"{base}.offsets.npy", mmap_mode="r")
        s, e = int(off[a]), int(off[b])
        if e == s:
            continue
        cnt = np.diff(np.asarray(off[a:b + 1], np.int64))
        dest = np.repeat(fill - (np.asarray(off[a:b], np.int64) - s), cnt) + np.arange(e - s)
        out_ids[dest] = np.load(f"{base}.ids.npy", mmap_mode="r")[s:e]
        for name in names:
            scatter_rows(out[name], dest, np.load(f"{base}.{name}.npy", mmap_mode="r")[s:e])
        if schema is not None:
            pieces.append(_load_table(f"{base}.attributes.arrow").slice(s, e - s))
            where.append(dest)
        fill += cnt
    want = np.concatenate([[0], np.cumsum(totals)[:-1]]) + totals
    if not np.array_equal(fill, want):
        raise RuntimeError(f"{job_dir}: runs hold other list sizes than their markers "
                           f"for lists {a}..{b - 1}; delete the job directory and rerun")
    rel = segment_name(ctx["job_id"], ctx["attempt"], r)
    loc = ctx["store"]
    loc.delete(rel)  # a partial file of a killed run of this (uncommitted) attempt
    list_ids = np.repeat(np.arange(a, b, dtype=np.int32), totals)
    extra = {}
    if schema is not None:
        # the runs' rows in segment order
        attrs = pa.concat_tables(pieces) if pieces else schema.empty_table()
        extra["attributes"] = attrs.take(pa.array(np.argsort(np.concatenate(where or [[]])
                                                             .astype(np.int64),
                                                             kind="stable")))
    # a local store: written in place; an object store: written locally, then uploaded
    # (before the marker, so a marked range has its segment in the store)
    with loc.staged(rel) as path:
        entry = write_segment(path, list_ids, out_ids, out, ctx["columns"], **extra)
    entry["path"] = rel
    write_json(range_marker(job_dir, r), entry)
    return {"range": r, "rows": n, "bytes": int(entry["size"])}


def plan_ranges(counts, row_bytes, target_bytes, max_rows):
    """Contiguous list ranges ``[(first, last)]`` of about ``target_bytes`` each.

    A list larger than the target gets a range of its own; empty trailing
    lists join the last range. Ranges with no rows are dropped.
    """
    counts = np.asarray(counts, np.int64)
    ranges, start, acc_rows = [], 0, 0
    limit_rows = max(1, min(int(target_bytes // max(row_bytes, 1)), int(max_rows)))
    for li in range(counts.size):
        c = int(counts[li])
        if acc_rows and acc_rows + c > limit_rows:
            ranges.append((start, li - 1))
            start, acc_rows = li, 0
        acc_rows += c
    ranges.append((start, counts.size - 1))
    return [(a, b) for a, b in ranges if counts[a:b + 1].sum()]
