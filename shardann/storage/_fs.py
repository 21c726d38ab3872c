"""Where a store lives: a local directory or an object-store prefix.

Every file operation of the store goes through a *location*, addressed by
paths relative to the store's root (``"_manifests/v00000001.json"``):

:class:`LocalLocation`
    a directory: the operations of the format as they always were (files
    created with ``O_EXCL`` and fsynced, memory-mapped reads, a manifest
    published by ``os.link``).
:class:`ObjectLocation`
    ``s3://``, ``gs://``, ``az://``/``abfs[s]://`` and ``memory://``: data
    files through a ``pyarrow.fs`` filesystem (ranged reads, streamed
    uploads), and the manifest published by a create-if-absent put through
    ``obstore`` (S3 ``If-None-Match: *``, a GCS ``ifGenerationMatch=0``
    precondition, Azure ``If-None-Match: *``) -- an object store has no
    rename to commit with. ``memory://`` (tests) is fsspec's process-wide
    memory filesystem, published under a process lock.

Credentials come from the cloud SDKs' usual environment (``AWS_*`` variables,
instance roles, profiles); an S3-compatible endpoint from ``AWS_ENDPOINT_URL``
(plain HTTP only with ``AWS_ALLOW_HTTP=true``). ``storage_options`` passes
them explicitly; they are kept in memory only: never written to the store, and
left out of ``repr`` and of every message.
"""

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import threading
import urllib.parse
import uuid

from ._crash import crash_point
from ._files import fast_crc32, fsync_dir, write_bytes

logger = logging.getLogger(__name__)

#: URI schemes a store may use (``file://`` is a local directory)
REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory")
SCHEMES = ("file",) + REMOTE_SCHEMES
#: storage_options keys that are shardann's own (the rest go to the filesystems)
OWN_OPTIONS = ("single_writer", "conditional_writes", "cache_dir")
_UPLOAD_CHUNK = 8 << 20
_MEMORY_LOCK = threading.Lock()
_TRUE = ("1", "true", "yes", "on")


def is_uri(path):
    """True when ``path`` (a str) names a location by URI (``scheme://...``)."""
    return isinstance(path, str) and "://" in path


def location(path, storage_options=None):
    """The location of a store: ``path`` is a local path (str or PathLike), a
    ``file://`` / ``s3://`` / ``gs://`` / ``az://`` / ``abfs[s]://`` / ``memory://``
    URI, or a location already (returned as it is when no options are given).

    ``storage_options`` (dict): credentials and settings for the filesystem
    (obstore's configuration keys, e.g. ``aws_access_key_id``,
    ``aws_secret_access_key``, ``aws_region``, ``aws_endpoint``,
    ``allow_http``), plus shardann's own ``single_writer`` (commit on a backend
    without conditional writes, trusting that nobody else writes) and
    ``conditional_writes`` (False: the backend does not honour create-only puts)
    and ``cache_dir`` (a local directory keeping the byte ranges read from data
    files, which never change, so a shard reloading on the same node reads them
    locally). Raises ``ValueError`` for an unsupported scheme.
    """
    if isinstance(path, (LocalLocation, ObjectLocation)):
        if storage_options:
            return location(path.root, storage_options)
        return path
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not is_uri(path):
        if storage_options:
            bad = sorted(set(storage_options) - set(OWN_OPTIONS))
            if bad:
                raise ValueError(f"storage_options {bad} apply to object stores, not to the "
                                 f"local directory {path!r}")
        return LocalLocation(os.path.abspath(path))
    scheme, _, rest = path.partition("://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported storage URI scheme {scheme + '://'!r} in {path!r}; "
                         f"shardann stores live in a local directory or at "
                         f"{', '.join(s + '://' for s in SCHEMES)}")
    if scheme == "file":
        parsed = urllib.parse.urlparse(path)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URIs name local paths (file:///abs/path); got {path!r}")
        return location(urllib.parse.unquote(parsed.path), storage_options)
    rest = rest.strip("/")
    if scheme != "memory" and not rest:
        raise ValueError(f"{path!r} names no bucket or container")
    return ObjectLocation(scheme, rest, storage_options or {})


class LocalLocation:
    """A store in a local directory (``root`` is its absolute path)."""

    local = True
    conditional_writes = True

    def __init__(self, root):
        self.root = root

    def __repr__(self):
        return f"LocalLocation({self.root!r})"

    def __eq__(self, other):
        return isinstance(other, LocalLocation) and other.root == self.root

    def __hash__(self):
        return hash(self.root)

    def path(self, rel=""):
        """The full path of ``rel`` (for file operations and messages)."""
        return os.path.join(self.root, rel) if rel else self.root

    # -- reading --------------------------------------------------------------------
    def listdir(self, rel=""):
        """Names directly under ``rel`` ([] when it does not exist)."""
        try:
            return os.listdir(self.path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def exists(self, rel=""):
        return os.path.exists(self.path(rel))

    def isdir(self, rel=""):
        return os.path.isdir(self.path(rel))

    def stat(self, rel):
        """``(size, mtime)``; raises ``FileNotFoundError``."""
        st = os.stat(self.path(rel))
        return st.st_size, st.st_mtime

    def sizes(self, rel):
        """{name: size} of the files directly under ``rel``."""
        out = {}
        for name in self.listdir(rel):
            with contextlib.suppress(OSError):
                out[name] = os.stat(os.path.join(self.path(rel), name)).st_size
        return out

    def total_size(self):
        """Bytes of every file under the root."""
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(folder, name))
        return total

    def read(self, rel):
        with open(self.path(rel), "rb") as f:
            return f.read()

    def read_range(self, rel, start, length):
        with open(self.path(rel), "rb") as f:
            f.seek(start)
            return f.read(length)

    def open_stream(self, rel):
        return open(self.path(rel), "rb")

    # -- writing --------------------------------------------------------------------
    def makedirs(self, rel):
        os.makedirs(self.path(rel), exist_ok=True)

    def sync_dir(self, rel=""):
        if os.path.isdir(self.path(rel)):
            fsync_dir(self.path(rel))

    def write_new(self, rel, data):
        """Create ``rel`` (must not exist) holding ``data``, durable. Returns (size, crc32)."""
        return write_bytes(self.path(rel), data)

    @contextlib.contextmanager
    def staged(self, rel):
        """A local path to write file ``rel`` at: here, ``rel`` itself."""
        yield self.path(rel)

    def delete(self, rel):
        """Remove ``rel``; a missing file is no error."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(rel))

    def rename(self, rel, new_rel):
        os.rename(self.path(rel), self.path(new_rel))

    def publish(self, rel, data):
        """Create ``rel`` holding ``data`` if it does not exist, atomically: a
        temporary file fsynced, then ``os.link``-ed to its name (fails if another
        writer got there first), then the directory fsynced. Raises
        ``FileExistsError`` when ``rel`` exists."""
        final = self.path(rel)
        mdir = os.path.dirname(final)
        tmp = os.path.join(mdir, f".tmp-{uuid.uuid4().hex}.json")
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        crash_point("manifest.after_tmp_write")
        try:
            _link(tmp, final, data)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        crash_point("manifest.after_publish")
        fsync_dir(mdir)

    def check_writable(self):
        """Local directories publish by link or O_EXCL: always safe."""

    def stats(self):
        return {"bytes_read": None, "read_requests": None}


def _link(tmp, final, data):
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError as exc:  # a file system without hard links: exclusive create
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                             errno.ENOSYS):
            raise
        logger.warning("os.link failed on %s (%s); publishing with O_EXCL create",
                       final, exc)
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)


def _option(options, *names, env=()):
    for n in names:
        if options.get(n) not in (None, ""):
            return options[n]
    for n in env:
        if os.environ.get(n):
            return os.environ[n]
    return None


def _truthy(value):
    return value is True or (isinstance(value, str) and value.strip().lower() in _TRUE)


class ObjectLocation:
    """A store under an object-store prefix (``root`` is its URI, no credentials).

    Counts the bytes and requests it reads (:meth:`stats`), so a shard can
    report what its load cost.
    """

    local = False

    def __init__(self, scheme, rest, storage_options):
        self.scheme = scheme
        self._rest = rest
        self.root = f"{scheme}://{rest}"
        options = dict(storage_options)
        self.single_writer = _truthy(options.pop("single_writer", False))
        cond = options.pop("conditional_writes", None)
        self.conditional_writes = cond is None or _truthy(cond)
        self.cache_dir = options.pop("cache_dir", None)
        self._options = options  # credentials: memory only, never in repr or messages
        self._fs = None
        self._base = None
        self._committer = None
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.read_requests = 0

    def __getstate__(self):
        # travels to Ray workers as its URI and options; clients are rebuilt there
        return {"scheme": self.scheme, "rest": self._rest,
                "options": dict(self._options, single_writer=self.single_writer,
                                conditional_writes=self.conditional_writes,
                                cache_dir=self.cache_dir)}

    def __setstate__(self, state):
        self.__init__(state["scheme"], state["rest"], state["options"])

    def __repr__(self):
        return f"ObjectLocation({self.root!r})"

    def __eq__(self, other):
        return isinstance(other, ObjectLocation) and other.root == self.root

    def __hash__(self):
        return hash(self.root)

    def path(self, rel=""):
        return f"{self.root}/{rel}" if rel else self.root

    # -- clients --------------------------------------------------------------------
    @property
    def fs(self):
        """The ``pyarrow.fs.FileSystem`` and the root's path in it (created once)."""
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    self._fs, self._base = self._make_fs()
        return self._fs

    def _key(self, rel):
        self.fs  # noqa: B018  (sets _base)
        return f"{self._base}/{rel}" if rel else self._base

    def _make_fs(self):
        import pyarrow.fs as pafs

        o = self._options
        if self.scheme == "memory":
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            return PyFileSystem(FSSpecHandler(fsspec.filesystem("memory"))), "/" + self._rest
        if self.scheme in ("s3", "s3a"):
            kw = {}
            key = _option(o, "aws_access_key_id", "access_key_id")
            secret = _option(o, "aws_secret_access_key", "secret_access_key")
            if key and secret:
                kw.update(access_key=key, secret_key=secret,
                          session_token=_option(o, "aws_session_token", "session_token",
                                                "token"))
            region = _option(o, "aws_region", "region",
                             env=("AWS_REGION", "AWS_DEFAULT_REGION"))
            if region:
                kw["region"] = region
            endpoint = _option(o, "aws_endpoint", "endpoint", "aws_endpoint_url",
                               env=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"))
            if endpoint:
                parsed = urllib.parse.urlparse(endpoint if "://" in endpoint
                                               else "https://" + endpoint)
                if parsed.scheme == "http" and not _truthy(
                        _option(o, "allow_http", "aws_allow_http", env=("AWS_ALLOW_HTTP",))):
                    raise ValueError(
                        f"the S3 endpoint {parsed.scheme}://{parsed.netloc} is plain HTTP; "
                        "set AWS_ALLOW_HTTP=true (or storage_options allow_http=True) to "
                        "allow it")
                kw.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
            return pafs.S3FileSystem(**kw), self._rest
        if self.scheme in ("gs", "gcs"):
            kw = {}
            token = _option(o, "google_access_token", "access_token")
            if token:
                kw["access_token"] = token
            return pafs.GcsFileSystem(**kw), self._rest
        # az://container/path (account from options or AZURE_STORAGE_ACCOUNT_NAME), or
        # abfs[s]://container@account.dfs.core.windows.net/path
        container, _, prefix = self._rest.partition("/")
        account = _option(o, "azure_storage_account_name", "account_name",
                          env=("AZURE_STORAGE_ACCOUNT_NAME",))
        if "@" in container:
            container, _, host = container.partition("@")
            account = account or host.split(".")[0]
        if not account:
            raise ValueError(f"{self.root}: no Azure storage account; set "
                             "AZURE_STORAGE_ACCOUNT_NAME or storage_options account_name")
        kw = {"account_name": account}
        akey = _option(o, "azure_storage_account_key", "account_key",
                       env=("AZURE_STORAGE_ACCOUNT_KEY",))
        if akey:
            kw["account_key"] = akey
        return pafs.AzureFileSystem(**kw), f"{container}/{prefix}".rstrip("/")

    def _obstore(self):
        if self._committer is None:
            from obstore.store import from_url

            config = {k: v for k, v in self._options.items()
                      if k not in ("allow_http", "aws_allow_http")}
            client = {}
            if _truthy(_option(self._options, "allow_http", "aws_allow_http")):
                client["allow_http"] = True
            scheme = {"s3a": "s3", "gcs": "gs"}.get(self.scheme, self.scheme)
            self._committer = from_url(f"{scheme}://{self._rest}", config=config or None,
                                       client_options=client or None)
        return self._committer

    # -- reading --------------------------------------------------------------------
    def _count(self, nbytes):
        with self._lock:
            self.bytes_read += nbytes
            self.read_requests += 1

    def stats(self):
        """{"bytes_read", "read_requests"} from the store since this location object
        was made (ranges served by ``cache_dir`` are not counted)."""
        return {"bytes_read": self.bytes_read, "read_requests": self.read_requests}

    def _cache_file(self, rel, start, length):
        """Where ``cache_dir`` keeps bytes ``start:start+length`` of ``rel`` (None:
        not cached). Data files are written once under fresh names and never
        changed, so a cached range stays valid; manifests are not cached (a
        repaired store may publish a version number again). The bytes are still
        checked against the manifest's CRCs when used."""
        if self.cache_dir is None or rel.startswith("_"):  # _manifests/ and the like
            return None
        import hashlib

        key = hashlib.sha256(f"{self.root}/{rel}".encode()).hexdigest()[:32]
        return os.path.join(self.cache_dir, key, f"{start}-{length}")

    def _cached(self, rel, start, length, fetch):
        path = self._cache_file(rel, start, length)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                with open(path, "rb") as f:
                    return f.read()
        data = fetch()
        if path is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # whole or absent, also with other processes
        return data

    def _infos(self, rel):
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self._key(rel), allow_not_found=True, recursive=False)
        try:
            return self.fs.get_file_info(sel)
        except FileNotFoundError:
            return []

    def listdir(self, rel=""):
        return [i.base_name for i in self._infos(rel)]

    def sizes(self, rel):
        import pyarrow.fs as pafs

        return {i.base_name: i.size for i in self._infos(rel) if i.type == pafs.FileType.File}

    def total_size(self):
        """Bytes of every object under the root (one recursive listing)."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self._key(""), allow_not_found=True, recursive=True)
        return sum(i.size for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File)

    def exists(self, rel=""):
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._key(rel)).type != pafs.FileType.NotFound

    def isdir(self, rel=""):
        return bool(self.listdir(rel))

    def stat(self, rel):
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self._key(rel))
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(errno.ENOENT, "no such object", self.path(rel))
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        return info.size, mtime

    def read(self, rel):
        def fetch():
            try:
                with self.fs.open_input_stream(self._key(rel)) as f:
                    data = f.read()
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "no such object",
                                        self.path(rel)) from None
            self._count(len(data))
            return data

        return self._cached(rel, 0, "all", fetch)

    def read_range(self, rel, start, length):
        """``length`` bytes at ``start`` (fewer at the end of the object): one ranged GET."""
        def fetch():
            try:
                with self.fs.open_input_file(self._key(rel)) as f:
                    data = f.read_at(length, start)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "no such object",
                                        self.path(rel)) from None
            self._count(len(data))
            return data

        return self._cached(rel, start, length, fetch)

    def open_file(self, rel):
        """A ``pyarrow`` random-access file on ``rel`` (ranged reads)."""
        return self.fs.open_input_file(self._key(rel))

    def count_read(self, nbytes):
        """Record a read done through :meth:`open_file`."""
        self._count(nbytes)

    def open_stream(self, rel):
        return _CountingStream(self, self.fs.open_input_stream(self._key(rel)))

    # -- writing --------------------------------------------------------------------
    def makedirs(self, rel):
        """Object stores have no directories."""

    def sync_dir(self, rel=""):
        """An object is durable when its put returns."""

    def write_new(self, rel, data):
        """Upload ``data`` as ``rel`` (a fresh name). Returns (size, crc32)."""
        with self.fs.open_output_stream(self._key(rel)) as out:
            out.write(data)
        return len(data), fast_crc32(data)

    @contextlib.contextmanager
    def staged(self, rel):
        """A local temporary path to write file ``rel`` at; uploaded when the block
        ends without error, deleted either way."""
        tmp = tempfile.mkdtemp(prefix="shardann-upload-")
        try:
            local = os.path.join(tmp, os.path.basename(rel))
            yield local
            with open(local, "rb") as src, \
                    self.fs.open_output_stream(self._key(rel)) as out:
                shutil.copyfileobj(src, out, _UPLOAD_CHUNK)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def delete(self, rel):
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self._key(rel))

    def rename(self, rel, new_rel):
        """Copy, then delete (object stores have no rename; not atomic)."""
        self.fs.copy_file(self._key(rel), self._key(new_rel))
        self.fs.delete_file(self._key(rel))

    def check_writable(self):
        """Raise before any file is written when this location cannot publish a
        manifest safely: a backend without conditional writes commits only in
        single-writer mode."""
        if not self.conditional_writes and not self.single_writer:
            raise ValueError(
                f"{self.root}: this storage backend does not support conditional "
                "(create-if-absent) writes, so two writers could both publish the same "
                "version and one commit would silently be lost; shardann refuses to commit "
                "there. If you are sure only one process ever writes this store, open it "
                "in single-writer mode: storage_options={'single_writer': True}")

    def publish(self, rel, data):
        """Create ``rel`` holding ``data`` if absent, atomically (S3 ``If-None-Match:
        *``, GCS ``ifGenerationMatch=0``, Azure ``If-None-Match: *``; an in-process
        lock for ``memory://``). Raises ``FileExistsError`` when it exists."""
        self.check_writable()
        crash_point("manifest.after_tmp_write")  # nothing staged beside the final name
        if self.scheme == "memory" or not self.conditional_writes:
            with _MEMORY_LOCK:
                if self.exists(rel):
                    raise FileExistsError(errno.EEXIST, "version already published",
                                          self.path(rel))
                with self.fs.open_output_stream(self._key(rel)) as out:
                    out.write(data)
        else:
            import obstore
            from obstore.exceptions import AlreadyExistsError, PreconditionError

            try:
                obstore.put(self._obstore(), rel, data, mode="create", use_multipart=False)
            except (AlreadyExistsError, PreconditionError):
                raise FileExistsError(errno.EEXIST, "version already published",
                                      self.path(rel)) from None
        crash_point("manifest.after_publish")


class _CountingStream:
    """A read stream that adds what it reads to its location's counters."""

    def __init__(self, loc, stream):
        self._loc, self._s = loc, stream

    def read(self, n=-1):
        data = self._s.read() if n is None or n < 0 else self._s.read(n)
        self._loc._count(len(data))
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._s.close()
        return False
