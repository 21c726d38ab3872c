"""``shardann ingest INDEX INPUT...``: build or extend an index from embeddings on
disk with Ray Data (:func:`shardann.distributed.ingest`); ``shardann ingest INDEX
--sql "SELECT id, embedding FROM …" --dsn …`` from a SQL query instead
(:func:`shardann.distributed.read_sql_vectors`), optionally writing the codes back
(``--write-codes``).

Every argument and input file is checked before Ray starts: a bad parameter is a
usage error (status 2), a bad input file one line naming it (status 1). A SQL
query is run once Ray is up (its reads are Ray Data tasks).
"""

import json
import os

from .._text import format_bytes
from ._common import (
    EXIT_OK,
    CommandError,
    UsageError,
    common_options,
    is_debug,
    start_ray,
)

HELP = ("Build or extend an index from Parquet / .npy / .fvecs files or a SQL query with "
        "Ray Data (bounded memory, resumable).")
#: environment variable holding the DSN of --sql (keeps a password off the command line)
DSN_ENV = "SHARDANN_DSN"


def add_arguments(parser):
    common_options(parser, in_subcommand=True)
    parser.add_argument("path", metavar="INDEX",
                        help="index directory or store URI (s3://bucket/idx, gs://, az://; "
                             "created, or appended to)")
    parser.add_argument("inputs", metavar="INPUT", nargs="*",
                        help="Parquet files/directories/globs, .npy, .fvecs, .bvecs, .ivecs")
    g = parser.add_argument_group("inputs")
    g.add_argument("--column", default="embedding",
                   help="Parquet column of the vectors (default 'embedding')")
    g.add_argument("--id-column", default=None,
                   help="Parquet int64 id column (default: ids in input row order)")
    g.add_argument("--attributes", default=None, metavar="COL,COL",
                   help="Parquet (or --sql) columns to store beside the vectors as attributes, "
                        "for filtered search and columns in results, e.g. lang,year,tags")
    g.add_argument("--sql", default=None, metavar="QUERY",
                   help="read the vectors from this SQL query instead of INPUT files, e.g. "
                        "\"SELECT id, embedding FROM items\" (real[] or float32 bytea)")
    g.add_argument("--dsn", default=None,
                   help=f"libpq connection string of --sql (default ${DSN_ENV}; libpq's PG* "
                        "variables and ~/.pgpass fill in the rest)")
    g.add_argument("--sql-key", default=None, metavar="COLUMN",
                   help="integer column to read --sql by, in ranges and in its order "
                        "(default: --id-column; none: one read of the whole result)")
    g.add_argument("--rows-per-read", type=int, default=100_000,
                   help="rows per --sql read task (default 100000)")
    g.add_argument("--write-codes", default=None, metavar="STATEMENT",
                   help="after the build, write every row's codes back with this statement, "
                        "e.g. \"UPDATE items SET list = %%s, code = %%s WHERE id = %%s\"")
    g.add_argument("--code-fields", default="list,code,id",
                   help="placeholders of --write-codes, in order (of id, code, list; "
                        "default list,code,id)")
    g.add_argument("--skip-bad-rows", action="store_true",
                   help="skip and count bad rows and unreadable files instead of failing")
    m = parser.add_argument_group("new index (ignored parameters must be unset when appending)")
    m.add_argument("--nlist", type=int, default=None, help="IVF lists")
    m.add_argument("--M", type=int, default=None, help="PQ sub-quantizers")
    m.add_argument("--flat", action="store_true", help="IVF-Flat instead of IVF-PQ (no --M)")
    m.add_argument("--nbits", type=int, default=8, help="bits per PQ code (default 8)")
    m.add_argument("--metric", default="l2", choices=("l2", "ip", "cosine"),
                   help="distance (default l2)")
    m.add_argument("--opq", action="store_true", help="learn an OPQ rotation")
    m.add_argument("--pca", type=int, default=None, metavar="P",
                   help="project the vectors onto their P principal directions before IVF "
                        "and PQ (a multiple of --M; --keep-vectors refines on the originals)")
    m.add_argument("--keep-vectors", nargs="?", const="float32", default=None,
                   choices=("float32", "float16"),
                   help="keep raw vectors for refine (float32, or float16 to halve them)")
    m.add_argument("--codebooks", default=None, metavar="PATH",
                   help="reuse the trained model of this index (or codebooks file)")
    m.add_argument("--calibration", type=int, default=None, metavar="N",
                   help="calibration queries kept for recall estimates (shardann info "
                        "--recall; 0: none; default 1000)")
    m.add_argument("--sample-size", type=int, default=None,
                   help="training sample (default 256 x nlist, at most 1 GiB), drawn in "
                        "runs of consecutive rows filling 4 KiB")
    m.add_argument("--seed", type=int, default=0, help="sampling and training seed (default 0)")
    m.add_argument("--niter", type=int, default=25, help="k-means iterations (default 25)")
    r = parser.add_argument_group("run")
    r.add_argument("--block-rows", type=int, default=None,
                   help="rows per block (default: 64 MiB of float32 vectors)")
    r.add_argument("--workers", type=int, default=None, help="Ray Data workers (default: CPUs)")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. 'auto'); default: start a local Ray")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    r.add_argument("--spot-check", type=int, default=100,
                   help="held-out queries for the recall check (0: none; default 100)")
    r.add_argument("--nprobe", type=int, default=None,
                   help="nprobe of the recall check (default min(nlist, 16))")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--job-id", default=None, help="name the job (default: hash of inputs+options)")
    r.add_argument("--work-dir", default=None, metavar="DIR",
                   help="the job's scratch and resume state (default INDEX/_ingest, or for a "
                        "store URI ~/.cache/shardann/ingest/, and then the job runs on this "
                        "node only: on a multi-node cluster give a directory every node "
                        "mounts)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.add_argument("--clean", action="store_true",
                   help="remove the scratch of interrupted ingest jobs of INDEX and exit")
    return parser


def run(args):
    """Handler of ``shardann ingest``: run the job, print the summary; returns 0."""
    from shardann.distributed import IngestJob, clean_ingest_jobs
    from shardann.errors import IngestJobBusyError, InputError
    from shardann.storage import IndexStore

    if args.clean:
        removed, freed = clean_ingest_jobs(args.path, committed=False, work_dir=args.work_dir)
        print(f"removed {len(removed)} interrupted ingest job(s), {format_bytes(freed)}")
        return EXIT_OK
    dsn = _check_sql_args(args)
    if not args.inputs and args.sql is None:
        raise UsageError("give at least one INPUT (or --sql)")
    if args.flat and args.M is not None:
        raise UsageError("--flat and --M exclude each other")
    if (not args.flat and args.M is None and args.codebooks is None
            and not IndexStore.exists(args.path)):
        raise UsageError("a new IVF-PQ index needs --M (or --flat, or --codebooks)")
    if args.address is not None and args.num_cpus is not None:
        raise UsageError("--num-cpus sets up a local Ray; it cannot be used with --address")
    def make_job(inputs):
        return IngestJob(
            args.path, inputs, column=args.column, id_column=args.id_column,
            attributes=_attribute_names(args.attributes),
            nlist=args.nlist, M=args.M, nbits=args.nbits, metric=args.metric, opq=args.opq,
            keep_vectors=args.keep_vectors or False, pca=args.pca, codebooks=args.codebooks,
            calibration=args.calibration, sample_size=args.sample_size, seed=args.seed,
            niter=args.niter,
            pq_niter=args.niter, skip_bad_rows=args.skip_bad_rows, block_rows=args.block_rows,
            num_workers=args.workers, spot_check=args.spot_check, spot_check_k=10,
            spot_check_nprobe=args.nprobe, progress=not args.no_progress, job_id=args.job_id,
            work_dir=args.work_dir)

    job = None
    if args.sql is None:
        job = _checked(make_job, args.inputs)  # every input file is checked before Ray starts

    import ray

    started = not ray.is_initialized()  # a caller's Ray (tests, a notebook) is used as is
    if started:
        init = {"address": args.address} if args.address else {"num_cpus": args.num_cpus}
        start_ray(**init, configure_logging=False, debug=is_debug(args))
    try:
        if job is None:
            dataset = _sql_dataset(args, dsn)
            job = _checked(make_job, dataset)
        summary = job.run()
        if args.write_codes:
            _write_codes(args, dsn, job.path, dataset)
    except InputError as exc:
        raise CommandError(f"{exc} (nothing was committed)") from None
    except (IngestJobBusyError, FileExistsError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        if started:
            ray.shutdown()
    print(json.dumps(summary.to_dict(), indent=1) if args.json else summary)
    return EXIT_OK


def _attribute_names(text):
    """``--attributes`` as a list of column names (None without it)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--attributes takes column names separated by commas; got {text!r}")
    return names


def _checked(make_job, inputs):
    """``make_job(inputs)`` with its argument errors turned into command errors."""
    from shardann.errors import InputError

    try:
        return make_job(inputs)
    except InputError as exc:
        raise CommandError(f"{exc} (nothing was committed)") from None
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except FileExistsError as exc:
        raise CommandError(str(exc)) from None


def _check_sql_args(args):
    """The DSN of ``--sql`` (None without it); usage errors for options that do not fit."""
    if args.sql is None:
        if args.write_codes or args.dsn is not None or args.sql_key is not None:
            raise UsageError("--dsn, --sql-key and --write-codes go with --sql")
        return None
    if args.inputs:
        raise UsageError("give INPUT files or --sql, not both")
    if not args.sql.strip():
        raise UsageError("--sql is empty")
    if args.rows_per_read < 1:
        raise UsageError(f"--rows-per-read must be >= 1; got {args.rows_per_read}")
    fields = tuple(f.strip() for f in args.code_fields.split(",") if f.strip())
    if not fields or set(fields) - {"id", "code", "list"}:
        raise UsageError(f"--code-fields takes names among id, code, list; got "
                         f"{args.code_fields!r}")
    args.code_fields = fields
    if args.write_codes and args.flat:
        raise UsageError("--write-codes writes PQ codes; an IVF-Flat index (--flat) has none")
    if args.write_codes and args.id_column is None:
        raise UsageError("--write-codes needs --id-column (the rows' key in the table)")
    dsn = args.dsn if args.dsn is not None else os.environ.get(DSN_ENV, "")
    return dsn  # "" lets libpq take everything from PG* variables


def _sql_dataset(args, dsn):
    from shardann.distributed import read_sql_vectors

    key = args.sql_key or args.id_column
    try:
        return read_sql_vectors(args.sql, dsn, key=key, rows_per_read=args.rows_per_read)
    except ImportError as exc:
        raise CommandError(f"--sql needs psycopg (pip install 'psycopg[binary]'): {exc}") \
            from None
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # the driver's own errors (connection refused, bad SQL)
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        raise CommandError(f"--sql: {type(exc).__name__}: {exc}") from None


def _write_codes(args, dsn, path, dataset):
    import numpy as np

    from shardann.distributed import write_codes
    from shardann.index import load_index
    from shardann.storage import IndexStore

    model = load_index(IndexStore.open(path), lists=np.zeros(0, np.int64))
    write_codes(dataset, model, args.write_codes, dsn, column=args.column,
                id_column=args.id_column, fields=args.code_fields)
    print(f"wrote the codes of every row with: {args.write_codes}")
