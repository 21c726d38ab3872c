"""Transactions: stage new files, then publish them in one manifest.

Data files (segments, tombstones, codebooks) are written once under fresh
names and fsynced as they are staged; :meth:`Transaction.commit` publishes the
manifest of version ``base + 1`` with a create-if-absent write, the commit
point. See ``docs/format.md`` ("Commit protocol").
"""

import copy
import datetime
import uuid

import numpy as np

from ..drift import empty_stats, merge_stats
from ..errors import CommitConflictError, CorruptIndexError, NotTrainedError
from ..filters import as_attribute_table, null_table
from . import _calibration, _codebooks, _manifest, _segments, _tombstones
from ._crash import crash_point
from ._files import check_size, fast_crc32
from ._fs import location
from ._grouping import as_ids, hits
from ._manifest import FORMAT, FORMAT_VERSION, MANIFEST_DIR
from ._segments import (
    ATTRIBUTES,
    REMOTE_ROW_GROUP_ROWS,
    ROW_GROUP_ROWS,
    TO_FILE,
    SegmentFile,
    attribute_schema,
    attribute_spec,
    column_spec,
)
from ._view import SEGMENT_DIR, TOMBSTONE_DIR
from .state import IndexState

#: the largest segment a save or compaction writes, in rows (cut at list boundaries)
MAX_SEGMENT_ROWS = 1 << 24
#: what a segment entry handed to :meth:`Transaction.add_segments` must hold
SEGMENT_ENTRY_KEYS = ("path", "size", "crc32", "footer_size", "footer_crc32", "rows",
                      "min_id", "max_id", "row_groups")
#: a transaction's calibration set: the base's unless it adds rows (see set_calibration)
_AUTO = "auto"
#: the base's calibration set, whatever the transaction does (a compaction)
_KEEP = "keep"


def _now():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def as_state(state):
    """An :class:`IndexState` from a state or from an object with ``to_state()``
    (an index), validated."""
    if not isinstance(state, IndexState):
        to_state = getattr(state, "to_state", None)
        if to_state is None:
            raise TypeError("expected an IndexState (or an index, which has to_state()); "
                            f"got {type(state).__name__}")
        state = to_state()
        if not isinstance(state, IndexState):
            raise TypeError(f"to_state() returned {type(state).__name__}, not an IndexState")
    return state.validate()


class Transaction:
    """Changes to a store, published together by :meth:`commit`.

    ``add`` / ``add_lists`` write a segment file at once (sorted, fsynced, not
    yet visible); ``delete`` records ids, written as one tombstone file at
    commit. A delete hides rows committed *before* this transaction, so
    ``delete(x)`` and ``add(x)`` in one transaction replace ``x`` (an upsert).
    ``replace_all`` makes the new version hold exactly one index state;
    ``drop_segments`` leaves segments out of it (compaction).

    Use as a context manager to commit on success and clean up on error.
    """

    def __init__(self, store, operation=None, *, advice=None):
        self._store = store
        self._loc = store.location
        self._root = store.path
        self._base = store._m
        self.base_version = store.version
        self._spec = store._m.get("columns")
        self._attr_schema = attribute_schema(store._m.get("attributes"))
        self._nlist = store._m["nlist"]
        self._new_segments = []
        self._deletes = []
        self._drop = set()
        self._replace = None  # (kind, config, trained, nlist, spec, codebooks entry, arrays)
        self._next_id = 0  # with _replace: the state's own next default id
        self._written = []
        self._calibration = _AUTO  # or _KEEP, or the new version's entry (a dict) / None
        self._operation = operation
        self._advice = advice or _manifest.TRANSACTION_ADVICE
        self._drift = None  # stats of the rows this transaction adds (record_drift)
        self._drift_state = None  # with _replace: the state's drift bookkeeping
        self.committed = None

    # -- staging ---------------------------------------------------------------------
    def _require_trained(self):
        self._check_open()
        if self._spec is None:
            raise NotTrainedError(f"{self._root}: version {self.base_version} holds an "
                                  "untrained index; save a trained index first")

    def _checked_payload(self, n, given):
        """Payload arrays {"codes"/"vectors": (n, width)} as the store's dtypes."""
        data = {}
        for name, arr in given.items():
            col = TO_FILE[name]
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
            if name == "vectors" and np.dtype(c["dtype"]) == np.int8:
                # int8 rows are codes of the index's per-dimension scale: a cast
                # of floats would be garbage
                if arr.dtype != np.int8:
                    raise TypeError("this store keeps int8 vectors: pass the index's "
                                    f"encoded rows (int8), not {arr.dtype}")
            elif name == "vectors" and arr.dtype.kind != "f":
                raise TypeError(f"vectors must be floating point; got dtype {arr.dtype}")
            data[name] = arr.astype(c["dtype"], copy=False)
        return data

    def _with_attributes(self, n, data, attributes):
        """``data`` plus the rows' attributes (normalised; nulls when not given and
        the store has attributes). The first attributes a store gets fix its
        schema; rows committed (or staged) before, in segments without the
        attribute columns, read as nulls."""
        if attributes is not None:
            table = as_attribute_table(attributes, n, self._attr_schema)
            self._attr_schema = table.schema
            data[ATTRIBUTES] = table
        elif self._attr_schema is not None:
            data[ATTRIBUTES] = null_table(self._attr_schema, n)
        return data

    def add(self, list_no, ids, codes=None, vectors=None, attributes=None):
        """Stage rows for lists: write them as a new segment now.

        Parameters
        ----------
        list_no : int or int array (n,), each in 0..nlist-1.
        ids : int64 (n,).
        codes : uint8 (n, code_size), required when the store has codes.
        vectors : float (n, d), required when the store has vectors.
        attributes : the rows' attributes (a pyarrow Table / dict of arrays, as
            for ``index.add``), or None (nulls when the store has attributes).

        Returns the number of rows staged.
        """
        self._require_trained()
        ids = as_ids(ids)
        n = ids.size
        lst = np.asarray(list_no)
        if lst.size and lst.dtype.kind not in "iu":
            raise TypeError(f"list_no must be integers; got dtype {lst.dtype}")
        lst = np.broadcast_to(lst.astype(np.int64), (n,)) if lst.ndim == 0 else lst
        if lst.shape != (n,):
            raise ValueError(f"list_no must be a scalar or have shape ({n},); got {lst.shape}")
        if n and (int(lst.min()) < 0 or int(lst.max()) >= self._nlist):
            raise ValueError(f"list_no must be in 0..{self._nlist - 1}; got values in "
                             f"{int(lst.min())}..{int(lst.max())}")
        data = self._checked_payload(n, {"codes": codes, "vectors": vectors})
        data = self._with_attributes(n, data, attributes)
        if n == 0:
            return 0
        self._write_rows(lst.astype(np.int32), ids, data, MAX_SEGMENT_ROWS)
        return n

    def add_lists(self, list_sizes, ids, payload, *, max_segment_rows=MAX_SEGMENT_ROWS,
                  row_group_rows=None, attributes=None):
        """Stage rows already grouped by list, as :meth:`IndexStore.read_lists`
        and ``IndexState.lists`` hold them: write them as segments of at most
        ``max_segment_rows`` rows (cut at list boundaries) now.

        Parameters
        ----------
        list_sizes : int64 (nlist,), rows per list.
        ids : int64 (n,), grouped by list (list 0 first).
        payload : dict ``"codes"`` uint8 (n, code_size) and/or ``"vectors"``
            float (n, d), as the store's columns.
        attributes : the rows' attributes in the order of ``ids``, or None.

        Returns the number of rows staged.
        """
        self._require_trained()
        sizes = np.asarray(list_sizes)
        if sizes.shape != (self._nlist,) or (sizes.size and sizes.dtype.kind not in "iu"):
            raise ValueError(f"list_sizes must be int64 ({self._nlist},); got "
                             f"{sizes.dtype} {sizes.shape}")
        ids = as_ids(ids)
        n = ids.size
        if int(sizes.sum()) != n:
            raise ValueError(f"list_sizes add up to {int(sizes.sum())} rows; ids has {n}")
        unknown = sorted(set(payload) - set(TO_FILE))
        if unknown:
            raise ValueError(f"payload columns must be among {sorted(TO_FILE)}; got {unknown}")
        data = self._checked_payload(n, {k: payload.get(k) for k in TO_FILE})
        data = self._with_attributes(n, data, attributes)
        if n == 0:
            return 0
        list_no = np.repeat(np.arange(self._nlist, dtype=np.int32), sizes)
        self._write_rows(list_no, ids, data, max_segment_rows, row_group_rows)
        return n

    def _write_rows(self, list_no, ids, data, max_rows, row_group_rows=None):
        if row_group_rows is None:
            row_group_rows = ROW_GROUP_ROWS if self._loc.local else REMOTE_ROW_GROUP_ROWS
        self._loc.check_writable()
        self._loc.makedirs(SEGMENT_DIR)
        list_no, ids, data = _segments.sort_rows(np.asarray(list_no, np.int32), ids, data)
        cuts = _segments.row_group_cuts(list_no, max_rows) if ids.size else [0, 0]
        for s, e in zip(cuts[:-1], cuts[1:], strict=True):
            rel = f"{SEGMENT_DIR}/{uuid.uuid4().hex}.parquet"
            self._written.append(rel)
            # written in place locally; on an object store written locally, then uploaded
            with self._loc.staged(rel) as path:
                entry = _segments.write_segment(
                    path, list_no[s:e], ids[s:e], {k: v[s:e] for k, v in data.items()},
                    self._spec, format_version=FORMAT_VERSION, row_group_rows=row_group_rows,
                    attr_schema=self._attr_schema)
            self._new_segments.append({"path": rel, **entry})

    def add_segments(self, entries, attribute_schema=None):
        """Stage segment files that were written already (e.g. by another process).

        Each entry is what :func:`shardann.storage.write_segment` returned for
        the file plus ``path``, relative to the store (``segments/<name>.parquet``).
        The file's size, Parquet footer checksum, schema (this store's
        columns) and row-group row counts are checked against the entry, and
        its lists must lie in 0..nlist-1. The files stay the caller's:
        :meth:`abort` or a lost commit does not delete them.

        ``attribute_schema`` (``pyarrow.Schema``): the segments hold these
        attribute columns. A store without attributes takes them as its own
        (as :meth:`add` with the first attributes does; the rows committed
        before read as nulls); a store with other columns raises ``ValueError``
        naming the first that differs. Segments without attribute columns need
        no schema: their rows read as nulls in a store that has some.

        Returns the number of rows staged.
        """
        self._require_trained()
        if attribute_schema is not None:
            have = self._attr_schema
            if have is None:
                self._attr_schema = attribute_schema
            elif not have.equals(attribute_schema, check_metadata=False):
                diff = next((f"{f.name!r}" for f in attribute_schema
                             if f.name not in have.names or have.field(f.name).type != f.type),
                             f"{have.names}")
                raise ValueError(f"{self._root} has the attribute columns "
                                 f"{[f'{f.name}: {f.type}' for f in have]}; the segments' "
                                 f"columns differ at {diff}")
        nlist = self._nlist
        seen = {s["path"] for s in self._base["files"]["segments"]} - self._drop
        seen |= {s["path"] for s in self._new_segments}
        staged = []
        for entry in entries:
            missing = [k for k in SEGMENT_ENTRY_KEYS if k not in entry]
            if missing:
                raise ValueError(f"segment entry lacks {missing}: {entry!r}")
            e = {k: copy.deepcopy(entry[k]) for k in SEGMENT_ENTRY_KEYS}
            rel = e["path"]
            if (not isinstance(rel, str) or rel.rpartition("/")[0] != SEGMENT_DIR
                    or not rel.endswith(".parquet") or rel.rpartition("/")[2].startswith(".")):
                raise ValueError(f"segment path must be '{SEGMENT_DIR}/<name>.parquet' "
                                 f"relative to the store; got {rel!r}")
            if rel in seen:
                raise ValueError(f"{rel} is already part of this version or transaction")
            groups = e["row_groups"]
            if sum(g["rows"] for g in groups) != e["rows"] or any(
                    not 0 <= g["first_list"] <= g["last_list"] < nlist for g in groups):
                raise ValueError(f"{rel}: row groups {groups} do not hold {e['rows']} rows "
                                 f"of lists in 0..{nlist - 1}")
            check_size(self._loc, rel, e["size"], "segment")
            # footer, schema, row groups, chunk CRCs present
            SegmentFile(self._loc, e, self._spec, attr_schema=self._attr_schema)._open()
            seen.add(rel)
            staged.append(e)
        self._new_segments += staged
        return int(sum(e["rows"] for e in staged))

    def set_calibration(self, data):
        """Stage the new version's calibration file: ``data`` its bytes (written
        now, see :func:`shardann.storage.encode_calibration`), or None for none.

        Without this call a transaction keeps the base version's calibration
        set unless it adds rows: their exact neighbours are not in it, so the
        new version has none rather than a wrong one (the writer that adds
        rows and keeps the set up to date stages it here).
        """
        self._check_open()
        if data is None:
            self._calibration = None
            return
        if not isinstance(data, bytes):
            raise TypeError(f"calibration data must be bytes; got {type(data).__name__}")
        old = self._base["files"].get("calibration")
        crc = fast_crc32(data)
        if old and old["size"] == len(data) and old["crc32"] == crc and self._loc.exists(
                old["path"]):
            self._calibration = dict(old)
            return
        _, meta = _calibration.decode(data, "calibration data")
        self._loc.check_writable()
        self._loc.makedirs(_calibration.CALIBRATION_DIR)
        rel = f"{_calibration.CALIBRATION_DIR}/{uuid.uuid4().hex}.parquet"
        self._written.append(rel)
        size, crc = self._loc.write_new(rel, data)
        self._calibration = {"path": rel, "size": size, "crc32": crc,
                             "rows": int(meta.get("rows", 0))}

    def keep_calibration(self):
        """Keep the base version's calibration set even though rows are staged
        (a compaction rewrites rows it already covers)."""
        self._check_open()
        self._calibration = _KEEP

    def record_drift(self, stats):
        """Count drift ``stats`` (:func:`shardann.drift.stats` of rows staged by
        this transaction) in the new version's ``drift`` section: its
        ``"added"``, ``"since_training"`` and ``"latest"`` (docs/format.md).
        Ignored when the version has no drift baseline."""
        self._check_open()
        self._drift = merge_stats(self._drift, stats)

    def delete(self, ids):
        """Stage the deletion of ``ids`` (unknown ids are ignored)."""
        self._check_open()
        ids = as_ids(ids)
        if ids.size:
            self._deletes.append(ids.copy())

    def drop_segments(self, paths):
        """Leave the base version's segments ``paths`` (manifest paths) out of the
        new version — with :meth:`add_lists` of their live rows, a compaction.
        Tombstones that no longer hide anything are dropped at commit."""
        self._check_open()
        paths = set(paths)
        known = {s["path"] for s in self._base["files"]["segments"]}
        unknown = sorted(paths - known)
        if unknown:
            raise ValueError(f"not segments of version {self.base_version}: {unknown[:5]}")
        self._drop |= paths

    def replace_all(self, state, *, row_group_rows=None):
        """Make the new version hold exactly ``state`` (an :class:`IndexState`, or
        an index: its ``to_state()``): its kind, parameters, trained arrays (the
        base version's codebooks file is reused when they are equal) and rows;
        the base version's segments and tombstones leave the manifest.

        Returns the number of rows staged.
        """
        self._check_open()
        if self._replace is not None:
            raise RuntimeError("replace_all was called already in this transaction")
        state = as_state(state)
        spec = column_spec(state.columns) if state.trained else None
        cb_entry = None
        if state.arrays:
            data = _codebooks.encode(state.arrays, state.kind, state.config)
            crc = fast_crc32(data)
            old = self._base["files"].get("codebooks")
            if old and old["size"] == len(data) and old["crc32"] == crc and self._loc.exists(
                    old["path"]):
                cb_entry = dict(old)
            else:
                self._loc.check_writable()
                rel = f"codebooks-{uuid.uuid4().hex}.parquet"
                crash_point("codebooks.before_write")
                self._written.append(rel)
                size, crc = self._loc.write_new(rel, data)
                crash_point("codebooks.after_write")
                cb_entry = {"path": rel, "size": size, "crc32": crc}
        arrays = {k: np.array(v, np.float32) for k, v in state.arrays.items()}
        self._replace = (state.kind, copy.deepcopy(state.config), state.trained, state.nlist,
                         spec, cb_entry, arrays)
        self._spec, self._nlist = spec, state.nlist
        self._drop = {s["path"] for s in self._base["files"]["segments"]}
        self._next_id = state.next_id
        self._attr_schema = state.attribute_schema
        self.set_calibration(state.calibration)
        self._drift_state = copy.deepcopy(state.drift)
        if state.ntotal:
            self._next_id = max(self._next_id, int(state.ids.max()) + 1)
            return self.add_lists(*state.lists, row_group_rows=row_group_rows,
                                  attributes=state.attributes)
        return 0

    def _check_open(self):
        if self.committed is not None:
            raise RuntimeError("this transaction is already committed")

    # -- finishing -----------------------------------------------------------------------
    def abort(self):
        """Delete the files this transaction wrote; nothing was published."""
        for rel in self._written:
            try:
                self._loc.delete(rel)
            except OSError:
                pass
        self._written = []
        self._new_segments = []
        self._deletes = []

    def commit(self):
        """Publish the staged changes as version ``base_version + 1``.

        Returns the new :class:`IndexStore` view. Raises
        :class:`shardann.CommitConflictError` if another writer committed that
        version first, and :class:`shardann.CorruptIndexError` naming the
        manifest if that version's manifest is damaged (the store needs
        :func:`shardann.storage.repair`). Either way this transaction's files
        are removed and nothing changes.
        """
        self._check_open()
        try:
            store = self._commit()
        except (CommitConflictError, CorruptIndexError):  # raised before the publish
            self.abort()
            raise
        self.committed = store
        return store

    def _commit(self):
        loc, base = self._loc, self._base
        version = self.base_version + 1
        _manifest.check_unpublished(loc, version, self._advice)  # before writing more
        if self._replace is not None:
            kind, config, trained, nlist, spec, cb_entry, arrays = self._replace
            tombstones = []
        else:
            kind, config, trained, nlist, spec = (base["kind"], base["config"], base["trained"],
                                                  base["nlist"], base["columns"])
            cb_entry, arrays = base["files"].get("codebooks"), None
            tombstones = [dict(t) for t in base["files"]["tombstones"]]
        segments = [dict(s) for s in base["files"]["segments"] if s["path"] not in self._drop]
        for s in self._new_segments:
            s["seq"] = version
            s["deleted"] = 0
        if self._deletes:
            dead = np.unique(np.concatenate(self._deletes))
            hidden = self._count_hidden(segments, dead)
            if any(hidden):
                loc.makedirs(TOMBSTONE_DIR)
                rel = f"{TOMBSTONE_DIR}/{uuid.uuid4().hex}.arrow"
                data, count = _tombstones.encode(dead, FORMAT_VERSION)
                crash_point("tombstone.before_write")
                self._written.append(rel)
                size, crc = loc.write_new(rel, data)
                crash_point("tombstone.after_write")
                tombstones.append({"path": rel, "size": size, "crc32": crc, "count": count,
                                   "seq": version})
                for s, h in zip(segments, hidden, strict=True):
                    s["deleted"] = s.get("deleted", 0) + h
        cal = self._calibration
        if cal in (_AUTO, _KEEP):
            cal = base["files"].get("calibration")
            if cal is not None and self._new_segments and self._calibration == _AUTO:
                cal = None  # rows it does not cover: none rather than a wrong one
        segments += self._new_segments
        # a tombstone matters only to older segments that have deleted rows
        min_seq = min((s["seq"] for s in segments if s["deleted"]), default=version)
        tombstones = [t for t in tombstones if t["seq"] > min_seq]
        for sub in (SEGMENT_DIR, TOMBSTONE_DIR, ""):
            loc.sync_dir(sub)
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
        if cal is not None:  # (absent, not null, without one: older readers)
            body["files"]["calibration"] = dict(cal)
        if self._attr_schema is not None:  # (absent, not null, without: older readers)
            body["attributes"] = attribute_spec(self._attr_schema)
        drift = self._drift_section(version)
        if drift is not None:  # (absent without a baseline, as for older readers)
            body["drift"] = drift
        crash_point("commit.before_manifest")
        _manifest.publish(loc, body, self._advice)
        crash_point("commit.after_publish")
        store = type(self._store)(loc, body, self._store._check_chunks)
        # reuse what is known already: the arrays just written, or the base view's
        if arrays is not None:
            store._arrays = arrays
        elif cb_entry == base["files"].get("codebooks"):
            store._arrays = self._store._arrays
        return store

    def _drift_section(self, version):
        """The new manifest's ``drift`` section: the baseline, the stats of the
        rows added by this commit, since training and by the newest commit
        that added any (None without a baseline)."""
        if self._replace is not None:
            prior = self._drift_state
            if not prior or not prior.get("baseline") or not self._replace[2]:
                return None
            base = prior["baseline"]
            added = merge_stats(prior.get("pending"), self._drift)
            since = merge_stats(prior.get("since_training"), self._drift)
            latest = prior.get("latest")
        else:
            prior = self._base.get("drift")
            if not prior:
                return None
            base = prior["baseline"]
            added = self._drift
            since = merge_stats(prior.get("since_training"), added)
            latest = prior.get("latest")
        empty = empty_stats(base)
        if added and added["n"]:
            latest = {"version": version, **added}
        return {"baseline": base, "added": added or empty, "since_training": since or empty,
                "latest": latest}

    def _count_hidden(self, segments, dead):
        """Rows of each segment newly hidden by deleting ``dead`` (sorted unique)."""
        out = []
        lo, hi = int(dead[0]), int(dead[-1])
        for s in segments:
            if s["rows"] == 0 or s["max_id"] < lo or s["min_id"] > hi:
                out.append(0)
                continue
            ids = self._store._segment(s).read(None, ["id"])["id"]
            hit = hits(dead, ids)
            older = self._store._dead_for(s["seq"])
            if older.size:
                hit &= ~hits(older, ids)
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


#: what a conflicting whole-state save can do ("retry" would drop the other commit)
SAVE_ADVICE = ("Saving this state on top of the newest version instead would drop that "
               "commit's changes. Open the newest version, apply your changes to it (its "
               "load_state(), or shardann.open_index) and save that; to replace the "
               "index's content anyway, IndexStore.save(path, state) commits on top of "
               "whatever version is newest.")


def write_state(view_cls, root, state, base, operation, row_group_rows=None, segments=(),
                advice=SAVE_ADVICE):
    """Commit ``state``'s whole content as a new version of the store at ``root``
    (a location, or a path / URI of one).

    ``base`` is the manifest the new version follows; None means the newest
    version number present (its manifest read if possible, to reuse its
    codebooks file; a damaged one is superseded). ``segments``: entries of
    segment files written already, committed with it (see
    :meth:`Transaction.add_segments`). ``advice`` ends the message of a
    :class:`CommitConflictError`. Returns the new view (of ``view_cls``).
    """
    state = as_state(state)
    loc = location(root)
    loc.check_writable()
    for sub in (MANIFEST_DIR, SEGMENT_DIR, TOMBSTONE_DIR):
        loc.makedirs(sub)
    if base is None:
        versions = _manifest.list_versions(loc)
        base_version = versions[-1] if versions else 0
        readable = None
        if versions:
            try:
                readable = _manifest.read(loc, base_version)
            except (CorruptIndexError, FileNotFoundError):
                pass
        base = {"version": base_version, "kind": state.kind, "config": state.config,
                "trained": False, "nlist": state.nlist, "columns": None,
                "files": {"codebooks": (readable or {}).get("files", {}).get("codebooks"),
                          "segments": [], "tombstones": []}}
    # before writing anything: is the next version still free?
    _manifest.check_unpublished(loc, base["version"] + 1, advice)
    txn = Transaction(view_cls(loc, base), operation=operation, advice=advice)
    try:
        txn.replace_all(state, row_group_rows=row_group_rows)
        extra = txn.add_segments(segments) if segments else 0
        store = txn.commit()
    except BaseException:
        if txn.committed is None:
            txn.abort()
        raise
    if store.ntotal != state.ntotal + extra:
        raise CorruptIndexError(f"{loc.root}: wrote {store.ntotal} rows for an index of "
                                f"{state.ntotal + extra}")
    return store
