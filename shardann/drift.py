"""Drift of new data against the trained quantizers, as mergeable plain values.

An IVF index is trained on a sample; vectors added later are quantized with
that model. When the data drifts away from the sample, the new vectors sit
farther from their centroid (the *coarse* error, the squared L2 norm of the
residual) and their residuals are reproduced worse by the PQ codebooks (the
*pq* error, squared L2 norm of residual minus decoded code). Both are
measured in the space the centroids live in (after OPQ / PCA).

Three kinds of values, all JSON-able dicts (they go into manifests):

* a **baseline**, computed once at training on (a sample of) the training
  vectors: ``{"n", "coarse": {"mean", "std", "p50", "p90"}, "pq": {...},
  "lists": {"max_over_mean", "cv"}}`` (no ``"pq"`` for IVF-Flat);
* **stats** of added vectors: ``{"n", "coarse": {"sum", "sumsq", "over_p90"},
  "pq": {...}}`` — sums (and the count of rows above the training p90), so
  the stats of two batches, two commits or two ingest blocks add up
  (:func:`merge_stats`);
* a **report** (:func:`drift_report`): the means, their ratios to the
  training means, the *relative* PQ error (mean PQ error over mean coarse
  error: the share of the residual energy the codes miss) and its ratio to
  training's, the list-size imbalance and whether a retrain is recommended.

Retrain rule: recommended when the mean coarse or PQ error, or the relative
PQ error, of the vectors added since training exceeds the training figure by
more than ``threshold`` (default :data:`DEFAULT_THRESHOLD` = 1.25, i.e. 25 %
above), once at least :data:`MIN_ROWS` vectors were added. Vectors from the
training distribution measure 0.97-1.1 (in-sample training error is slightly
optimistic); shifted data measures far above (see the README, "Drift"). The
relative error is there for data that contracts: its absolute errors fall
below the training ones while the codebooks, fitted to larger residuals,
reproduce a larger share of each residual wrongly, and recall falls. It is
derived from the sums the stats already keep, so old manifests report it too.
"""

import math

import numpy as np

#: ratio of the new data's mean error to the training mean above which a
#: retrain is recommended
DEFAULT_THRESHOLD = 1.25
#: fewer added vectors than this never recommend a retrain (their mean is noise)
MIN_ROWS = 100
#: the error kinds, in report order
KINDS = ("coarse", "pq")
#: the report's name of the relative PQ error (PQ mean over coarse mean)
RELATIVE = "pq_relative"


def _percentiles(e):
    p50, p90 = np.percentile(e, [50, 90])
    return float(p50), float(p90)


def imbalance(sizes):
    """List-size imbalance of int (nlist,) ``sizes``: ``{"max_over_mean",
    "cv", "empty"}`` — largest list over the mean, coefficient of variation
    (std / mean) and the number of empty lists (0.0s for no rows)."""
    sizes = np.asarray(sizes, np.float64)
    mean = float(sizes.mean()) if sizes.size else 0.0
    if mean <= 0:
        return {"max_over_mean": 0.0, "cv": 0.0, "empty": int(sizes.size)}
    return {"max_over_mean": float(sizes.max() / mean), "cv": float(sizes.std() / mean),
            "empty": int((sizes == 0).sum())}


#: fewer training vectors per PQ code than this make the (in-sample) training
#: PQ error optimistic: unchanged data then reads up to ~1.3x (the report says so)
ROWS_PER_CODE = 64


def baseline(errors, labels=None, nlist=None, ksub=None):
    """The training-time baseline of ``errors`` (name -> float (n,) array).

    ``labels`` int (n,) with ``nlist``: the training rows' lists, for the
    list-size imbalance of the training assignment (``"lists"``). ``ksub``:
    codes per PQ sub-quantizer (``2**nbits``), kept as ``"rows_per_code"``.

    The errors are those of the training sample itself (in-sample): with
    fewer than :data:`ROWS_PER_CODE` training vectors per code the PQ error
    is optimistic (the codebooks fit their sample).
    """
    out = {"n": 0}
    for kind in KINDS:
        e = errors.get(kind)
        if e is None:
            continue
        e = np.asarray(e, np.float64)
        out["n"] = int(e.size)
        p50, p90 = _percentiles(e) if e.size else (0.0, 0.0)
        out[kind] = {"mean": float(e.mean()) if e.size else 0.0,
                     "std": float(e.std()) if e.size else 0.0, "p50": p50, "p90": p90}
    if ksub and "pq" in out:
        out["pq"]["rows_per_code"] = out["n"] / ksub
    if labels is not None:
        lists = imbalance(np.bincount(np.asarray(labels, np.int64), minlength=nlist))
        out["lists"] = {k: lists[k] for k in ("max_over_mean", "cv")}
    return out


def empty_stats(base):
    """Stats of no rows, with the error kinds of ``base`` (a baseline)."""
    out = {"n": 0}
    for kind in KINDS:
        if kind in base:
            out[kind] = {"sum": 0.0, "sumsq": 0.0, "over_p90": 0}
    return out


def stats(errors, base):
    """Stats of added rows from their ``errors`` (name -> float (n,) array),
    counting those above the training p90 of ``base``."""
    out = {"n": 0}
    for kind in KINDS:
        e = errors.get(kind)
        if e is None or kind not in base:
            continue
        out["n"] = int(e.size)
        e64 = np.asarray(e, np.float64)
        out[kind] = {"sum": float(e64.sum()), "sumsq": float(np.dot(e64, e64)),
                     "over_p90": int(np.count_nonzero(e > base[kind]["p90"]))}
    return out


def merge_stats(*parts):
    """The stats of the union of the rows behind ``parts`` (None parts are
    skipped; None when all are)."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    out = {"n": sum(int(p["n"]) for p in parts)}
    for kind in KINDS:
        have = [p[kind] for p in parts if kind in p]
        if have:
            out[kind] = {"sum": float(sum(h["sum"] for h in have)),
                         "sumsq": float(sum(h["sumsq"] for h in have)),
                         "over_p90": int(sum(h["over_p90"] for h in have))}
    return out


def _summary(st, base):
    """Means, std, ratios to the training means and the fraction above p90."""
    n = int(st["n"]) if st else 0
    out = {"n": n}
    for kind in KINDS:
        if kind not in base or not st or kind not in st or n == 0:
            continue
        s = st[kind]
        mean = s["sum"] / n
        var = max(s["sumsq"] / n - mean * mean, 0.0)
        train = base[kind]["mean"]
        out[kind] = {"mean": mean, "std": math.sqrt(var),
                     "ratio": mean / train if train > 0 else None,
                     "over_train_p90": s["over_p90"] / n}
    rel, rel_train = _relative(out), _relative(base)
    if rel is not None and rel_train:
        out[RELATIVE] = {"mean": rel, "ratio": rel / rel_train}
    return out


def _relative(part):
    """Mean PQ error over mean coarse error of a summary or baseline (None
    without a PQ error or with a zero coarse error)."""
    if "pq" not in part or "coarse" not in part or not part["coarse"]["mean"] > 0:
        return None
    return part["pq"]["mean"] / part["coarse"]["mean"]


def drift_report(section, list_sizes=None, threshold=DEFAULT_THRESHOLD):
    """What ``shardann info``, ``index.drift()`` and ``/metrics`` tell.

    Parameters
    ----------
    section : dict, a manifest's ``drift`` section (``"baseline"``,
        ``"since_training"``, optionally ``"latest"`` with its ``"version"``).
    list_sizes : int (nlist,) rows per list now, or None.
    threshold : float > 0, see :data:`DEFAULT_THRESHOLD`.

    Returns a dict: ``"threshold"``, ``"training"`` (the baseline),
    ``"since_training"`` and ``"latest"`` (``{"n", "coarse": {"mean", "std",
    "ratio", "over_train_p90"}, "pq": {...}}``; latest also ``"version"``, or
    None), ``"lists"`` (:func:`imbalance` of ``list_sizes`` plus the training
    ``"training_cv"``), ``"retrain_recommended"`` (bool), ``"reasons"``
    (strings naming the figures) and ``"notes"`` (caveats).
    """
    threshold = float(threshold)
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0; got {threshold}")
    base = section["baseline"]
    since = _summary(section.get("since_training"), base)
    latest = section.get("latest")
    if latest:
        latest = {"version": latest.get("version"), **_summary(latest, base)}
    lists = None
    if list_sizes is not None:
        lists = imbalance(list_sizes)
        if "lists" in base:
            lists["training_cv"] = base["lists"]["cv"]
            lists["training_max_over_mean"] = base["lists"]["max_over_mean"]
    reasons = []
    if since["n"] >= MIN_ROWS:
        for kind in KINDS:
            r = since.get(kind, {}).get("ratio")
            if r is not None and r > threshold:
                reasons.append(f"{kind} error of the {since['n']} vectors added since "
                               f"training is {r:.2f}x the training error "
                               f"({since[kind]['mean']:.4g} vs {base[kind]['mean']:.4g}; "
                               f"threshold {threshold:g}x)")
        rel = since.get(RELATIVE)
        if rel is not None and rel["ratio"] > threshold:
            reasons.append(f"relative PQ error (PQ over coarse error) of the {since['n']} "
                           f"vectors added since training is {rel['ratio']:.2f}x training's "
                           f"({rel['mean']:.4g} vs {_relative(base):.4g}; threshold "
                           f"{threshold:g}x): the codes miss a larger share of each residual")
    notes = []
    per_code = base.get("pq", {}).get("rows_per_code")
    if per_code is not None and per_code < ROWS_PER_CODE:
        notes.append(f"the codebooks were trained on {per_code:.0f} vectors per code "
                     f"(< {ROWS_PER_CODE}): the training PQ error is optimistic and "
                     "unchanged data may read up to ~1.3x; train on more vectors or "
                     "raise the threshold")
    return {"threshold": threshold, "training": base, "since_training": since,
            "latest": latest, "lists": lists, "retrain_recommended": bool(reasons),
            "reasons": reasons, "notes": notes}


def report_lines(report):
    """``(name, value)`` rows of a :func:`drift_report` for a terminal."""
    base = report["training"]
    rows = []
    for kind in KINDS:
        if kind in base:
            b = base[kind]
            rows.append((f"{kind} error, training",
                         f"mean {b['mean']:.4g} (p50 {b['p50']:.4g}, p90 {b['p90']:.4g}; "
                         f"{base['n']:,} training vectors)"))
    for label, part in (("since training", report["since_training"]),
                        ("latest commit", report["latest"])):
        if not part or not part["n"]:
            if label == "since training":
                rows.append(("added since training", "0 vectors"))
            continue
        where = f" (v{part['version']})" if part.get("version") else ""
        for kind in KINDS:
            if kind in part:
                p = part[kind]
                ratio = "?" if p["ratio"] is None else f"{p['ratio']:.2f}"
                rows.append((f"{kind} error, {label}",
                             f"mean {p['mean']:.4g} = {ratio}x training; "
                             f"{100 * p['over_train_p90']:.0f}% above training p90; "
                             f"{part['n']:,} vectors{where}"))
        if RELATIVE in part:
            p = part[RELATIVE]
            rows.append((f"pq/coarse, {label}",
                         f"{p['mean']:.4g} = {p['ratio']:.2f}x training "
                         f"({_relative(base):.4g}){where}"))
    lists = report["lists"]
    if lists is not None:
        text = (f"max/mean {lists['max_over_mean']:.2f}, cv {lists['cv']:.2f}, "
                f"{lists['empty']} empty")
        if "training_cv" in lists:
            text += (f" (training: max/mean {lists['training_max_over_mean']:.2f}, "
                     f"cv {lists['training_cv']:.2f})")
        rows.append(("list imbalance", text))
    for note in report["notes"]:
        rows.append(("note", note))
    if report["retrain_recommended"]:
        rows.append(("verdict", "retrain recommended: " + "; ".join(report["reasons"])))
    else:
        rows.append(("verdict", f"ok (no error ratio above {report['threshold']:g}x"
                     + (f" with >= {MIN_ROWS} vectors added" if
                        report["since_training"]["n"] < MIN_ROWS else "") + ")"))
    return rows


def gauges(report):
    """The figures ``/metrics`` exports, by Prometheus name (values are floats;
    a ratio without added vectors is left out)."""
    out = {}
    since = report["since_training"]
    for kind in KINDS:
        r = since.get(kind, {}).get("ratio")
        if r is not None:
            out[f"shardann_drift_{kind}_ratio"] = float(r)
    if RELATIVE in since:
        out[f"shardann_drift_{RELATIVE}_ratio"] = float(since[RELATIVE]["ratio"])
    out["shardann_drift_added_vectors"] = float(since["n"])
    out["shardann_drift_retrain_recommended"] = float(report["retrain_recommended"])
    out["shardann_drift_threshold"] = report["threshold"]
    lists = report["lists"]
    if lists is not None:
        out["shardann_list_imbalance"] = lists["max_over_mean"]
        out["shardann_list_size_cv"] = lists["cv"]
        out["shardann_empty_lists"] = float(lists["empty"])
    return out
