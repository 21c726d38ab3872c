"""``index.save(path)`` and ``shardann.open_index(path)``: indexes to and from
:class:`~shardann.storage.IndexState`, the values the store keeps.

The format lives in :mod:`shardann.storage` (see ``docs/format.md``), which
knows no index class: ``index.to_state()`` turns an index into an
``IndexState`` and :func:`index_from_state` turns one back into an index.
"""

import logging

from ..errors import CorruptIndexError
from ._calibration import stored
from ._saving import adopt
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


def save_index(index, path, *, merge=False, storage_options=None):
    """Write ``index`` to directory ``path``; return the committed version number (int).

    A new path becomes a store at version 1; an existing store gets a new
    version holding exactly the index's current content (earlier versions stay
    readable until ``IndexStore.vacuum``). The index's own store (the one it
    was opened from or last saved to) is written only on top of that version:
    otherwise :class:`shardann.CommitConflictError`, or with ``merge=True`` its
    adds and removes are replayed on the newest version (see
    :meth:`BaseIndex.save`).

    A store whose newest manifest is damaged (or none of whose manifests is
    readable) is superseded by the new version, with a warning naming it,
    when the index does not depend on that version (it came from elsewhere or
    from that very version); otherwise :class:`shardann.CorruptIndexError`
    names the damaged manifest, and ``shardann.storage.repair`` (``shardann
    repair PATH --rollback | --supersede VERSION``) rolls it back or supersedes
    it deliberately.
    """
    if not isinstance(index, BaseIndex):
        raise TypeError(f"expected a shardann index; got {type(index).__name__}")
    return index.save(path, merge=merge, storage_options=storage_options)


def open_index(path, version=None, *, lists=None, storage_options=None):
    """Open an index written by ``index.save(path)``.

    Parameters
    ----------
    path : str or os.PathLike, the index directory, or a URI (``file://``,
        ``s3://``, ``gs://``, ``az://``/``abfs[s]://``, ``memory://``).
    version : int, optional. A committed version to open; default the newest.
    lists : int array, optional. Load only these inverted lists (a shard's
        share); the model is always complete. Default: all.
    storage_options : dict, optional. Credentials and settings for object
        stores (see :func:`shardann.storage.location`); default: the cloud
        SDKs' environment.

    Returns a FlatIndex, IVFFlatIndex or IVFPQIndex (trained, if it was saved
    trained) with its lists loaded; ``index.save(path)`` later commits on top
    of this version only (see :meth:`BaseIndex.save`). Raises
    ``FileNotFoundError`` when there is no index (or no such version) and
    :class:`shardann.CorruptIndexError` naming the file when a file is
    truncated, corrupt or of an unknown format — or, for the newest version,
    when its manifest is damaged (no silent fallback to an older version).
    """
    from ..storage import IndexStore

    return load_index(IndexStore.open(path, version, storage_options=storage_options), lists)


def load_index(store, lists=None):
    """The index held by ``store`` (an open ``IndexStore`` view), with only
    ``lists`` loaded when given. Raises :class:`shardann.CorruptIndexError`
    naming the manifest when the stored state does not describe an index."""
    state = store.load_state(lists)
    try:
        index = index_from_state(state)
    except ValueError as exc:
        raise CorruptIndexError(f"{store.manifest_path}: {exc}") from exc
    adopt(index, store, lists)  # its saves commit on top of this version only
    index._cal = stored(store)  # read when a recall estimate (or an add) needs it
    return index
