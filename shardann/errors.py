"""Exceptions raised by shardann."""


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
