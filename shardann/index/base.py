"""What every single-process index shares: parameters, validation, ids,
search plumbing, reconstruct and remove."""

import logging

import numpy as np

from .._validation import (
    MAX_ID,
    as_id_array,
    as_ids,
    as_vectors,
    check_int,
    check_search_args,
)
from ..errors import DuplicateIdError, NotTrainedError
from ..metric import check_metric, keys_to_distances, normalize_rows
from ..results import empty_results

logger = logging.getLogger(__name__)


class BaseIndex:
    """Base class: ``d``, ``metric``, ids and the public method contracts.

    Subclasses provide ``_lists`` (an :class:`~shardann.index._lists.InvertedLists`),
    ``_encode_rows`` (prepared vectors -> list numbers and payload columns),
    ``_search_keys`` and ``_decode_rows``.
    """

    kind = "base"

    def __init__(self, d, metric="l2"):
        self.d = check_int("d", d, low=1)
        self.metric = check_metric(metric)
        self._lists = None
        self._sorted_ids = None  # sorted live ids, built when first needed
        self._posmap = None  # (sorted ids, slab positions), rebuilt after mutations
        self._next_id = 0  # default id of the next added vector

    # -- state -----------------------------------------------------------------
    @property
    def is_trained(self):
        return True

    @property
    def ntotal(self):
        return 0 if self._lists is None else self._lists.ntotal

    def __len__(self):
        return self.ntotal

    def _require_trained(self, what):
        if not self.is_trained:
            raise NotTrainedError(
                f"{type(self).__name__}.{what} needs a trained index; call train(x) first")

    def _prepare(self, x, name="x", *, allow_empty=True):
        """Validate user vectors and map them into the space the index stores
        (normalised for cosine, rotated by OPQ where used)."""
        x = as_vectors(x, self.d, name, allow_empty=allow_empty)
        if self.metric == "cosine":
            x = normalize_rows(x.copy())
        return self._transform(x)

    def _transform(self, x):
        return x

    # -- add / remove ----------------------------------------------------------
    def add(self, x, ids=None):
        """Add float32 (n, d) vectors with int64 (n,) ids.

        ``ids`` default to consecutive integers after the largest id so far
        (0..n-1 for a fresh index). Ids must be unique within the index.
        Returns the int64 ids that were added.
        """
        self._require_trained("add")
        x = self._prepare(x)
        ids = self._new_ids(ids, x.shape[0])
        if x.shape[0]:
            list_no, cols = self._encode_rows(x)
            self.add_encoded(list_no, ids, cols)
        return ids

    def _new_ids(self, ids, n):
        """Validate user ids for ``n`` new rows (or make default ones)."""
        if ids is None:
            if self._next_id + n - 1 > MAX_ID:
                raise ValueError(
                    f"default ids would pass the largest id {MAX_ID}; pass ids explicitly")
            return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        ids = as_ids(ids, n)
        present = self.contains(ids)
        if present.any():
            raise DuplicateIdError(
                f"ids already in the index, e.g. {int(ids[present][0])} "
                f"({int(present.sum())} of {n}); remove them first to replace them")
        return ids

    def add_encoded(self, list_no, ids, cols):
        """Append rows already assigned and encoded (no validation).

        ``list_no`` int64 (n,), ``ids`` int64 (n,), ``cols`` the payload
        columns as produced by ``_encode_rows`` — what a shard receives from
        its coordinator.
        """
        self._lists.add(list_no, ids, **cols)
        if self._sorted_ids is not None:
            # two sorted runs: the stable sort (timsort) merges them in linear time
            self._sorted_ids = np.sort(np.concatenate([self._sorted_ids, np.sort(ids)]),
                                       kind="stable")
        if len(ids):
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._posmap = None
        self._on_mutation(list_no)

    def contains(self, ids):
        """bool (n,): which of the int64 ``ids`` are in the index."""
        ids = as_id_array(ids)
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(self._lists.ids[self._lists.live_rows()])
        s = self._sorted_ids
        if s.size == 0:
            return np.zeros(len(ids), bool)
        at = np.minimum(np.searchsorted(s, ids), s.size - 1)
        return s[at] == ids

    def remove_ids(self, ids):
        """Remove the vectors with these ids; unknown ids are ignored.

        Returns the number of vectors removed.
        """
        ids = as_id_array(ids)
        if ids.size == 0 or self._lists is None:
            return 0
        rows = self._lists.live_rows()
        dead = rows[np.isin(self._lists.ids[rows], ids)]
        if dead.size == 0:
            return 0
        changed = np.unique(self._lists.owners(dead))
        self._lists.remove(dead)
        self._sorted_ids = None
        self._posmap = None
        self._on_mutation(changed)
        return int(dead.size)

    def _on_mutation(self, list_nos=None):
        """Hook: the rows of these lists (int64 array; None = all) changed."""

    def _lookup(self, ids):
        """(found bool (n,), slab position int64 (n,)) of each id."""
        if self._posmap is None:
            rows = self._lists.live_rows() if self._lists is not None else np.zeros(0, np.int64)
            live_ids = self._lists.ids[rows] if rows.size else np.zeros(0, np.int64)
            order = np.argsort(live_ids, kind="stable")
            self._posmap = (live_ids[order], rows[order])
        sids, spos = self._posmap
        if sids.size == 0:
            return np.zeros(len(ids), bool), np.full(len(ids), -1, np.int64)
        at = np.minimum(np.searchsorted(sids, ids), sids.size - 1)
        found = sids[at] == ids
        return found, np.where(found, spos[at], -1)

    # -- reconstruct -----------------------------------------------------------
    def reconstruct(self, ids):
        """Stored (or decoded) vector(s) for ``ids``.

        A scalar id gives float32 (d,), an array of ids float32 (n, d). Raises
        ``KeyError`` naming the first id not in the index. For cosine the
        stored vectors are unit-normalised; IVF-PQ without kept vectors
        returns the quantized approximation.
        """
        self._require_trained("reconstruct")
        scalar = np.ndim(ids) == 0
        arr = as_id_array(ids)
        found, pos = self._lookup(arr)
        if not found.all():
            raise KeyError(f"id {int(arr[~found][0])} is not in the index")
        out = self._decode_rows(pos)
        return out[0] if scalar else out

    # -- search ----------------------------------------------------------------
    def search(self, queries, k=10, **kwargs):
        """k nearest neighbours of each query (``nprobe``/``refine_factor`` are
        accepted and ignored by exact indexes).

        Returns ``(D, I)``: float32 and int64 arrays of shape (nq, k), best
        first; D is the squared L2 distance (l2) or the similarity (ip,
        cosine); rows with fewer than k hits are padded with ``+inf``/``-inf``
        and id -1.
        """
        self._require_trained("search")
        k, nprobe, refine_factor = self._check_search(k, **kwargs)
        q = self._prepare(queries, "queries")
        if q.shape[0] == 0 or self.ntotal == 0:
            return empty_results(q.shape[0], k, self.metric)
        keys, ids = self._search_keys(q, k, nprobe=nprobe, refine_factor=refine_factor)
        return keys_to_distances(keys, self.metric), ids

    def _check_search(self, k, nprobe=None, refine_factor=0):
        # nprobe/refine_factor are accepted so one search loop serves every
        # index type; an exact index has nothing to probe or refine
        k, _, refine_factor = check_search_args(k, refine_factor=refine_factor)
        if nprobe is not None:
            check_int("nprobe", nprobe, low=1)
        return k, None, refine_factor

    # -- persistence -------------------------------------------------------------
    def get_config(self):
        """Constructor arguments that rebuild an untrained twin of this index."""
        return {"d": self.d, "metric": self.metric}

    def _trained_arrays(self):
        """Trained model arrays (centroids, codebooks, rotation), by name."""
        return {}

    def _set_trained_arrays(self, arrays):
        pass

    def _set_lists(self, list_sizes, ids, data):
        """Install lists already grouped by list (zero-copy where possible)."""
        from ._lists import InvertedLists
        self._lists = InvertedLists.from_sorted(
            self._lists.nlist, self._lists.columns, list_sizes, ids, data,
            tiled=self._lists.tiled)
        self._sorted_ids = None
        self._posmap = None
        self._next_id = int(ids.max()) + 1 if len(ids) else 0
        self._on_mutation()

    def save(self, path):
        """Write the index to directory ``path`` (replaced atomically)."""
        from .serialize import save_index
        save_index(self, path)

    # -- description -------------------------------------------------------------
    def __repr__(self):
        return (f"{type(self).__name__}(d={self.d}, metric={self.metric!r}, "
                f"ntotal={self.ntotal}, is_trained={self.is_trained})")
