"""``shardann repair PATH --rollback | --supersede VERSION``: deal with a damaged
newest manifest deliberately (``shardann.storage.repair``)."""


from ._common import EXIT_OK, CommandError, common_options

HELP = ("Repair a store whose newest manifest is damaged: set it aside (--rollback) or "
        "publish a new version holding an older one (--supersede VERSION).")


def add_arguments(parser):
    common_options(parser, in_subcommand=True)
    parser.add_argument("path", metavar="PATH",
                        help="index directory or URI (s3://, gs://, az://, file://)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--rollback", action="store_true",
                      help="rename the damaged newest manifest(s) to "
                           "_manifests/damaged-v<N>.json (kept, never deleted), so the "
                           "version before is the newest again")
    what.add_argument("--supersede", type=int, metavar="VERSION",
                      help="publish a new version, above the damaged one, whose content "
                           "is the readable older VERSION")
    return parser


def run(args):
    """Handler of ``shardann repair``."""
    from shardann.storage import location, repair

    try:
        root = location(args.path).root
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    try:
        report = repair(root, rollback=args.rollback, supersede=args.supersede)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    damaged = ", ".join(map(str, report["damaged"]))
    if report["action"] == "rollback":
        for old, new in report["moved"].items():
            print(f"moved {old} -> {new}")
        print(f"rolled back {root}: damaged version(s) {damaged} set aside; version "
              f"{report['version']} is the newest")
    else:
        print(f"superseded damaged version(s) {damaged} of {root}: version "
              f"{report['version']} holds version {report['superseded_with']}")
    return EXIT_OK
