"""What the ``shardann`` commands share: the two command errors, the common options,
logging setup and a quiet Ray start."""

import argparse
import contextlib
import logging

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_LEVEL_HELP = ("log level of shardann's messages (default WARNING; INFO also shows each "
                  "stage's progress)")

# A new local Ray turns its cluster token auth on by default and says so with a WARNING
# ("Token authentication is enabled for this Ray cluster ..."): news about Ray's
# internals, easily mistaken for the service's bearer token. The logger says nothing
# else when a local cluster starts.
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class UsageError(Exception):
    """Bad command-line values found after parsing; exits with status 2."""


class CommandError(Exception):
    """A failure the command explains itself in one line; exits with status 1."""


def common_options(parser, *, in_subcommand, log_level_help=LOG_LEVEL_HELP):
    """--log-level and --debug, accepted before or after the subcommand.

    The subcommands' copies default to SUPPRESS so they never overwrite a value
    given before the subcommand.
    """
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                        default=argparse.SUPPRESS if in_subcommand else "WARNING",
                        help=log_level_help)
    parser.add_argument("--debug", action="store_true",
                        default=argparse.SUPPRESS if in_subcommand else False,
                        help="show the full traceback when a command fails")


def configure_logging(level_name):
    """Print log records of the chosen level from shardann, WARNING and up from
    everything else (numba, ray)."""
    level = getattr(logging, level_name)
    logging.basicConfig(level=max(level, logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("shardann").setLevel(level)
    # the one "compiling Numba kernels, once per install" line of a first run shows at
    # every level (shardann._kernels.COMPILE_LOGGER logs it at INFO for library users)
    logging.getLogger("shardann.kernels").setLevel(min(level, logging.INFO))


def is_debug(args):
    """``--log-level DEBUG`` was given (it also shows Ray's own INFO lines)."""
    return getattr(args, "log_level", "WARNING") == "DEBUG"


@contextlib.contextmanager
def logger_level(name, level):
    """Set the level of logger ``name`` for the ``with`` block."""
    log = logging.getLogger(name)
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)


def start_ray(*, address=None, debug=False, **options):
    """``ray.init`` for a command: join the cluster at ``address``, or start a local
    Ray (no dashboard) whose token-authentication notice shows only with ``debug``.
    Workers' output is not forwarded to the command's terminal. ``options`` go to
    ``ray.init`` (``num_cpus``, ``logging_level``, ``configure_logging``, ...)."""
    import ray

    if address:
        ray.init(address=address, log_to_driver=False, **options)
        return
    quiet = contextlib.nullcontext() if debug else logger_level(RAY_AUTH_LOGGER, logging.ERROR)
    with quiet:
        ray.init(include_dashboard=False, log_to_driver=False, **options)
