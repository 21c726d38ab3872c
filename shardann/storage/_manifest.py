"""Manifests: one JSON file per committed version under ``_manifests/``.

A manifest is the whole index as of one commit: parameters, the files that
hold its data (each with size and CRC-32) and the exact live row count. It
carries a CRC-32 of its own canonical JSON, so a damaged manifest is never
mistaken for a valid one.
"""

import errno
import json
import logging
import os
import re
import uuid

from ..errors import CommitConflictError, CorruptIndexError
from ._crash import crash_point
from ._files import fast_crc32, fsync_dir

logger = logging.getLogger(__name__)

FORMAT = "shardann"
#: the format this shardann writes; it reads every version up to this one
FORMAT_VERSION = 2
MANIFEST_DIR = "_manifests"
_NAME = re.compile(r"^v(\d{8,})\.json$")


def manifest_name(version):
    return f"v{version:08d}.json"


def manifest_path(root, version):
    return os.path.join(root, MANIFEST_DIR, manifest_name(version))


def list_versions(root):
    """Version numbers of every manifest file present (readable or not), ascending."""
    try:
        names = os.listdir(os.path.join(root, MANIFEST_DIR))
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)


def _canonical(body):
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def encode(body):
    """Manifest bytes: the body plus ``checksum`` = crc32 of its canonical JSON."""
    body = dict(body)
    body.pop("checksum", None)
    body["checksum"] = f"{fast_crc32(_canonical(body)):08x}"
    return (json.dumps(body, sort_keys=True, indent=1) + "\n").encode()


def check_format_version(found, where):
    if not isinstance(found, int) or found < 1:
        raise CorruptIndexError(f"{where}: invalid format_version {found!r}")
    if found > FORMAT_VERSION:
        raise CorruptIndexError(
            f"{where}: written in shardann storage format version {found}, newer than "
            f"this shardann understands (format version {FORMAT_VERSION}); upgrade shardann "
            "to open it")


class FutureFormatError(CorruptIndexError):
    """A manifest written by a newer shardann (never skipped silently)."""


def decode(data, path, version=None):
    """Parse and validate manifest bytes; raise CorruptIndexError naming ``path``."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptIndexError(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CorruptIndexError(f"{path}: not a shardann manifest")
    try:
        check_format_version(body.get("format_version"), path)
    except CorruptIndexError as exc:
        found = body.get("format_version")
        if isinstance(found, int) and found > FORMAT_VERSION:
            raise FutureFormatError(str(exc)) from None
        raise
    stored = body.pop("checksum", None)
    want = f"{fast_crc32(_canonical(body)):08x}"
    if stored != want:
        raise CorruptIndexError(
            f"{path}: manifest checksum mismatch (stored {stored!r}, computed {want})")
    required = ("version", "kind", "config", "ntotal", "nlist", "files", "trained")
    missing = [k for k in required if k not in body]
    if missing:
        raise CorruptIndexError(f"{path}: manifest lacks {missing}")
    if version is not None and body["version"] != version:
        raise CorruptIndexError(
            f"{path}: manifest says version {body['version']}, its name says {version}")
    return body


def read(root, version):
    path = manifest_path(root, version)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{root}: no version {version} (missing {path})") from None
    return decode(data, path, version)


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


def publish(root, body):
    """Publish ``body`` as version ``body["version"]`` if that version does not exist.

    Writes a temporary file, fsyncs it, then ``os.link``s it to its final name
    (create-if-absent: atomic, and fails if another writer got there first),
    then fsyncs the directory. Raises :class:`CommitConflictError` when the
    version already exists.
    """
    version = body["version"]
    mdir = os.path.join(root, MANIFEST_DIR)
    final = os.path.join(mdir, manifest_name(version))
    tmp = os.path.join(mdir, f".tmp-{uuid.uuid4().hex}.json")
    data = encode(body)
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    crash_point("manifest.after_tmp_write")
    try:
        _link(tmp, final, data)
    except FileExistsError:
        raise CommitConflictError(
            f"{root}: version {version} was committed by another writer while this "
            f"transaction (based on version {body.get('parent_version')}) was open; "
            "reopen the store and retry") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    crash_point("manifest.after_publish")
    fsync_dir(mdir)
