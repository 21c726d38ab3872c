"""``shardann plan``: IVF-PQ parameters and a cluster layout for a target
recall, measured on a sample and extrapolated to the planned size.

:func:`plan` measures recall and search cost on the sample (or on generated
data of dimension ``d``: :func:`shardann.bench.datasets.synthetic`) at a few
list counts and database sizes (:mod:`._plan_measure`), fits the model of
:mod:`._plan_model` (recall = coarse recall x code-stage survival, both
thinned from the sample's per-rank measurements to N; cost linear in lists,
codes and candidates visited) and searches the candidates: every measured code layout
(nbits, M), kept-vector type and refine factor, list counts around sqrt(N),
and the smallest nprobe whose predicted recall reaches the target. The plan
is the candidate needing the fewest nodes (memory, and cores for ``qps``),
then the most queries per core, then the fewest bytes per vector.

Example::

    >>> from shardann.bench import plan                                  # doctest: +SKIP
    >>> p = plan(1_000_000_000, 768, metric="cosine", target_recall=0.9,
    ...          memory_per_node="64GiB", qps=2000)                      # doctest: +SKIP
    >>> p.nlist, p.nprobe, p.M, p.nbits, p.keep_vectors, p.refine_factor  # doctest: +SKIP
    >>> print(p.format())                                                # doctest: +SKIP
"""

import dataclasses
import logging
import math

import numpy as np

from .._text import format_bytes, parse_bytes, parse_count
from .._validation import check_choice, check_int
from . import _plan_model
from ._frontier import default_pq_configs
from ._plan_measure import MIN_POINTS_PER_LIST, NPROBES, measure, sample_rows

logger = logging.getLogger(__name__)

#: what the plan's figures rest on, printed with it
MODEL = (
    "recall = C x S: C the share of the true top-k in the probed lists, S the share of those "
    "the ADC scan + refine returns (shortlist survival x refine stage). Both are thinned from "
    "the sample's n rows to N: n rows are a 1-in-(N/n) subsample of N and subsampling divides "
    "every rank, exact or by ADC key, by N/n, so the rank-j neighbour of N rows within a "
    "shortlist of L = k x refine_factor behaves as the sample's rank-j*n/N neighbour within "
    "L*n/N, and is as often in the probed lists. C and the shortlist survival at N average the "
    "sample's measured per-rank shares at those ranks (below rank 1, the line through ranks "
    "1..3 extends them to rank 0); the refine stage's loss grows as a power of N fitted on "
    "the sample's full, half and quarter databases. Both are then fitted by weighted least "
    "squares, locally in nprobe and nlist (kernels of "
    f"{_plan_model.BANDWIDTH['nprobe']} and {_plan_model.BANDWIDTH['nlist']} in log units, "
    "extended linearly beyond the measured range), C on log(-log(1-C)), S on sqrt(1-S). "
    "CPU per query = a + b*nlist (coarse) + "
    "c + e*nprobe + f*codes (scan; codes = nprobe*N/nlist x measured list skew) + "
    "g*k*refine_factor (re-ranking), fitted on timed single-thread searches of the sample. "
    "Bytes per vector = id 8 + PQ code + kept vector; each shard also holds the centroids, "
    "codebooks and (l2) precomputed tables. One shard per node, in "
    "(1 - headroom) x memory_per_node; replicas add cores for the QPS target.")

_KEEPS = ("int8", "float16", "float32")
#: fewest vectors a plan is made for
MIN_VECTORS = 1000


@dataclasses.dataclass(frozen=True)
class Plan:
    """A planned index and cluster, with the figures the model expects.

    Attributes
    ----------
    vectors, d, metric, k, target_recall : what was asked for.
    nlist, nprobe, M, nbits : the IVF-PQ parameters (``IVFPQIndex(d, nlist, M, nbits)``,
        ``search(..., nprobe=nprobe)``).
    keep_vectors : None, "int8", "float16" or "float32": the vectors kept for refine.
    refine_factor : re-rank ``k * refine_factor`` candidates (0: no refine).
    shards, replicas, nodes : one shard per node; ``nodes = shards * replicas``.
    recall : predicted recall@k; ``coarse_recall`` and ``survival`` its two factors.
    qps_per_core : predicted queries per second per core (1 / CPU seconds per query).
    seconds_per_query : ``{"coarse", "scan", "refine", "total"}`` CPU seconds.
    bytes_per_vector : id + code + kept vector; ``shard_bytes``: memory a shard uses.
    memory_per_node, cores_per_node, qps : the cluster asked for (qps may be None).
    feasible : False when no candidate reaches ``target_recall`` (the plan is
        then the one with the highest predicted recall).
    notes : extrapolations and caveats, one line each.
    measured : what the sample measured (source, sizes, list counts, seconds) and
        the backtest (the model fitted without the largest database, predicting it).
    alternatives : the best candidate of each other layout, as dicts.
    model : the model, stated.
    """

    vectors: int
    d: int
    metric: str
    k: int
    target_recall: float
    nlist: int
    nprobe: int
    M: int
    nbits: int
    keep_vectors: object
    refine_factor: int
    shards: int
    replicas: int
    nodes: int
    recall: float
    coarse_recall: float
    survival: float
    qps_per_core: float
    seconds_per_query: dict
    bytes_per_vector: int
    shard_bytes: int
    memory_per_node: int
    cores_per_node: int
    qps: object
    feasible: bool
    notes: tuple
    measured: dict
    alternatives: tuple
    model: str = MODEL

    def to_dict(self):
        """The plan as JSON-able plain values."""
        out = dataclasses.asdict(self)
        out["notes"] = list(self.notes)
        out["alternatives"] = list(self.alternatives)
        return out

    def index_kwargs(self):
        """Keyword arguments of :class:`shardann.IVFPQIndex` for this plan."""
        return {"d": self.d, "nlist": self.nlist, "M": self.M, "nbits": self.nbits,
                "metric": self.metric, "keep_vectors": self.keep_vectors or False,
                "nprobe": self.nprobe}

    def format(self):
        """The plan for people: parameters, expected figures, model and notes."""
        s = self.seconds_per_query
        ms = {key: f"{v * 1e3:.3g} ms" for key, v in s.items()}
        head = (f"{self.vectors:,} vectors, d={self.d}, {self.metric}, recall@{self.k} >= "
                f"{self.target_recall:g}, {format_bytes(self.memory_per_node)} and "
                f"{self.cores_per_node} cores per node"
                + (f", {self.qps:,g} QPS" if self.qps else ""))
        keep = (f"refine_factor={self.refine_factor} on kept {self.keep_vectors} vectors"
                if self.refine_factor else "none (no vectors kept)")
        code = -(-self.M * self.nbits // 8)
        kept = self.bytes_per_vector - 8 - code
        rows = [
            ("plan", head),
            ("index", f"IVF-PQ nlist={self.nlist}, M={self.M}, nbits={self.nbits}, "
                      f"nprobe={self.nprobe}"),
            ("refine", keep),
            ("cluster", f"{self.shards} shard(s) x {self.replicas} replica(s) = "
                        f"{self.nodes} node(s), one shard per node"),
            ("recall", f"{self.recall:.3f} expected (coarse {self.coarse_recall:.3f} x codes "
                       f"{self.survival:.3f})" + ("" if self.feasible else
                                                  "  ** below the target **")),
            ("speed", f"{self.qps_per_core:,.0f} QPS per core (per query: coarse "
                      f"{ms['coarse']} + scan {ms['scan']} + refine {ms['refine']} CPU)"),
            ("memory", f"{self.bytes_per_vector} B per vector (id 8 + code {code}"
                       + (f" + {self.keep_vectors} {kept}" if kept else "") + "); "
                       f"{format_bytes(self.shard_bytes)} per shard"),
        ]
        m = self.measured
        rows.append(("measured", f"{m['source']}; databases of "
                     + "/".join(f"{v:,}" for v in m["sizes"]) + " rows, nlist "
                     + "/".join(str(v) for v in m["nlists"]) + f", {m['queries']} queries, "
                     f"in {m['seconds']:.0f} s"))
        b = m.get("backtest")
        if b:
            rows.append(("backtest", f"fitted without the {b['n']:,}-row database, the model "
                                     f"predicted {b['predicted']:.3f} at nlist={b['nlist']}, "
                                     f"nprobe={b['nprobe']}; measured {b['measured']:.3f}"))
        rows += [("note", n) for n in self.notes]
        for a in self.alternatives:
            rows.append(("alternative", _describe(a)))
        rows.append(("model", self.model))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _describe(c):
    keep = f" + refine x{c['refine_factor']} on {c['keep_vectors']}" if c["refine_factor"] \
        else ""
    return (f"{c['nbits']}-bit M={c['M']}{keep}, nlist={c['nlist']}, nprobe={c['nprobe']}: "
            f"recall {c['recall']:.3f}, {c['qps_per_core']:,.0f} QPS/core, "
            f"{c['bytes_per_vector']} B/vector, {c['nodes']} node(s)")


def candidate_nlists(n):
    """List counts considered for ``n`` vectors: powers of two from sqrt(n)/4
    to 16 sqrt(n), each list holding at least :data:`MIN_POINTS_PER_LIST` vectors."""
    lo = max(4.0, math.sqrt(n) / 4)
    hi = min(16 * math.sqrt(n), n / MIN_POINTS_PER_LIST)
    out = [1 << e for e in range(int(math.ceil(math.log2(lo))), int(math.log2(max(hi, 4))) + 1)]
    return out or [max(1, 1 << int(math.log2(max(1, n // MIN_POINTS_PER_LIST))))]


def candidate_nprobes(nlist):
    """nprobe values considered: 1, 2, 3, 4, 6, 8, 12, ... (steps of 1.5x and 2x) up to nlist."""
    out = [p for p in NPROBES if p <= nlist]
    while out[-1] * 2 <= nlist:
        out += [out[-2] * 2, out[-1] * 2]
    return sorted({p for p in out if p <= nlist})


def _cluster(n, bpv, fixed, memory, headroom, cores, qps, qps_per_core, min_replicas):
    """(shards, replicas, shard_bytes), or None when a node cannot hold a shard."""
    usable = memory * (1 - headroom) - fixed
    if usable <= bpv:
        return None
    shards = max(1, math.ceil(n * bpv / usable))
    replicas = min_replicas
    if qps:
        replicas = max(replicas, math.ceil(qps / (qps_per_core * cores * shards)))
    return shards, replicas, int(fixed + math.ceil(n / shards) * bpv)


def _candidates(recall, cost, n, d, metric, k, target, memory, headroom, cores, qps,
                min_replicas):
    out = []
    for nbits, M, keep, r in recall.layouts:
        bpv = _plan_model.bytes_per_vector(d, M, nbits, keep)
        for nlist in candidate_nlists(n):
            best = None
            for p in candidate_nprobes(nlist):
                c = recall.coarse(p, nlist, n)
                s = recall.survival(p, nlist, n, nbits, M, keep, r)
                if best is None or c * s > best[1] * best[2] + 1e-9:
                    best = (p, c, s)
                if c * s >= target:
                    break
            p, c, s = best
            sec = cost.seconds(p, nlist, n, nbits, M, keep, r)
            fixed = _plan_model.fixed_bytes(d, nlist, M, nbits, metric)
            layout = _cluster(n, bpv, fixed, memory, headroom, cores, qps, 1 / sec["total"],
                              min_replicas)
            if layout is None:
                continue
            shards, replicas, shard_bytes = layout
            out.append({"nbits": nbits, "M": M, "keep_vectors": keep, "refine_factor": r,
                        "nlist": nlist, "nprobe": p, "recall": c * s, "coarse_recall": c,
                        "survival": s, "seconds_per_query": sec,
                        "qps_per_core": 1 / sec["total"], "bytes_per_vector": bpv,
                        "shards": shards, "replicas": replicas, "nodes": shards * replicas,
                        "shard_bytes": shard_bytes, "feasible": c * s >= target})
    return out


def _rank(c):
    return (not c["feasible"], c["nodes"], -c["qps_per_core"], c["bytes_per_vector"])


def _backtest(meas, chosen, target):
    """The model fitted without the largest database, predicting it for the
    chosen layout at the measured list count nearest the plan's and the
    nprobe whose measured recall is nearest the target."""
    if len(meas.sizes) < 2:
        return None
    top = max(meas.sizes)
    partial = dataclasses.replace(
        meas, sizes=[s for s in meas.sizes if s != top],
        coarse=[r for r in meas.coarse if r["n"] != top],
        recall=[r for r in meas.recall if r["n"] != top],
        ranks=[r for r in meas.ranks if r["n"] != top])
    model = _plan_model.RecallModel(partial)
    nlist = min(meas.nlists, key=lambda v: abs(math.log(v / chosen["nlist"])))
    key = (chosen["nbits"], chosen["M"], chosen["keep_vectors"], chosen["refine_factor"])
    rows = [r for r in meas.recall if r["n"] == top and r["nlist"] == nlist
            and (r["nbits"], r["M"], r["keep"], r["refine"]) == key]
    if not rows:
        return None
    row = min(rows, key=lambda r: abs(r["recall"] - target))
    pred = model.predict(row["nprobe"], nlist, top, *key)
    return {"n": top, "nlist": nlist, "nprobe": row["nprobe"], "predicted": pred,
            "measured": row["recall"]}


def _notes(chosen, recall_model, n, headroom):
    notes = []
    rng = recall_model.range
    if n > rng["n"][1]:
        f = n / rng["n"][1]
        notes.append(f"N={n:,} is {f:,.3g}x the sample's database: recall is thinned "
                     f"from the sample (rank j of N read as the sample's rank j/{f:.3g}; below "
                     "rank 1 the sample's per-rank shares are extended to rank 0 by the line "
                     "through ranks 1..3) and the refine stage's loss extrapolated as a power "
                     f"of N fitted between {rng['n'][0]:,} and {rng['n'][1]:,} rows")
    if chosen["nlist"] > rng["nlist"][1] or chosen["nlist"] < rng["nlist"][0]:
        notes.append(f"nlist={chosen['nlist']} is outside the measured {rng['nlist'][0]}.."
                     f"{rng['nlist'][1]}: its recall is extrapolated linearly in log nlist")
    if chosen["nprobe"] > rng["nprobe"][1]:
        notes.append(f"nprobe={chosen['nprobe']} is above the largest measured "
                     f"({rng['nprobe'][1]:.0f}): extrapolated linearly in log nprobe")
    notes.append(f"QPS per core is single-thread CPU time on lists in memory, without Ray/HTTP "
                 f"overheads; memory keeps {headroom:.0%} of each node free")
    return notes


def plan(vectors, d=None, *, metric="l2", target_recall=0.9, memory_per_node="64GiB",
         sample=None, qps=None, k=10, cores_per_node=16, min_replicas=1,
         memory_headroom=0.25, sample_size=100_000, queries=1000, pq_configs=None,
         keeps=("int8", "float16"), refine_factors=(2, 4, 8), seed=0, measurements=None):
    """Plan an IVF-PQ index and cluster for ``vectors`` vectors of dimension ``d``.

    Parameters
    ----------
    vectors : int (or text like "1e9"), the planned number of vectors N.
    d : int, their dimension (default: the sample's).
    metric : "l2", "ip" or "cosine".
    target_recall : recall@k the plan must reach, in (0, 1).
    memory_per_node : bytes per node, int or text ("64GiB", "500GB").
    sample : float32 (m, d) array or a path (.npy, .fvecs, .bvecs, .parquet) of
        vectors like the planned ones; None generates them
        (:func:`shardann.bench.datasets.synthetic`, seed ``seed``).
    qps : queries per second the cluster must serve (None: no target; replicas
        = ``min_replicas``).
    k : neighbours per query.
    cores_per_node, min_replicas, memory_headroom : the cluster (headroom: share
        of each node's memory left free).
    sample_size : largest database taken from the sample (more rows: slower to
        measure, less extrapolation); queries: held-out sample rows used as queries.
    pq_configs : (nbits, M) pairs measured (default 4x(d/2), 4x(d/4), 8x(d/4)).
    keeps : kept-vector types measured for refine (may be empty: no refine).
    refine_factors : refine factors > 0 measured with each kept type.
    seed : sample draw and training seed.
    measurements : what :func:`measure_sample` returned for the same data,
        metric and k: plan again (another target, cluster or N) without measuring.

    Returns
    -------
    :class:`Plan`. Raises ``ValueError`` on bad arguments or when no layout fits
    a node's memory.
    """
    n = parse_count(vectors, "vectors")
    if n < MIN_VECTORS:
        raise ValueError(f"vectors must be at least {MIN_VECTORS:,} to plan an IVF index; "
                         f"got {n:,}")
    metric = check_choice("metric", metric, ("l2", "ip", "cosine"))
    if not 0 < float(target_recall) < 1:
        raise ValueError(f"target_recall must be in (0, 1); got {target_recall!r}")
    target = float(target_recall)
    memory = parse_bytes(memory_per_node)
    cores = check_int("cores_per_node", cores_per_node, low=1)
    min_replicas = check_int("min_replicas", min_replicas, low=1)
    k = check_int("k", k, low=1)
    if not 0 <= float(memory_headroom) < 1:
        raise ValueError(f"memory_headroom must be in [0, 1); got {memory_headroom!r}")
    if qps is not None and not float(qps) > 0:
        raise ValueError(f"qps must be > 0; got {qps!r}")
    if measurements is None:
        measurements = measure_sample(n, d, metric=metric, k=k, sample=sample,
                                      sample_size=sample_size, queries=queries,
                                      pq_configs=pq_configs, keeps=keeps,
                                      refine_factors=refine_factors, seed=seed)
    meas = measurements
    if d is not None and int(d) != meas.d:
        raise ValueError(f"d={d} but the sample has d={meas.d}")
    if meas.metric != metric or meas.k != k:
        raise ValueError(f"the measurements are for metric={meas.metric}, k={meas.k}; "
                         f"asked metric={metric}, k={k}")
    recall = _plan_model.RecallModel(meas)
    cost = _plan_model.CostModel(meas)
    cands = _candidates(recall, cost, n, meas.d, metric, k, target, memory,
                        float(memory_headroom), cores, qps, min_replicas)
    if not cands:
        raise ValueError(f"no layout fits {format_bytes(memory)} per node with "
                         f"{memory_headroom:.0%} headroom (the centroids alone may not)")
    cands.sort(key=_rank)
    chosen = cands[0] if cands[0]["feasible"] else max(cands, key=lambda c: c["recall"])
    seen = {(chosen["nbits"], chosen["M"], chosen["keep_vectors"], chosen["refine_factor"])}
    alternatives = []
    for c in cands:
        key = (c["nbits"], c["M"], c["keep_vectors"], c["refine_factor"])
        if key not in seen and c["feasible"] and len(alternatives) < 4:
            seen.add(key)
            alternatives.append(c)
    notes = _notes(chosen, recall, n, float(memory_headroom))
    if not chosen["feasible"]:
        notes.insert(0, f"no measured layout reaches recall {target:g}; this is the highest "
                        "predicted (measure more kept-vector types or refine factors)")
    measured = {"source": meas.source, "sizes": meas.sizes, "nlists": meas.nlists,
                "queries": meas.nq, "seconds": meas.seconds,
                "backtest": _backtest(meas, chosen, target)}
    return Plan(vectors=n, d=meas.d, metric=metric, k=k, target_recall=target,
                nlist=chosen["nlist"], nprobe=chosen["nprobe"], M=chosen["M"],
                nbits=chosen["nbits"], keep_vectors=chosen["keep_vectors"],
                refine_factor=chosen["refine_factor"], shards=chosen["shards"],
                replicas=chosen["replicas"], nodes=chosen["nodes"],
                recall=chosen["recall"], coarse_recall=chosen["coarse_recall"],
                survival=chosen["survival"], qps_per_core=chosen["qps_per_core"],
                seconds_per_query=chosen["seconds_per_query"],
                bytes_per_vector=chosen["bytes_per_vector"], shard_bytes=chosen["shard_bytes"],
                memory_per_node=memory, cores_per_node=cores,
                qps=None if qps is None else float(qps), feasible=chosen["feasible"],
                notes=tuple(notes), measured=measured, alternatives=tuple(alternatives))


def measure_sample(vectors, d=None, *, metric="l2", k=10, sample=None, sample_size=100_000,
                   queries=1000, pq_configs=None, keeps=("int8", "float16"),
                   refine_factors=(2, 4, 8), seed=0):
    """What :func:`plan` measures, alone (to plan several targets or clusters
    from one measurement: ``plan(..., measurements=m)``). Arguments as :func:`plan`.

    Returns a :class:`._plan_measure.Measurements` (``to_dict()`` for JSON).
    """
    n = parse_count(vectors, "vectors")
    if n < MIN_VECTORS:
        raise ValueError(f"vectors must be at least {MIN_VECTORS:,} to plan an IVF index; "
                         f"got {n:,}")
    label = "array"
    if sample is not None and not hasattr(sample, "shape"):
        from .datasets import read_vectors
        label = str(sample)
        sample = read_vectors(sample)
    if d is None:
        if sample is None:
            raise ValueError("give d, or a sample to read it from")
        d = sample.shape[1]
    d = check_int("d", d, low=1)
    queries = check_int("queries", queries, low=10)
    size = min(check_int("sample_size", sample_size, low=4 * 4 * MIN_POINTS_PER_LIST), n)
    keeps = [check_choice("keeps", v, _KEEPS) for v in (keeps or ())]
    factors = sorted({check_int("refine_factors", r, low=1) for r in refine_factors})
    if keeps and not factors:
        raise ValueError("kept vectors need at least one refine factor")
    configs = [tuple(c) for c in (pq_configs or default_pq_configs(d))]
    for nbits, M in configs:
        check_choice("nbits", nbits, (4, 8))
        if M < 1 or d % M:
            raise ValueError(f"M={M} does not divide d={d}")
    if not configs:
        raise ValueError(f"no (nbits, M) with M dividing d={d}; pass pq_configs")
    xb, xq, source = sample_rows(sample, d, n=size, nq=queries, seed=seed, label=label)
    logger.info("plan: measuring on %s", source)
    return measure(np.ascontiguousarray(xb), np.ascontiguousarray(xq), metric=metric, k=k,
                   pq_configs=configs, keeps=keeps, refine_factors=factors, seed=seed,
                   source=source)
