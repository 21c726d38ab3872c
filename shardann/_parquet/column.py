"""A fast reader for a Parquet embedding column: a list of float32 with d values per row.

Arrow's reader rebuilds a nested column from its repetition and definition
levels value by value: about 300 MB/s here for ``fixed_size_list<float>[128]``
against 1.8 GB/s for the same bytes as ``fixed_size_binary``. For an
embedding column those levels only restate that every row holds d values.
This reader walks the column chunk's pages itself (page headers are Thrift
compact structs), checks that the levels say exactly that — every definition
level at its maximum, a repetition level of 0 at every d-th value and 1
elsewhere — and copies the values (PLAIN, dictionary or BYTE_STREAM_SPLIT
encoded, in any codec Arrow decompresses) straight into an (n, d) float32
array.

Anything else — a null, a list of another length, another physical type,
encoding, codec (LZ4 with Hadoop framing, LZO) or page kind, a truncated or
damaged page — raises :class:`Unsupported` before the rows concerned are
returned, and the caller reads the rest of the row group with Arrow, which
reports bad rows and corrupt files as before. Results are the same array
Arrow gives (tests compare them byte for byte, on files written by pyarrow,
DuckDB and Polars; tests/parquet/).
"""

import os
import struct
from functools import partial

import numpy as np
import pyarrow as pa

from .levels import fixed_list_levels, rle_hybrid_decode
from .pages import (
    DATA_PAGE,
    DATA_PAGE_V2,
    DICTIONARY_PAGE,
    I32_MAX,
    INDEX_PAGE,
    body_size,
    bool_field,
    chunk_range,
    int_field,
    read_struct,
    struct_field,
)

# value encodings of parquet.thrift
_PLAIN, _PLAIN_DICTIONARY, _RLE, _RLE_DICTIONARY, _BYTE_STREAM_SPLIT = 0, 2, 3, 8, 9
#: codecs by the name pyarrow's metadata gives them. Its "LZ4" is Parquet's LZ4_RAW (a
#: bare LZ4 block); Parquet's older LZ4 (Hadoop framing) is "UNKNOWN" there and declined
_CODECS = {"SNAPPY": "snappy", "GZIP": "gzip", "BROTLI": "brotli", "ZSTD": "zstd",
           "LZ4": "lz4_raw", "LZ4_RAW": "lz4_raw"}
#: bytes read for a page header before parsing; re-read larger if it does not fit
_HEADER_WINDOW = 1024
#: bytes first read for the levels of a page whose values are read from disk
_LEVELS_WINDOW = 8192
#: most bytes read ahead for levels (a page of 1 MB of floats has ~10 KB of levels)
_MAX_LEVELS_WINDOW = 1 << 20
_EMPTY = np.zeros(0, np.uint8)


class Unsupported(Exception):
    """This column chunk is not a plain run of d-value rows: read it with Arrow."""


# -- the column --------------------------------------------------------------------------------
def embedding_leaf(metadata, column):
    """Index of the leaf column holding ``column``'s floats, or None when this
    reader does not apply (not a single-level list of FLOAT)."""
    schema = metadata.schema
    leaves = [i for i in range(len(schema))
              if schema.column(i).path.split(".")[0] == column]
    if len(leaves) != 1:
        return None
    c = schema.column(leaves[0])
    if c.physical_type != "FLOAT" or c.max_repetition_level != 1 or "." not in c.path:
        return None
    return leaves[0]


def _bit_width(max_level):
    return int(max_level).bit_length()


def _pread(fd, n, offset):
    """``n`` bytes of the file at ``offset`` as uint8 (n,), read straight into the array."""
    out = np.empty(n, np.uint8)
    _pread_into(fd, out, offset)
    return out


def _pread_into(fd, out, offset):
    """Fill the contiguous array ``out`` with the file's bytes from ``offset``."""
    view = out.reshape(-1).view(np.uint8)
    got = 0
    while got < view.size:
        k = os.preadv(fd, [view[got:]], offset + got)
        if k <= 0:
            raise Unsupported("file ends inside a page")
        got += k


def _decompress(body, codec, size):
    if codec is None:
        return body
    try:
        return np.frombuffer(pa.decompress(body, decompressed_size=size, codec=codec,
                                           asbytes=False), np.uint8)
    except (pa.ArrowException, ValueError) as exc:
        raise Unsupported(f"cannot decompress a page ({exc})") from None


class FixedListColumn:
    """Reads row groups of one file's embedding column as float32 (rows, d) arrays.

    Parameters
    ----------
    path : the Parquet file. metadata : its ``pyarrow.parquet.FileMetaData``.
    leaf : the float leaf's column index (:func:`embedding_leaf`). d : values per row.
    """

    def __init__(self, path, metadata, leaf, d):
        self.path = path
        self.metadata = metadata
        self.leaf = leaf
        self.d = int(d)
        c = metadata.schema.column(leaf)
        self.max_def = int(c.max_definition_level)
        self.max_rep = int(c.max_repetition_level)

    def read(self, group, part_rows):
        """Yield float32 (m, d) arrays, ``m <= part_rows``, covering row group
        ``group`` in order. Raises :class:`Unsupported` (possibly after some
        parts) at the first page this reader does not handle.
        """
        rows, d = self.metadata.row_group(group).num_rows, self.d
        part_rows = max(1, int(part_rows))
        out = None             # the part being filled, flat float32
        filled = 0
        # A part that ends where a page ends waits for the next page: only that
        # page's first repetition level says the part's last row has no more values.
        held = None
        # an uncompressed PLAIN page's values are read straight into the part
        with self._chunk(group) as pages:
            for first, n, values, offset in pages:
                if held is not None:
                    yield held
                    held = None
                if values is not None:
                    values = values()
                k = 0
                while k < n:
                    if out is None:
                        out = np.empty(min(part_rows * d, rows * d - first - k), np.float32)
                    take = min(n - k, out.size - filled)
                    if values is None:
                        _pread_into(pages.fd, out[filled:filled + take], offset + 4 * k)
                    else:
                        out[filled:filled + take] = values[k:k + take]
                    filled += take
                    k += take
                    if filled == out.size:
                        if k < n:
                            yield out.reshape(-1, d)
                        else:
                            held = out.reshape(-1, d)
                        out, filled = None, 0
        if held is not None:  # the chunk ended: every level has been checked
            yield held

    def read_rows(self, group, rows):
        """float32 (len(rows), d): the given rows (sorted, unique, int64) of row
        group ``group``. Of uncompressed PLAIN pages only the headers, the
        levels and the wanted rows are read. Raises :class:`Unsupported`.
        """
        d = self.d
        rows = np.asarray(rows, np.int64)
        out = np.empty((rows.size, d), np.float32)
        if rows.size == 0:
            return out
        last = int(rows[-1])
        # runs of consecutive wanted rows (indices into rows), each read in one go
        cut = np.flatnonzero(np.diff(rows) != 1) + 1
        run_lo = np.concatenate(([0], cut))
        run_hi = np.concatenate((cut, [rows.size]))
        flat = out.reshape(-1)
        with self._chunk(group) as pages:
            fd = pages.fd
            if hasattr(os, "posix_fadvise"):
                # the drawn rows are far apart: without this, each read pulls in
                # the kernel's readahead (8 MB here), i.e. the whole file
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            for first, n, values, offset in pages:
                a, b = np.searchsorted(rows, [first // d, (first + n - 1) // d + 1])
                if a < b:
                    if values is not None:
                        values = values()
                    j0, j1 = np.searchsorted(run_hi, a, "right"), np.searchsorted(run_lo, b)
                    for j in range(j0, j1):
                        k, e = max(int(run_lo[j]), a), min(int(run_hi[j]), b)
                        # values [v0, v1) of the chunk land at out[k:e] (flat)
                        v0, v1 = max(int(rows[k]) * d, first), min(int(rows[e - 1] + 1) * d,
                                                                   first + n)
                        dst = flat[k * d + v0 - int(rows[k]) * d:][:v1 - v0]
                        if values is not None:
                            dst[:] = values[v0 - first:v1 - first]
                        else:
                            _pread_into(fd, dst, offset + 4 * (v0 - first))
                if first + n > (last + 1) * d:
                    # the level after the last wanted row is checked (a row starts
                    # there): the pages after this one are not needed
                    break
        return out

    def _levels_ok(self, rep_bytes, def_bytes, n, first):
        for buf, level, repetition in ((rep_bytes, self.max_rep, True),
                                       (def_bytes, self.max_def, False)):
            r = fixed_list_levels(buf, 0, buf.size, _bit_width(level), n, first, self.d,
                                  level, repetition)
            if r == -1:
                raise Unsupported("truncated levels")
            if r < 0:
                raise Unsupported("a row is null or does not hold d values")

    def _levels_v1(self, raw, n, first, complete):
        """Check a v1 page's length-prefixed levels at the start of ``raw``; return
        where its values start. When ``raw`` (not ``complete``) ends first, return
        minus the number of bytes known to be needed."""
        p = 0
        parts = []
        for _ in range(2):  # repetition then definition levels
            if p + 4 > raw.size:
                if complete:
                    raise Unsupported("levels run past the page")
                return -(p + 4)
            length = int(raw[p:p + 4].view("<u4")[0])
            if p + 4 + length > raw.size:
                if complete:
                    raise Unsupported("levels run past the page")
                return -(p + 4 + length + (4 if not parts else 0))
            parts.append(raw[p + 4:p + 4 + length])
            p += 4 + length
        self._levels_ok(parts[0], parts[1], n, first)
        return p

    @staticmethod
    def _count(h, fid, first, pages):
        """A data page's value count, checked against what the chunk has left."""
        n = int_field(h, fid)
        if n > pages.total - first:
            raise Unsupported(f"a data page of {n!r} values where {pages.total - first} are "
                              "left in the column chunk")
        return n

    def _page_v1(self, h, pages, at, csize, usize, codec, first, dictionary):
        if h is None:
            raise Unsupported("data page without its header")
        n, encoding = self._count(h, 1, first, pages), _enum(h, 2)
        if _enum(h, 3) != _RLE or _enum(h, 4) != _RLE:
            raise Unsupported("levels not RLE-encoded")
        if codec is None and encoding == _PLAIN:
            p = self._levels_v1(pages.bytes_at(at, min(csize, pages.levels_window)), n, first,
                                False)
            while p < 0:  # longer levels: read as much as they are known to need
                need = min(csize, max(-p, 2 * pages.levels_window))
                p = self._levels_v1(pages.bytes_at(at, need), n, first, need == csize)
            if p + 4 * n > csize:
                raise Unsupported("short PLAIN page")
            pages.levels_seen(p)
            return first, n, None, at + p
        raw = _decompress(pages.bytes_at(at, csize), codec, usize)
        p = self._levels_v1(raw, n, first, True)
        return first, n, partial(_values, raw[p:], encoding, n, dictionary), 0

    def _page_v2(self, h, pages, at, csize, usize, codec, first, dictionary):
        if h is None:
            raise Unsupported("data page v2 without its header")
        n, encoding = self._count(h, 1, first, pages), _enum(h, 4)
        int_field(h, 3)  # num_rows: required, not needed
        if int_field(h, 2):
            raise Unsupported("page holds nulls")
        dlen, rlen = int_field(h, 5), int_field(h, 6)
        compressed = codec is not None and bool_field(h, 7, True)
        if rlen + dlen > csize:
            raise Unsupported("levels run past the page")
        if not compressed and encoding == _PLAIN:
            levels = pages.bytes_at(at, rlen + dlen)
            self._levels_ok(levels[:rlen], levels[rlen:], n, first)
            if rlen + dlen + 4 * n > csize:
                raise Unsupported("short PLAIN page")
            return first, n, None, at + rlen + dlen
        body = pages.bytes_at(at, csize)
        self._levels_ok(body[:rlen], body[rlen:rlen + dlen], n, first)
        data = body[rlen + dlen:]
        if compressed:
            data = _decompress(data, codec, usize - rlen - dlen)
        return first, n, partial(_values, data, encoding, n, dictionary), 0

    def _chunk(self, group):
        """The pages of row group ``group``'s column chunk (see :class:`_Pages`)."""
        rg = self.metadata.row_group(group)
        cc = rg.column(self.leaf)
        rows, d = rg.num_rows, self.d
        if cc.num_values != rows * d:
            raise Unsupported(f"{cc.num_values} values for {rows} rows of {d}")
        stats = cc.statistics
        if stats is not None and stats.has_null_count and stats.null_count:
            raise Unsupported("the column holds nulls")
        if cc.compression == "UNCOMPRESSED":
            codec = None
        else:
            codec = _CODECS.get(cc.compression)
            if codec is None or not pa.Codec.is_available(codec):
                raise Unsupported(f"codec {cc.compression}")
        return _Pages(self, *chunk_range(cc), rows * d, codec)


class _Pages:
    """Iterate over the data pages of one column chunk, with the file open.

    Yields ``(first, n, values, offset)``: the page holds values ``first ..
    first + n - 1`` of the chunk (its levels already checked), decoded by
    ``values()`` into float32 (n,) (a sampling read skips pages it needs no
    row of), or — for an uncompressed PLAIN page, left on disk
    — ``values`` None and the file ``offset`` where its n float32 values start.
    Read errors become :class:`Unsupported`.
    """

    def __init__(self, column, start, end, total, codec):
        self.column, self.pos, self.end, self.total = column, start, end, total
        self.codec = codec
        self.fd = None
        #: bytes read ahead of a data page's values: levels of the pages so far
        self.levels_window = _LEVELS_WINDOW
        self._win, self._win_at = _EMPTY, 0  # the bytes read with the last header

    def __enter__(self):
        self.fd = os.open(self.column.path, os.O_RDONLY)
        return self

    def __exit__(self, kind, exc, tb):
        os.close(self.fd)
        if kind is not None and issubclass(kind, (IndexError, ValueError, struct.error,
                                                  OSError)):
            raise Unsupported(f"unreadable page ({kind.__name__}: {exc})") from None
        return False

    def __iter__(self):
        col, fd, codec = self.column, self.fd, self.codec
        done = 0               # values of the chunk in the pages so far
        dictionary = None
        while done < self.total:
            if self.pos >= self.end:
                raise Unsupported(f"column chunk ends after {done} of {self.total} values")
            header, hlen = self._header()
            ptype = _enum(header, 1)
            at = self.pos + hlen
            csize = body_size(header, at, self.end)
            usize = int_field(header, 2)
            self.pos = at + csize
            if ptype == DICTIONARY_PAGE:
                dictionary = _dictionary(struct_field(header, 7),
                                         _decompress(_pread(fd, csize, at), codec, usize))
                continue
            if ptype == INDEX_PAGE:
                continue
            if ptype == DATA_PAGE:
                page = col._page_v1(struct_field(header, 5, None), self, at, csize, usize,
                                    codec, done, dictionary)
            elif ptype == DATA_PAGE_V2:
                page = col._page_v2(struct_field(header, 8, None), self, at, csize, usize,
                                    codec, done, dictionary)
            else:
                raise Unsupported(f"page type {ptype}")
            done += page[1]
            yield page

    def bytes_at(self, at, n):
        """uint8 (n,): the file's bytes from ``at``, taken from the last header's
        window when it holds them (a page's header and levels are then one read)."""
        lo = at - self._win_at
        if 0 <= lo and lo + n <= self._win.size:
            return self._win[lo:lo + n]
        return _pread(self.fd, n, at)

    def levels_seen(self, size):
        """Widen the read-ahead to a page's levels (``size`` bytes), as the next
        pages of the chunk are likely to hold as many."""
        if size > self.levels_window:
            self.levels_window = min(size + size // 8, _MAX_LEVELS_WINDOW)

    def _header(self):
        fd, pos, left = self.fd, self.pos, self.end - self.pos
        # the header, and the levels after it: one read where the disk is slow to seek
        window = os.pread(fd, min(_HEADER_WINDOW + self.levels_window, left), pos)
        self._win, self._win_at = np.frombuffer(window, np.uint8), pos
        try:
            return read_struct(window, 0)
        except IndexError:
            if len(window) >= left:
                raise
            return read_struct(os.pread(fd, left, pos), 0)


def _dictionary(h, raw):
    if _enum(h, 2) not in (_PLAIN, _PLAIN_DICTIONARY):
        raise Unsupported("dictionary page not PLAIN")
    n = int_field(h, 1)
    if raw.size < 4 * n:
        raise Unsupported("short dictionary page")
    return np.frombuffer(raw, "<f4", count=n).astype(np.float32)


def _enum(h, fid):
    """A required enum field (an i32) of a page header struct."""
    return int_field(h, fid, low=-I32_MAX - 1)


def _values(data, encoding, n, dictionary):
    """float32 (n,) values of a data page from its encoded bytes (uint8)."""
    if encoding == _PLAIN:
        if data.size < 4 * n:
            raise Unsupported("short PLAIN page")
        return np.frombuffer(data, "<f4", count=n)
    if encoding in (_RLE_DICTIONARY, _PLAIN_DICTIONARY):
        if dictionary is None or data.size < 1:
            raise Unsupported("dictionary-encoded page without a dictionary")
        idx = np.empty(n, np.uint32)
        if rle_hybrid_decode(data, 1, data.size, int(data[0]), n, idx) < 0:  # width > 32 too
            raise Unsupported("truncated dictionary indices")
        if n and int(idx.max()) >= dictionary.size:
            raise Unsupported("dictionary index out of range")
        return dictionary[idx]
    if encoding == _BYTE_STREAM_SPLIT:
        if data.size < 4 * n:
            raise Unsupported("short BYTE_STREAM_SPLIT page")
        return np.ascontiguousarray(data[:4 * n].reshape(4, n).T).view("<f4").reshape(n)
    raise Unsupported(f"value encoding {encoding}")
