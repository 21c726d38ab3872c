"""Command-line plumbing shared by the comparison benches (``bench frontier``,
``bench filter``): the settings from a preset, the optional systems, and the
run that measures, writes the JSON and the plot, and prints the summary."""

import argparse
import json
import logging
import sys
import types

from . import _timing
from ._report import json_default, write_outputs


def pq_list(text):
    """argparse type: comma-separated NBITSxM pairs, e.g. ``4x64,8x32``."""
    out = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        try:
            nbits, M = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NBITSxM pairs like 4x64; got {item!r}") \
                from None
        if nbits not in (4, 8) or M < 1:
            raise argparse.ArgumentTypeError(f"nbits must be 4 or 8 and M >= 1; got {item!r}")
        out.append((nbits, M))
    if not out:
        raise argparse.ArgumentTypeError("expected at least one NBITSxM pair")
    return out


def add_data_arguments(parser, defaults, others, train_size_help):
    """The ``data`` option group of a comparison bench (files or synthetic data,
    metric); returns the group for the bench's own data options. ``others`` names
    the systems that get normalised vectors for cosine, ``train_size_help`` says
    who trains on the ``--train-size`` sample."""
    data = parser.add_argument_group("data")
    data.add_argument("--base", metavar="PATH",
                      help="database vectors (.npy / .fvecs / .bvecs / .parquet); default: "
                           "generate structured synthetic data")
    data.add_argument("--queries", metavar="PATH", help="query vectors (with --base)")
    data.add_argument("--train", metavar="PATH",
                      help="training vectors (default: a random sample of --base)")
    data.add_argument("--n", type=int, default=None,
                      help=f"synthetic database size (default {defaults['n']})")
    data.add_argument("--d", type=int, default=None,
                      help=f"synthetic dimension (default {defaults['d']})")
    data.add_argument("--nq", type=int, default=None,
                      help=f"number of queries (default {defaults['nq']})")
    data.add_argument("--train-size", type=int, default=None,
                      help=f"{train_size_help} (default {defaults['train_size']})")
    data.add_argument("--seed", type=int, default=0, help="data and training seed")
    data.add_argument("--metric", choices=("l2", "ip", "cosine"), default="l2",
                      help=f"l2, ip or cosine ({others} get normalised vectors and inner "
                           "product); default l2")
    return data


def check_settings(cfg, positive):
    """The error message of settings every comparison bench checks, or None:
    ``--base`` without ``--queries`` (or the reverse), an option of ``positive``
    below 1. Drops the nprobe values above nlist from ``cfg["nprobe_sweep"]``."""
    if bool(cfg["base"]) != bool(cfg["queries"]):
        return "--base and --queries go together"
    for name in positive:
        if cfg[name] < 1:
            return f"--{name.replace('_', '-')} must be >= 1; got {cfg[name]}"
    if max(cfg["nprobe_sweep"]) > cfg["nlist"]:
        cfg["nprobe_sweep"] = [p for p in cfg["nprobe_sweep"] if p <= cfg["nlist"]] or \
            [cfg["nlist"]]
    return None


def resolve_settings(args, defaults, quick):
    """The parsed ``args`` of a bench as a plain dict, the options left unset
    (None) filled from ``quick`` with ``--quick``, else from ``defaults``."""
    preset = quick if args.quick else defaults
    # the settings alone: not the CLI's handler function or the suite's module
    cfg = {k: v for k, v in vars(args).items()
           if not callable(v) and not isinstance(v, types.ModuleType)}
    for key, val in preset.items():
        if cfg.get(key) is None:
            cfg[key] = val
    return cfg


def optional_systems(cfg, systems, plot_name):
    """Import the optional systems a run compares with.

    ``systems``: ``(module name, label, option)`` triples; ``cfg[option]`` true
    leaves that system out. Returns ``(modules, skipped)``: the modules in the
    order given (None where left out or not installed) and ``(what, why)`` pairs
    for what the run skips (also the plot ``plot_name`` without matplotlib).
    """
    skipped, modules = [], []
    for name, label, option in systems:
        module = None
        if not cfg[option]:
            module, why = _timing.optional_import(name)
            if module is None:
                skipped.append((label, why))
        modules.append(module)
    if not cfg["no_plot"] and _timing.optional_import("matplotlib")[0] is None:
        skipped.append((f"the plot {plot_name}", "matplotlib is not installed"))
    return modules, skipped


def run_comparison(prog, cfg, validate, systems, measure, names, figure, summary):
    """Validate ``cfg``, import the optional ``systems`` (see :func:`optional_systems`),
    ``measure(cfg, *modules, skipped)`` into a report, write it under
    ``cfg["out"]`` as ``names`` (JSON, PNG of ``figure(report)``) and print
    ``summary(report)``, or the report as JSON with ``cfg["json"]``. Returns the
    exit code (2 for bad settings or a run that fails on bad input)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    err = validate(cfg)
    if err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    as_json = cfg.get("json", False)
    modules, skipped = optional_systems(cfg, systems, names[1])
    note = _timing.skip_note(prog, skipped)
    if note:
        print(note, file=sys.stderr if as_json else sys.stdout, flush=True)
    try:
        report = measure(cfg, *modules, skipped)
    except (ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    paths = write_outputs(report, cfg["out"], make_plot=not cfg["no_plot"], names=names,
                          figure=figure)
    if as_json:
        print(json.dumps(report, indent=1, default=json_default))
        return 0
    print(summary(report))
    print("\nwrote " + ", ".join(paths.values()))
    return 0
