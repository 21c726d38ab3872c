"""Manifests: one JSON file per committed version under ``_manifests/``.

A manifest is the whole index as of one commit: parameters, the files that
hold its data (each with size and CRC-32) and the exact live row count. It
carries a CRC-32 of its own canonical JSON, so a damaged manifest is never
mistaken for a valid one.
"""

import json
import logging
import re

from ..errors import CommitConflictError, CorruptIndexError, FutureFormatError
from ._files import fast_crc32
from ._fs import location

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


def manifest_rel(version):
    return f"{MANIFEST_DIR}/{manifest_name(version)}"


def manifest_path(loc, version):
    """The full path (or URI) of ``version``'s manifest in location ``loc``."""
    loc = location(loc)  # a location, or a path / URI of one
    return loc.path(manifest_rel(version))


def list_versions(loc):
    """Version numbers of every manifest file present (readable or not), ascending."""
    loc = location(loc)  # a location, or a path / URI of one
    names = loc.listdir(MANIFEST_DIR)
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


def read(loc, version):
    loc = location(loc)  # a location, or a path / URI of one
    path = manifest_path(loc, version)
    try:
        data = loc.read(manifest_rel(version))
    except FileNotFoundError:
        raise FileNotFoundError(f"{loc.root}: no version {version} (missing {path})") from None
    return decode(data, path, version)


def damaged_newest_error(loc, version, exc):
    """The error for a store whose newest manifest (of ``version``) cannot be read:
    names the file, says which versions are left and how to repair."""
    loc = location(loc)  # a location, or a path / URI of one
    root = loc.root
    older = [v for v in list_versions(loc) if v < version]
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


def read_newest(loc, versions=None):
    """The newest manifest of the store at ``root`` (a dict). Raises
    ``FileNotFoundError`` when there is none, :class:`FutureFormatError` for one
    written by a newer shardann, and :class:`CorruptIndexError` naming it when it
    is damaged: never an older version in its place."""
    loc = location(loc)  # a location, or a path / URI of one
    versions = list_versions(loc) if versions is None else versions
    if not versions:
        raise FileNotFoundError(f"no shardann index at {loc.root!r} "
                                f"(no {MANIFEST_DIR}/v*.json)")
    try:
        return read(loc, versions[-1])
    except FutureFormatError:
        raise
    except CorruptIndexError as exc:
        raise damaged_newest_error(loc, versions[-1], exc) from None


def check_unpublished(loc, version, advice):
    """Raise unless ``version`` is still free to publish: a
    :class:`CommitConflictError` (with ``advice``) when another writer took it,
    a :class:`CorruptIndexError` naming its manifest when that file is damaged
    (the store needs ``repair``; a retry would never succeed)."""
    loc = location(loc)  # a location, or a path / URI of one
    loc.check_writable()
    if loc.exists(manifest_rel(version)):
        raise taken_error(loc, version, advice)


def taken_error(loc, version, advice):
    """Why ``version`` cannot be published: it exists (a conflict) or is damaged."""
    loc = location(loc)  # a location, or a path / URI of one
    try:
        read(loc, version)
    except FutureFormatError:
        pass  # a newer shardann committed it: a conflict like any other
    except FileNotFoundError:
        pass
    except CorruptIndexError as exc:
        if list_versions(loc)[-1] == version:
            return damaged_newest_error(loc, version, exc)
        # a damaged version with newer ones above it: this commit's base is stale anyway
    return CommitConflictError(
        f"{loc.root}: version {version} was committed by another writer while this commit "
        f"(based on version {version - 1}) was being prepared; nothing was written. "
        f"{advice}")


#: what a conflicting transaction can do (a whole-state save says something else)
TRANSACTION_ADVICE = ("Open the newest version (IndexStore.open) and apply this "
                      "transaction's changes to it again.")


def publish(loc, body, advice=TRANSACTION_ADVICE):
    """Publish ``body`` as version ``body["version"]`` if that version does not exist.

    The location's create-if-absent write is the commit point: locally a
    temporary file fsynced and ``os.link``-ed to its name, then the directory
    fsynced; on an object store a conditional put (see :mod:`._fs`). Raises
    :class:`CommitConflictError` (its message ending with ``advice``) when the
    version already exists, and :class:`CorruptIndexError` naming the file
    when the manifest there is damaged.
    """
    loc = location(loc)  # a location, or a path / URI of one
    version = body["version"]
    data = encode(body)
    try:
        loc.publish(manifest_rel(version), data)
    except FileExistsError:
        raise taken_error(loc, version, advice) from None


def open_small_file(data, path, file_format, what, *, checked=False):
    """``(ParquetFile, meta)`` of a small single-purpose Parquet file (codebooks,
    calibration): its JSON metadata under the ``shardann`` key must name
    ``file_format`` and a readable format version. ``checked``: the bytes already
    matched the manifest's CRC-32, so page checksums are not verified again.
    Raises :class:`~shardann.CorruptIndexError` naming ``path`` and ``what``."""
    import pyarrow as pa  # only the model files need Arrow here, not the manifest
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=not checked)
        meta = json.loads(pf.schema_arrow.metadata[b"shardann"])
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except Exception as exc:
        raise CorruptIndexError(f"{path}: unreadable {what} ({exc})") from exc
    if meta.get("format") != file_format:
        raise CorruptIndexError(f"{path}: not a shardann {what}")
    check_format_version(meta.get("format_version"), path)
    return pf, meta
