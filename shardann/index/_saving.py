"""``index.save(path, merge=...)``: commit an index only on top of the version it
came from.

An index opened from a store (or saved to it) remembers that store and version
(its *origin*) and logs the ids it adds and removes afterwards. Saving to the
origin's store commits the index's whole content on top of the origin version,
and only there: if another writer committed meanwhile, the save raises
:class:`shardann.CommitConflictError` instead of dropping that work — or, with
``merge=True``, replays the logged adds and removes as one transaction on the
newest version and reloads the merged version into the index. Saving anywhere
else writes the whole index, as it always did.
"""

import json
import logging

import numpy as np

from ..errors import CommitConflictError, CorruptIndexError, DuplicateIdError
from ._drift import adopt as drift_adopt

logger = logging.getLogger(__name__)

#: a merge that keeps losing the race to other writers gives up after this many tries
MERGE_ATTEMPTS = 3


def model_key(store):
    """What a replayed row depends on: kind, parameters, columns and trained arrays
    of the version ``store`` (an open view)."""
    cb = store.codebooks_file
    return json.dumps({"kind": store.kind, "config": store.config, "nlist": store.nlist,
                       "trained": store.is_trained, "columns": store.columns,
                       "codebooks": None if cb is None else [cb["size"], cb["crc32"]]},
                      sort_keys=True)


def adopt(index, store, lists=None):
    """Make version ``store`` (an open view) the index's origin; forget the log."""
    if lists is not None:
        lists = np.unique(np.asarray(lists, np.int64))
        if lists.size == store.nlist:
            lists = None
    index._origin = {"root": store.path, "version": store.version, "model": model_key(store),
                     "lists": lists}
    index._changes = []
    drift_adopt(getattr(index, "_drift", None), store.manifest.get("drift"))


def net_changes(log):
    """``(added, removed)`` sorted int64 ids from the change log: ids added since the
    origin and live now, and ids of the origin version removed since (an id both
    removed and added again is in both: an upsert)."""
    added, removed = np.zeros(0, np.int64), np.zeros(0, np.int64)
    run = []  # adds since the last remove: disjoint (ids are unique in an index)

    def flush(added):
        if run:
            added = np.union1d(added, np.concatenate(run))
            run.clear()
        return added

    for is_add, ids in log:
        if is_add:
            run.append(ids)
            continue
        added = flush(added)
        mine = np.isin(ids, added)
        added = np.setdiff1d(added, ids[mine], assume_unique=True)
        removed = np.union1d(removed, ids[~mine])
    return flush(added), removed


def save(index, path, merge=False, storage_options=None):
    """See :meth:`shardann.index.BaseIndex.save`."""
    from ..storage import FutureFormatError, IndexStore, list_versions, location

    loc = location(path, storage_options)  # ValueError for an unsupported scheme
    root = loc.root
    origin = getattr(index, "_origin", None)
    if origin is None or origin["root"] != root:
        store = IndexStore.save(loc, index.to_state())  # another store: the whole index
        adopt(index, store)
        return store.version
    partial = origin["lists"] is not None
    if partial and not merge:
        raise ValueError(
            f"this index holds only lists {_short(origin['lists'])} of version "
            f"{origin['version']} of {root} (opened with lists=...); saving it there would "
            "drop the other lists. index.save(path, merge=True) commits its adds and "
            "removes; or save it to another path")
    try:
        newest = IndexStore.open(loc)
    except FutureFormatError:
        raise
    except FileNotFoundError:
        if partial or list_versions(loc):
            raise
        store = IndexStore.create(loc, index.to_state())  # the store was deleted
        adopt(index, store)
        return store.version
    except CorruptIndexError:
        versions = list_versions(loc)
        if not partial and versions and versions[-1] == origin["version"]:
            # the damaged version is the one this index holds (plus its changes)
            store = IndexStore.save(loc, index.to_state())  # supersedes, with a warning
            adopt(index, store)
            return store.version
        raise  # it cannot know what the damaged version held: repair first
    if newest.version == origin["version"] and not partial:
        try:
            store = newest.save_state(index.to_state())
        except CommitConflictError:
            if not merge:
                raise _conflict(index, root, list_versions(loc)[-1]) from None
        else:
            adopt(index, store)
            return store.version
    elif not merge:
        raise _conflict(index, root, newest.version)
    return _merge(index, loc)


def _short(lists):
    text = ", ".join(map(str, lists[:8].tolist()))
    return f"[{text}{', ...' if lists.size > 8 else ''}]"


def _conflict(index, root, newest):
    origin = index._origin
    log = getattr(index, "_changes", None)
    head = (f"{root}: the newest version is {newest}, not version {origin['version']} this "
            "index was loaded from (or last saved as): another writer committed since (or "
            "the store was repaired). Saving the index there would drop that work, so "
            "nothing was written. ")
    if log is None:
        how = ("This index's changes cannot be replayed (its lists were replaced or it was "
               "retrained after it was loaded): open the newest version "
               "(shardann.open_index(path)) and redo them")
    else:
        added, removed = net_changes(log)
        how = (f"To keep both, index.save(path, merge=True) replays this index's "
               f"{added.size} added and {removed.size} removed ids on top of version "
               f"{newest} (DuplicateIdError if that version holds ids it added) and then "
               "holds the merged version; or open the newest version "
               "(shardann.open_index(path)) and redo the changes")
    return CommitConflictError(
        head + how + ". To replace the content with this index anyway: "
        "shardann.storage.IndexStore.save(path, index).")


def _merge(index, loc):
    from ..storage import IndexStore, Transaction

    root = loc.root
    origin = index._origin
    log = getattr(index, "_changes", None)
    if log is None:
        raise _conflict(index, root, IndexStore.open(loc).version)
    added, removed = net_changes(log)
    for _ in range(MERGE_ATTEMPTS):
        newest = IndexStore.open(loc)
        if model_key(newest) != origin["model"]:
            raise CommitConflictError(
                f"{root}: version {newest.version} has another model (kind, parameters or "
                f"trained arrays) than version {origin['version']} this index was loaded "
                "from, so its rows cannot be replayed there; nothing was written. Open the "
                "newest version (shardann.open_index(path)) and add the vectors again, or "
                "replace the content with shardann.storage.IndexStore.save(path, index)")
        if added.size:
            lo, hi = int(added[0]), int(added[-1])
            segs = [s for s in newest.manifest["files"]["segments"]
                    if s["max_id"] >= lo and s["min_id"] <= hi]
            live = newest.live_ids(segs) if segs else np.zeros(0, np.int64)
            dup = added[np.isin(added, live) & ~np.isin(added, removed)]
            if dup.size:
                raise DuplicateIdError(
                    f"{root}: version {newest.version} (committed by another writer since "
                    f"version {origin['version']}) already holds ids this index added, e.g. "
                    f"{int(dup[0])} ({dup.size} of {added.size}); nothing was written. "
                    "Remove them from this index (or from the store) first, then merge")
        if not added.size and not removed.size:
            store = newest
            break
        txn = Transaction(newest, "merge")
        try:
            if removed.size:
                txn.delete(removed)
            if added.size:
                found, pos = index._lookup(added)
                if not found.all():  # the log and the lists disagree: never guess
                    raise RuntimeError("the index lost track of its added ids; "
                                       "merge impossible")
                L = index._lists
                attrs = (None if index.attribute_schema is None
                         else index.get_attributes(added))
                txn.add(L.owners(pos), added, **{k: L.data[k][pos] for k in index.columns},
                        attributes=attrs)
                drift = getattr(index, "_drift", None)
                if drift is not None:
                    txn.record_drift(drift["pending"])
            store = txn.commit()
        except CommitConflictError:
            continue  # another writer again: replay on the new newest
        except BaseException:
            txn.abort()
            raise
        break
    else:
        raise CommitConflictError(
            f"{root}: other writers committed during each of {MERGE_ATTEMPTS} attempts to "
            "merge this index's changes; nothing was written. Try again later")
    lists = origin["lists"]
    state = store.load_state(lists)
    if state.trained:
        index.set_lists(*state.lists, next_id=max(state.next_id, index.next_id),
                        attributes=state.attributes)
        index._cal = store if store.calibration_file is not None else None  # read lazily
    adopt(index, store, lists)
    return store.version
