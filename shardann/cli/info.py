"""``shardann info PATH``: describe an index written by ``index.save(PATH)``."""

import json

import numpy as np

from .._text import format_bytes
from ..drift import DEFAULT_THRESHOLD
from . import _recall
from ._common import EXIT_OK, common_options

HELP = "Describe an index saved with index.save(PATH)."


def add_arguments(parser):
    common_options(parser, in_subcommand=True)
    parser.add_argument("path", metavar="PATH",
                        help="index directory or URI (s3://, gs://, az://, file://)")
    parser.add_argument("--drift-threshold", type=float, default=DEFAULT_THRESHOLD,
                        metavar="RATIO",
                        help="recommend a retrain when the mean coarse or PQ error of the "
                             "vectors added since training exceeds the training error by "
                             f"this factor (default {DEFAULT_THRESHOLD})")
    _recall.add_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the description as one JSON object (with the drift report)")
    return parser


def run(args):
    """Handler of ``shardann info``: reads the manifest and codebooks, not the lists
    (``--recall`` loads the index and its calibration set)."""
    from shardann.storage import IndexStore

    store = IndexStore.open(args.path)
    if getattr(args, "json", False):
        out = info_json(store, args.drift_threshold)
        out["recall"] = dict(_recall.rows(args, store))  # as the text rows say it
        print(json.dumps(out, indent=1))
        return EXIT_OK
    cfg = store.config
    d = cfg["d"]
    rows = [("path", store.path),
            ("kind", store.kind),
            ("d", d),
            ("metric", cfg["metric"])]
    if "nlist" in cfg:
        rows += [("nlist", cfg["nlist"]), ("nprobe", f"{cfg['nprobe']} (default per search)")]
    if cfg.get("pca"):
        rows.append(("pca", f"{d} -> {cfg['pca']} dimensions"))
    if "M" in cfg:
        rows += [("M", cfg["M"]), ("nbits", cfg["nbits"]),
                 ("code size", f"{-(-cfg['M'] * cfg['nbits'] // 8)} B"),
                 ("opq", "yes" if cfg.get("opq") else "no"),
                 ("kept vectors", cfg.get("keep_vectors") or "no (refine unavailable)")]
    rows += [("trained", "yes" if store.is_trained else "no"),
             ("ntotal", f"{store.ntotal:,}")]
    if "nlist" in cfg and store.is_trained:
        sizes = store.list_sizes()
        rows.append(("list sizes", f"min {sizes.min():,} / mean {sizes.mean():,.1f} / "
                                   f"max {sizes.max():,} ({int((sizes == 0).sum())} empty)"))
    if store.is_trained:
        parts = [("id", 8)] + [(name, spec["width"] * np.dtype(spec["dtype"]).itemsize)
                               for name, spec in store.columns.items()]
        rows.append(("bytes/vector", f"{sum(b for _, b in parts)} in memory ("
                     + " + ".join(f"{name} {b}" for name, b in parts)
                     + f"); raw float32 is {4 * d}"))
    if store.attribute_schema is not None:
        rows.append(("attributes", ", ".join(f"{f.name} ({f.type})"
                                             for f in store.attribute_schema)))
    m = store.manifest
    rows += [("version", f"{store.version} ({m['operation']} at {m['created_at']}); "
                         f"{len(store.history())} readable version(s)"),
             ("files", f"{len(m['files']['segments'])} segment(s), "
                       f"{len(m['files']['tombstones'])} tombstone file(s), "
                       f"{format_bytes(store.location.total_size())} stored")]
    rows += _recall.rows(args, store)
    drift = drift_rows(store, args.drift_threshold, sizes if "nlist" in cfg
                       and store.is_trained else None)
    width = max(len(name) for name, _ in rows + drift)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if drift:
        print("Drift")
        for name, value in drift:
            print(f"{name:<{width}}  {value}")
    return EXIT_OK


def info_json(store, threshold):
    """``shardann info --json``: the manifest's figures as values, and the drift
    report (:func:`shardann.drift.drift_report`, null without a baseline)."""
    m = store.manifest
    out = {"path": store.path, "kind": store.kind, "config": store.config,
           "trained": store.is_trained, "ntotal": store.ntotal, "version": store.version,
           "operation": m["operation"], "created_at": m["created_at"],
           "versions": len(store.history()), "segments": len(m["files"]["segments"]),
           "tombstones": len(m["files"]["tombstones"]),
           "stored_bytes": store.location.total_size(),
           "attributes": (None if store.attribute_schema is None else
                          {f.name: str(f.type) for f in store.attribute_schema}),
           "list_sizes": None, "drift": None}
    if "nlist" in store.config and store.is_trained:
        sizes = store.list_sizes()
        out["list_sizes"] = {"min": int(sizes.min()), "mean": float(sizes.mean()),
                             "max": int(sizes.max()), "empty": int((sizes == 0).sum())}
        out["drift"] = store.drift(threshold, list_sizes=sizes)
    return out


def drift_rows(store, threshold, sizes):
    """The "Drift" section's rows (none without a drift baseline)."""
    from shardann.drift import report_lines

    report = store.drift(threshold, list_sizes=sizes)
    return [] if report is None else report_lines(report)

