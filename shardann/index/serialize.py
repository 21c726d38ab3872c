"""``index.save(path)`` and ``shardann.open_index(path)`` on the versioned store.

The format lives in :mod:`shardann.storage` (see ``docs/format.md``); this
module only bridges the single-process index to it, importing the storage
layer lazily.
"""

import logging

logger = logging.getLogger(__name__)


def save_index(index, path):
    """Write ``index`` to directory ``path``; return the committed version number.

    A new path becomes a store at version 1; an existing store gets a new
    version holding exactly the index's current content (earlier versions stay
    readable until ``IndexStore.vacuum``). A store whose newest version is
    damaged is superseded by the new version (with a warning).
    """
    from ..errors import CorruptIndexError
    from ..storage import IndexStore
    from ..storage._manifest import FutureFormatError
    from ..storage._store import _write_index

    if not IndexStore.exists(path):
        return IndexStore.create(path, index).version
    try:
        store = IndexStore.open(path)
    except FutureFormatError:
        raise
    except CorruptIndexError as exc:
        logger.warning("saving a new version over a damaged index: %s", exc)
        return _write_index(store_path(path), index, None, "save", None).version
    return store.save_index(index).version


def store_path(path):
    import os
    return os.path.abspath(os.fspath(path))


def open_index(path, version=None):
    """Open an index written by ``index.save(path)``.

    Parameters
    ----------
    path : str or os.PathLike, the index directory.
    version : int, optional. A committed version to open; default the newest.

    Returns a FlatIndex, IVFFlatIndex or IVFPQIndex (trained, if it was saved
    trained) with all its lists loaded. Raises ``FileNotFoundError`` when there
    is no index (or no such version) and :class:`shardann.CorruptIndexError`
    naming the file when a file is truncated, corrupt or of an unknown format.
    """
    from ..storage import IndexStore

    return IndexStore.open(path, version).load_index()
