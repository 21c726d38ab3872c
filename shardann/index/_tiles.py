"""A column of byte rows kept in the 4-bit fast scan's block layout.

The SIMD scan reads 32 rows at a time with byte ``j`` of all 32 side by side
(``_kernels/fastscan.py``). Keeping a list slab's codes in that layout, rather
than row-major plus a blocked copy, holds each code once: ``code_size`` bytes
a vector. :class:`TiledRows` answers the few row operations
:class:`~shardann.index._lists.InvertedLists` does on a column (read, write and
copy rows by position), so the lists need not know the layout beyond keeping
every list's first row on a tile boundary.
"""

import numpy as np

from .._kernels import fastscan

TILE = fastscan.BLOCK


class TiledRows:
    """``(nrows, width)`` uint8 rows stored as ``tiles`` uint8
    ``(nrows // 32, width, 32)``: row ``r`` is ``tiles[r // 32, :, r % 32]``.

    Indexing takes a slice, an integer array (any shape) or a boolean mask,
    and always returns a new ``(n, width)`` array: the rows are not
    contiguous, so there are no views.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, tiles):
        if tiles.ndim != 3 or tiles.shape[2] != TILE or tiles.dtype != np.uint8:
            raise ValueError(f"tiles must be uint8 (ntiles, width, {TILE}); got "
                             f"{tiles.dtype} {tiles.shape}")
        self.tiles = tiles

    @classmethod
    def zeros(cls, nrows, width):
        """Zero rows; ``nrows`` must be a whole number of tiles."""
        if nrows % TILE:
            raise ValueError(f"nrows must be a multiple of {TILE}; got {nrows}")
        return cls(np.zeros((nrows // TILE, width, TILE), np.uint8))

    @property
    def shape(self):
        return (self.tiles.shape[0] * TILE, self.tiles.shape[1])

    @property
    def nbytes(self):
        return self.tiles.nbytes

    def __len__(self):
        return self.shape[0]

    def _positions(self, key):
        if isinstance(key, slice):
            return np.arange(*key.indices(len(self)), dtype=np.int64)
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {key.shape} for {len(self)} rows")
            return np.flatnonzero(key)
        if key.dtype.kind not in "iu":
            raise IndexError(f"rows are indexed by integers; got dtype {key.dtype}")
        pos = key.astype(np.int64, copy=False).ravel()
        # the kernels do not check bounds: a bad position must stop here
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError(f"row positions must be in [0, {len(self)})")
        return pos

    def __getitem__(self, key):
        pos = self._positions(key)
        out = np.empty((pos.size, self.tiles.shape[1]), np.uint8)
        fastscan.take_rows(self.tiles, pos, out)
        if isinstance(key, slice) or np.asarray(key).dtype == bool:
            return out
        return out.reshape(np.shape(key) + (self.tiles.shape[1],))

    def __setitem__(self, key, values):
        pos = self._positions(key)
        values = np.broadcast_to(np.asarray(values, np.uint8), (pos.size, self.tiles.shape[1]))
        fastscan.put_rows(self.tiles, pos, np.ascontiguousarray(values))

    def resized(self, nrows, keep):
        """A copy with ``nrows`` rows whose first ``keep`` rows are these."""
        out = TiledRows.zeros(nrows, self.tiles.shape[1])
        t = -(-keep // TILE)
        out.tiles[:t] = self.tiles[:t]
        return out
