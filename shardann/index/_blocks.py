"""The block layout of 4-bit codes that the SIMD fast scan reads, kept in step
with the inverted lists.

Each list owns a run of 32-row blocks (layout in ``_kernels/fastscan.py``)
inside one byte slab, with room to grow like :class:`InvertedLists`: a list
that changes is re-packed in place, or moved to the end of the slab with twice
the room when it outgrows its run. So adding a few vectors re-packs only the
lists they went to, not the whole index.
"""

import numpy as np

from .._kernels import fastscan

BLOCK = fastscan.BLOCK


class CodeBlocks:
    """Block layout of the ``codes`` column of ``lists`` (code_size bytes a row)."""

    def __init__(self, lists, code_size):
        self.code_size = int(code_size)
        nblocks = -(-lists.size // BLOCK)
        self.cap = nblocks.astype(np.int64)
        self.bstart, total = fastscan.block_starts(lists.size, self.code_size)
        self.bcodes = np.empty(total, np.uint8)
        self.used = total
        self._dirty = np.zeros(lists.nlist, bool)
        fastscan.pack_blocks(lists.data["codes"], lists.start, lists.size, self.bstart,
                             self.bcodes)

    def mark(self, list_nos):
        """Note that these lists changed; :meth:`refresh` re-packs them."""
        self._dirty[np.asarray(list_nos, np.int64)] = True

    def refresh(self, lists):
        """Re-pack the lists marked since the last refresh."""
        changed = np.flatnonzero(self._dirty)
        if changed.size == 0:
            return
        self._dirty[:] = False
        row_bytes = BLOCK * self.code_size
        need = -(-lists.size[changed] // BLOCK)
        moved = changed[need > self.cap[changed]]
        if moved.size:
            new_cap = np.maximum(need[need > self.cap[changed]], 2 * self.cap[moved])
            grow = int(new_cap.sum()) * row_bytes
            if self.used + grow > self.bcodes.size:
                bigger = np.zeros(max(self.used + grow, 2 * self.bcodes.size), np.uint8)
                bigger[: self.used] = self.bcodes[: self.used]
                self.bcodes = bigger
            self.bstart[moved] = self.used + np.concatenate(
                [[0], np.cumsum(new_cap)[:-1]]) * row_bytes
            self.cap[moved] = new_cap
            self.used += grow
        # lanes past a list's end are never scored, so stale bytes there are harmless
        fastscan.pack_blocks(lists.data["codes"], lists.start[changed], lists.size[changed],
                             self.bstart[changed], self.bcodes)

    def covers(self, lists):
        """True when this layout fits ``lists``: as many lists, and each one not
        marked changed still within its run (marked ones :meth:`refresh` re-packs)."""
        if lists.size.shape != self.cap.shape:
            return False
        need = -(-lists.size // BLOCK)
        return bool(((need <= self.cap) | self._dirty).all())

    def wasteful(self, lists):
        """True when moved lists left more than half the slab unused."""
        live = int((-(-lists.size // BLOCK)).sum()) * BLOCK * self.code_size
        return self.used > 2 * live + (1 << 20)

    @property
    def nbytes(self):
        return self.bcodes.nbytes + self.bstart.nbytes + self.cap.nbytes
