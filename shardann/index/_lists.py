"""Inverted lists held in one slab of rows, scanned in place by the kernels.

List ``l`` occupies rows ``[start[l], start[l] + size[l])`` of ``ids`` and of
each payload column (``codes``, ``vectors``), with room up to ``cap[l]``
rows. A list that outgrows its room moves to the end of the slab with twice
the room, so appends are amortised O(1) per row and the kernels never need a
per-list Python object. Rows that hold no live vector carry id ``-1``.

A column named in ``tiled`` is held as :class:`~shardann.index._tiles.TiledRows`
(the 4-bit fast scan's block layout); then every list starts, and has room,
on a whole number of 32-row tiles, padding included.

Attribute columns, when the index has them, live in ``attrs`` (a
:class:`~shardann.index._attributes.ListAttributes`, one Arrow table per list);
``add`` and ``remove`` keep them aligned with the rows.
"""

import itertools

import numpy as np

from ._tiles import TILE, TiledRows

_MIN_SLAB = 1024
#: layout versions, unique in the process: a cache keyed by one never matches other lists
_VERSIONS = itertools.count(1)


def _round_up(n, align):
    return -(-n // align) * align


def _starts(cap):
    return np.concatenate([[0], np.cumsum(cap)[:-1]]).astype(np.int64)


class InvertedLists:
    """``nlist`` lists of (id, payload columns) rows.

    Parameters
    ----------
    nlist : int.
    columns : dict name -> (width, dtype), e.g. ``{"codes": (16, np.uint8)}``.
    tiled : names of uint8 columns to hold in the fast scan's block layout.
    """

    def __init__(self, nlist, columns, tiled=()):
        self.nlist = int(nlist)
        self.columns = {k: (int(w), np.dtype(t)) for k, (w, t) in columns.items()}
        self.tiled = frozenset(tiled)
        if not self.tiled <= set(self.columns):
            raise ValueError(f"tiled columns {sorted(self.tiled)} are not all in "
                             f"{sorted(self.columns)}")
        if any(self.columns[k][1] != np.uint8 for k in self.tiled):
            raise ValueError("only uint8 columns can be tiled")
        self.align = TILE if self.tiled else 1
        self.start = np.zeros(self.nlist, np.int64)
        self.size = np.zeros(self.nlist, np.int64)
        self.cap = np.zeros(self.nlist, np.int64)
        self.used = 0
        self.ids = np.full(0, -1, np.int64)
        self.data = {k: self._column(k, 0) for k in self.columns}
        self.attrs = None  # ListAttributes when the index has attribute columns
        self.version = next(_VERSIONS)  # renewed when rows change or move (position caches)

    def _column(self, name, nrows):
        width, dtype = self.columns[name]
        if name in self.tiled:
            return TiledRows.zeros(nrows, width)
        return np.zeros((nrows, width), dtype)

    # -- construction --------------------------------------------------------
    @classmethod
    def from_sorted(cls, nlist, columns, list_sizes, ids, data, tiled=(), attrs=None):
        """Rows already grouped by list (list 0 first); wrapped without copying
        unless a column is ``tiled``. ``attrs``: their ListAttributes, or None."""
        lists = cls(nlist, columns, tiled)
        lists._install(np.asarray(list_sizes, np.int64), ids, data)
        lists.attrs = attrs
        return lists

    def _install(self, sizes, ids, data):
        # lay out rows grouped by list, each list's room its size (rounded to tiles)
        self.version = next(_VERSIONS)
        self.size = sizes.copy()
        self.cap = _round_up(sizes, self.align)
        self.start = _starts(self.cap)
        self.used = int(self.cap.sum())
        if self.align == 1:
            self.ids = ids
            self.data = dict(data)
            return
        at = self.live_rows()
        self.ids = np.full(self.used, -1, np.int64)
        self.ids[at] = ids
        self.data = {}
        for k in self.columns:
            col = self._column(k, self.used)
            col[at] = data[k]
            self.data[k] = col

    @property
    def ntotal(self):
        return int(self.size.sum())

    def _reserve(self, extra):
        need = self.used + extra
        if need <= self.ids.shape[0]:
            return
        new = _round_up(max(need, 2 * self.ids.shape[0], _MIN_SLAB), self.align)
        ids = np.full(new, -1, np.int64)
        ids[: self.used] = self.ids[: self.used]
        self.ids = ids
        for k, arr in self.data.items():
            if isinstance(arr, TiledRows):
                self.data[k] = arr.resized(new, self.used)
            else:
                grown = self._column(k, new)
                grown[: self.used] = arr[: self.used]
                self.data[k] = grown

    def _move(self, lst, new_cap):
        s, n = self.start[lst], self.size[lst]
        dst = self.used
        self.ids[dst:dst + n] = self.ids[s:s + n]
        self.ids[s:s + n] = -1
        for arr in self.data.values():
            arr[dst:dst + n] = arr[s:s + n]
        self.start[lst] = dst
        self.cap[lst] = new_cap
        self.used += new_cap

    # -- mutation ------------------------------------------------------------
    def add(self, list_no, ids, attributes=None, **cols):
        """Append rows: ``list_no`` int64 (n,), ``ids`` int64 (n,), and one
        array (n, width) per payload column; ``attributes``: a pyarrow.Table of
        the n rows' attributes (None: nulls, when the lists hold attributes)."""
        n = len(ids)
        if n == 0:
            return
        if set(cols) != set(self.columns):
            raise ValueError(f"columns {sorted(cols)} given; expected {sorted(self.columns)}")
        self.version = next(_VERSIONS)
        order = np.argsort(list_no, kind="stable")
        sorted_lists = list_no[order]
        counts = np.bincount(list_no, minlength=self.nlist)
        touched = np.flatnonzero(counts)
        need = self.size[touched] + counts[touched]
        grow = touched[need > self.cap[touched]]
        if grow.size:
            new_caps = _round_up(np.maximum(self.size[grow] + counts[grow],
                                            2 * self.cap[grow]), self.align)
            self._reserve(int(new_caps.sum()))
            for lst, c in zip(grow.tolist(), new_caps.tolist(), strict=True):
                self._move(lst, c)
        group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(n) - group_start[sorted_lists]
        dest = self.start[sorted_lists] + self.size[sorted_lists] + rank
        self.ids[dest] = ids[order]
        for k, arr in cols.items():
            self.data[k][dest] = arr[order]
        self.size[touched] += counts[touched]
        if self.attrs is not None:
            self.attrs.append(order, counts, attributes)
        if self.used > 2 * max(int(_round_up(self.size, self.align).sum()), _MIN_SLAB):
            self.compact()

    def remove(self, positions):
        """Drop the rows at slab ``positions`` (int64, live rows), keeping list order."""
        if len(positions) == 0:
            return
        self.version = next(_VERSIONS)
        positions = np.unique(positions)
        owner = self.owners(positions)
        for lst in np.unique(owner).tolist():
            s, n = self.start[lst], self.size[lst]
            dead = positions[owner == lst] - s
            keep = np.ones(n, bool)
            keep[dead] = False
            nk = int(keep.sum())
            self.ids[s:s + nk] = self.ids[s:s + n][keep]
            self.ids[s + nk:s + n] = -1
            for arr in self.data.values():
                arr[s:s + nk] = arr[s:s + n][keep]
            self.size[lst] = nk
            if self.attrs is not None:
                self.attrs.keep(lst, keep)

    def compact(self):
        """Rewrite the slab so lists are contiguous, in list order, with no slack
        (beyond rounding to whole tiles)."""
        self._install(*self.packed())

    # -- reading -------------------------------------------------------------
    def live_rows(self):
        """Slab positions of every live row, grouped by list in list order."""
        if self.ntotal == 0:
            return np.zeros(0, np.int64)
        idx = np.repeat(self.start - np.concatenate([[0], np.cumsum(self.size)[:-1]]),
                        self.size)
        return np.arange(self.ntotal, dtype=np.int64) + idx

    def list_of_rows(self):
        """List number of each row of :meth:`live_rows`."""
        return np.repeat(np.arange(self.nlist, dtype=np.int64), self.size)

    def get_list(self, lst):
        """(ids, {column: rows}) of one list: views, but copies of tiled columns."""
        s, n = self.start[lst], self.size[lst]
        return self.ids[s:s + n], {k: v[s:s + n] for k, v in self.data.items()}

    def nbytes(self):
        """Bytes of the rows in use (ids and payload columns)."""
        row = self.ids.itemsize + sum(w * t.itemsize for w, t in self.columns.values())
        return self.used * row

    def allocated_bytes(self):
        """Bytes held: the whole slab including room to grow, and the per-list tables."""
        tables = self.start.nbytes + self.size.nbytes + self.cap.nbytes
        return self.ids.nbytes + sum(a.nbytes for a in self.data.values()) + tables

    def owners(self, positions):
        """List number owning each live slab position, int64."""
        live = np.flatnonzero(self.size > 0)  # empty lists may share a start
        by_start = live[np.argsort(self.start[live], kind="stable")]
        return by_start[np.searchsorted(self.start[by_start], positions, side="right") - 1]

    def packed(self):
        """(list_sizes, ids, {column: rows}) with rows grouped by list, no slack."""
        rows = self.live_rows()
        return self.size.copy(), self.ids[rows], {k: v[rows] for k, v in self.data.items()}
