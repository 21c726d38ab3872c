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

from ..errors import CommitConflictError, CorruptIndexError, FutureFormatError
from ._crash import crash_point
from ._files import fast_crc32, fsync_dir

logger = logging.getLogger(__name__)

FORMAT = "shardann"
#: the format this shardann writes; it reads every version up to this one
FORMAT_VERSION = 2
MANIFEST_DIR = "_manifests"
#: a damaged manifest set aside by ``repair(rollback=True)`` is renamed to this prefix +
#: its name (``damaged-v00000007.json``); no reader or vacuum looks at it again
DAMAGED_PREFIX = "damaged-"
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


def damaged_newest_error(root, version, exc):
    """The error for a store whose newest manifest (of ``version``) cannot be read:
    names the file, says which versions are left and how to repair."""
    older = [v for v in list_versions(root) if v < version]
    if not older:
        left = "no older version is left"
    else:
        span = f"{older[0]}" if len(older) == 1 else f"s {older[0]}..{older[-1]}"
        left = f"version{span} can still be opened explicitly (version=...)"
    return CorruptIndexError(
        f"{exc} -- this is the newest manifest of {root}; shardann does not fall back to "
        f"an older version silently, and commits based on older versions fail until it is "
        f"repaired; {left}. "
        f"Check a version with `shardann verify {root} --version V`; repair with "
        f"`shardann repair {root} --rollback` (sets {manifest_name(version)} aside as "
        f"{DAMAGED_PREFIX}{manifest_name(version)}, so the version before it is the newest "
        f"again) or `shardann repair {root} --supersede V` (publishes version "
        f"{version + 1} holding version V); in Python: "
        "shardann.storage.repair(path, rollback=True) or (path, supersede=V)")


def read_newest(root, versions=None):
    """The newest manifest of the store at ``root`` (a dict). Raises
    ``FileNotFoundError`` when there is none, :class:`FutureFormatError` for one
    written by a newer shardann, and :class:`CorruptIndexError` naming it when it
    is damaged: never an older version in its place."""
    versions = list_versions(root) if versions is None else versions
    if not versions:
        raise FileNotFoundError(f"no shardann index at {root!r} (no {MANIFEST_DIR}/v*.json)")
    try:
        return read(root, versions[-1])
    except FutureFormatError:
        raise
    except CorruptIndexError as exc:
        raise damaged_newest_error(root, versions[-1], exc) from None


def check_unpublished(root, version, advice):
    """Raise unless ``version`` is still free to publish: a
    :class:`CommitConflictError` (with ``advice``) when another writer took it,
    a :class:`CorruptIndexError` naming its manifest when that file is damaged
    (the store needs ``repair``; a retry would never succeed)."""
    if os.path.exists(manifest_path(root, version)):
        raise taken_error(root, version, advice)


def taken_error(root, version, advice):
    """Why ``version`` cannot be published: it exists (a conflict) or is damaged."""
    try:
        read(root, version)
    except FutureFormatError:
        pass  # a newer shardann committed it: a conflict like any other
    except FileNotFoundError:
        pass
    except CorruptIndexError as exc:
        if list_versions(root)[-1] == version:
            return damaged_newest_error(root, version, exc)
        # a damaged version with newer ones above it: this commit's base is stale anyway
    return CommitConflictError(
        f"{root}: version {version} was committed by another writer while this commit "
        f"(based on version {version - 1}) was being prepared; nothing was written. "
        f"{advice}")


#: what a conflicting transaction can do (a whole-state save says something else)
TRANSACTION_ADVICE = ("Open the newest version (IndexStore.open) and apply this "
                      "transaction's changes to it again.")


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


def publish(root, body, advice=TRANSACTION_ADVICE):
    """Publish ``body`` as version ``body["version"]`` if that version does not exist.

    Writes a temporary file, fsyncs it, then ``os.link``s it to its final name
    (create-if-absent: atomic, and fails if another writer got there first),
    then fsyncs the directory. Raises :class:`CommitConflictError` (its message
    ending with ``advice``) when the version already exists, and
    :class:`CorruptIndexError` naming the file when the manifest there is damaged.
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
        raise taken_error(root, version, advice) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    crash_point("manifest.after_publish")
    fsync_dir(mdir)
