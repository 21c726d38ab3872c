"""Settings of the search service and where its bearer token comes from.

No Ray or FastAPI here: the CLI, the Serve config builder and the tests all
read this module. A :class:`ServiceConfig` travels to the Serve replica as a
plain dict (``to_dict`` / ``from_dict``), so it holds only JSON values — and
never the token itself, only its SHA-256 digest (or where to read the token).
"""

import dataclasses
import hashlib
import ipaddress
import logging
import os
import socket

logger = logging.getLogger(__name__)

TOKEN_ENV = "SHARDANN_TOKEN"
TOKEN_FILE_ENV = "SHARDANN_TOKEN_FILE"
BACKENDS = ("sharded", "local")


@dataclasses.dataclass
class ServiceConfig:
    """Everything the Serve deployment needs to open and serve one index.

    Parameters (all JSON-serialisable)
    ----------------------------------
    path : index store location (directory or object-store prefix).
    backend : ``"sharded"`` (a :class:`~shardann.distributed.ShardedIndex` on
        shard actors, the default) or ``"local"`` (one in-process index; for
        tests and small indexes).
    num_shards, replicas : shard actors of the sharded backend.
    name : index name for the shard actors (default: the path's basename);
        shard actors are ``<name>/v<version>/s<num_shards>/shard-<i>/r<j>``
        in the ``shardann`` namespace, detached, and survive a restart of the
        Serve replica.
    shard_num_cpus, max_restarts : passed to ``ShardedIndex.open``.
    token_sha256 : hex SHA-256 of the bearer token. The token itself never
        travels in the config.
    token_file : a file holding the token, read by the replica (overrides
        ``token_sha256``). With neither, the replica reads ``$SHARDANN_TOKEN``
        or ``$SHARDANN_TOKEN_FILE``.
    require_token : refuse to start without a token (always true when
        ``host`` is not a loopback address).
    host : the address the HTTP proxy binds; used for the refusal above.
    max_batch_size : vectors per search request.
    max_add_batch : vectors per add request.
    max_k, max_refine_factor : upper bounds of ``k`` and ``refine_factor``.
    max_body_bytes : request body limit (413 above it).
    request_timeout_s : per-request deadline (504 after it); shards get
        ``shard_timeout_fraction`` of it before a search answers 503.
    batch_max_size, batch_wait_timeout_s, max_concurrent_batches : dynamic
        batching of single-vector searches (``@serve.batch``).
    search_threads : threads running blocking index calls in the replica.
    max_ongoing_requests, max_queued_requests, retry_after_s : Serve
        backpressure: beyond ``max_ongoing_requests`` at the replica and
        ``max_queued_requests`` waiting for it (at the proxy, or in the
        replica with direct ingress), requests answer 503 with
        ``Retry-After`` at once.
    num_replicas, replica_num_cpus : Serve replicas of the ingress
        deployment (keep 1: it holds the coordinator; scale ``replicas``).
    retire_grace_s : after a reload, the old version's shard actors are
        stopped once its in-flight requests finish, but not before this many
        seconds (so other ingress replicas can switch too).
    access_log : Serve's per-request access log lines in the replica log.
    recall_estimate : replay the index's calibration queries in the background
        at the (k, nprobe, refine_factor, probe_ratio) settings unfiltered
        searches use, exporting
        ``shardann_recall_estimate{k,nprobe,probe_ratio,refine_factor}`` (see
        :mod:`shardann.service._recall`).
    recall_cpu_fraction : the share of wall time those replays may take, in
        (0, 1] (default 0.01: a replay of t seconds, then 99 t of rest).
    recall_min_interval_s : the shortest rest between two replays.
    """

    path: str = ""
    backend: str = "sharded"
    num_shards: int = 1
    replicas: int = 1
    name: str | None = None
    shard_num_cpus: float = 0
    max_restarts: int = -1
    token_sha256: str | None = None
    token_file: str | None = None
    require_token: bool = False
    host: str = "127.0.0.1"
    max_batch_size: int = 1024
    max_add_batch: int = 10_000
    max_k: int = 1000
    max_refine_factor: int = 64
    max_body_bytes: int = 16 * 1024 * 1024
    request_timeout_s: float = 10.0
    shard_timeout_fraction: float = 0.8
    batch_max_size: int = 32
    batch_wait_timeout_s: float = 0.001
    max_concurrent_batches: int = 2
    search_threads: int = 4
    # small on purpose: on a 2-core box 8 + 8 let an overload back up into the proxy
    # (503s after seconds) while 4 + 4 kept answering 503 in ~15 ms (see cluster/README)
    max_ongoing_requests: int = 4
    max_queued_requests: int = 4
    retry_after_s: float = 1.0
    num_replicas: int = 1
    replica_num_cpus: float = 1.0
    retire_grace_s: float = 5.0
    access_log: bool = False
    recall_estimate: bool = True
    recall_cpu_fraction: float = 0.01
    recall_min_interval_s: float = 1.0

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raise ``ValueError``/``TypeError`` for settings that cannot work."""
        if not isinstance(self.path, str):
            raise TypeError(f"path must be a str; got {type(self.path).__name__}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {self.backend!r}")
        ints = ("num_shards", "replicas", "max_batch_size", "max_add_batch", "max_k",
                "max_refine_factor", "max_body_bytes", "batch_max_size",
                "max_concurrent_batches", "search_threads", "max_ongoing_requests",
                "num_replicas")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int; got {type(value).__name__} ({value!r})")
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if not isinstance(self.max_queued_requests, int) or self.max_queued_requests < -1:
            raise ValueError(
                f"max_queued_requests must be an int >= -1; got {self.max_queued_requests!r}")
        for name in ("request_timeout_s", "batch_wait_timeout_s", "retry_after_s",
                     "retire_grace_s", "replica_num_cpus", "shard_num_cpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0; got {value!r}")
        f = self.recall_cpu_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"recall_cpu_fraction must be in (0, 1]; got {f!r}")
        m = self.recall_min_interval_s
        if isinstance(m, bool) or not isinstance(m, (int, float)) or m < 0:
            raise ValueError(f"recall_min_interval_s must be a number >= 0; got {m!r}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0; got {self.request_timeout_s}")
        if not 0 < self.shard_timeout_fraction <= 1:
            raise ValueError("shard_timeout_fraction must be in (0, 1]; "
                             f"got {self.shard_timeout_fraction}")
        if self.token_sha256 is not None:
            t = self.token_sha256
            if not (isinstance(t, str) and len(t) == 64
                    and all(c in "0123456789abcdef" for c in t)):
                raise ValueError("token_sha256 must be 64 lowercase hex digits (the SHA-256 "
                                 "of the token), not the token itself")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Build from a dict, refusing unknown keys (typos) with a clear message."""
        if isinstance(values, cls):
            return values
        if not isinstance(values, dict):
            raise TypeError(f"config must be a dict; got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown service setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @property
    def index_name(self):
        return self.name or os.path.basename(os.path.normpath(self.path)) or "index"


# -- tokens ------------------------------------------------------------------------------
def token_digest(token):
    """Hex SHA-256 of a bearer token (what the replica compares against)."""
    if not isinstance(token, str) or not token.strip():
        raise ValueError("the bearer token must be a non-empty string")
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


def read_token_file(path):
    """The token stored in ``path`` (surrounding whitespace removed)."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path!r}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"the token file {path!r} is empty")
    return token


def resolve_token_digest(config, environ=None):
    """The token digest the service enforces, or None when it runs without one.

    Order: ``config.token_file``, then ``config.token_sha256``, then
    ``$SHARDANN_TOKEN_FILE``, then ``$SHARDANN_TOKEN``.
    """
    environ = os.environ if environ is None else environ
    if config.token_file:
        return token_digest(read_token_file(config.token_file))
    if config.token_sha256:
        return config.token_sha256
    if environ.get(TOKEN_FILE_ENV):
        return token_digest(read_token_file(environ[TOKEN_FILE_ENV]))
    if environ.get(TOKEN_ENV, "").strip():
        return token_digest(environ[TOKEN_ENV])
    return None


def is_loopback(host):
    """True when ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host is None:
        return False
    host = str(host).strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # a host name: loopback only if every address it resolves to is
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_auth_settings(config, digest, *, warn=True):
    """Refuse to serve without a token on a non-loopback address (or when asked to);
    log a warning when serving without one (unless ``warn`` is false, for a caller
    that checks early and leaves the one warning to the code that deploys)."""
    if digest is not None:
        return
    if config.require_token:
        raise ValueError(
            "no bearer token: set $SHARDANN_TOKEN or $SHARDANN_TOKEN_FILE, or pass a token "
            "file (require_token is set)")
    if not is_loopback(config.host):
        raise ValueError(
            f"refusing to serve on {config.host!r} (not a loopback address) without a bearer "
            "token: set $SHARDANN_TOKEN or $SHARDANN_TOKEN_FILE, or pass --token-file")
    if warn:
        logger.warning("serving on %s without a bearer token (loopback only)", config.host)
