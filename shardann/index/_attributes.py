"""Attribute columns of the inverted lists: one Arrow table per list.

List ``l``'s table holds one row per live row of the list, in the list's row
order (the order of slab rows ``[start[l], start[l] + size[l])``), so moving
or compacting the slab never touches it; only appends and removals do, and
:class:`~shardann.index._lists.InvertedLists` makes both here too.

Filters are evaluated per list and cached per filter (:meth:`masks`): a list's
entry is dropped when its rows change, so a search after a small add
re-evaluates only the lists the add touched.
"""

import collections

import numpy as np
import pyarrow as pa

from ..filters import filter_key, filter_mask, null_table

#: filters whose per-list masks are kept (least recently used dropped first)
MASK_CACHE_SIZE = 8
#: chunks a list's table may gather from appends before they are combined
_MAX_CHUNKS = 16


class ListAttributes:
    """Per-list attribute tables of ``schema``.

    Parameters
    ----------
    schema : pyarrow.Schema.
    tables : list of ``nlist`` pyarrow.Table of ``schema``.
    """

    def __init__(self, schema, tables):
        self.schema = schema
        self.tables = list(tables)
        self._cache = collections.OrderedDict()  # filter key -> [bool mask or None per list]
        self._packed = None

    @classmethod
    def nulls(cls, schema, sizes):
        """All-null rows: ``sizes[l]`` of them in list ``l``."""
        empty = null_table(schema, 0)
        return cls(schema, [null_table(schema, int(n)) if n else empty for n in sizes])

    @classmethod
    def from_packed(cls, schema, sizes, table):
        """Rows of ``table`` grouped by list (list 0 first), ``sizes[l]`` each; sliced
        without copying."""
        ends = np.cumsum(np.asarray(sizes, np.int64))
        starts = ends - sizes
        table = table.select(schema.names).cast(schema)
        return cls(schema, [table.slice(int(s), int(n)) for s, n in zip(starts, sizes,
                                                                          strict=True)])

    @property
    def nlist(self):
        return len(self.tables)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = collections.OrderedDict()  # derived: rebuilt where it is used
        state["_packed"] = None
        return state

    # -- mutation ------------------------------------------------------------------
    def _changed(self, lists):
        self._packed = None
        for masks in self._cache.values():
            for lst in lists:
                masks[lst] = None

    def append(self, order, counts, table):
        """Append ``table``'s rows to their lists: ``order`` (n,) sorts them by list
        (stably, as the lists' rows are appended), ``counts`` (nlist,) is rows per list."""
        if table is None:
            table = null_table(self.schema, len(order))
        table = table.take(pa.array(order, pa.int64()))
        touched = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for lst in touched.tolist():
            part = table.slice(int(starts[lst]), int(counts[lst]))
            old = self.tables[lst]
            new = pa.concat_tables([old, part]) if old.num_rows else part
            if new.column(0).num_chunks > _MAX_CHUNKS:
                new = new.combine_chunks()
            self.tables[lst] = new
        self._changed(touched.tolist())

    def keep(self, lst, keep):
        """Keep the rows of list ``lst`` where bool ``keep`` (size,) is True."""
        self.tables[lst] = self.tables[lst].filter(pa.array(keep))
        self._changed([lst])

    # -- reading -------------------------------------------------------------------
    def packed(self):
        """Every row as one table, grouped by list (list 0 first): zero-copy chunks."""
        if self._packed is None:
            parts = [t for t in self.tables if t.num_rows]
            self._packed = (pa.concat_tables(parts) if parts
                            else null_table(self.schema, 0))
        return self._packed

    def take(self, lists, offsets, columns=None):
        """Rows at (list, offset) pairs (int64 arrays of one shape; list -1: a null row),
        as a table of ``columns`` (default all)."""
        lists = np.asarray(lists, np.int64).ravel()
        offsets = np.asarray(offsets, np.int64).ravel()
        sizes = np.array([t.num_rows for t in self.tables], np.int64)
        base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        found = lists >= 0
        at = np.where(found, base[np.maximum(lists, 0)] + offsets, 0)
        table = self.packed()
        if columns is not None:
            table = table.select(list(columns))
        idx = pa.array(at, pa.int64(), mask=~found)
        if table.num_rows == 0:
            return null_table(table.schema, len(at))
        return table.take(idx)

    def masks(self, expr):
        """Per-list bool masks of the rows passing ``expr`` (a compiled filter).

        Lists not cached for this filter are evaluated together, in one Arrow
        pass over their tables."""
        key = filter_key(expr)
        masks = self._cache.get(key)
        if masks is None:
            masks = [None] * self.nlist
            self._cache[key] = masks
            while len(self._cache) > MASK_CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        todo = [lst for lst, m in enumerate(masks) if m is None]
        if todo:
            parts = [self.tables[lst] for lst in todo]
            nonempty = [t for t in parts if t.num_rows]
            flat = filter_mask(expr, pa.concat_tables(nonempty)) if nonempty else \
                np.zeros(0, bool)
            at = 0
            for lst, t in zip(todo, parts, strict=True):
                masks[lst] = flat[at:at + t.num_rows]
                at += t.num_rows
        return masks
