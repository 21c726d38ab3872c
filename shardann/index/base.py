"""What every single-process index shares: parameters, validation, ids,
search plumbing, reconstruct and remove."""

import collections
import copy
import logging

import numpy as np

from .._validation import (
    MAX_ID,
    as_id_array,
    as_ids,
    as_vectors,
    check_int,
    check_probe_gap,
    check_probe_ratio,
    check_search_args,
)
from ..errors import DuplicateIdError, NotTrainedError
from ..filters import as_attribute_table, check_columns, compile_filter, filter_key
from ..metric import check_metric, keys_to_distances, normalize_rows
from ..results import empty_results
from ._attributes import MASK_CACHE_SIZE, ListAttributes
from ._drift import from_state as drift_from_state

#: A filter is "sparse" when the rows passing it are at most this fraction of the
#: index, or at most FILTER_SPARSE_ROWS: a search then scans a compact copy of
#: just those rows (same keys, same results) instead of skipping the others
FILTER_SPARSE_FRACTION = 1 / 32
FILTER_SPARSE_ROWS = 4096

logger = logging.getLogger(__name__)


class BaseIndex:
    """Base class: ``d``, ``metric``, ids and the public method contracts.

    Subclasses set ``kind`` (registered for :meth:`from_state`) and provide
    ``_lists`` (an :class:`~shardann.index._lists.InvertedLists`), ``_columns``,
    ``_encode`` (prepared vectors -> list numbers and payload columns),
    ``_search_keys`` and ``_decode_rows``.
    """

    kind = "base"
    #: kind -> index class, filled as subclasses are defined
    _kinds = {}
    #: calibration queries a new index samples for recall estimates (0: none; see
    #: shardann.index._calibration); IVF indexes take it as a parameter
    calibration = 0
    _cal = None  # None, a CalibrationSet, or the store view to read it from

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            BaseIndex._kinds[cls.kind] = cls

    def __init__(self, d, metric="l2"):
        self.d = check_int("d", d, low=1)
        self.metric = check_metric(metric)
        self._lists = None
        self._sorted_ids = None  # sorted live ids, built when first needed
        self._posmap = None  # (sorted ids, slab positions), rebuilt after mutations
        self._next_id = 0  # default id of the next added vector
        self._origin = None  # the store version it was loaded from / saved as (_saving)
        self._changes = None  # [(added?, ids)] since then; None: untracked or not replayable
        self._attribute_schema = None  # pa.Schema, fixed by the first add with attributes
        self._slab_masks = collections.OrderedDict()  # filter key -> (lists version, mask)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_slab_masks"] = collections.OrderedDict()  # derived from the lists
        return state

    # -- state -----------------------------------------------------------------
    @property
    def is_trained(self):
        return True

    @property
    def ntotal(self):
        return 0 if self._lists is None else self._lists.ntotal

    def __len__(self):
        return self.ntotal

    def list_sizes(self):
        """Live rows per inverted list, int64 (nlist,) — a copy (a flat index has
        one list). Removed rows leave at once; what the selectivity rule of a
        filtered search weighs the passing rows against."""
        if self._lists is None:
            return np.zeros(int(getattr(self, "nlist", 1)), np.int64)
        return self._lists.size.copy()

    def _require_trained(self, what):
        if not self.is_trained:
            raise NotTrainedError(
                f"{type(self).__name__}.{what} needs a trained index; call train(x) first")

    @property
    def next_id(self):
        """The id ``add`` gives the next vector by default: above every id the
        index has held (int)."""
        return self._next_id

    @property
    def columns(self):
        """Payload columns of the inverted lists: dict name -> (width, numpy dtype),
        e.g. ``{"codes": (16, dtype('uint8'))}`` or ``{"vectors": (d, dtype('float32'))}``."""
        return {k: (int(w), np.dtype(t)) for k, (w, t) in self._columns().items()}

    def _columns(self):
        return {"vectors": (self.d, np.dtype(np.float32))}

    @property
    def refines(self):
        """True when ``refine_factor > 0`` re-ranks candidates with exact distances
        on kept vectors (IVF-PQ with ``keep_vectors``); an exact index (flat,
        IVF-Flat) has nothing to refine."""
        return False

    def prepare(self, x, name="x", *, allow_empty=True):
        """Validate vectors and map them into the space the index stores and
        scans: unit-normalised for cosine, rotated by OPQ where used. With
        ``pca`` they stay ``d``-dimensional (the space of kept vectors and of
        refine); the index projects them itself where it probes, scans and encodes.

        Parameters
        ----------
        x : float (n, d) array-like (a single (d,) vector is one row).
        name : what to call ``x`` in error messages (e.g. "queries").

        Returns float32 (n, d), C-contiguous — the input of :meth:`encode`,
        ``probe`` and ``search_preassigned``. Raises ``ValueError`` /
        ``TypeError`` for a wrong shape, dtype or NaN/inf, and
        :class:`shardann.NotTrainedError` before training.
        """
        self._require_trained("prepare")
        x = as_vectors(x, self.d, name, allow_empty=allow_empty)
        if self.metric == "cosine":
            x = normalize_rows(x.copy())
        return self._transform(x)

    def _transform(self, x):
        return x

    # -- attributes ------------------------------------------------------------
    @property
    def attribute_schema(self):
        """``pyarrow.Schema`` of the attribute columns, or None when the index has
        none. Fixed by the first ``add`` with attributes."""
        return self._attribute_schema

    def _attribute_rows(self, attributes, n):
        """``attributes`` for n new rows as a normalised pyarrow.Table (None stays
        None), fixing the schema on first use."""
        if attributes is None:
            return None
        table = as_attribute_table(attributes, n, self._attribute_schema)
        if self._attribute_schema is None:
            self._attribute_schema = table.schema
        return table

    def _list_attributes(self):
        """The lists' ListAttributes (made, all null, when the schema is newer
        than the rows), or None without a schema."""
        L = self._lists
        if L is None or self._attribute_schema is None:
            return None
        if L.attrs is None:
            L.attrs = ListAttributes.nulls(self._attribute_schema, L.size)
        return L.attrs

    def compile_filter(self, filter):
        """``filter`` (None, a SQL-like string or a ``pyarrow.compute.Expression``)
        checked against :attr:`attribute_schema`, as an Expression or None (see
        :func:`shardann.filters.compile_filter`). Raises ``ValueError`` naming
        the column / position."""
        return compile_filter(filter, self._attribute_schema)

    def get_attributes(self, ids, columns=None):
        """Attribute rows of ``ids`` (int64, any shape, read flat).

        Returns a ``pyarrow.Table`` with one row per id, in order, of
        ``columns`` (default: all); ids that are -1 or not in the index give
        all-null rows. Raises ``ValueError`` for an unknown column or an index
        without attributes.
        """
        if self._attribute_schema is None:
            raise ValueError("the index has no attributes (add vectors with "
                             "add(x, attributes=...))")
        columns = check_columns(columns, self._attribute_schema) or self._attribute_schema.names
        ids = np.asarray(ids)
        if ids.size and ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers; got dtype {ids.dtype}")
        ids = ids.astype(np.int64).ravel()
        found, pos = self._lookup(ids)
        L = self._lists
        lists = np.full(ids.size, -1, np.int64)
        offsets = np.zeros(ids.size, np.int64)
        if found.any():
            lists[found] = L.owners(pos[found])
            offsets[found] = pos[found] - L.start[lists[found]]
        return self._list_attributes().take(lists, offsets, columns)

    def _passing(self, expr):
        """(allowed uint8 over the slab rows, passing rows per list int64 (nlist,))
        of a compiled filter; cached per filter until the rows change or move."""
        entry = self._passing_entry(expr)
        return entry["allowed"], entry["counts"]

    def _passing_entry(self, expr):
        """The cache entry of a compiled filter: {"version", "allowed", "counts",
        "rows"} ("rows": the passing slab positions, grouped by list), made when
        the lists changed or moved since."""
        L = self._lists
        key = filter_key(expr)
        hit = self._slab_masks.get(key)
        if hit is not None and hit["version"] == L.version:
            self._slab_masks.move_to_end(key)
            return hit
        masks = self._list_attributes().masks(expr)
        allowed = np.zeros(len(L.ids), np.uint8)
        rows = L.live_rows()
        if rows.size:
            passing = np.concatenate(masks)
            allowed[rows] = passing
            rows = rows[passing]
        counts = np.array([np.count_nonzero(m) for m in masks], np.int64)
        entry = {"version": L.version, "allowed": allowed, "counts": counts, "rows": rows}
        self._slab_masks[key] = entry
        while len(self._slab_masks) > MASK_CACHE_SIZE:
            self._slab_masks.popitem(last=False)
        return entry

    def _is_sparse(self, counts):
        """Whether a filter passing ``counts`` rows per list is scanned from a compact
        copy of its passing rows (see :data:`FILTER_SPARSE_FRACTION`)."""
        total = int(counts.sum())
        return total <= max(FILTER_SPARSE_ROWS, self.ntotal * FILTER_SPARSE_FRACTION)

    def _passing_lists(self, expr):
        """InvertedLists holding only the rows that pass a compiled filter (row-major,
        same list numbers), kept with the filter's cache entry: what a very
        selective filter is scanned from."""
        from ._lists import InvertedLists

        entry = self._passing_entry(expr)
        if entry.get("lists") is None:
            L, rows = self._lists, entry["rows"]
            entry["lists"] = InvertedLists.from_sorted(
                L.nlist, L.columns, entry["counts"], L.ids[rows],
                {k: np.ascontiguousarray(v[rows]) for k, v in L.data.items()})
        return entry["lists"]

    def _allowed(self, expr):
        """uint8 over the slab rows: 1 where a live row passes the compiled filter."""
        return self._passing(expr)[0]

    def passing_counts(self, filter):
        """int64 (nlist,): rows of each list that pass ``filter`` (string or
        Expression) — the selectivity a coordinator plans with."""
        return self._passing(self.compile_filter(filter))[1].copy()

    # -- add / remove ----------------------------------------------------------
    def add(self, x, ids=None, attributes=None):
        """Add float32 (n, d) vectors with int64 (n,) ids.

        ``ids`` default to consecutive integers after the largest id so far
        (0..n-1 for a fresh index). Ids must be unique within the index.
        ``attributes``: one row per vector (a pyarrow Table / RecordBatch / dict
        of arrays; see :attr:`attribute_schema`); the first add with attributes
        fixes the columns, later adds must give the same ones (``ValueError``
        naming the column otherwise), and rows added without get nulls.
        Returns the int64 ids that were added.
        """
        self._require_trained("add")
        cal = self._calibration_for_add()
        raw = None if cal is None else as_vectors(x, self.d)
        x = self.prepare(x if raw is None else raw)
        table = self._attribute_rows(attributes, x.shape[0])
        ids = self._new_ids(ids, x.shape[0])
        if x.shape[0]:
            list_no, payload = self._encode(x)
            self._add_rows(list_no, ids, payload, table)
            if cal is not None:  # the exact neighbours of the calibration queries
                cal.add(raw, x, ids, self.prepare, self.contains)
            self._record_drift(x, list_no, payload)
        return ids

    def _calibration_for_add(self):
        """The calibration set an ``add`` keeps up to date, or None (IVF indexes
        keep one: see :meth:`shardann.IVFPQIndex.estimate_recall`)."""
        return None

    def _calibration_bytes(self):
        """The calibration file ``to_state`` stores, or None."""
        return None

    def _calibration_removed(self, ids):
        """Hook: rows ``ids`` left the index."""

    def _record_drift(self, x, list_no, payload):
        """Hook: count the quantization errors of rows just added (IVF indexes)."""

    def drift_stats(self, x, list_no, payload):
        """Drift stats of encoded rows (see :meth:`IVFIndex.drift_stats`); None
        for an index without quantizer."""
        return None

    def drift(self, threshold=None):
        """Drift of the added vectors against the training data (see
        :meth:`IVFIndex.drift`); None for an index without quantizer."""
        return None

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

    def encode(self, x):
        """Assign and encode prepared vectors (the output of :meth:`prepare`).

        Parameters
        ----------
        x : float32 (n, d), prepared.

        Returns
        -------
        list_no : int64 (n,), each vector's inverted list.
        payload : dict name -> (n, width) array, the list columns of
            :attr:`columns` (``"codes"`` uint8, ``"vectors"`` float32/float16).

        Codes are exactly what :meth:`add` stores, whatever the batch.
        """
        self._require_trained("encode")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.d or x.dtype != np.float32:
            raise ValueError(f"encode takes prepared float32 (n, {self.d}) vectors (see "
                             f"prepare); got {x.dtype} {x.shape}")
        return self._encode(np.ascontiguousarray(x))

    def add_preassigned(self, list_no, ids, payload, attributes=None):
        """Append rows already assigned and encoded (by :meth:`encode`, maybe in
        another process) — what a shard receives from its coordinator.

        Parameters
        ----------
        list_no : int64 (n,), each row's list, in 0..nlist-1.
        ids : int64 (n,), not in the index yet (not checked: the caller owns ids).
        payload : dict name -> (n, width) array, exactly the :attr:`columns`.
        attributes : the rows' attributes, as for :meth:`add` (None: nulls).

        Shapes, dtypes and list numbers are checked; the rows are not re-encoded.
        """
        self._require_trained("add_preassigned")
        ids = as_id_array(ids)
        n = ids.size
        list_no = np.asarray(list_no)
        if list_no.shape != (n,) or (n and list_no.dtype.kind not in "iu"):
            raise ValueError(f"list_no must be int64 ({n},); got {list_no.dtype} "
                             f"{list_no.shape}")
        list_no = list_no.astype(np.int64, copy=False)
        nlist = self._lists.nlist
        if n and (int(list_no.min()) < 0 or int(list_no.max()) >= nlist):
            raise ValueError(f"list_no must be in 0..{nlist - 1}; got values in "
                             f"{int(list_no.min())}..{int(list_no.max())}")
        cols = self.columns
        if set(payload) != set(cols):
            raise ValueError(f"payload must hold the columns {sorted(cols)}; got "
                             f"{sorted(payload)}")
        checked = {}
        for name, (width, dtype) in cols.items():
            arr = np.asarray(payload[name])
            if arr.shape != (n, width) or arr.dtype != dtype:
                raise ValueError(f"payload[{name!r}] must be {dtype} ({n}, {width}); got "
                                 f"{arr.dtype} {arr.shape}")
            checked[name] = arr
        table = self._attribute_rows(attributes, n)
        if n:
            self._add_rows(list_no, ids, checked, table)
            self._cal = None  # rows it has not seen (no raw vectors here)

    def _log_change(self, added, ids):
        """Note ids added or removed since the origin version (for ``save(merge=True)``)."""
        log = getattr(self, "_changes", None)
        if log is not None and len(ids):
            log.append((added, np.array(ids, np.int64)))

    def _add_rows(self, list_no, ids, payload, attributes=None):
        self._list_attributes()  # rows already held get null attributes first
        self._lists.add(list_no, ids, attributes, **payload)
        self._log_change(True, ids)
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
        self._log_change(False, self._lists.ids[dead])
        self._calibration_removed(self._lists.ids[dead])
        self._lists.remove(dead)
        self._sorted_ids = None
        self._posmap = None
        self._on_mutation(changed)
        return int(dead.size)

    def _on_mutation(self, list_nos=None):
        """Hook: the rows of these lists (int64 array; None = all) changed."""

    def _lookup(self, ids):
        """(found bool (n,), slab position int64 (n,)) of each id."""
        version = None if self._lists is None else self._lists.version
        if self._posmap is None or self._posmap[2] != version:  # rows moved (compaction)
            rows = self._lists.live_rows() if self._lists is not None else np.zeros(0, np.int64)
            live_ids = self._lists.ids[rows] if rows.size else np.zeros(0, np.int64)
            order = np.argsort(live_ids, kind="stable")
            self._posmap = (live_ids[order], rows[order], version)
        sids, spos, _ = self._posmap
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
        returns the quantized approximation. With ``pca``: the kept vectors
        (IVF-PQ ``keep_vectors``), else the reduced vector (IVF-Flat) or
        decoded code (IVF-PQ) mapped back to ``d`` dimensions
        (:meth:`shardann.pca.PCA.reverse`), an approximation.
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
    def search(self, queries, k=10, *, filter=None, columns=None, probe_ratio=None,
               probe_gap=None, **kwargs):
        """k nearest neighbours of each query (``nprobe``/``refine_factor``/
        ``probe_ratio``/``probe_gap`` are checked, then ignored by exact indexes).

        ``filter``: None, a SQL-like string (``"lang = 'en' AND year >= 2023"``,
        see :mod:`shardann.filters`) or a ``pyarrow.compute.Expression`` over the
        attribute columns; only rows that pass are ranked, so each query gets
        k passing hits whenever k exist. ``columns``: attribute column names to
        return with the hits.

        Returns ``(D, I)``: float32 and int64 arrays of shape (nq, k), best
        first; D is the squared L2 distance (l2) or the similarity (ip,
        cosine); rows with fewer than k hits are padded with ``+inf``/``-inf``
        and id -1. With ``columns``, ``(D, I, A)``: A is a ``pyarrow.Table`` of
        nq * k rows (row ``i * k + j`` belongs to ``I[i, j]``; all null where
        it is -1) holding exactly those columns.
        """
        self._require_trained("search")
        k, nprobe, refine_factor = self.check_search(k, **kwargs)
        probe_ratio = check_probe_ratio(probe_ratio)
        probe_gap = check_probe_gap(probe_gap)
        expr = self.compile_filter(filter)
        columns = check_columns(columns, self._attribute_schema)
        q = self.prepare(queries, "queries")
        if q.shape[0] == 0 or self.ntotal == 0:
            D, I = empty_results(q.shape[0], k, self.metric)
        else:
            keys, I = self._search_keys(q, k, nprobe=nprobe, refine_factor=refine_factor,
                                        filter=expr, probe_ratio=probe_ratio,
                                        probe_gap=probe_gap)
            D = keys_to_distances(keys, self.metric)
        return self._with_columns(D, I, columns)

    def _with_columns(self, D, I, columns):
        """``(D, I)``, or ``(D, I, A)`` with the hits' attribute ``columns``."""
        if columns is None:
            return D, I
        return D, I, self.get_attributes(I, columns)

    def check_search(self, k, nprobe=None, refine_factor=0):
        """Validate search arguments; return ``(k, nprobe, refine_factor)`` as ints.

        ``nprobe=None`` becomes the index's default (``None`` for an exact
        index, which has nothing to probe; ``nprobe`` and ``refine_factor`` are
        accepted so one search loop serves every index type). Raises
        ``ValueError`` / ``TypeError`` saying what was expected and given.
        """
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

    def memory_bytes(self):
        """``{"list_bytes", "allocated_bytes"}``: bytes of the list rows in use
        (ids and payload), and bytes held including room to grow."""
        if self._lists is None:
            return {"list_bytes": 0, "allocated_bytes": 0}
        return {"list_bytes": int(self._lists.nbytes()),
                "allocated_bytes": int(self._lists.allocated_bytes())}

    def set_lists(self, list_sizes, ids, payload, *, next_id=0, attributes=None):
        """Replace the inverted lists with rows already grouped by list.

        Parameters
        ----------
        list_sizes : int64 (nlist,), rows per list.
        ids : int64 (n,), grouped by list (list 0 first).
        payload : dict name -> (n, width) array, exactly the :attr:`columns`.
        next_id : the next default id is at least this (and above every id).
        attributes : pyarrow.Table of the rows' attributes in the order of
            ``ids`` (as for :meth:`add`), or None (null attributes, or none).

        The arrays are wrapped without copying (4-bit fast-scan codes are
        re-laid out); NumPy views of a store's Arrow buffers stay views.
        """
        self._require_trained("set_lists")
        from ._lists import InvertedLists

        sizes = np.asarray(list_sizes, np.int64)
        nlist = self._lists.nlist
        n = len(ids)
        if sizes.shape != (nlist,) or int(sizes.sum()) != n:
            raise ValueError(f"list_sizes must be ({nlist},) adding up to {n} rows; got "
                             f"shape {sizes.shape} adding up to {int(sizes.sum())}")
        cols = self.columns
        if set(payload) != set(cols) or any(
                payload[k].shape != (n, w) or payload[k].dtype != t for k, (w, t) in cols.items()):
            want = {k: (n, w, t.name) for k, (w, t) in cols.items()}
            got = {k: (*np.shape(v), np.asarray(v).dtype.name) for k, v in payload.items()}
            raise ValueError(f"payload must hold {want} (rows, width, dtype); got {got}")
        table = self._attribute_rows(attributes, n)
        attrs = (None if table is None
                 else ListAttributes.from_packed(table.schema, sizes, table))
        self._lists = InvertedLists.from_sorted(nlist, self._lists.columns, sizes, ids,
                                                payload, tiled=self._lists.tiled, attrs=attrs)
        self._sorted_ids = None
        self._posmap = None
        self._next_id = max(int(next_id), int(ids.max()) + 1 if n else 0)
        self._changes = None  # the rows are no longer the origin's plus logged changes
        self._cal = None  # rows it has not seen (the loader attaches a stored one after)
        self._on_mutation()

    def to_state(self, *, lists=True):
        """This index as an :class:`~shardann.storage.IndexState` (what
        ``save`` stores; :meth:`from_state` turns it back into an index).

        ``lists=False`` leaves the rows out: the model alone (kind, config,
        trained arrays, columns, next_id), cheap whatever the index holds — what
        a coordinator or an ingest worker needs. The state's arrays are copies:
        it does not change with the index.
        """
        from ..storage import IndexState

        trained = bool(self.is_trained)
        config = self.get_config()
        nlist = int(getattr(self, "nlist", 1))
        schema = self._attribute_schema
        if not trained:
            return IndexState(self.kind, config, False, {}, nlist, None, next_id=self._next_id,
                              attribute_schema=schema)
        arrays = {k: np.array(v, np.float32) for k, v in self._trained_arrays().items()}
        drift = copy.deepcopy(getattr(self, "_drift", None))
        if not lists:
            return IndexState(self.kind, config, True, arrays, nlist, self.columns,
                              next_id=self._next_id, attribute_schema=schema, drift=drift)
        sizes, ids, payload = self._lists.packed()
        next_id = max(self._next_id, int(ids.max()) + 1 if len(ids) else 0)
        attrs = self._list_attributes()
        return IndexState(self.kind, config, True, arrays, nlist, self.columns, sizes, ids,
                          payload, next_id, attributes=None if attrs is None else attrs.packed(),
                          attribute_schema=schema, calibration=self._calibration_bytes(),
                          drift=drift)

    @staticmethod
    def from_state(state):
        """The index an :class:`~shardann.storage.IndexState` describes (a
        ``FlatIndex``, ``IVFFlatIndex`` or ``IVFPQIndex``), its lists wrapped
        without copying.

        Raises ``ValueError`` when the kind is unknown, the config does not
        build an index, or the arrays and columns do not fit it.
        """
        cls = BaseIndex._kinds.get(state.kind)
        if cls is None:
            raise ValueError(f"unknown index kind {state.kind!r}; expected one of "
                             f"{sorted(BaseIndex._kinds)}")
        try:
            index = cls(**state.config)
        except TypeError as exc:
            raise ValueError(f"config {state.config} does not build a {cls.__name__} "
                             f"({exc})") from exc
        index._attribute_schema = state.attribute_schema
        if not state.trained:
            index._next_id = int(state.next_id)
            return index
        want = set(index._trained_arrays_names())
        if set(state.arrays) != want:
            raise ValueError(f"a trained {cls.__name__} needs arrays {sorted(want)}; the "
                             f"state has {sorted(state.arrays)}")
        index._set_trained_arrays(state.arrays)
        if hasattr(index, "_drift"):
            index._drift = drift_from_state(state.drift)
        if state.columns is not None and state.columns != index.columns:
            raise ValueError(f"columns {state.columns} do not fit a {cls.__name__} with "
                             f"config {state.config} (expected {index.columns})")
        if state.ntotal or state.payload:
            index.set_lists(state.list_sizes, state.ids, state.payload, next_id=state.next_id,
                            attributes=state.attributes)
        else:  # the model alone (e.g. IndexState(kind, config, True, arrays, nlist))
            index._next_id = max(index._next_id, int(state.next_id))
        return index

    def _trained_arrays_names(self):
        """Names of the arrays a trained index of this config has."""
        return ()

    def save(self, path, *, merge=False, storage_options=None):
        """Write the index to directory ``path`` as a new version of the store there
        (read it back with :func:`shardann.open_index`).

        ``path`` is a local directory or a URI: ``file://``, ``s3://``, ``gs://``,
        ``az://``/``abfs[s]://``, ``memory://``; ``storage_options`` passes
        credentials and settings for object stores (see
        :func:`shardann.storage.location`). An unsupported scheme is a
        ``ValueError``.

        An index opened from ``path`` (or created or last saved there) commits
        only on top of that version: if another writer committed since, this
        raises :class:`shardann.CommitConflictError` and writes nothing, rather
        than drop the other writer's work. With ``merge=True`` the ids this
        index added and removed since then are replayed instead, as one
        transaction on the newest version (:class:`shardann.DuplicateIdError`
        if that version holds ids this index added; ``CommitConflictError`` if
        its model differs); the index then holds the merged version (its
        lists reloaded from the store). Without a conflict, ``merge=True`` is a
        plain save.

        Any other ``path`` (a new one, or a store this index did not come from)
        gets the whole index as its next version, whatever that store held —
        ``shardann.storage.IndexStore.save(path, index)`` does the same for the
        index's own store. An index opened with ``lists=`` saves to its own
        store only with ``merge=True``.

        If the newest manifest at ``path`` is damaged, this raises
        :class:`shardann.CorruptIndexError` naming it (see
        :func:`shardann.storage.repair`) — unless the index does not depend on
        that version's content (it came from another path, or from that very
        version): then the new version supersedes it, with a warning.

        Returns
        -------
        int, the version committed (1 for a new store), or with ``merge=True``
        and nothing to replay, the newest version, which holds this index.
        """
        from ._saving import save

        return save(self, path, merge=merge, storage_options=storage_options)

    # -- description -------------------------------------------------------------
    def __repr__(self):
        return (f"{type(self).__name__}(d={self.d}, metric={self.metric!r}, "
                f"ntotal={self.ntotal}, is_trained={self.is_trained})")
