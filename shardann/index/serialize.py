"""``index.save(path)`` and ``shardann.open_index(path)``: indexes to and from
:class:`~shardann.storage.IndexState`, the values the store keeps.

The format lives in :mod:`shardann.storage` (see ``docs/format.md``), which
knows no index class: ``index.to_state()`` turns an index into an
``IndexState`` and :func:`index_from_state` turns one back into an index.
"""

import logging

from ..errors import CorruptIndexError
from .base import BaseIndex
from .flat import FlatIndex  # noqa: F401  (registers the kind)
from .ivf import IVFFlatIndex, IVFPQIndex  # noqa: F401  (register their kinds)

logger = logging.getLogger(__name__)


def index_from_state(state):
    """The index an :class:`~shardann.storage.IndexState` describes.

    Parameters
    ----------
    state : IndexState, e.g. from ``index.to_state()`` or
        ``IndexStore.open(path).load_state(lists=...)``.

    Returns a FlatIndex, IVFFlatIndex or IVFPQIndex, trained if the state is,
    holding the state's rows (wrapped without copying where the layout
    allows). Raises ``ValueError`` when the state does not describe an index
    (unknown kind, a config the class rejects, arrays or columns that do not
    fit it).
    """
    return BaseIndex.from_state(state)


def save_index(index, path):
    """Write ``index`` to directory ``path``; return the committed version number.

    A new path becomes a store at version 1; an existing store gets a new
    version holding exactly the index's current content (earlier versions stay
    readable until ``IndexStore.vacuum``). A store none of whose manifests is
    readable is superseded by the new version (with a warning).
    """
    if not isinstance(index, BaseIndex):
        raise TypeError(f"expected a shardann index; got {type(index).__name__}")
    return index.save(path)


def open_index(path, version=None, *, lists=None):
    """Open an index written by ``index.save(path)``.

    Parameters
    ----------
    path : str or os.PathLike, the index directory.
    version : int, optional. A committed version to open; default the newest.
    lists : int array, optional. Load only these inverted lists (a shard's
        share); the model is always complete. Default: all.

    Returns a FlatIndex, IVFFlatIndex or IVFPQIndex (trained, if it was saved
    trained) with its lists loaded. Raises ``FileNotFoundError`` when there
    is no index (or no such version) and :class:`shardann.CorruptIndexError`
    naming the file when a file is truncated, corrupt or of an unknown format.
    """
    from ..storage import IndexStore

    return load_index(IndexStore.open(path, version), lists)


def load_index(store, lists=None):
    """The index held by ``store`` (an open ``IndexStore`` view), with only
    ``lists`` loaded when given. Raises :class:`shardann.CorruptIndexError`
    naming the manifest when the stored state does not describe an index."""
    state = store.load_state(lists)
    try:
        return index_from_state(state)
    except ValueError as exc:
        raise CorruptIndexError(f"{store.manifest_path}: {exc}") from exc
