"""``shardann verify PATH [--version V]``: check every file of one stored version."""

from .._text import format_bytes
from ._common import EXIT_ERROR, EXIT_OK, common_options

HELP = ("Check every byte of a stored version (default: the newest): checksums, sizes, "
        "Parquet layout, sort order, counts. Exit status 1 if anything is damaged.")


def add_arguments(parser):
    common_options(parser, in_subcommand=True)
    parser.add_argument("path", metavar="PATH",
                        help="index directory or URI (s3://, gs://, az://, file://)")
    parser.add_argument("--version", type=int, default=None, metavar="V",
                        help="the version to check (default: the newest; a damaged newest "
                             "manifest is reported as damage)")
    return parser


def run(args):
    """Handler of ``shardann verify``: ``IndexStore.verify()`` of one version, printed."""
    from shardann.errors import CorruptIndexError
    from shardann.storage import IndexStore, location

    root = location(args.path).root
    which = "newest version" if args.version is None else f"version {args.version}"
    try:
        store = IndexStore.open(root, args.version)
        report = store.verify()
    except CorruptIndexError as exc:
        problems = getattr(exc, "problems", None) or [str(exc)]
        print(f"DAMAGED: {which} of {root}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        if not any("shardann repair" in p for p in problems):
            print("the named files are damaged: restore them from a backup, or open (and "
                  "save) a version that does not use them")
        return EXIT_ERROR
    rows = [("path", root),
            ("version", f"{report['version']} ({which}; versions present: "
                        f"{store.versions()})"),
            ("files", f"{report['files']} checked whole ({format_bytes(report['bytes'])})"),
            ("segments", f"{report['segments']}, {report['rows']:,} rows"),
            ("ntotal", f"{report['ntotal']:,} live rows, as the manifest says"),
            ("duplicate live ids", f"{report['duplicate_live_ids']:,}")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"ok: version {report['version']} of {root} is intact")
    return EXIT_OK
