"""What the stages of an ingest job share while it runs: :class:`JobRun` (the
job's plan, options, scratch directory, progress bars, stage timings, and
work spread over Ray Data tasks), :func:`task_groups` and :func:`run_on_ray`.
"""

import logging
import sys
import time

import numpy as np

logger = logging.getLogger(__name__)


class JobRun:
    """One job as its stages see it.

    Attributes
    ----------
    loc : the store's location (``shardann.storage.location``: a local
        directory or an object-store prefix, with its storage options).
    root : str, the store's absolute directory or URI (for messages).
    job_id : str.
    plan : the input plan (files, blocks, d, total rows).
    opts : dict, the options of :func:`shardann.distributed.ingest`.
    scratch : :class:`~._ingest_state.JobScratch`, the job directory.
    progress : bool, show progress bars.
    stage_seconds : dict stage -> wall seconds of this run.
    queries : ``(rows int64, x float32)``, the recall-check rows (set by the
        model stage).
    calibration : the job's ``_ingest_calibration.JobCalibration`` (its
        calibration set and the queries it drew), or None (set by the model stage).
    resumed_blocks : blocks an earlier run had encoded (set by the encode stage).
    attribute_schema : ``pyarrow.Schema`` of the attribute columns the job
        stores (the index's when appending to one that has some), or None.
    t0 : ``time.perf_counter()`` when the job was made (its summary's wall time).
    local_scratch : the scratch is on this machine's disk only (not a directory
        every node sees): the tasks run on the driver's node (see :meth:`map`).
    """

    def __init__(self, loc, job_id, plan, opts, scratch, progress, *, t0=None,
                 local_scratch=False):
        self.loc = loc
        self.root = loc.root
        self.local_scratch = bool(local_scratch)
        self._node = None
        self.job_id = job_id
        self.plan = plan
        self.opts = opts
        self.scratch = scratch
        self.progress = bool(progress)
        self.t0 = time.perf_counter() if t0 is None else t0
        self.stage_seconds = {}
        self.queries = None
        self.calibration = None
        self.resumed_blocks = 0
        self.attribute_schema = None

    @property
    def job_dir(self):
        return self.scratch.dir

    def timed(self, name, t):
        """Add the wall time since ``t`` (``time.perf_counter()``) to stage ``name``."""
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - t

    def bar(self, desc, total, initial=0):
        """A progress bar of vectors (tqdm on stderr; silent without ``progress``)."""
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit="vec", unit_scale=True,
                    disable=not self.progress, file=sys.stderr, dynamic_ncols=True,
                    smoothing=0.05, mininterval=0.5)

    def workers(self):
        """Ray Data tasks at once: ``num_workers``, default the cluster's CPUs
        (the driver node's when the tasks run there)."""
        import ray
        n = self.opts["num_workers"]
        if n is None:
            node = self.node()
            cpus = (node[1] if node is not None
                    else ray.cluster_resources().get("CPU", 1))
            n = max(1, int(cpus))
        return n

    def node(self):
        """``(node id, CPUs)`` of the driver's node when the tasks must run there
        (the scratch is on its disk only and the cluster has other nodes), else None."""
        if not self.local_scratch:
            return None
        if self._node is None:
            import ray

            me = ray.get_runtime_context().get_node_id()
            alive = [n for n in ray.nodes() if n.get("Alive")]
            cpus = next((n["Resources"].get("CPU", 0) for n in alive if n["NodeID"] == me), 0)
            if len(alive) <= 1:
                self._node = ()  # one node: nothing to pin
            elif cpus < 1:
                raise ValueError(
                    f"ingest into {self.root} keeps its scratch in {self.scratch.jobs}, on "
                    "this node's disk, so its tasks must run on this node, which has no "
                    "CPUs in the Ray cluster; pass work_dir= (--work-dir) on a volume "
                    "every node mounts, or run the ingest on a node with CPUs")
            else:
                self._node = (me, cpus)
                logger.info("ingest into %s: the scratch (%s) is on this node's disk, so "
                            "its tasks run on this node only (%d CPUs); work_dir= on a "
                            "volume every node mounts uses the whole cluster", self.root,
                            self.scratch.jobs, int(cpus))
        return self._node or None

    def work_context(self, model):
        """The context every worker task gets (see ``_ingest_work.job_context``):
        the plan, the options they use and the model (kind, config, arrays)."""
        o = self.opts
        ctx = {"plan": self.plan, "skip_bad_rows": o["skip_bad_rows"], "threads": 1,
               "id_base": 0, "store": self.loc, "job_dir": self.job_dir,
               "job_id": self.job_id, "attribute_schema": self.attribute_schema}
        if model is None:  # sampling needs no model; give a trivial one
            ctx.update(kind=None)
        else:
            st = model.to_state(lists=False)
            ctx.update(kind=model.kind, config=model.get_config(), arrays=st.arrays,
                       nlist=model.nlist, metric=model.metric, drift=st.drift)
        return ctx

    def map(self, groups, fn, ctx, on_row):
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
            remote_args = {}
            node = self.node()
            if node is not None:  # every node carries its id as a label
                remote_args["label_selector"] = {"ray.io/node-id": node[0]}
            ds = ds.map_batches(
                fn, batch_size=1, batch_format="numpy", num_cpus=1,
                compute=ray.data.TaskPoolStrategy(size=min(self.workers(), len(groups))),
                fn_kwargs={"ctx": [ray.put(ctx)]}, **remote_args)
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


def run_on_ray(fn, **init_options):
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
