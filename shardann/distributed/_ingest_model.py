"""The first stages of an ingest job, on the driver: **sample** the inputs (the
training rows, the held-out recall-check rows and the calibration queries the
index's calibration set draws, see ``_ingest_calibration``) and **train** the
model — or take the model of the index being appended to, or of
``codebooks=``. The model, the check rows and the calibration draw are
checkpointed in the job directory (``model.parquet``, ``queries.npz``,
``calibration.npz``), so a resumed job does not train or draw again.
"""

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import InputError
from ..storage import IndexStore, decode_codebooks, encode_codebooks, fast_crc32
from ._ingest_calibration import load_checkpoint, plan_calibration, save_checkpoint
from ._ingest_fs import is_remote, local_path
from ._ingest_work import build_model, draw_rows, replace_into, sample_block

logger = logging.getLogger(__name__)

#: largest default training sample, in bytes of float32 vectors
SAMPLE_MAX_BYTES = 1 << 30
#: threads that read the drawn rows on the driver (mostly waiting on the disk)
SAMPLE_THREADS = 4
#: the sample is drawn in runs of consecutive rows of about this many bytes
SAMPLE_RUN_BYTES = 4096


def codebooks_source(path):
    """``(kind, config, arrays, identity)`` of ``codebooks=path``: an index
    (a directory or a store URI) or a local codebooks file; ``identity`` names
    its content (for the job hash)."""
    src = os.fspath(path)
    if is_remote(src):  # an index on an object store (a codebooks file must be local)
        if not IndexStore.exists(src):
            raise FileNotFoundError(f"codebooks={src!r}: no index there")
    else:
        src = os.path.abspath(local_path(src))
    if is_remote(src) or os.path.isdir(src):
        store = IndexStore.open(src)
        if not store.is_trained:
            raise ValueError(f"codebooks={src!r}: that index is not trained")
        cb = store.manifest["files"]["codebooks"]
        return store.kind, store.config, store.trained_arrays(), [src, cb["crc32"]]
    if not os.path.isfile(src):
        raise FileNotFoundError(f"codebooks={src!r}: no index directory or codebooks file")
    with open(src, "rb") as f:
        data = f.read()
    arrays, meta = decode_codebooks(data, src)
    return meta["kind"], meta["config"], arrays, [src, fast_crc32(data)]


def new_model(d, opts):
    """The untrained index of a new job's options (``M=None``: IVF-Flat); its
    ``train`` learns the ``pca`` projection too, as a local index's does.

    It logs its k-means iterations at INFO (``verbose``), so a long training
    shows progress; ``verbose`` is not part of the stored config.
    """
    from ..index import IVFFlatIndex, IVFPQIndex

    o = opts
    # calibration: the size of the set the job draws (default: the index's default)
    cal = {} if o.get("calibration") is None else {"calibration": o["calibration"]}
    if o["M"] is None:
        return IVFFlatIndex(d, o["nlist"], o["metric"], seed=o["seed"], niter=o["niter"],
                            pca=o["pca"], verbose=True, **cal)
    return IVFPQIndex(d, o["nlist"], o["M"], o["nbits"], o["metric"], seed=o["seed"],
                      opq=o["opq"], keep_vectors=o["keep_vectors"] or False, niter=o["niter"],
                      pq_niter=o["pq_niter"], pca=o["pca"], verbose=True, **cal)


def model_stage(run, state):
    """The trained model of the job (from its checkpoint, the index appended
    to, ``codebooks=``, or trained on a sample); sets ``run.queries`` and
    ``run.calibration`` (a ``JobCalibration`` or None)."""
    mpath = run.scratch.path("model.parquet")
    qpath = run.scratch.path("queries.npz")
    dpath = run.scratch.path("drift.json")  # the model's drift baseline, if any
    if os.path.exists(mpath) and os.path.exists(qpath):
        with open(mpath, "rb") as f:
            arrays, meta = decode_codebooks(f.read(), mpath)
        with np.load(qpath) as z:
            run.queries = (z["rows"], z["x"])
        run.calibration = load_checkpoint(run)
        drift = None
        if os.path.exists(dpath):
            with open(dpath) as f:
                drift = json.load(f)
        return build_model(meta["kind"], meta["config"], arrays, drift=drift)
    o = run.opts
    source = None
    drift = None
    if state["mode"] == "append":
        store = IndexStore.open(run.loc, state["base_version"])
        source = (store.kind, store.config, store.trained_arrays())
        drift = store.manifest.get("drift")  # its baseline measures the new rows
    elif o["codebooks"] is not None:
        source = codebooks_source(o["codebooks"])[:3]
    if source is not None:
        kind, config, arrays = source
        config = dict(config)
        if kind == "ivfpq" and state["mode"] == "create":
            config["keep_vectors"] = o["keep_vectors"] or False
        if state["mode"] == "create" and o["calibration"] is not None:
            config["calibration"] = o["calibration"]
        model = build_model(kind, config, arrays, drift=drift)
        if model.d != run.plan.d:
            raise ValueError(f"the model has d={model.d} but the inputs have d={run.plan.d}")
        job_cal = plan_calibration(run, state, model)
        _, queries = sample(run, 0, model.nlist, job_cal, state["id_base"])
    else:
        model = new_model(run.plan.d, o)
        job_cal = plan_calibration(run, state, model)
        train, queries = sample(run, sample_size(run, model.nlist), model.nlist, job_cal,
                                state["id_base"])
        t = time.perf_counter()
        logger.info("training %r on %d vectors", model, train.shape[0])
        model.train(train)
        del train
        run.timed("train", t)
    run.queries = queries
    run.calibration = job_cal
    save_checkpoint(run, job_cal)
    buf = encode_codebooks(model.to_state(lists=False).arrays, model.kind, model.get_config())
    rows, x = queries
    replace_into(qpath, lambda f: np.savez(f, rows=rows, x=x))
    drift = model.to_state(lists=False).drift
    if drift is not None:
        replace_into(dpath, lambda f: f.write(json.dumps(drift).encode()))
    replace_into(mpath, lambda f: f.write(buf))  # last: the model stage is done
    return model


def sample_size(run, nlist):
    """Rows to train on: ``sample_size``, default ``256 * nlist`` (at most
    :data:`SAMPLE_MAX_BYTES`), leaving the check rows out."""
    s = run.opts["sample_size"]
    if s is None:
        s = min(256 * nlist, max(nlist, SAMPLE_MAX_BYTES // (4 * run.plan.d)))
    return int(min(s, max(0, run.plan.total_rows - run.opts["spot_check"])))


def sample(run, size, nlist, job_cal=None, id_base=0):
    """Read a uniform sample of ``size`` rows, the disjoint check queries and
    the calibration rows ``job_cal`` drew (a ``JobCalibration``, given their
    ids and raw vectors; they may be training or check rows too).

    Returns ``(sample float32 (m, d), (query rows int64, queries float32))``.
    """
    t = time.perf_counter()
    plan = run.plan
    total = plan.total_rows
    nq = min(run.opts["spot_check"], max(0, total - size)) if total else 0
    if size and size < nlist:
        raise ValueError(f"training needs at least nlist={nlist} vectors; the inputs hold "
                         f"{total} rows (sample_size={size})")
    drawn = draw_rows(total, size + nq, max(1, SAMPLE_RUN_BYTES // (4 * plan.d)),
                      np.random.default_rng(run.opts["seed"]))
    qrows = np.sort(drawn[:nq])
    train_rows = drawn[nq:]
    cal_rows = np.zeros(0, np.int64) if job_cal is None else job_cal.rows
    drawn = np.union1d(drawn, cal_rows)  # sorted
    starts = plan.block_offsets()
    ends = starts + np.array([b.stop - b.start for b in plan.blocks], np.int64)
    lo = np.searchsorted(drawn, starts)
    hi = np.searchsorted(drawn, ends)
    todo = np.flatnonzero(hi > lo)
    ctx = run.work_context(None)
    ctx.update(drawn=drawn, id_base=id_base)
    rows_parts, ids_parts, x_parts = [], [], []
    bar = run.bar("sample", int((ends - starts)[todo].sum()))
    try:
        def on_row(row):
            if row["error"]:
                raise InputError(row["error"])
            rows_parts.append(row["rows"])
            ids_parts.append(row["ids"])
            x_parts.append(row["x"])
            b = plan.blocks[int(row["block"])]
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
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
    x = np.concatenate(x_parts) if x_parts else np.zeros((0, plan.d), np.float32)
    order = np.argsort(rows)
    rows, ids, x = rows[order], ids[order], x[order]
    is_q = np.isin(rows, qrows)
    is_train = np.isin(rows, train_rows)
    if job_cal is not None:
        is_cal = np.isin(rows, cal_rows)
        job_cal.take_rows(rows[is_cal], ids[is_cal], x[is_cal])
    run.timed("sample", t)
    if size:
        logger.info("sampled %d training rows and %d check rows from %d blocks",
                    int(is_train.sum()), int(is_q.sum()), todo.size)
    if job_cal is not None:
        logger.info("calibration set: %d queries kept, %d drawn from the job's %d rows",
                    job_cal.keep.size, job_cal.ids.size, total)
    return x[is_train], (rows[is_q], np.ascontiguousarray(x[is_q]))
