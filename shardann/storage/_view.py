"""The read side of a store: one committed version, opened and read.

:class:`StoreView` opens a version (the newest, or a given one), answers its
properties from the manifest and reads its lists with tombstones applied;
:class:`~shardann.storage.IndexStore` adds the writers on top.
"""

import copy
import logging
import os

import numpy as np

from ..drift import DEFAULT_THRESHOLD, drift_report
from ..errors import CorruptIndexError
from ..filters import null_table
from . import _calibration, _codebooks, _manifest, _tombstones
from ._files import check_size, read_checked
from ._fs import location
from ._grouping import as_ids, group_by_list, hits, sorted_counts
from ._manifest import MANIFEST_DIR
from ._segments import (
    ATTRIBUTES,
    TO_FILE,
    TO_INDEX,
    SegmentFile,
    attribute_schema,
    payload_columns,
)
from .state import KINDS, IndexState

logger = logging.getLogger(__name__)

SEGMENT_DIR = "segments"
TOMBSTONE_DIR = "tombstones"
_INTERIM_FILES = ("index.json", "arrays.npz")


class StoreView:
    """An immutable view of one committed version of a store (see ``IndexStore``)."""

    def __init__(self, root, manifest, check_chunks=True):
        self._loc = location(root)  # a location, or a path / URI of one
        self._root = self._loc.root
        self._m = manifest
        self._check_chunks = bool(check_chunks)
        self._arrays = None
        self._attr_schema = attribute_schema(manifest.get("attributes"))
        self._segment_files = {}
        self._dead_cache = {}
        self._tomb_ids = {}

    def __getstate__(self):
        # a view travels as (path, manifest); open files and caches are rebuilt on use
        return {"root": self._loc, "manifest": self._m, "check_chunks": self._check_chunks}

    def __setstate__(self, state):
        self.__init__(state["root"], state["manifest"], state.get("check_chunks", True))

    # -- opening ---------------------------------------------------------------------
    @staticmethod
    def exists(path, *, storage_options=None):
        """True when ``path`` (a directory or URI) holds at least one manifest."""
        return bool(_manifest.list_versions(location(path, storage_options)))

    @classmethod
    def open(cls, path, version=None, *, check_chunks=True, storage_options=None):
        """Open version ``version`` of the store at ``path`` (default: the newest).

        The newest manifest is current. If it is damaged (or written by a newer
        shardann) opening the newest version raises
        :class:`shardann.CorruptIndexError` naming it: there is no silent
        fallback to an older version. Older versions still open when asked for
        by number, and :func:`shardann.storage.repair` sets the damaged
        manifest aside or supersedes it. Opening checks the manifest's checksum,
        the codebooks' checksum and the size of every data file (the
        calibration file's too, which is read only when asked for); a segment's
        footer checksum is checked when it is first read, and the CRC-32 of
        every column chunk on every read.

        ``check_chunks=False`` skips the column chunk checksums on reads (for
        trusted, recently verified data only: a flipped bit inside a data page
        then goes unnoticed; footers and sizes are still checked, and
        :meth:`verify` always checks everything).

        ``path`` is a directory or a URI (``s3://``, ``gs://``, ``az://``,
        ``memory://``, ``file://``); ``storage_options`` passes credentials and
        settings for object stores (see :func:`shardann.storage.location`).

        Raises ``FileNotFoundError`` (no store / no such version) or
        :class:`shardann.CorruptIndexError` (naming the damaged file);
        ``ValueError`` for an unsupported URI scheme.
        """
        loc = location(path, storage_options)
        root = loc.root
        if loc.local and not os.path.isdir(root):
            raise FileNotFoundError(f"no shardann index at {root!r}")
        versions = _manifest.list_versions(loc)
        if not versions:
            if all(loc.exists(f) for f in _INTERIM_FILES):
                raise CorruptIndexError(
                    f"{root}: written in the interim index.json + arrays.npz format, which "
                    "this shardann no longer reads; rebuild and save the index")
            raise FileNotFoundError(
                f"no shardann index at {root!r} (no {MANIFEST_DIR}/v*.json manifest)")
        if version is not None:
            version = int(version)
            if version not in versions:
                raise FileNotFoundError(
                    f"{root}: no version {version}; versions present: {versions}")
            body = _manifest.read(loc, version)
        else:
            body = _manifest.read_newest(loc, versions)
        store = cls(loc, body, check_chunks)
        store._check_files()
        return store

    def checkout(self, version=None):
        """Open another version (default: the newest) of the same store."""
        return type(self).open(self._loc, version, check_chunks=self._check_chunks)

    def _check_files(self):
        files = self._m["files"]
        if files.get("codebooks") is not None:
            self._codebook_arrays()  # small: read and checksummed whole
        checks = [(s, "segment") for s in files["segments"]]
        checks += [(t, "tombstone file") for t in files["tombstones"]]
        if files.get("calibration") is not None:  # its size only: read when asked for
            checks.append((files["calibration"], "calibration file"))
        if self._loc.local:
            for entry, what in checks:
                check_size(self._loc, entry["path"], entry["size"], what)
            return
        # an object store: one listing per directory instead of a request per file
        listed = {}
        for entry, what in checks:
            folder, _, name = entry["path"].rpartition("/")
            if folder not in listed:
                listed[folder] = self._loc.sizes(folder)
            got = listed[folder].get(name)
            if got is None:
                raise CorruptIndexError(f"{self._loc.path(entry['path'])}: {what} named by "
                                        "the manifest is missing")
            if got != entry["size"]:
                raise CorruptIndexError(
                    f"{self._loc.path(entry['path'])}: {what} has {got} bytes but the "
                    f"manifest says {entry['size']} (truncated or replaced)")

    # -- properties ----------------------------------------------------------------------
    @property
    def path(self):
        """The store's directory (absolute) or URI."""
        return self._root

    @property
    def location(self):
        """Where the store lives (a location object: see :func:`shardann.storage.location`)."""
        return self._loc

    @property
    def version(self):
        return self._m["version"]

    @property
    def manifest(self):
        """A copy of this version's manifest (a dict; see docs/format.md)."""
        return copy.deepcopy(self._m)

    @property
    def manifest_path(self):
        """The file of this version's manifest (for messages)."""
        return _manifest.manifest_path(self._loc, self.version)

    @property
    def codebooks_file(self):
        """This version's codebooks entry {path, size, crc32} (a copy), or None:
        two versions with equal entries have the same trained arrays."""
        cb = self._m["files"].get("codebooks")
        return None if cb is None else dict(cb)

    @property
    def config(self):
        """The index's constructor arguments."""
        return dict(self._m["config"])

    @property
    def kind(self):
        return self._m["kind"]

    @property
    def ntotal(self):
        """Live vectors in this version (exact)."""
        return self._m["ntotal"]

    @property
    def nlist(self):
        return self._m["nlist"]

    @property
    def is_trained(self):
        return self._m["trained"]

    @property
    def columns(self):
        """Segment payload columns: {"code"/"vector": {"dtype", "width"}} (None if untrained)."""
        spec = self._m.get("columns")
        return None if spec is None else copy.deepcopy(spec)

    @property
    def attribute_schema(self):
        """``pyarrow.Schema`` of the attribute columns, or None (no attributes)."""
        return self._attr_schema

    @property
    def next_id(self):
        """Smallest id above every id this index has ever held (default ids start here)."""
        return self._m.get("next_id", 0)

    @property
    def code_size(self):
        spec = self._m.get("columns") or {}
        return spec["code"]["width"] if "code" in spec else None

    def versions(self):
        """Version numbers present in the store (ascending), including newer ones."""
        return _manifest.list_versions(self._loc)

    def history(self):
        """[{version, parent_version, created_at, operation, ntotal}] of readable versions."""
        out = []
        for v in self.versions():
            try:
                m = _manifest.read(self._loc, v)
            except (CorruptIndexError, FileNotFoundError):
                continue
            out.append({k: m.get(k) for k in
                        ("version", "parent_version", "created_at", "operation", "ntotal")})
        return out

    def __repr__(self):
        return (f"{type(self).__name__}({self._root!r}, version={self.version}, "
                f"kind={self.kind!r}, ntotal={self.ntotal}, "
                f"segments={len(self._m['files']['segments'])})")

    # -- reading the model ----------------------------------------------------------------
    def _codebook_arrays(self):
        if self._arrays is None:
            cb = self._m["files"].get("codebooks")
            if cb is None:
                self._arrays = {}
            else:
                path = self._loc.path(cb["path"])
                data = read_checked(self._loc, cb["path"], cb["size"], cb["crc32"],
                                    "codebooks file")
                self._arrays, _ = _codebooks.decode(data, path, checked=True)
        return self._arrays

    @property
    def calibration_file(self):
        """This version's calibration entry {path, size, crc32, rows} (a copy), or
        None when it has no calibration set."""
        entry = self._m["files"].get("calibration")
        return None if entry is None else dict(entry)

    def read_calibration_bytes(self):
        """The calibration file's bytes, size and checksum checked against the
        manifest, or None. Raises :class:`shardann.CorruptIndexError` naming it."""
        entry = self._m["files"].get("calibration")
        if entry is None:
            return None
        return read_checked(self._loc, entry["path"], entry["size"], entry["crc32"],
                            "calibration file")

    def read_calibration(self):
        """``(arrays, meta)`` of this version's calibration set (see
        docs/format.md), or None when it has none. Only read when called:
        opening a version or loading its lists never reads it."""
        data = self.read_calibration_bytes()
        if data is None:
            return None
        path = self._loc.path(self._m["files"]["calibration"]["path"])
        return _calibration.decode(data, path, checked=True)

    def trained_arrays(self):
        """The trained arrays (centroids, codebooks, opq_rotation) as float32 copies."""
        return {k: v.copy() for k, v in self._codebook_arrays().items()}

    # -- reading rows ---------------------------------------------------------------------
    def _segment(self, entry):
        f = self._segment_files.get(entry["path"])
        if f is None:
            f = self._segment_files[entry["path"]] = SegmentFile(
                self._loc, entry, self._m["columns"], self._check_chunks, self._attr_schema)
        return f

    def _tombstone_ids(self, entry):
        ids = self._tomb_ids.get(entry["path"])
        if ids is None:
            path = self._loc.path(entry["path"])
            data = read_checked(self._loc, entry["path"], entry["size"], entry["crc32"],
                                "tombstone file")
            ids = _tombstones.decode(data, path)
            if ids.size != entry["count"]:
                raise CorruptIndexError(
                    f"{path}: holds {ids.size} ids; the manifest says {entry['count']}")
            self._tomb_ids[entry["path"]] = ids
        return ids

    def _dead_for(self, seq):
        """Sorted unique ids hidden in a segment added at version ``seq``."""
        dead = self._dead_cache.get(seq)
        if dead is None:
            parts = [self._tombstone_ids(t) for t in self._m["files"]["tombstones"]
                     if t["seq"] > seq]
            dead = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            self._dead_cache[seq] = dead
        return dead

    def _live_rows(self, segments, lists=None, names=None):
        """Per segment: dict of arrays of its live rows in the requested lists."""
        nlist = self.nlist
        want = None
        if lists is not None:
            want = np.zeros(nlist, bool)
            want[lists] = True
        names = list(self._payload_names()) if names is None else names
        attrs = ATTRIBUTES in names and self._attr_schema is not None
        payload = [TO_FILE[k] for k in names if k != ATTRIBUTES]
        parts = []
        for entry in segments:
            rgs = entry["row_groups"]
            if lists is None:
                sel = list(range(len(rgs)))
            else:
                first = np.array([g["first_list"] for g in rgs], np.int64)
                last = np.array([g["last_list"] for g in rgs], np.int64)
                at = np.searchsorted(lists, first)
                ok = at < lists.size
                ok[ok] = lists[at[ok]] <= last[ok]
                sel = np.flatnonzero(ok).tolist()
            if not sel:
                continue
            f = self._segment(entry)
            dead = self._dead_for(entry["seq"])
            maybe_dead = bool(dead.size and entry.get("deleted", 1))
            whole = want is None or all(want[rgs[g]["first_list"]:rgs[g]["last_list"] + 1].all()
                                        for g in sel)
            # nothing to filter out: one read, zero-copy; else ids first, then only
            # the payload rows that stay
            at_once = whole and not maybe_dead
            rows = f.read(sel, ["list_id", "id"] + (payload if at_once else [])
                          + ([ATTRIBUTES] if at_once and attrs else []))
            lid = rows["list_id"]
            if lid.size and (int(lid.min()) < 0 or int(lid.max()) >= nlist):
                raise CorruptIndexError(f"{f.path}: list ids outside 0..{nlist - 1}")
            mask = None
            if want is not None:
                m = want[lid]
                if not m.all():
                    mask = m
            if maybe_dead:
                gone = hits(dead, rows["id"])
                if gone.any():
                    mask = ~gone if mask is None else mask & ~gone
            if mask is None:
                if payload and not at_once:
                    rows.update(f.read(sel, payload))  # zero-copy views
                if attrs and not at_once:
                    rows.update(f.read(sel, [ATTRIBUTES]))
            else:
                rows = {k: v[mask] for k, v in rows.items()}
                if payload:
                    rows.update(f.read_where(sel, payload, mask))
                if attrs:
                    rows[ATTRIBUTES] = f.read(sel, [ATTRIBUTES])[ATTRIBUTES].filter(mask)
            parts.append(rows)
        return parts

    def _payload_names(self):
        spec = self._m.get("columns") or {}
        return [TO_INDEX[c] for c in ("code", "vector") if c in spec]

    def _check_lists(self, list_ids):
        if list_ids is None:
            return None
        lists = np.unique(as_ids(list_ids, "list_ids"))
        if lists.size and (lists[0] < 0 or lists[-1] >= self.nlist):
            raise ValueError(f"list_ids must be in 0..{self.nlist - 1}; got "
                             f"{int(lists[0]) if lists[0] < 0 else int(lists[-1])}")
        return lists

    def read_lists(self, list_ids=None, *, attributes=False):
        """Live rows of some lists, grouped by list (ascending), tombstones applied.

        Only the row groups whose list range meets ``list_ids`` are read.

        Parameters
        ----------
        list_ids : iterable of int, or None for every list.

        Returns
        -------
        list_sizes : int64 (nlist,), rows per list (0 for lists not asked for).
        ids : int64 (n,).
        columns : dict, ``"codes"`` uint8 (n, code_size) and/or ``"vectors"``
            float32/float16 (n, d) — NumPy views of Arrow's buffers (no copy)
            when the rows come from one segment with nothing to filter out;
            with ``attributes=True`` and a store that has attributes, also
            ``"attributes"``: a pyarrow.Table of the rows' attribute columns.
        """
        if not self.is_trained:
            return np.zeros(self.nlist, np.int64), np.zeros(0, np.int64), {}
        lists = self._check_lists(list_ids)
        names = self._payload_names()
        if attributes and self._attr_schema is not None:
            names = names + [ATTRIBUTES]
        parts = self._live_rows(self._m["files"]["segments"], lists, names)
        if not parts:
            cols = payload_columns(self._m["columns"])
            out = {k: np.zeros((0, cols[k][0]), cols[k][1]) for k in names if k in cols}
            if ATTRIBUTES in names:
                out[ATTRIBUTES] = null_table(self._attr_schema, 0)
            return np.zeros(self.nlist, np.int64), np.zeros(0, np.int64), out
        return group_by_list(parts, self.nlist, names)

    def list_sizes(self):
        """Live rows per list, int64 (nlist,), reading only the list_id (and id) columns."""
        sizes = np.zeros(self.nlist, np.int64)
        if self.is_trained:
            for rows in self._live_rows(self._m["files"]["segments"], names=[]):
                sizes += sorted_counts(rows["list_id"], self.nlist)
        return sizes

    def drift(self, threshold=None, list_sizes=None):
        """The drift report of this version (:func:`shardann.drift.drift_report`:
        the errors of the vectors added since training against the training
        errors, list imbalance, retrain verdict at ``threshold``, default
        :data:`shardann.drift.DEFAULT_THRESHOLD`), or None when the manifest
        has no drift section (a flat index, an untrained one, or one trained
        by a shardann that did not record it). Reads the list_id columns for
        the list sizes unless ``list_sizes`` (int (nlist,)) is given."""
        section = self._m.get("drift")
        if not section or not self.is_trained:
            return None
        if list_sizes is None:
            list_sizes = self.list_sizes()
        return drift_report(section, list_sizes,
                            DEFAULT_THRESHOLD if threshold is None else threshold)

    def live_ids(self, segments=None):
        """int64 (n,): the live ids of some of this version's segments (manifest
        entries; default all), tombstones applied, in segment then list order.
        Reads only the list_id and id columns."""
        segs = self._m["files"]["segments"] if segments is None else list(segments)
        parts = [p["id"] for p in self._live_rows(segs, names=[])] if self.is_trained else []
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def segment_view(self, entries):
        """A view with this version's model and exactly the segments ``entries``
        (manifest entries, e.g. of files not committed yet) and no tombstones —
        to read segment files before, or apart from, a commit."""
        entries = [dict(e, seq=e.get("seq", self.version), deleted=0) for e in entries]
        body = {**self._m, "files": {**self._m["files"], "segments": entries,
                                     "tombstones": []},
                "ntotal": int(sum(e["rows"] for e in entries))}
        view = type(self)(self._loc, body, self._check_chunks)
        view._arrays = self._arrays
        return view

    def load_state(self, lists=None):
        """This version as an :class:`~shardann.storage.IndexState`.

        ``lists`` (int array, default all) restricts the rows to those lists (a
        shard's share); the model is always complete. The rows are NumPy views
        of Arrow's buffers where :meth:`read_lists` gives them (no copy); the
        trained arrays are private float32 copies.
        """
        if self.kind not in KINDS:
            raise CorruptIndexError(f"{self.manifest_path}: unknown index kind {self.kind!r}")
        config = copy.deepcopy(self._m["config"])
        if not self.is_trained:
            return IndexState(self.kind, config, False, {}, self.nlist, None,
                              next_id=self.next_id, attribute_schema=self._attr_schema)
        sizes, ids, payload = self.read_lists(lists, attributes=True)
        attrs = payload.pop(ATTRIBUTES, None)
        return IndexState(self.kind, config, True, self.trained_arrays(), self.nlist,
                          payload_columns(self._m["columns"]), sizes, ids, payload,
                          self.next_id, attributes=attrs, attribute_schema=self._attr_schema,
                          drift=copy.deepcopy(self._m.get("drift")))
