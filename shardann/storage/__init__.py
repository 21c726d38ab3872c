"""The on-disk format: versioned manifests, codebooks, list segments, tombstones.

:class:`IndexStore` is the API the single-process ``save`` / ``open_index``
and the distributed layer share; it reads and writes :class:`IndexState`
(plain values; ``shardann.index`` turns indexes into states and back), and
imports nothing from ``shardann.index``. ``docs/format.md`` describes the
files.

Also public, for writers that produce store files in other processes (the
distributed ingest): :func:`write_segment` (then
:meth:`Transaction.add_segments` / :meth:`IndexStore.create_from_segments`),
:func:`encode_codebooks` / :func:`decode_codebooks` (a model as one file),
:func:`list_versions` / :func:`read_manifest`, :func:`crash_point` (named
crash points for crash tests), :func:`fast_crc32` and :func:`fsync_dir`; and
for operators, :func:`repair` (a damaged newest manifest).
"""

import os

from ._calibration import decode as _decode_calibration
from ._calibration import encode as _encode_calibration
from ._codebooks import decode as _decode_codebooks
from ._codebooks import encode as _encode_codebooks
from ._crash import ENV_VAR as CRASH_ENV_VAR
from ._crash import POINTS as CRASH_POINTS
from ._crash import crash_point
from ._files import fast_crc32, fsync_dir
from ._fs import SCHEMES, is_uri
from ._fs import location as _location
from ._manifest import FORMAT_VERSION, FutureFormatError
from ._manifest import list_versions as _list_versions
from ._manifest import read as _read_manifest
from ._segments import ATTRIBUTES as _ATTRIBUTES
from ._segments import ROW_GROUP_ROWS
from ._segments import column_spec as _column_spec
from ._segments import write_segment as _write_segment
from ._store import IndexStore
from ._transaction import MAX_SEGMENT_ROWS, Transaction
from .state import IndexState


def write_segment(path, list_no, ids, payload, columns, *, row_group_rows=ROW_GROUP_ROWS,
                  attributes=None):
    """Write one segment file and return its manifest entry (without ``path``).

    Parameters
    ----------
    path : str, a new file, normally ``<store>/segments/<name>.parquet``.
    list_no : int (n,), each row's list.
    ids : int64 (n,).
    payload : dict ``"codes"`` uint8 (n, code_size) and/or ``"vectors"``
        float (n, d) — the store's columns.
    columns : dict payload name -> (width, dtype), as ``IndexState.columns``
        (``index.columns``).
    row_group_rows : rows per row group (cut at list boundaries).
    attributes : pyarrow.Table of the rows' attributes (n rows), of the
        store's attribute schema (``IndexState.attribute_schema``), or None
        (a segment without attribute columns: its rows read as nulls).

    Rows are sorted by (list, id) here. Add ``"path"`` (relative to the
    store) to the returned dict and hand it to :meth:`Transaction.add_segments`
    or :meth:`IndexStore.create_from_segments`.
    """
    data = dict(payload)
    if attributes is not None:
        data[_ATTRIBUTES] = attributes
    return _write_segment(os.fspath(path), list_no, ids, data, _column_spec(columns),
                          format_version=FORMAT_VERSION, row_group_rows=row_group_rows,
                          attr_schema=None if attributes is None else attributes.schema)


def encode_codebooks(arrays, kind, config):
    """The bytes of a codebooks file holding float32 ``arrays`` (name -> ndarray)
    of an index of ``kind`` built with ``config`` (see docs/format.md)."""
    return _encode_codebooks(arrays, kind, config)


def decode_codebooks(data, path):
    """``(arrays, meta)`` from codebooks file bytes (format version 1 or 2):
    float32 arrays by name and ``meta`` {"kind", "config", "format_version", ...}.
    Raises :class:`shardann.CorruptIndexError` naming ``path`` for damaged bytes."""
    return _decode_codebooks(data, os.fspath(path))


def encode_calibration(arrays, meta):
    """The bytes of a calibration file (docs/format.md): ``arrays`` ``ids``
    int64 (m,), ``vectors`` float32 (m, d), ``live`` bool (m,), ``truth_ids``
    int64 (m, k_max), ``truth_distances`` float32 (m, k_max), ``truth_bound``
    float32 (m,); ``meta`` a
    JSON-able dict kept in the file (with ``rows`` = m)."""
    return _encode_calibration(arrays, {**meta, "rows": int(len(arrays["ids"]))})


def decode_calibration(data, path):
    """``(arrays, meta)`` from calibration file bytes (see
    :func:`encode_calibration`). Raises :class:`shardann.CorruptIndexError`
    naming ``path`` for damaged bytes."""
    return _decode_calibration(data, os.fspath(path))


def location(path, storage_options=None):
    """Where a store lives, from a local path or a URI.

    ``path``: a directory (str or PathLike), ``file:///abs/dir``,
    ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``az://container/prefix``
    or ``abfs[s]://container@account.dfs.core.windows.net/prefix``, or
    ``memory://name`` (process-local, for tests). Every ``path`` argument of
    the store accepts such a string or the object returned here.

    ``storage_options`` (dict), for object stores: credentials and settings as
    obstore's configuration keys (``aws_access_key_id``,
    ``aws_secret_access_key``, ``aws_session_token``, ``aws_region``,
    ``aws_endpoint``, ``allow_http``, ...; by default the cloud SDKs' own
    environment is used: ``AWS_*`` variables, ``AWS_ENDPOINT_URL``,
    ``AWS_ALLOW_HTTP=true``, instance roles), plus shardann's
    ``conditional_writes=False`` (the backend ignores create-only puts) and
    ``single_writer=True`` (then commit anyway, by check-then-put: only safe
    when a single process writes) and ``cache_dir`` (a local directory that
    keeps the byte ranges read from data files, which never change: a shard
    reloading on the same node reads them from there). Options stay in memory: they are never
    written to the store, logged or put in messages.

    Raises ``ValueError`` for an unsupported scheme (``foo://x``) or an
    unusable URI.
    """
    return _location(path, storage_options)


def list_versions(path, *, storage_options=None):
    """Version numbers of every manifest under ``path`` (readable or not), ascending."""
    return _list_versions(_location(path, storage_options))


def read_manifest(path, version, *, storage_options=None):
    """The manifest (a dict, see docs/format.md) of ``version`` of the store at
    ``path``, checksum checked. Raises ``FileNotFoundError`` or
    :class:`shardann.CorruptIndexError`."""
    return _read_manifest(_location(path, storage_options), int(version))


def repair(path, *, rollback=False, supersede=None, storage_options=None):
    """Repair a store whose newest manifest is damaged (opening its newest
    version, and every commit on it, raise :class:`shardann.CorruptIndexError`
    naming that manifest until then). Exactly one of:

    ``rollback=True``
        Set the damaged newest manifest aside: ``_manifests/v00000007.json`` is
        renamed to ``_manifests/damaged-v00000007.json`` (never deleted), so the
        version before it is the newest again. Several damaged manifests at the
        top are all set aside. The next commit reuses the number 7: prefer
        ``supersede`` if version 7 was ever served (actor names carry versions).
    ``supersede=VERSION``
        Publish a new version above the damaged one (here 8) whose content is
        that of the readable older ``VERSION`` (its files, checked as on open).
        The damaged manifest stays where it is, still an error to open by number.

    Returns a report: {"path", "action", "damaged" (version numbers), "errors",
    "version" (the newest version now), and "moved" {old: new path} for a
    rollback or "superseded_with" for a supersede}. Raises ``ValueError`` when
    the newest manifest is readable (nothing to repair) or the arguments do not
    say one thing to do; ``FileNotFoundError`` for a missing store or version;
    :class:`shardann.CorruptIndexError` when ``VERSION`` is unreadable too, or
    for a rollback when no readable version is left.

    From the command line: ``shardann repair PATH --rollback`` or
    ``--supersede VERSION``; ``shardann verify PATH --version V`` checks a version.
    """
    return IndexStore.repair(path, rollback=rollback, supersede=supersede,
                             storage_options=storage_options)


__all__ = ["CRASH_ENV_VAR", "CRASH_POINTS", "FORMAT_VERSION", "FutureFormatError",
           "IndexState", "IndexStore", "MAX_SEGMENT_ROWS", "ROW_GROUP_ROWS", "SCHEMES",
           "Transaction", "crash_point", "decode_calibration", "decode_codebooks",
           "encode_calibration", "encode_codebooks", "fast_crc32",
           "fsync_dir", "is_uri", "list_versions", "location", "read_manifest", "repair",
           "write_segment"]
