"""Ingest inputs on any filesystem URI: ``s3://``, ``gs://``, ``abfs://``, ``hdfs://``…

No Ray here. A URI input (a file, a "directory" prefix or a glob such as
``s3://bucket/emb/*.parquet``) is listed and read with pyarrow's filesystems —
what Ray Data's own readers use — so credentials and endpoints come from the
usual environment (instance roles, ``AWS_*`` variables and profiles,
``AWS_ENDPOINT_URL`` for an S3-compatible server; ``GOOGLE_APPLICATION_CREDENTIALS``;
…) and never from shardann. ``file://`` URIs are plain local paths.

Reads are ranged: a Parquet reader on a remote file fetches the footer and the
column chunks of the row groups it reads; ``.npy`` / ``.*vecs`` rows are read
with ``read_at`` of the byte span they cover. The workers open the filesystem
from the URI themselves (once per process), so nothing but the URI travels.
"""

import os
import re
import threading
from urllib.parse import urlsplit

from ..errors import InputError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_FILESYSTEMS = {}
_LOCK = threading.Lock()


def is_remote(path):
    """Whether ``path`` is a URI of a non-local filesystem (``file://`` is local)."""
    m = _SCHEME.match(str(path))
    return bool(m) and m.group(1).lower() != "file"


def local_path(path):
    """A local path: ``file:///x`` becomes ``/x``; other paths are returned as they are."""
    s = os.fspath(path)
    if s.lower().startswith("file://"):
        return urlsplit(s).path
    return s


def filesystem(uri):
    """``(pyarrow FileSystem, path within it)`` of ``uri``; one filesystem per
    scheme and authority in a process (reused by every read)."""
    from pyarrow import fs as pafs

    parts = urlsplit(uri)
    key = (parts.scheme.lower(), parts.netloc)
    with _LOCK:
        hit = _FILESYSTEMS.get(key)
    if hit is None:
        try:
            hit, _ = pafs.FileSystem.from_uri(f"{parts.scheme}://{parts.netloc}/")
        except Exception as exc:  # an unknown scheme, a missing cloud SDK build, ...
            raise InputError(f"{parts.scheme}://{parts.netloc}: cannot open this filesystem "
                             f"({type(exc).__name__}: {exc})") from None
        with _LOCK:
            _FILESYSTEMS[key] = hit
    path = (parts.netloc + parts.path) if parts.netloc else parts.path
    return hit, path.rstrip("/") if path != "/" else path


def open_input(path):
    """A seekable input file (a pyarrow ``NativeFile``) of a URI or a local path."""
    if not is_remote(path):
        from pyarrow import fs as pafs

        return pafs.LocalFileSystem().open_input_file(local_path(path))
    fs, p = filesystem(path)
    return fs.open_input_file(p)


def _glob_regex(pattern):
    """A regex of a glob over ``/``-separated paths: ``*`` and ``?`` stay within one
    component, ``**`` spans any number of them, ``[...]`` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _has_magic(s):
    return any(ch in s for ch in "*?[")


def list_uri(uri, supported, hidden):
    """The files of a URI input, sorted: the file itself, every supported file under a
    prefix ("directory", names ``hidden(name)`` skipped) or every match of a glob.

    Returns ``[(uri, size, mtime_ns)]``; raises :class:`InputError` when nothing is found.
    """
    from pyarrow import fs as pafs

    parts = urlsplit(uri)
    base_uri = f"{parts.scheme}://{parts.netloc}"
    fs, path = filesystem(uri)

    def entry(info):
        mtime = info.mtime_ns if info.mtime_ns is not None else 0
        return (f"{base_uri}/{info.path[len(parts.netloc):].lstrip('/')}"
                if parts.netloc else f"{parts.scheme}://{info.path}", int(info.size or 0),
                int(mtime))

    def walk(prefix):
        infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
        rel = len(prefix.rstrip("/")) + 1
        return [i for i in infos if i.type == pafs.FileType.File
                and not any(hidden(c) for c in i.path[rel:].split("/"))
                and os.path.splitext(i.path)[1].lower() in supported]

    if _has_magic(path):
        comps = path.split("/")
        k = next(i for i, c in enumerate(comps) if _has_magic(c))
        base = "/".join(comps[:k])
        rx = _glob_regex(path)
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True,
                                                       allow_not_found=True))
        except OSError as exc:
            raise InputError(f"{uri}: cannot list ({exc})") from None
        found = []
        for info in infos:
            # as Python's glob: wildcards do not match names starting with "."
            if not rx.match(info.path) or any(
                    c.startswith(".") for c in info.path[len(base) + 1:].split("/")):
                continue
            if info.type == pafs.FileType.File:
                found.append(info)
            elif info.type == pafs.FileType.Directory:
                found += walk(info.path)
        if not found:
            raise InputError(f"{uri}: pattern matches no files")
    else:
        try:
            info = fs.get_file_info(path)
        except OSError as exc:
            raise InputError(f"{uri}: cannot read ({exc})") from None
        if info.type == pafs.FileType.File:
            found = [info]
        elif info.type == pafs.FileType.Directory:
            found = walk(path)
            if not found:
                raise InputError(f"{uri}: holds no input files ({', '.join(supported)})")
        else:
            raise InputError(f"{uri}: no such file or prefix")
    return sorted({entry(i) for i in found})
