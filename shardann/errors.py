"""Exceptions raised by shardann: every typed error lives here.

Each one also derives from the built-in exception a caller would catch without
knowing shardann (``ValueError``, ``RuntimeError``, ``OSError``), so code that
catches those keeps working. Callers that need to tell errors apart (the
service's HTTP statuses, the command's exit codes) do so by type, never by
message text.
"""


class ShardannError(Exception):
    """Base class of shardann's own errors."""


class NotTrainedError(ShardannError, RuntimeError):
    """An index or quantizer was used before ``train``."""


class CorruptIndexError(ShardannError, OSError):
    """A stored index file is truncated, corrupt, missing or of an unknown format."""


class CommitConflictError(ShardannError, RuntimeError):
    """Another writer committed the version this commit was based on."""


class ShardUnavailableError(ShardannError, RuntimeError):
    """A shard did not answer within the request timeout."""


class DuplicateIdError(ShardannError, ValueError):
    """``add`` was given ids that are already in the index (remove them first to
    replace them). The service answers it with 409 Conflict."""


class InputError(ShardannError, ValueError):
    """Bad ingest input: the message names the file (and row, for a bad row).
    Nothing was committed."""


class IngestJobBusyError(ShardannError, RuntimeError):
    """The same ingest job (same index, inputs and options) is running in another
    process."""


class StaleShardError(ShardannError, RuntimeError):
    """A shard actor was asked for one index version but holds another (it was
    restarted, or another coordinator moved it). The coordinator loads the
    version it serves into that actor and retries; it never merges answers of
    two versions."""


class FutureFormatError(CorruptIndexError):
    """A store (or file) written by a newer shardann, in a format this one does not
    read; never skipped silently."""


class DeploymentError(ShardannError, RuntimeError):
    """The Serve application did not start; ``cause`` is the reason Serve recorded
    (e.g. the exception the replica's constructor raised), ``details`` the full
    status messages (with the replica's traceback)."""

    def __init__(self, app_name, cause, details=""):
        super().__init__(f"the Serve application {app_name!r} failed to start: {cause}")
        self.app_name = app_name
        self.cause = cause
        self.details = details
