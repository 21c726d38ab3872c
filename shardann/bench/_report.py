"""Output of ``shardann bench core``, ``bench frontier`` and ``bench filter``:
the printed summaries, the recall-QPS plots and the JSON files."""

import json
import math
import os
import textwrap

import numpy as np

from . import _timing
from ._runners import KIND_LABELS, LIBS

JSON_NAME = "core.json"
PNG_NAME = "core-recall-qps.png"
FRONTIER_JSON = "frontier.json"
FRONTIER_PNG = "frontier-recall-qps.png"
FILTER_JSON = "filter.json"
FILTER_PNG = "filter-recall-qps.png"
_SYSTEM_STYLE = {"shardann": ("tab:orange", "o", "shardann"), "faiss": ("tab:blue", "s", "FAISS"),
                 "scann": ("tab:green", "^", "ScaNN"), "lancedb": ("tab:purple", "D", "LanceDB")}


def _fmt(v, kind):
    if v is None:
        return "-"
    if kind == "recall":
        return f"{v:.4f}"
    if kind == "ratio":
        return f"{v:.2f}x"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "ms":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if kind == "s":
        return f"{v:.2f}"
    return str(v)


_COLUMNS = (  # header, result key (tuple = nested), ratio key, format, width
    ("recall@{k}", "recall", "recall", "recall", 10),
    ("QPS", "qps", "qps", "int", 9),
    ("QPS cpu", "qps_cpu", "qps_cpu", "int", 9),
    ("p50 ms", ("latency_ms", "p50"), "latency_p50", "ms", 8),
    ("p99 ms", ("latency_ms", "p99"), "latency_p99", "ms", 8),
    ("train s", "train_s", "train_s", "s", 9),
    ("train cpu", "train_cpu_s", "train_cpu_s", "s", 10),
    ("add vec/s", "add_vps", "add_vps", "int", 11),
    ("1st ms", "first_call_ms", "first_call_ms", "ms", 10),
)


def _get(res, key):
    return res[key[0]][key[1]] if isinstance(key, tuple) else res[key]


def _within(e):
    w = e.get("within_se")
    if not w:
        return "-"
    return f"{w['ratio_shardann_over_faiss_cpu']:.2f}x @nprobe={w['nprobe']}"


def format_report(report):
    """The printed summary of a benchmark report (a string)."""
    c = report["config"]
    ds = report["dataset"]
    fd = report["faiss_defaults"]
    sh = report["shardann_settings"]
    libs = report.get("libs", LIBS)
    with_faiss = "faiss" in libs
    threads = ", ".join(["FAISS OpenMP"] * with_faiss + ["Numba", "BLAS via threadpoolctl"])
    lines = [
        f"shardann bench core: n={ds['n']:,} d={ds['d']} nq={ds['nq']} ntrain={ds['ntrain']:,} "
        f"nlist={c['nlist']} M={c['M']} nprobe={c['nprobe']} k={c['k']} metric={c['metric']}; "
        f"1 thread{' each' if with_faiss else ''} ({threads})",
        f"data: {ds['source']}; train: {ds['train']}"
        + (" (the same sample for both)" if with_faiss else ""),
        f"ground truth: {report['ground_truth']['method']}",
    ]
    if with_faiss:
        lines.append(
            f"training iterations (FAISS {fd['version']} defaults, mirrored in shardann): "
            f"coarse k-means niter={sh['niter']}, PQ niter={sh['pq_niter']}, "
            f"max_points_per_centroid={sh['max_points_per_centroid']}; FAISS SIMD level "
            f"{fd.get('simd_level', '?')}")
    else:
        lines.append(
            f"training iterations (FAISS's defaults, built in): coarse k-means "
            f"niter={sh['niter']}, PQ niter={sh['pq_niter']}, max_points_per_centroid="
            f"{sh['max_points_per_centroid']}; FAISS not installed: shardann alone, no ratios")
    for kind, entry in report["results"].items() if with_faiss else ():
        fp = entry["faiss"]["params"]
        extra = ", ".join(f"{k}={v}" for k, v in fp.items()
                          if k in ("by_residual", "use_precomputed_table (after train)",
                                   "do_polysemous_training", "k_factor"))
        lines.append(f"  {kind:<14} FAISS {fp['index_factory']} ({fp['ivf_class']}; {extra})")
    env = report["environment"]
    la = [r[key] for e in report["results"].values() for r in (e[lib] for lib in libs)
          for key in ("load_avg_start", "load_avg_end") if r.get(key) is not None]
    if la:
        lines.append(f"machine: {env['cpu']}, {env['os_cpu_count']} CPUs; 1-min load average "
                     f"during the run {min(la):.1f}..{max(la):.1f}")
        if max(la) > 1.5:
            lines.append("  NOTE: other processes were running; wall-clock figures are noisy. "
                         "'QPS cpu' / 'train cpu' use this process's CPU time, which competing "
                         "load disturbs much less.")
    lines.append("")

    k = c["k"]
    head = f"{'kind':<15}{'':<16}" + "".join(f"{h.format(k=k):>{w}}"
                                             for h, _, _, _, w in _COLUMNS)
    lines += [head, "-" * len(head)]
    for kind, entry in report["results"].items():
        for i, lib in enumerate(libs):
            r = entry[lib]
            lines.append(f"{kind if i == 0 else '':<15}"
                         f"{'FAISS' if lib == 'faiss' else 'shardann':<16}"
                         + "".join(f"{_fmt(_get(r, key), fmt):>{w}}"
                                   for _, key, _, fmt, w in _COLUMNS))
        if with_faiss:
            ra = entry["ratio"]
            lines.append(f"{'':<15}{'shardann/FAISS':<16}"
                         + "".join(f"{_fmt(ra[rk], 'ratio'):>{w}}"
                                   for _, _, rk, _, w in _COLUMNS))
        lines.append("")
    if with_faiss:
        lines.append("ratio rows = shardann / FAISS per column: above 1x is better for recall, "
                     "QPS and add vec/s; below 1x is better for ms and train seconds.")
    lines += [
        f"QPS = nq / best-of-{c['reps']} wall seconds of one batch search call; QPS cpu = the "
        "same with process CPU seconds; p50/p99 = one query per call "
        f"({c['latency_queries']} queries); train/add = one call each; 1st ms = the first "
        "single-query search in this process, on a tiny warm-up index (shardann: Numba loads "
        "its on-disk cache, or compiles; kernels shared by kinds load only once).",
    ]
    if with_faiss:
        lines += _format_equal_recall(report)
    lines += _format_split(report)
    return "\n".join(lines)


def _format_equal_recall(report):
    c = report["config"]
    lines = [
        "",
        f"equal-recall comparison (nprobe sweep {c['nprobe_sweep']}, best of {c['sweep_reps']} "
        "per point; the other library's QPS is interpolated in log-QPS between sweep points):",
    ]
    head = (f"{'kind':<15}{'recall':>8}  {'= recall of':<21}{'FAISS QPS':>11}"
            f"{'shardann QPS':>14}{'shardann/FAISS':>16}{'(CPU-time)':>12}"
            f"{'within 1 SE (CPU)':>20}")
    lines += [head, "-" * len(head)]
    marks = {"interpolated": "~", "exact": "", "lower bound": ">=", "not reached": "n/r "}
    for kind, entry in report["results"].items():
        for i, e in enumerate(entry["equal_recall"]):
            who = "FAISS" if e["reached_by"] == "faiss" else "shardann"
            f_q, s_q = _fmt(e["faiss_qps"], "int"), _fmt(e["shardann_qps"], "int")
            if e["interpolated_lib"] == "faiss":
                f_q = marks[e["interpolation"]] + f_q
            else:
                s_q = marks[e["interpolation"]] + s_q
            lines.append(f"{kind if i == 0 else '':<15}{e['recall']:>8.4f}  "
                         f"{who + ' @nprobe=' + str(e['at_nprobe']):<21}{f_q:>11}{s_q:>14}"
                         f"{_fmt(e['ratio_shardann_over_faiss'], 'ratio'):>16}"
                         f"{_fmt(e['ratio_shardann_over_faiss_cpu'], 'ratio'):>12}"
                         f"{_within(e):>20}")
    lines += [
        "~ interpolated; >= that library already exceeds the recall at its smallest nprobe "
        "(its QPS there is a lower bound); n/r that library never reaches the recall in the "
        "sweep. 'within 1 SE': the other library at its smallest sweep nprobe whose recall "
        "is within one binomial standard error (sqrt(r(1-r)/(nq*k))) of the target - use "
        "it where a curve is flat and the strict ratio hinges on a few hits.",
    ]
    return lines


def _format_split(report):
    c, ds = report["config"], report["dataset"]
    libs = report.get("libs", LIBS)
    lines = [
        "",
        f"where the batch search time goes at nprobe={c['nprobe']} (CPU ms for all "
        f"{ds['nq']} queries, best of {c['reps']}): coarse = quantizer.search / index.probe; "
        "scan = search_preassigned / index.scan; refine = exact re-ranking on top of the scan",
    ]
    for kind, entry in report["results"].items():
        for i, lib in enumerate(libs):
            ts = entry[lib].get("time_split_cpu_s")
            name = kind if i == 0 else ""
            libn = "FAISS" if lib == "faiss" else "shardann"
            if ts is None:
                lines.append(f"{name:<15}{libn:<10} (not split: IndexRefineFlat)")
                continue
            total = sum(ts.values())
            parts = "   ".join(f"{part} {v * 1e3:8.1f} ms ({v / total * 100:4.1f}%)"
                               for part, v in ts.items())
            lines.append(f"{name:<15}{libn:<10} {parts}")
    return lines


def _nprobe_curve(ax, points, color, marker, label):
    """One recall-QPS curve on ``ax``, each point labelled with its nprobe."""
    ax.plot([p["recall"] for p in points], [p["qps"] for p in points], marker=marker,
            color=color, label=label)
    for p in points:
        ax.annotate(str(p["nprobe"]), (p["recall"], p["qps"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3), color=color)


def recall_qps_figure(report):
    """The matplotlib figure of :func:`plot` (needs matplotlib)."""
    from matplotlib.figure import Figure

    kinds = list(report["results"])
    libs = report.get("libs", LIBS)
    ncols = min(2, len(kinds))
    nrows = math.ceil(len(kinds) / ncols)
    fig = Figure(figsize=(6.2 * ncols, 4.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    c, ds = report["config"], report["dataset"]
    style = {"faiss": ("tab:blue", "s", "FAISS"), "shardann": ("tab:orange", "o", "shardann")}
    for ax, kind in zip(axes.flat, kinds, strict=False):
        entry = report["results"][kind]
        for lib in libs:
            color, marker, label = style[lib]
            sw = entry[lib]["sweep"]
            _nprobe_curve(ax, sw, color, marker, f"{label} (wall)")
            if all("qps_cpu" in s for s in sw):
                ax.plot([s["recall"] for s in sw], [s["qps_cpu"] for s in sw], marker=marker,
                        color=color, linestyle="--", alpha=0.45, markersize=4,
                        label=f"{label} (CPU time)")
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{c['k']}")
        ax.set_ylabel("QPS (1 thread, batch)")
        key = entry["faiss"]["params"].get("index_factory", "") if "faiss" in entry else ""
        ax.set_title(KIND_LABELS[kind] + (f"  [{key}]" if key else ""), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    title = (f"{'shardann vs FAISS' if 'faiss' in libs else 'shardann (FAISS not installed)'}"
             f", 1 thread: n={ds['n']:,} d={ds['d']} nq={ds['nq']} metric={c['metric']}, "
             f"nprobe sweep {c['nprobe_sweep']} (point labels)")
    # wrapped to the figure's width (about 11 characters per inch at 10 pt),
    # then laid out with the panels so that no line is cut off
    fig.suptitle(textwrap.fill(title, width=int(11 * fig.get_figwidth())), fontsize=10)
    fig.tight_layout()
    return fig


def plot(report, path):
    """Recall-QPS curves, one panel per kind, each library present; a PNG at ``path``."""
    recall_qps_figure(report).savefig(path, dpi=120)


def write_outputs(report, out_dir, make_plot=True, *, names=(JSON_NAME, PNG_NAME),
                  figure=recall_qps_figure):
    """Write the JSON (and the PNG of ``figure(report)`` when ``make_plot`` and
    matplotlib is installed) under the file ``names``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, names[0])}
    if make_plot and _timing.optional_import("matplotlib")[0] is not None:
        paths["png"] = os.path.join(out_dir, names[1])
        figure(report).savefig(paths["png"], dpi=120)
    report["outputs"] = paths
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1, default=json_default)
    return paths


def json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# --------------------------------------------------------------------------
# bench frontier
# --------------------------------------------------------------------------
def format_frontier(report):
    """The printed summary of a ``bench frontier`` report (a string)."""
    c, ds, env = report["config"], report["dataset"], report["environment"]
    systems = report["systems"]
    names = {s: _SYSTEM_STYLE[s][2] for s in systems}
    la = [v for v in (report.get("load_avg_start"), report.get("load_avg_end")) if v is not None]
    lines = [
        f"shardann bench frontier: n={ds['n']:,} d={ds['d']} nq={ds['nq']} "
        f"ntrain={ds['ntrain']:,} metric={c['metric']} "
        f"nlist={','.join(map(str, c.get('nlists') or [c['nlist']]))} k={c['k']}; "
        f"1 thread each; best of {c['reps']} interleaved repetitions per point",
        f"data: {ds['source']}; ground truth: {report['ground_truth']['method']}",
        f"machine: {env['cpu']}, {env['os_cpu_count']} CPUs, flags "
        f"{' '.join(env.get('cpu_flags') or ['?'])}"
        + (f"; 1-min load average {min(la):.1f}..{max(la):.1f}" if la else ""),
        "builds: " + "; ".join(
            f"{names[b['system']]} {b['config']} "
            + (f"train {b['train_s']:.1f} s" if "train_s" in b else
               f"build {b['build_s']:.1f} s" if "build_s" in b else "(twin: same training)")
            for b in report["builds"]),
        "",
        "Pareto frontier per system (no other point of that system is both faster and "
        "more accurate):",
    ]
    for s in systems:
        lines.append(f"  {names[s]}:")
        for p in report["frontier"][s]:
            lines.append(f"    recall {p['recall']:.4f}  QPS {p['qps']:>9,.0f}  {p['label']}")
    lines += ["", "best QPS at recall@{k} >= target (a measured point; ratio = shardann QPS "
              "/ that system's):".format(k=c["k"])]
    head = f"{'target':>7}  {'shardann':>9}  {'(configuration)':<44}"
    for s in systems[1:]:
        head += f"{names[s]:>10} {'shardann/' + names[s]:>17}"
    lines += [head, "-" * len(head)]
    for row in report["at_recall"]:
        ref = row["shardann"]
        line = (f"{row['target']:>7.2f}  {_fmt(ref and ref['qps'], 'int'):>9}  "
                f"{(ref['label'] if ref else 'not reached'):<44}")
        for s in systems[1:]:
            p = row[s]
            line += (f"{_fmt(p and p['qps'], 'int'):>10} "
                     f"{_fmt(row['shardann_over_' + s], 'ratio'):>17}")
        lines.append(line)
    lines.append("")
    lines.append("configuration to pick for a recall target (shardann's fastest point above "
                 "it, from this run):")
    for row in report["at_recall"]:
        ref = row["shardann"]
        lines.append(f"  recall >= {row['target']:.2f}: "
                     + (f"{ref['label']} (recall {ref['recall']:.3f}, {ref['qps']:,.0f} QPS)"
                        if ref else "not reached in this sweep"))
    return "\n".join(lines)


def frontier_figure(report):
    """Recall-QPS scatter of every point and each system's frontier (needs matplotlib)."""
    from matplotlib.figure import Figure

    c, ds = report["config"], report["dataset"]
    fig = Figure(figsize=(9, 6))
    ax = fig.subplots()
    for s in report["systems"]:
        color, marker, label = _SYSTEM_STYLE[s]
        pts = [p for p in report["points"] if p["system"] == s]
        ax.scatter([p["recall"] for p in pts], [p["qps"] for p in pts], color=color,
                   marker=marker, alpha=0.25, s=14)
        fr = report["frontier"][s]
        ax.plot([p["recall"] for p in fr], [p["qps"] for p in fr], color=color, marker=marker,
                label=f"{label} frontier")
    for t in (row["target"] for row in report["at_recall"]):
        ax.axvline(t, color="grey", alpha=0.3, linestyle=":")
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{c['k']}")
    ax.set_ylabel("QPS (1 thread, batch)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    title = (f"recall-QPS frontier, 1 thread: n={ds['n']:,} d={ds['d']} nq={ds['nq']} "
             f"metric={c['metric']} nlist={','.join(map(str, c.get('nlists') or [c['nlist']]))} "
             "(faint: every configuration point)")
    ax.set_title(textwrap.fill(title, width=100), fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# bench filter
# --------------------------------------------------------------------------
def _filter_header(report):
    c, ds, env = report["config"], report["dataset"], report["environment"]
    names = {s: _SYSTEM_STYLE[s][2] for s in report["systems"]}
    nbits, M = c["pq"]
    la = [v for v in (report.get("load_avg_start"), report.get("load_avg_end")) if v is not None]
    lance_nq = (f" (LanceDB: the first {c['lancedb_nq']}, one query per call)"
                if "lancedb" in names else "")
    lines = [
        f"shardann bench filter: n={ds['n']:,} d={ds['d']} nq={ds['nq']}{lance_nq} "
        f"ntrain={ds['ntrain']:,} metric={c['metric']} nlist={c['nlist']} PQ M={M} "
        f"x {nbits} bits, no refine, k={c['k']}; 1 thread each; best of {c['reps']} "
        "interleaved repetitions per point",
        f"data: {ds['source']}; ground truth: {report['ground_truth']['method']}",
        f"machine: {env['cpu']}, {env['os_cpu_count']} CPUs"
        + (f"; 1-min load average {min(la):.1f}..{max(la):.1f}" if la else ""),
        "builds: " + "; ".join(f"{names[s]} {_build_label(s, b)} {b['train_s']:.1f} s"
                               for s, b in report["builds"].items()),
        "filters (the attribute 'category', independent of the vectors): " + "; ".join(
            f"{f['label']} {f['sql']} ({f['count']:,} rows)" for f in report["filters"][1:]),
    ]
    return lines


def _build_label(system, build):
    desc = build["describe"]
    if system == "faiss":
        return f"{desc['index_factory']} (IDSelectorBitmap in SearchParametersIVF) train"
    if system == "lancedb":
        return "IVF_PQ + BITMAP scalar index, where(prefilter=True), build"
    return f"{desc['class']} train"


def format_filter(report):
    """The printed summary of a ``bench filter`` report (a string)."""
    c = report["config"]
    systems = report["systems"]
    names = {s: _SYSTEM_STYLE[s][2] for s in systems}
    sweep = c["nprobe_sweep"]
    labels = [f["label"] for f in report["filters"]]
    pts = {(p["system"], p["config"], p["nprobe"]): p for p in report["points"]}
    lines = _filter_header(report) + ["", f"recall@{c['k']} and QPS by filter and nprobe:"]
    head = f"{'system':<10}{'filter':<12}" + "".join(f"{'nprobe ' + str(p):>17}" for p in sweep)
    lines += [head, "-" * len(head)]
    for s in systems:
        for i, lab in enumerate(labels):
            cells = "".join(f"{pts[s, lab, p]['recall']:>9.3f}{pts[s, lab, p]['qps']:>8,.0f}"
                            for p in sweep)
            lines.append(f"{names[s] if i == 0 else '':<10}{lab:<12}{cells}")
    target = report["recall_kept_target"]
    lines += ["", "recall kept under the filter: filtered recall / the same system's unfiltered "
              f"recall at the same nprobe (target >= {target:.2f}x):"]
    head = f"{'system':<10}{'filter':<12}" + "".join(f"{'nprobe ' + str(p):>11}" for p in sweep) \
        + f"{'min':>8}"
    lines += [head, "-" * len(head)]
    for s in systems:
        for i, lab in enumerate(labels[1:]):
            kept = report["recall_kept"][s][lab]
            by = {r["nprobe"]: r["ratio"] for r in kept["by_nprobe"]}
            cells = "".join(f"{_fmt(by.get(p), 'ratio'):>11}" for p in sweep)
            lines.append(f"{names[s] if i == 0 else '':<10}{lab:<12}{cells}"
                         f"{_fmt(kept['min'], 'ratio'):>8}")
    lines += ["", f"best QPS at recall@{c['k']} >= fraction x {report['unfiltered_recall']:.4f} "
              "(shardann's best unfiltered recall in the sweep); a measured point, its "
              "nprobe in brackets:"]
    head = f"{'filter':<12}{'fraction':>9}{'recall':>8}{'shardann':>16}"
    for s in systems[1:]:
        head += f"{names[s]:>16}{'shardann/' + names[s]:>18}"
    lines += [head, "-" * len(head)]
    for row in report["at_recall"]:
        line = f"{row['filter']:<12}{row['fraction']:>9.2f}{row['recall']:>8.3f}" \
            + f"{_qps_at(row['shardann']):>16}"
        for s in systems[1:]:
            line += f"{_qps_at(row[s]):>16}{_fmt(row['shardann_over_' + s], 'ratio'):>18}"
        lines.append(line)
    lines += _format_equal_recall_filter(report, names)
    lines += _format_filter_targets(report, names)
    return "\n".join(lines)


def _qps_at(p):
    return "not reached" if p is None else f"{p['qps']:,.0f} ({p['nprobe']})"


def _format_equal_recall_filter(report, names):
    rows = [r for r in report["equal_recall"] if r["system"] == "faiss"]
    if not rows:
        return []
    marks = {"interpolated": "~", "exact": "", "lower bound": ">=", "not reached": "n/r "}
    lines = ["", "equal recall: each point of FAISS's recall-QPS frontier (no FAISS point "
             "both faster and more accurate) against the QPS shardann needs for the same "
             "recall (~ log-interpolated between shardann's sweep points; >= shardann's "
             "smallest nprobe already does better; n/r shardann never reaches it), and "
             "shardann's fastest measured point at least as accurate; every system's rows "
             "are in the JSON:"]
    head = (f"{'filter':<12}{'system':<10}{'nprobe':>7}{'recall':>8}{'QPS':>9}"
            f"{'shardann QPS':>14}{'shardann/system':>17}{'measured (nprobe)':>19}"
            f"{'ratio':>8}")
    lines += [head, "-" * len(head)]
    for r in rows:
        sq = marks[r["interpolation"]] + _fmt(r["shardann_qps"], "int") \
            if r["shardann_qps"] is not None else "n/r"
        lines.append(f"{r['filter']:<12}{names[r['system']]:<10}{r['nprobe']:>7}"
                     f"{r['recall']:>8.3f}{r['qps']:>9,.0f}{sq:>14}"
                     f"{_fmt(r['shardann_over_system'], 'ratio'):>17}"
                     f"{_qps_at(r['shardann_measured']):>19}"
                     f"{_fmt(r['measured_over_system'], 'ratio'):>8}")
    return lines


def _format_filter_targets(report, names):
    """issue 21's two targets, for every selectivity below 100%."""
    target = report["recall_kept_target"]
    lines = ["", "targets: (1) shardann's filtered recall >= "
             f"{target:.2f}x its unfiltered recall at every nprobe of the sweep; "
             "(2) shardann's QPS >= FAISS's at equal recall, at each point of FAISS's "
             "frontier whose recall shardann reaches (interpolated as in the table above):"]
    for f in report["filters"][1:]:
        if f["selectivity"] >= 1.0:
            continue
        kept = report["recall_kept"]["shardann"][f["label"]]["min"]
        line = (f"  {f['label']:>6}: (1) min {_fmt(kept, 'ratio')} "
                f"{'met' if kept is not None and kept >= target else 'NOT met'}")
        rows = [r for r in report["equal_recall"] if r["filter"] == f["label"]
                and r["system"] == "faiss" and r["shardann_over_system"] is not None]
        strict = [r["shardann_over_system"] for r in rows if r["interpolation"] != "lower bound"]
        # below shardann's smallest nprobe its QPS at that recall is only bounded from
        # below: a bound >= 1 passes, a bound < 1 decides nothing
        bounds = [r["shardann_over_system"] for r in rows if r["interpolation"] == "lower bound"]
        open_ = [b for b in bounds if b < 1.0]
        if "faiss" in report["systems"]:
            verdict = ("NOT met" if any(v < 1.0 for v in strict) else
                       "undecided" if open_ else "met")
            line += ("; (2) shardann reaches no FAISS point's recall" if not rows else
                     f"; (2) shardann/FAISS {min(strict + bounds):.2f}x.."
                     f"{max(strict + bounds):.2f}x over {len(rows)} FAISS points: {verdict}")
            if open_:
                line += (f" ({len(open_)} below shardann's smallest nprobe, its QPS there a "
                         "lower bound: sweep smaller nprobe)")
        lines.append(line)
    return lines


def filter_figure(report):
    """Recall-QPS curves, one panel per filter, one curve per system (needs matplotlib)."""
    from matplotlib.figure import Figure

    c, ds = report["config"], report["dataset"]
    labels = [f["label"] for f in report["filters"]]
    ncols = min(3, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 4.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, lab in zip(axes.flat, labels, strict=False):
        for s in report["systems"]:
            color, marker, name = _SYSTEM_STYLE[s]
            pts = sorted((p for p in report["points"] if p["system"] == s
                          and p["config"] == lab), key=lambda p: p["nprobe"])
            _nprobe_curve(ax, pts, color, marker, name)
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{c['k']}")
        ax.set_ylabel("QPS (1 thread)")
        ax.set_title(f"filter passes {lab}" if lab != "unfiltered" else "no filter", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    nbits, M = c["pq"]
    title = (f"filtered search, 1 thread: n={ds['n']:,} d={ds['d']} nq={ds['nq']} "
             f"metric={c['metric']} IVF{c['nlist']} PQ M={M} x {nbits} bits; point labels: "
             "nprobe")
    fig.suptitle(textwrap.fill(title, width=int(11 * fig.get_figwidth())), fontsize=10)
    fig.tight_layout()
    return fig
