"""``IndexStore``: versioned, crash-safe storage of an index in one directory.

See ``docs/format.md`` for the layout. In short: data files (codebooks,
segments, tombstones) are written once under fresh names and fsynced; then a
manifest naming all of them is published as ``_manifests/v<version>.json`` by
create-if-absent, which is the commit point. Readers take the newest manifest
(or a given one) and never see a partial commit.

The work is split by job: :mod:`._view` reads a version, :mod:`._transaction`
writes one, :mod:`._maintenance` compacts, vacuums and verifies; this class
puts them behind one object. It reads and writes
:class:`~shardann.storage.IndexState` only (``shardann.index`` turns indexes
into states and back).
"""

import logging
import os

from ..errors import CorruptIndexError
from . import _maintenance, _manifest
from ._calibration import CALIBRATION_DIR
from ._fs import location
from ._manifest import MANIFEST_DIR, FutureFormatError
from ._transaction import MAX_SEGMENT_ROWS, Transaction, as_state, write_state
from ._view import SEGMENT_DIR, TOMBSTONE_DIR, StoreView

logger = logging.getLogger(__name__)


class IndexStore(StoreView):
    """One version of an index stored in a directory.

    Obtain with :meth:`create` or :meth:`open`; a store object is an immutable
    view of one committed version (``store.version``). Readers use
    :meth:`read_lists`, :meth:`list_sizes` and :meth:`load_state`; writers use
    :meth:`transaction`, :meth:`save_state`, :meth:`compact` and :meth:`vacuum`;
    each commit returns a new view.

    Examples
    --------
    >>> store = IndexStore.create("idx", index.to_state())       # doctest: +SKIP
    >>> txn = store.transaction()                                # doctest: +SKIP
    >>> txn.add(list_no, ids, codes=codes); txn.delete([3, 4])   # doctest: +SKIP
    >>> store = txn.commit()                                     # doctest: +SKIP
    >>> sizes, ids, cols = store.read_lists([0, 5, 9])           # doctest: +SKIP
    >>> state = IndexStore.open("idx", version=1).load_state()   # doctest: +SKIP
    """

    # -- creating ----------------------------------------------------------------------
    @classmethod
    def create(cls, path, state, *, row_group_rows=None, storage_options=None):
        """Create a store at ``path`` holding ``state`` as version 1.

        ``state`` is an :class:`~shardann.storage.IndexState` (trained or not),
        or an index (its ``to_state()`` is stored). ``path`` is a directory or a
        URI (``s3://``, ``gs://``, ``az://``, ``memory://``, ``file://``;
        ``storage_options``: see :func:`shardann.storage.location`); it may exist
        but must not hold a store. Raises ``FileExistsError`` if it does, or if
        it is a non-empty directory (prefix) of something else.
        """
        loc = location(path, storage_options)
        root = loc.root
        if loc.local and os.path.exists(root) and not os.path.isdir(root):
            raise FileExistsError(f"{root} exists and is not a directory")
        if _manifest.list_versions(loc):
            raise FileExistsError(f"{root} already holds a shardann index; open it")
        foreign = set(loc.listdir()) - {MANIFEST_DIR, SEGMENT_DIR, TOMBSTONE_DIR,
                                        CALIBRATION_DIR}
        foreign = {f for f in foreign if not f.startswith("codebooks-")}
        if foreign:
            raise FileExistsError(
                f"{root} is a non-empty directory that is not a shardann index "
                f"(holds {sorted(foreign)[:5]})")
        return write_state(cls, loc, state, None, "create", row_group_rows)

    @classmethod
    def create_from_segments(cls, path, state, segments, *, storage_options=None):
        """Create a store whose version 1 holds ``state``'s model and segment
        files already written under ``path/segments/``, in one commit.

        For writers that produce segments in other processes (the distributed
        ingest's Ray workers, with :func:`shardann.storage.write_segment`): model
        and data are published together, so a crash before the commit leaves
        no index rather than an empty one. ``state`` (an ``IndexState`` or an
        index) must be trained and hold no rows; ``segments`` are manifest
        entries as described in :meth:`Transaction.add_segments`. ``path`` may
        hold unreferenced files but no manifest (else ``FileExistsError``).
        """
        loc = location(path, storage_options)
        if _manifest.list_versions(loc):
            raise FileExistsError(f"{loc.root} already holds a shardann index; open it")
        state = as_state(state)
        if not state.trained or state.ntotal:
            raise ValueError("create_from_segments needs a trained, empty index (its model); "
                             f"got trained={state.trained}, ntotal={state.ntotal}")
        return write_state(cls, loc, state, None, "create", segments=list(segments))

    def save_state(self, state, *, row_group_rows=None):
        """Commit a new version holding exactly ``state`` (an ``IndexState`` or an
        index) on top of this one.

        The previous segments and tombstones leave the manifest (older versions
        still use them until :meth:`vacuum`). Returns the new view; raises
        :class:`shardann.CommitConflictError` if this is not the newest version
        (saving ``state`` on the newest instead would drop that version's
        changes), or :class:`shardann.CorruptIndexError` naming the manifest if
        the next version's manifest is there but damaged (see :meth:`repair`).
        """
        return write_state(type(self), self._loc, state, self._m, "save", row_group_rows)

    @classmethod
    def save(cls, path, state, *, row_group_rows=None, storage_options=None):
        """Store ``state`` (an ``IndexState`` or an index) at ``path``: a new store
        at version 1, or the next version of the store there holding exactly
        ``state``, whatever the newest version held (earlier versions stay
        readable until :meth:`vacuum`). This replaces content deliberately; to
        commit changes on top of the version they were based on, use
        :meth:`transaction` or :meth:`save_state` of that version's view.

        A store whose newest version cannot be opened (a damaged manifest or
        data file, or no readable manifest at all) is superseded: the new
        version gets the next number above the damaged one, which stays on disk,
        and a warning names it. A store written by a newer shardann is an
        error. ``path`` and ``storage_options`` as in :meth:`create`. Returns
        the new view.
        """
        loc = location(path, storage_options)
        if not cls.exists(loc):
            return cls.create(loc, state, row_group_rows=row_group_rows)
        try:
            store = cls.open(loc)
        except FutureFormatError:
            raise
        except CorruptIndexError as exc:
            logger.warning("saving a new version of %s over its damaged newest version "
                           "(left on disk, superseded): %s", loc.root, exc)
            return write_state(cls, loc, state, None, "save", row_group_rows)
        return store.save_state(state, row_group_rows=row_group_rows)

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
        return _maintenance.compact(self, min_rows=min_rows, max_segment_rows=max_segment_rows)

    def vacuum(self, keep=1, *, grace_seconds=3600.0):
        """Delete old versions and files no kept version uses.

        Keeps the newest ``keep`` readable versions (and any older unreadable
        manifest, untouched). Files no manifest ever named (left by crashed or
        in-flight transactions) are deleted only once older than
        ``grace_seconds``, so a writer still working is not robbed of its files.
        Manifests set aside by :meth:`repair` are never deleted (the data files
        only they name are).

        Returns {"removed_versions": [...], "removed_files": [...], "bytes_freed": int}.
        Raises :class:`shardann.CorruptIndexError` naming the newest manifest
        when it is damaged or of a newer format: the files it names must not go
        before someone decided about it (:meth:`repair`).
        """
        return _maintenance.vacuum(self, keep, grace_seconds=grace_seconds)

    @classmethod
    def repair(cls, path, *, rollback=False, supersede=None, storage_options=None):
        """Repair a store whose newest manifest is damaged; see
        :func:`shardann.storage.repair`. Returns its report."""
        return _maintenance.repair(location(path, storage_options), rollback=rollback,
                                   supersede=supersede)

    # -- checking ------------------------------------------------------------------------
    def verify(self):
        """Check every file of this version completely.

        Whole-file CRC-32s and sizes, Parquet footers, column chunk checksums
        (page checksums for format-version-1 segments) and that the chunks
        cover each segment file, schemas, row counts, row-group list ranges,
        sort order, tombstone counts, the codebooks' shapes and the exact
        ``ntotal``.

        Returns a report dict {"version", "files", "bytes", "segments", "rows",
        "ntotal", "duplicate_live_ids"}; raises :class:`shardann.CorruptIndexError`
        listing every problem found (each naming its file; the exception's
        ``problems`` attribute holds them as a list).
        """
        return _maintenance.verify(self)
