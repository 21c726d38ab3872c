"""``IndexStore``: versioned, crash-safe storage of an index in one directory.

See ``docs/format.md`` for the layout. In short: data files (codebooks,
segments, tombstones) are written once under fresh names and fsynced; then a
manifest naming all of them is published as ``_manifests/v<version>.json`` by
create-if-absent, which is the commit point. Readers take the newest manifest
(or a given one) and never see a partial commit.
"""

import copy
import datetime
import logging
import os
import time
import uuid

import numpy as np

from .._rows import scatter_rows
from ..errors import CommitConflictError, CorruptIndexError, NotTrainedError
from . import _codebooks, _manifest, _segments, _tombstones
from ._crash import crash_point
from ._files import check_size, fast_crc32, file_crc32, fsync_dir, read_checked, write_bytes
from ._manifest import FORMAT, FORMAT_VERSION, MANIFEST_DIR, FutureFormatError
from ._segments import ROW_GROUP_ROWS, SegmentFile, column_spec

logger = logging.getLogger(__name__)

SEGMENT_DIR = "segments"
TOMBSTONE_DIR = "tombstones"
#: the largest segment a save or compaction writes, in rows (cut at list boundaries)
MAX_SEGMENT_ROWS = 1 << 24
_INTERIM_FILES = ("index.json", "arrays.npz")


def _index_classes():
    from ..index.flat import FlatIndex
    from ..index.ivf import IVFFlatIndex, IVFPQIndex
    return {c.kind: c for c in (FlatIndex, IVFFlatIndex, IVFPQIndex)}


def _now():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _as_ids(ids, name="ids"):
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers (int64); got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _hits(sorted_dead, ids):
    """Boolean mask: which ``ids`` are in the sorted unique array ``sorted_dead``."""
    if sorted_dead.size == 0 or ids.size == 0:
        return np.zeros(ids.size, bool)
    at = np.searchsorted(sorted_dead, ids)
    np.minimum(at, sorted_dead.size - 1, out=at)
    return sorted_dead[at] == ids


def _sorted_counts(list_ids, nlist):
    """Rows per list of list ids sorted ascending (segment order), int64 (nlist,)."""
    bounds = np.searchsorted(list_ids, np.arange(nlist + 1, dtype=list_ids.dtype))
    return np.diff(bounds).astype(np.int64)


def _group_by_list(parts, nlist, names):
    """Merge row sets, each sorted by list, into one set grouped by list (list 0 first).

    ``parts`` are dicts of arrays with "list_id" and "id". Rows of one list keep
    the order of ``parts``. Returns (list_sizes int64 (nlist,), ids, {name: rows}).
    """
    counts = [_sorted_counts(p["list_id"], nlist) for p in parts]
    sizes = np.sum(counts, axis=0) if counts else np.zeros(nlist, np.int64)
    if len(parts) == 1:
        p = parts[0]
        return sizes, p["id"], {k: p[k] for k in names}
    n = int(sizes.sum())
    out_ids = np.empty(n, np.int64)
    out = {}
    for k in names:
        ref = parts[0][k]
        out[k] = np.empty((n,) + ref.shape[1:], ref.dtype)
    filled = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    for p, c in zip(parts, counts, strict=True):
        if p["id"].size == 0:
            continue
        lid = p["list_id"]
        run_start = np.cumsum(c) - c
        dest = filled[lid] + (np.arange(lid.size, dtype=np.int64) - run_start[lid])
        out_ids[dest] = p["id"]
        for k in names:
            scatter_rows(out[k], dest, p[k])
        filled += c
    return sizes, out_ids, out


class IndexStore:
    """One version of an index stored in a directory.

    Obtain with :meth:`create` or :meth:`open`; a store object is an immutable
    view of one committed version (``store.version``). Writers use
    :meth:`transaction`, :meth:`compact` and :meth:`vacuum`; each commit returns
    a new view.

    Examples
    --------
    >>> store = IndexStore.create("idx", trained_index)          # doctest: +SKIP
    >>> txn = store.transaction()                                # doctest: +SKIP
    >>> txn.add(list_no, ids, codes=codes); txn.delete([3, 4])   # doctest: +SKIP
    >>> store = txn.commit()                                     # doctest: +SKIP
    >>> sizes, ids, cols = store.read_lists([0, 5, 9])           # doctest: +SKIP
    >>> index = IndexStore.open("idx", version=1).load_index()   # doctest: +SKIP
    """

    def __init__(self, root, manifest, check_pages=True):
        self._root = root
        self._m = manifest
        self._check_pages = bool(check_pages)
        self._arrays = None
        self._segment_files = {}
        self._dead_cache = {}
        self._tomb_ids = {}

    def __getstate__(self):
        # a view travels as (path, manifest); open files and caches are rebuilt on use
        return {"root": self._root, "manifest": self._m, "check_pages": self._check_pages}

    def __setstate__(self, state):
        self.__init__(state["root"], state["manifest"], state.get("check_pages", True))

    # -- opening ---------------------------------------------------------------------
    @staticmethod
    def exists(path):
        """True when ``path`` holds at least one manifest."""
        return bool(_manifest.list_versions(os.path.abspath(os.fspath(path))))

    @classmethod
    def open(cls, path, version=None, *, check_pages=True):
        """Open version ``version`` of the store at ``path`` (default: the newest).

        The newest manifest that parses is current; a damaged newer one is
        skipped with a warning, but one written by a newer shardann is an error.
        Opening checks the manifest's checksum, the codebooks' checksum and the
        size of every data file; a segment's footer checksum is checked when it
        is first read, and Parquet page checksums on every read.

        ``check_pages=False`` skips the page checksums on reads (about 10%
        faster, 30% less CPU; footers and sizes are still checked, :meth:`verify` always
        checks everything) — for trusted, recently verified data only: a
        flipped bit inside a data page then goes unnoticed.

        Raises ``FileNotFoundError`` (no store / no such version) or
        :class:`shardann.CorruptIndexError` (naming the damaged file).
        """
        root = os.path.abspath(os.fspath(path))
        if not os.path.isdir(root):
            raise FileNotFoundError(f"no shardann index at {root!r}")
        versions = _manifest.list_versions(root)
        if not versions:
            if all(os.path.exists(os.path.join(root, f)) for f in _INTERIM_FILES):
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
            body = _manifest.read(root, version)
        else:
            body, errors = None, []
            for v in reversed(versions):
                try:
                    body = _manifest.read(root, v)
                    break
                except FutureFormatError:
                    raise
                except CorruptIndexError as exc:
                    logger.warning("skipping unreadable manifest: %s", exc)
                    errors.append(str(exc))
            if body is None:
                raise CorruptIndexError(f"{root}: no readable manifest ({'; '.join(errors)})")
        store = cls(root, body, check_pages)
        store._check_files()
        return store

    def checkout(self, version=None):
        """Open another version (default: the newest) of the same store."""
        return type(self).open(self._root, version, check_pages=self._check_pages)

    def _check_files(self):
        files = self._m["files"]
        cb = files.get("codebooks")
        if cb is not None:
            self._codebook_arrays()  # small: read and checksummed whole
        for s in files["segments"]:
            check_size(os.path.join(self._root, s["path"]), s["size"], "segment")
        for t in files["tombstones"]:
            check_size(os.path.join(self._root, t["path"]), t["size"], "tombstone file")

    # -- creating ----------------------------------------------------------------------
    @classmethod
    def create(cls, path, index, *, row_group_rows=ROW_GROUP_ROWS):
        """Create a store at ``path`` holding ``index`` (trained or not) as version 1.

        ``path`` may exist but must not hold a store. Raises ``FileExistsError``
        if it does, or if it is a non-empty directory of something else.
        """
        root = os.path.abspath(os.fspath(path))
        if os.path.exists(root):
            if not os.path.isdir(root):
                raise FileExistsError(f"{root} exists and is not a directory")
            if _manifest.list_versions(root):
                raise FileExistsError(f"{root} already holds a shardann index; open it")
            foreign = set(os.listdir(root)) - {MANIFEST_DIR, SEGMENT_DIR, TOMBSTONE_DIR}
            foreign = {f for f in foreign if not f.startswith("codebooks-")}
            if foreign:
                raise FileExistsError(
                    f"{root} is a non-empty directory that is not a shardann index "
                    f"(holds {sorted(foreign)[:5]})")
        return _write_index(root, index, None, "create", row_group_rows)

    @classmethod
    def create_from_segments(cls, path, index, segments):
        """Create a store whose version 1 holds ``index``'s model and segment
        files already written under ``path/segments/``, in one commit.

        For writers that produce segments in other processes (the distributed
        ingest's Ray workers, with ``_segments.write_segment``): model and data
        are published together, so a crash before the commit leaves no index
        rather than an empty one. ``index`` must be trained and empty;
        ``segments`` are manifest entries as described in
        :meth:`Transaction.add_segments`. ``path`` may hold unreferenced files
        but no manifest (else ``FileExistsError``).
        """
        root = os.path.abspath(os.fspath(path))
        if _manifest.list_versions(root):
            raise FileExistsError(f"{root} already holds a shardann index; open it")
        if not index.is_trained or index.ntotal:
            raise ValueError("create_from_segments needs a trained, empty index (its model); "
                             f"got is_trained={index.is_trained}, ntotal={index.ntotal}")
        return _write_index(root, index, None, "create", None, segments=list(segments))

    def save_index(self, index, *, row_group_rows=ROW_GROUP_ROWS):
        """Commit a new version holding exactly ``index``'s current content.

        The previous segments and tombstones leave the manifest (older versions
        still use them until :meth:`vacuum`). Returns the new view.
        """
        return _write_index(self._root, index, self._m, "save", row_group_rows)

    # -- properties ----------------------------------------------------------------------
    @property
    def path(self):
        return self._root

    @property
    def version(self):
        return self._m["version"]

    @property
    def manifest(self):
        """A copy of this version's manifest (a dict; see docs/format.md)."""
        return copy.deepcopy(self._m)

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
    def next_id(self):
        """Smallest id above every id this index has ever held (default ids start here)."""
        return self._m.get("next_id", 0)

    @property
    def code_size(self):
        spec = self._m.get("columns") or {}
        return spec["code"]["width"] if "code" in spec else None

    def versions(self):
        """Version numbers present in the store (ascending), including newer ones."""
        return _manifest.list_versions(self._root)

    def history(self):
        """[{version, parent_version, created_at, operation, ntotal}] of readable versions."""
        out = []
        for v in self.versions():
            try:
                m = _manifest.read(self._root, v)
            except (CorruptIndexError, FileNotFoundError):
                continue
            out.append({k: m.get(k) for k in
                        ("version", "parent_version", "created_at", "operation", "ntotal")})
        return out

    def __repr__(self):
        return (f"IndexStore({self._root!r}, version={self.version}, kind={self.kind!r}, "
                f"ntotal={self.ntotal}, segments={len(self._m['files']['segments'])})")

    # -- reading -------------------------------------------------------------------------
    def _codebook_arrays(self):
        if self._arrays is None:
            cb = self._m["files"].get("codebooks")
            if cb is None:
                self._arrays = {}
            else:
                path = os.path.join(self._root, cb["path"])
                data = read_checked(path, cb["size"], cb["crc32"], "codebooks file")
                self._arrays, _ = _codebooks.decode(data, path, checked=True)
        return self._arrays

    def trained_arrays(self):
        """The trained arrays (centroids, codebooks, opq_rotation) as float32 copies."""
        return {k: v.copy() for k, v in self._codebook_arrays().items()}

    def _segment(self, entry):
        f = self._segment_files.get(entry["path"])
        if f is None:
            f = self._segment_files[entry["path"]] = SegmentFile(
                self._root, entry, self._m["columns"], self._check_pages)
        return f

    def _tombstone_ids(self, entry):
        ids = self._tomb_ids.get(entry["path"])
        if ids is None:
            path = os.path.join(self._root, entry["path"])
            data = read_checked(path, entry["size"], entry["crc32"], "tombstone file")
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
        payload = [_segments.TO_FILE[k] for k in names]
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
            rows = f.read(sel, ["list_id", "id"] + (payload if at_once else []))
            lid = rows["list_id"]
            if lid.size and (int(lid.min()) < 0 or int(lid.max()) >= nlist):
                raise CorruptIndexError(f"{f.path}: list ids outside 0..{nlist - 1}")
            mask = None
            if want is not None:
                m = want[lid]
                if not m.all():
                    mask = m
            if maybe_dead:
                gone = _hits(dead, rows["id"])
                if gone.any():
                    mask = ~gone if mask is None else mask & ~gone
            if mask is None:
                if payload and not at_once:
                    rows.update(f.read(sel, payload))  # zero-copy views
            else:
                rows = {k: v[mask] for k, v in rows.items()}
                if payload:
                    rows.update(f.read_where(sel, payload, mask))
            parts.append(rows)
        return parts

    def _payload_names(self):
        spec = self._m.get("columns") or {}
        return [_segments.TO_INDEX[c] for c in ("code", "vector") if c in spec]

    def _check_lists(self, list_ids):
        if list_ids is None:
            return None
        lists = _as_ids(list_ids, "list_ids")
        lists = np.unique(lists)
        if lists.size and (lists[0] < 0 or lists[-1] >= self.nlist):
            raise ValueError(f"list_ids must be in 0..{self.nlist - 1}; got "
                             f"{int(lists[0]) if lists[0] < 0 else int(lists[-1])}")
        return lists

    def read_lists(self, list_ids=None):
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
            when the rows come from one segment with nothing to filter out.
        """
        if not self.is_trained:
            return np.zeros(self.nlist, np.int64), np.zeros(0, np.int64), {}
        lists = self._check_lists(list_ids)
        names = self._payload_names()
        parts = self._live_rows(self._m["files"]["segments"], lists, names)
        if not parts:
            return (np.zeros(self.nlist, np.int64), np.zeros(0, np.int64),
                    {k: np.zeros((0, self._m["columns"][_segments.TO_FILE[k]]["width"]),
                                 self._m["columns"][_segments.TO_FILE[k]]["dtype"])
                     for k in names})
        return _group_by_list(parts, self.nlist, names)

    def list_sizes(self):
        """Live rows per list, int64 (nlist,), reading only the list_id (and id) columns."""
        sizes = np.zeros(self.nlist, np.int64)
        if self.is_trained:
            for rows in self._live_rows(self._m["files"]["segments"], names=[]):
                sizes += _sorted_counts(rows["list_id"], self.nlist)
        return sizes

    def load_index(self, lists=None):
        """A core index object (FlatIndex / IVFFlatIndex / IVFPQIndex) of this version.

        ``lists`` restricts the loaded inverted lists (a shard's share); the
        model (centroids, codebooks) is always complete.
        """
        classes = _index_classes()
        if self.kind not in classes:
            raise CorruptIndexError(
                f"{_manifest.manifest_path(self._root, self.version)}: unknown index kind "
                f"{self.kind!r}")
        try:
            index = classes[self.kind](**self.config)
        except (TypeError, ValueError) as exc:
            raise CorruptIndexError(
                f"{_manifest.manifest_path(self._root, self.version)}: bad index config "
                f"({exc})") from exc
        if not self.is_trained:
            return index
        index._set_trained_arrays(self._codebook_arrays())
        if index._lists is None or column_spec(index._lists.columns) != self._m["columns"]:
            raise CorruptIndexError(
                f"{_manifest.manifest_path(self._root, self.version)}: stored columns "
                f"{self._m['columns']} do not fit a {self.kind} index with this config")
        return self.load_lists_into(index, lists)

    def load_lists_into(self, index, lists=None):
        """Replace ``index``'s inverted lists with ``lists`` of this version
        (None: all); ``index`` is one :meth:`load_index` returned. Returns it."""
        sizes, ids, data = self.read_lists(lists)
        index._set_lists(sizes, ids, data)
        if hasattr(index, "_next_id"):
            # default ids never reuse a removed id, across saves and shards
            index._next_id = max(index._next_id, self.next_id)
        return index

    # -- writing -------------------------------------------------------------------------
    def transaction(self):
        """A :class:`Transaction` based on this version."""
        return Transaction(self)

    def compact(self, *, min_rows=None, max_segment_rows=MAX_SEGMENT_ROWS):
        """Merge segments and drop deleted rows; commit and return the new view.

        With ``min_rows=None`` every segment is rewritten unless the store is
        already one segment with no deleted rows. Otherwise only segments with
        fewer than ``min_rows`` live rows, or with deleted rows, are merged.
        Search results are unchanged. Returns ``self`` when there is nothing to do.
        """
        segs = self._m["files"]["segments"]
        if min_rows is None:
            picked = segs
        else:
            picked = [s for s in segs
                      if s["rows"] - s.get("deleted", 0) < min_rows or s.get("deleted", 0)]
        has_deleted = any(s.get("deleted", 0) for s in picked)
        if len(picked) < 2 and not has_deleted:
            return self
        txn = Transaction(self, operation="compact")
        names = self._payload_names()
        parts = self._live_rows(picked, None, names)
        txn._drop = {s["path"] for s in picked}
        if parts:
            sizes, ids, data = _group_by_list(parts, self.nlist, names)
            list_no = np.repeat(np.arange(self.nlist, dtype=np.int32), sizes)
            txn._write_rows(list_no, ids, data, max_segment_rows)
        new = txn.commit()
        if new.ntotal != self.ntotal:
            raise CorruptIndexError(
                f"{self._root}: compaction changed ntotal {self.ntotal} -> {new.ntotal}")
        return new

    def vacuum(self, keep=1, *, grace_seconds=3600.0):
        """Delete old versions and files no kept version uses.

        Keeps the newest ``keep`` readable versions (and any newer unreadable
        manifest, untouched). Files no manifest ever named (left by crashed or
        in-flight transactions) are deleted only once older than
        ``grace_seconds``, so a writer still working is not robbed of its files.

        Returns {"removed_versions": [...], "removed_files": [...], "bytes_freed": int}.
        """
        if int(keep) < 1:
            raise ValueError(f"keep must be >= 1; got {keep}")
        root = self._root
        readable = {}
        for v in _manifest.list_versions(root):
            try:
                readable[v] = _manifest.read(root, v)
            except (CorruptIndexError, FileNotFoundError):
                pass
        ordered = sorted(readable)
        kept = set(ordered[-int(keep):])
        dropped = [v for v in ordered if v not in kept]

        def files_of(m):
            f = m["files"]
            out = {s["path"] for s in f["segments"]} | {t["path"] for t in f["tombstones"]}
            if f.get("codebooks"):
                out.add(f["codebooks"]["path"])
            return out

        keep_files = set().union(*(files_of(readable[v]) for v in kept))
        known = set().union(*(files_of(m) for m in readable.values())) if readable else set()
        removed_files, freed = [], 0
        for v in dropped:
            os.unlink(_manifest.manifest_path(root, v))
        if dropped:
            fsync_dir(os.path.join(root, MANIFEST_DIR))
        now = time.time()
        candidates = []
        for sub in (SEGMENT_DIR, TOMBSTONE_DIR):
            d = os.path.join(root, sub)
            if os.path.isdir(d):
                candidates += [f"{sub}/{n}" for n in os.listdir(d)]
        candidates += [n for n in os.listdir(root) if n.startswith("codebooks")]
        candidates += [f"{MANIFEST_DIR}/{n}" for n in os.listdir(os.path.join(root, MANIFEST_DIR))
                       if n.startswith(".tmp-")]
        for rel in candidates:
            if rel in keep_files:
                continue
            path = os.path.join(root, rel)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if rel not in known and now - st.st_mtime < grace_seconds:
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed_files.append(rel)
            freed += st.st_size
        return {"removed_versions": dropped, "removed_files": sorted(removed_files),
                "bytes_freed": freed}

    # -- checking ------------------------------------------------------------------------
    def verify(self):
        """Check every file of this version completely.

        Whole-file CRC-32s and sizes, Parquet footers and page checksums,
        schemas, row counts, row-group list ranges, sort order, tombstone
        counts, the codebooks' shapes and the exact ``ntotal``.

        Returns a report dict; raises :class:`shardann.CorruptIndexError`
        listing every problem found (each naming its file).
        """
        problems = []
        files = self._m["files"]
        report = {"version": self.version, "files": 0, "bytes": 0, "segments": 0,
                  "rows": 0, "ntotal": 0, "duplicate_live_ids": 0}

        def whole(entry, what):
            path = os.path.join(self._root, entry["path"])
            try:
                size, crc = file_crc32(path)
            except FileNotFoundError:
                problems.append(f"{path}: {what} named by the manifest is missing")
                return False
            report["files"] += 1
            report["bytes"] += size
            if size != entry["size"]:
                problems.append(f"{path}: {what} has {size} bytes, manifest says "
                                f"{entry['size']}")
                return False
            if crc != entry["crc32"]:
                problems.append(f"{path}: {what} checksum mismatch (crc32 {crc:08x}, "
                                f"manifest {entry['crc32']:08x})")
                return False
            return True

        cb = files.get("codebooks")
        if cb is not None and whole(cb, "codebooks file"):
            try:
                self._arrays = None
                _check_arrays(self._codebook_arrays(), self._m,
                              os.path.join(self._root, cb["path"]))
            except CorruptIndexError as exc:
                problems.append(str(exc))
        for t in files["tombstones"]:
            if whole(t, "tombstone file"):
                try:
                    self._tomb_ids.pop(t["path"], None)
                    self._tombstone_ids(t)
                except CorruptIndexError as exc:
                    problems.append(str(exc))
        live_ids = []
        tomb_ok = not problems
        for s in files["segments"]:
            if not whole(s, "segment"):
                continue
            report["segments"] += 1
            self._segment_files.pop(s["path"], None)
            f = SegmentFile(self._root, s, self._m["columns"], check_pages=True)
            try:
                live = _check_segment(f, s, self.nlist,
                                      self._dead_for(s["seq"]) if tomb_ok else None)
            except CorruptIndexError as exc:
                problems.append(str(exc))
                continue
            report["rows"] += s["rows"]
            if live is not None:
                report["ntotal"] += live.size
                live_ids.append(live)
        if not problems:
            if report["ntotal"] != self.ntotal:
                problems.append(
                    f"{_manifest.manifest_path(self._root, self.version)}: counts "
                    f"{report['ntotal']} live rows but says ntotal={self.ntotal}")
            if live_ids:
                allids = np.sort(np.concatenate(live_ids))
                report["duplicate_live_ids"] = int((allids[1:] == allids[:-1]).sum())
        if problems:
            raise CorruptIndexError("; ".join(problems))
        return report


def _check_arrays(arrays, m, path):
    cfg = m["config"]
    kind = m["kind"]
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    want = {}
    if kind in ("ivfflat", "ivfpq"):
        want["centroids"] = (cfg["nlist"], cfg["d"])
    if kind == "ivfpq":
        M, nbits = cfg["M"], cfg["nbits"]
        want["codebooks"] = (M, 1 << nbits, cfg["d"] // M)
        if cfg.get("opq"):
            want["opq_rotation"] = (cfg["d"], cfg["d"])
    if shapes != want:
        raise CorruptIndexError(f"{path}: arrays {shapes} do not match the config ({want})")
    for k, v in arrays.items():
        if not np.isfinite(v).all():
            raise CorruptIndexError(f"{path}: {k} holds NaN or infinite values")


def _check_segment(f, entry, nlist, dead):
    """Read a whole segment with page checks; return its live ids (None if unknown)."""
    f._open()
    live = []
    prev_list, prev_id = -1, None
    lo = hi = None
    for i, g in enumerate(entry["row_groups"]):
        rows = f.read([i])
        lid, ids = rows["list_id"], rows["id"]
        if lid.size != g["rows"]:
            raise CorruptIndexError(f"{f.path}: row group {i} holds {lid.size} rows, "
                                    f"manifest says {g['rows']}")
        if lid.size == 0:
            continue
        if int(lid[0]) != g["first_list"] or int(lid[-1]) != g["last_list"]:
            raise CorruptIndexError(
                f"{f.path}: row group {i} holds lists {int(lid[0])}..{int(lid[-1])}, "
                f"manifest says {g['first_list']}..{g['last_list']}")
        keys_l = np.concatenate([[prev_list], lid.astype(np.int64)])
        dl = np.diff(keys_l)
        same = dl == 0
        ids_prev = np.concatenate([[ids[0] if prev_id is None else prev_id], ids])
        if (dl < 0).any() or (np.diff(ids_prev)[same] < 0).any() or int(lid[-1]) >= nlist:
            raise CorruptIndexError(f"{f.path}: row group {i} is not sorted by (list_id, id) "
                                    f"within 0..{nlist - 1}")
        prev_list, prev_id = int(lid[-1]), int(ids[-1])
        lo = int(ids.min()) if lo is None else min(lo, int(ids.min()))
        hi = int(ids.max()) if hi is None else max(hi, int(ids.max()))
        live.append(ids if dead is None or dead.size == 0 else ids[~_hits(dead, ids)])
    allids = np.concatenate(live) if live else np.zeros(0, np.int64)
    if lo is not None and (lo != entry["min_id"] or hi != entry["max_id"]):
        raise CorruptIndexError(f"{f.path}: ids span {lo}..{hi}, manifest says "
                                f"{entry['min_id']}..{entry['max_id']}")
    deleted = entry["rows"] - allids.size
    if dead is not None and deleted != entry.get("deleted", 0):
        raise CorruptIndexError(f"{f.path}: {deleted} rows are deleted, manifest says "
                                f"{entry.get('deleted', 0)}")
    return allids if dead is not None else None


class Transaction:
    """Changes to a store, published together by :meth:`commit`.

    ``add`` writes a segment file at once (sorted, fsynced, not yet visible);
    ``delete`` records ids, written as one tombstone file at commit. A delete
    hides rows committed *before* this transaction, so ``delete(x)`` and
    ``add(x)`` in one transaction replace ``x`` (an upsert).

    Use as a context manager to commit on success and clean up on error.
    """

    def __init__(self, store, operation=None):
        self._store = store
        self._root = store._root
        self._base = store._m
        self.base_version = store.version
        self._spec = store._m.get("columns")
        self._new_segments = []
        self._deletes = []
        self._drop = set()
        self._replace = None  # (kind, config, trained, nlist, spec, codebooks entry)
        self._written = []
        self._operation = operation
        self._next_id = 0  # with _replace: the index's own next default id
        self.committed = None

    # -- staging ---------------------------------------------------------------------
    def add(self, list_no, ids, codes=None, vectors=None):
        """Stage rows for lists: write them as a new segment now.

        Parameters
        ----------
        list_no : int or int array (n,), each in 0..nlist-1.
        ids : int64 (n,).
        codes : uint8 (n, code_size), required when the store has codes.
        vectors : float (n, d), required when the store has vectors.

        Returns the number of rows staged.
        """
        self._check_open()
        if self._spec is None:
            raise NotTrainedError(f"{self._root}: version {self.base_version} holds an "
                                  "untrained index; save a trained index first")
        ids = _as_ids(ids)
        n = ids.size
        nlist = self._base["nlist"]
        lst = np.asarray(list_no)
        if lst.size and lst.dtype.kind not in "iu":
            raise TypeError(f"list_no must be integers; got dtype {lst.dtype}")
        lst = np.broadcast_to(lst.astype(np.int64), (n,)) if lst.ndim == 0 else lst
        if lst.shape != (n,):
            raise ValueError(f"list_no must be a scalar or have shape ({n},); got {lst.shape}")
        if n and (int(lst.min()) < 0 or int(lst.max()) >= nlist):
            raise ValueError(f"list_no must be in 0..{nlist - 1}; got values in "
                             f"{int(lst.min())}..{int(lst.max())}")
        given = {"codes": codes, "vectors": vectors}
        data = {}
        for name, arr in given.items():
            col = _segments.TO_FILE[name]
            if col not in self._spec:
                if arr is not None:
                    raise ValueError(f"this store has no {name!r} column; do not pass {name}")
                continue
            if arr is None:
                raise ValueError(f"{name} is required: the store has a {col!r} column")
            c = self._spec[col]
            arr = np.asarray(arr)
            if arr.shape != (n, c["width"]):
                raise ValueError(f"{name} must have shape ({n}, {c['width']}); got {arr.shape}")
            if name == "codes" and arr.dtype != np.uint8:
                raise TypeError(f"codes must be uint8; got dtype {arr.dtype}")
            if name == "vectors" and arr.dtype.kind != "f":
                raise TypeError(f"vectors must be floating point; got dtype {arr.dtype}")
            data[name] = arr.astype(c["dtype"], copy=False)
        if n == 0:
            return 0
        self._write_rows(lst.astype(np.int32), ids, data, MAX_SEGMENT_ROWS)
        return n

    def _write_rows(self, list_no, ids, data, max_rows, row_group_rows=ROW_GROUP_ROWS):
        os.makedirs(os.path.join(self._root, SEGMENT_DIR), exist_ok=True)
        list_no, ids, data = _segments.sort_rows(np.asarray(list_no, np.int32), ids, data)
        cuts = _segments._row_group_cuts(list_no, max_rows) if ids.size else [0, 0]
        for s, e in zip(cuts[:-1], cuts[1:], strict=True):
            rel = f"{SEGMENT_DIR}/{uuid.uuid4().hex}.parquet"
            path = os.path.join(self._root, rel)
            self._written.append(path)
            entry = _segments.write_segment(
                path, list_no[s:e], ids[s:e], {k: v[s:e] for k, v in data.items()},
                self._spec, format_version=FORMAT_VERSION, row_group_rows=row_group_rows)
            self._new_segments.append({"path": rel, **entry})

    def add_segments(self, entries):
        """Stage segment files that were written already (e.g. by another process).

        Each entry is what ``_segments.write_segment`` returned for the file
        plus ``path``, relative to the store (``segments/<name>.parquet``).
        The file's size, Parquet footer checksum, schema (this store's
        columns) and row-group row counts are checked against the entry, and
        its lists must lie in 0..nlist-1. The files stay the caller's:
        :meth:`abort` or a lost commit does not delete them.

        Returns the number of rows staged.
        """
        self._check_open()
        if self._spec is None:
            raise NotTrainedError(f"{self._root}: version {self.base_version} holds an "
                                  "untrained index; save a trained index first")
        keys = ("path", "size", "crc32", "footer_size", "footer_crc32", "rows", "min_id",
                "max_id", "row_groups")
        nlist = self._base["nlist"]
        seen = {s["path"] for s in self._base["files"]["segments"]}
        seen |= {s["path"] for s in self._new_segments}
        staged = []
        for entry in entries:
            missing = [k for k in keys if k not in entry]
            if missing:
                raise ValueError(f"segment entry lacks {missing}: {entry!r}")
            e = {k: copy.deepcopy(entry[k]) for k in keys}
            rel = e["path"]
            if (not isinstance(rel, str) or os.path.dirname(rel) != SEGMENT_DIR
                    or not rel.endswith(".parquet") or os.path.basename(rel).startswith(".")):
                raise ValueError(f"segment path must be '{SEGMENT_DIR}/<name>.parquet' "
                                 f"relative to the store; got {rel!r}")
            if rel in seen:
                raise ValueError(f"{rel} is already part of this version or transaction")
            groups = e["row_groups"]
            if sum(g["rows"] for g in groups) != e["rows"] or any(
                    not 0 <= g["first_list"] <= g["last_list"] < nlist for g in groups):
                raise ValueError(f"{rel}: row groups {groups} do not hold {e['rows']} rows "
                                 f"of lists in 0..{nlist - 1}")
            check_size(os.path.join(self._root, rel), e["size"], "segment")
            SegmentFile(self._root, e, self._spec)._open()  # footer, schema, row groups
            seen.add(rel)
            staged.append(e)
        self._new_segments += staged
        return int(sum(e["rows"] for e in staged))

    def delete(self, ids):
        """Stage the deletion of ``ids`` (unknown ids are ignored)."""
        self._check_open()
        ids = _as_ids(ids)
        if ids.size:
            self._deletes.append(ids.copy())

    def _check_open(self):
        if self.committed is not None:
            raise RuntimeError("this transaction is already committed")

    # -- finishing -----------------------------------------------------------------------
    def abort(self):
        """Delete the files this transaction wrote; nothing was published."""
        for path in self._written:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._written = []
        self._new_segments = []
        self._deletes = []

    def commit(self):
        """Publish the staged changes as version ``base_version + 1``.

        Returns the new :class:`IndexStore` view. Raises
        :class:`shardann.CommitConflictError` if another writer committed that
        version first (this transaction's files are removed; nothing changes).
        """
        self._check_open()
        try:
            store = self._commit()
        except CommitConflictError:
            self.abort()
            raise
        self.committed = store
        return store

    def _commit(self):
        root, base = self._root, self._base
        version = self.base_version + 1
        if self._replace is not None:
            kind, config, trained, nlist, spec, cb_entry = self._replace
            segments, tombstones = [], []
        else:
            kind, config, trained, nlist, spec = (base["kind"], base["config"], base["trained"],
                                                  base["nlist"], base["columns"])
            cb_entry = base["files"].get("codebooks")
            segments = [dict(s) for s in base["files"]["segments"]
                        if s["path"] not in self._drop]
            tombstones = [dict(t) for t in base["files"]["tombstones"]]
        for s in self._new_segments:
            s["seq"] = version
            s["deleted"] = 0
        if self._deletes:
            dead = np.unique(np.concatenate(self._deletes))
            hidden = self._count_hidden(segments, dead)
            if any(hidden):
                os.makedirs(os.path.join(root, TOMBSTONE_DIR), exist_ok=True)
                rel = f"{TOMBSTONE_DIR}/{uuid.uuid4().hex}.arrow"
                path = os.path.join(root, rel)
                data, count = _tombstones.encode(dead, FORMAT_VERSION)
                crash_point("tombstone.before_write")
                self._written.append(path)
                size, crc = write_bytes(path, data)
                crash_point("tombstone.after_write")
                tombstones.append({"path": rel, "size": size, "crc32": crc, "count": count,
                                   "seq": version})
                for s, h in zip(segments, hidden, strict=True):
                    s["deleted"] = s.get("deleted", 0) + h
        segments += self._new_segments
        # a tombstone matters only to older segments that have deleted rows
        min_seq = min((s["seq"] for s in segments if s["deleted"]), default=version)
        tombstones = [t for t in tombstones if t["seq"] > min_seq]
        for sub in (SEGMENT_DIR, TOMBSTONE_DIR, "."):
            if os.path.isdir(os.path.join(root, sub)):
                fsync_dir(os.path.join(root, sub))
        ntotal = int(sum(s["rows"] - s["deleted"] for s in segments))
        next_id = max([self._next_id if self._replace is not None else base.get("next_id", 0)]
                      + [s["max_id"] + 1 for s in self._new_segments])
        body = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "version": version, "parent_version": self.base_version or None,
            "created_at": _now(),
            "operation": self._operation or ("delete" if self._deletes and not
                                             self._new_segments else "append"),
            "kind": kind, "config": config, "trained": trained, "nlist": nlist,
            "columns": spec, "ntotal": ntotal, "next_id": int(next_id),
            "files": {"codebooks": cb_entry, "segments": segments, "tombstones": tombstones},
        }
        crash_point("commit.before_manifest")
        _manifest.publish(root, body)
        crash_point("commit.after_publish")
        store = IndexStore(root, body, self._store._check_pages)
        # reuse what the base view has already read and checked
        store._arrays = self._store._arrays if cb_entry == base["files"].get("codebooks") \
            else None
        return store

    def _count_hidden(self, segments, dead):
        """Rows of each segment newly hidden by deleting ``dead`` (sorted unique)."""
        out = []
        lo, hi = int(dead[0]), int(dead[-1])
        for s in segments:
            if s["rows"] == 0 or s["max_id"] < lo or s["min_id"] > hi:
                out.append(0)
                continue
            ids = self._store._segment(s).read(None, ["id"])["id"]
            hit = _hits(dead, ids)
            older = self._store._dead_for(s["seq"])
            if older.size:
                hit &= ~_hits(older, ids)
            out.append(int(hit.sum()))
        return out

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            if self.committed is None:
                self.abort()
            return False
        if self.committed is None:
            self.commit()
        return False


def _write_index(root, index, base, operation, row_group_rows=None, segments=()):
    """Commit ``index``'s whole content as a new version of the store at ``root``.

    ``base`` is the manifest the new version follows; None means the newest
    version number present (read if possible, to reuse its codebooks file).
    ``segments``: entries of segment files written already, committed with it
    (see :meth:`Transaction.add_segments`).
    """
    row_group_rows = row_group_rows or ROW_GROUP_ROWS
    from ..index.base import BaseIndex
    if not isinstance(index, BaseIndex):
        raise TypeError(f"expected a shardann index; got {type(index).__name__}")
    for sub in (MANIFEST_DIR, SEGMENT_DIR, TOMBSTONE_DIR):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    if base is None:
        versions = _manifest.list_versions(root)
        base_version = versions[-1] if versions else 0
        if versions:
            try:
                base = _manifest.read(root, base_version)
            except (CorruptIndexError, FileNotFoundError):
                base = None
    else:
        base_version = base["version"]
    config = index.get_config()
    trained = bool(index.is_trained)
    nlist = int(getattr(index, "nlist", 1))
    lists = index._lists if trained else None
    spec = column_spec(lists.columns) if lists is not None else None
    shell = IndexStore(root, {
        "version": base_version, "kind": index.kind, "config": config, "trained": trained,
        "nlist": nlist, "columns": spec,
        "files": {"codebooks": None, "segments": [], "tombstones": []}})
    txn = Transaction(shell, operation=operation)
    cb_entry = None
    arrays = index._trained_arrays() if trained else {}
    if arrays:
        data = _codebooks.encode(arrays, index.kind, config, FORMAT_VERSION)
        crc = fast_crc32(data)
        old = (base or {}).get("files", {}).get("codebooks")
        if old and old["size"] == len(data) and old["crc32"] == crc and os.path.exists(
                os.path.join(root, old["path"])):
            cb_entry = dict(old)
        else:
            rel = f"codebooks-{uuid.uuid4().hex}.parquet"
            path = os.path.join(root, rel)
            crash_point("codebooks.before_write")
            txn._written.append(path)
            size, crc = write_bytes(path, data)
            crash_point("codebooks.after_write")
            cb_entry = {"path": rel, "size": size, "crc32": crc}
    txn._replace = (index.kind, config, trained, nlist, spec, cb_entry)
    ids_now = index._lists.ids[index._lists.live_rows()] if lists is not None else []
    txn._next_id = int(getattr(index, "_next_id", 0))
    if len(ids_now):
        txn._next_id = max(txn._next_id, int(ids_now.max()) + 1)
    try:
        if lists is not None and lists.ntotal:
            sizes, ids, data = lists.packed()
            list_no = np.repeat(np.arange(nlist, dtype=np.int32), sizes)
            txn._write_rows(list_no, ids, data, MAX_SEGMENT_ROWS, row_group_rows)
        extra = txn.add_segments(segments) if segments else 0
        store = txn.commit()
    except BaseException:
        if txn.committed is None:
            txn.abort()
        raise
    if store.ntotal != index.ntotal + extra:
        raise CorruptIndexError(f"{root}: wrote {store.ntotal} rows for an index of "
                                f"{index.ntotal + extra}")
    store._arrays = {k: np.array(v, np.float32) for k, v in arrays.items()}
    return store
