"""Ingest block reading: stream one planned block's rows as checked parts.

No Ray here. Workers call :func:`read_block` to stream one :class:`Block
<._ingest_plan.Block>` as parts of at most ``block_rows`` rows, with the bad
rows (wrong length, null, NaN, bad id) flagged, and :func:`prefetch_block` to
have the kernel read a block's bytes ahead. Parquet is read with Arrow, and
its embedding columns of d float32 values per row with ``shardann._parquet``'s
fast reader where the plan allows it (``plan.fast_parquet``) and the column
chunk is one that reader handles; ``.npy`` and ``.*vecs`` files are
memory-mapped.
"""

import logging
import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._kernels.checks import finite_rows
from .._parquet import FixedListColumn, Unsupported, chunk_range, embedding_leaf
from .._validation import MAX_ID
from ._ingest_fs import is_remote, open_input
from ._ingest_plan import VECS_EXTS, InputError, embedding_encoding, npy_header

logger = logging.getLogger(__name__)

#: Parquet read buffer: column chunks are streamed, never read whole
_READ_BUFFER = 4 << 20
#: sampled rows of a remote file closer than this are read in one request
_REMOTE_GAP = 1 << 20
#: bytes asked of the kernel per ``posix_fadvise(WILLNEED)`` (see :func:`prefetch_block`)
_WILLNEED_PIECE = 1 << 20

__all__ = ["InputError", "Part", "prefetch_block", "read_block", "vectors_from_arrow"]


# -- reading -------------------------------------------------------------------------------
@dataclass
class Part:
    """Rows ``[start, start + n)`` of a file as read: vectors, ids and bad rows."""

    start: int                 # first row, within the file
    x: np.ndarray              # float32 (n, d); bad rows hold anything
    ids: np.ndarray | None     # int64 (n,) from the id column, or None
    bad: np.ndarray            # bool (n,)
    reasons: dict              # row within the part -> reason (bad rows only)
    rows: np.ndarray | None = None  # file row of each row, when only some rows were read
    attrs: pa.Table | None = None   # the attribute columns of the rows (full reads only)

    def file_rows(self):
        """int64 (n,): the row number within the file of each row."""
        if self.rows is not None:
            return np.asarray(self.rows, np.int64)
        return np.arange(self.start, self.start + self.x.shape[0], dtype=np.int64)


def _floats(values):
    """A float Arrow array as float32 NumPy (nulls become NaN)."""
    arr = values.to_numpy(zero_copy_only=False)
    return arr.astype(np.float32, copy=False)


def _fsl_vectors(arr, d):
    n = len(arr)
    values = arr.values.slice(arr.offset * d, n * d)
    x = _floats(values).reshape(n, d)
    return x, None


def _list_vectors(arr, d, item_bytes=None):
    """Vectors of a list<float> (item_bytes None) or binary column; lengths checked.

    Returns ``(x, (lengths, expected, unit))``; rows of the wrong length are zeros.
    """
    n = len(arr)
    large = pa.types.is_large_list(arr.type) or pa.types.is_large_binary(arr.type)
    width = 8 if large else 4
    offsets = np.frombuffer(arr.buffers()[1], np.int64 if large else np.int32, count=n + 1,
                            offset=arr.offset * width).astype(np.int64)
    lengths = np.diff(offsets)
    want = d if item_bytes is None else d * item_bytes
    o0 = int(offsets[0]) if n else 0
    span = int(offsets[-1]) - o0 if n else 0
    if item_bytes is None:
        flat = _floats(arr.values.slice(o0, span))
    else:
        data = arr.buffers()[2]
        flat = (np.frombuffer(data, np.uint8, count=span, offset=o0) if span
                else np.zeros(0, np.uint8))
    ok = lengths == want
    if ok.all():
        x = flat.reshape(n, want)
        x = x if item_bytes is None else x.view("<f4").astype(np.float32, copy=False)
        return x.reshape(n, d), (lengths, want, "values" if item_bytes is None else "bytes")
    x = np.zeros((n, d), np.float32)
    rows = np.flatnonzero(ok)
    if rows.size:
        # runs of consecutive good rows are contiguous in the values buffer
        for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):
            a, b = int(run[0]), int(run[-1]) + 1
            o = int(offsets[a]) - o0
            chunk = flat[o:o + (b - a) * want]
            if item_bytes is not None:
                chunk = np.ascontiguousarray(chunk).view("<f4")
            x[a:b] = chunk.reshape(b - a, d)
    return x, (lengths, want, "values" if item_bytes is None else "bytes")


def _fsb_vectors(arr, d):
    n = len(arr)
    raw = np.frombuffer(arr.buffers()[1], np.uint8, count=n * 4 * d, offset=arr.offset * 4 * d)
    return raw.view("<f4").reshape(n, d).astype(np.float32), None


def _check_rows(x, bad, reasons, lengths=None, nulls=None):
    if nulls is not None:
        for r in np.flatnonzero(nulls & ~bad):
            reasons[int(r)] = "embedding is null"
        bad |= nulls
    if lengths is not None:
        lens, want, unit = lengths
        wrong = (lens != want) & ~bad
        for r in np.flatnonzero(wrong):
            reasons[int(r)] = f"embedding has {int(lens[r])} {unit}; expected {want}"
        bad |= wrong
    finite = np.empty(x.shape[0], bool)
    if x.shape[0]:
        finite_rows(np.ascontiguousarray(x, np.float32), finite)
    nonfinite = ~finite & ~bad
    for r in np.flatnonzero(nonfinite):
        reasons[int(r)] = "embedding contains NaN or infinite values"
    bad |= nonfinite


def _check_ids(ids_arr, bad, reasons):
    """int64 ids from an Arrow integer array; null/negative/too large flagged."""
    nulls = np.asarray(ids_arr.is_null().to_numpy(zero_copy_only=False), bool)
    raw = ids_arr.fill_null(0).to_numpy(zero_copy_only=False)
    if raw.dtype == np.uint64:
        big = raw > np.uint64(MAX_ID)
        ids = np.where(big, 0, raw).astype(np.int64)
    else:
        ids = raw.astype(np.int64)
        big = ids > MAX_ID
    neg = ids < 0
    for mask, why in ((nulls, "id is null"), (neg, "id is negative"),
                      (big, f"id is larger than {MAX_ID}")):
        for r in np.flatnonzero(mask & ~bad):
            reasons[int(r)] = why
        bad |= mask
    return ids


def _arrow_part(start, emb, ids_arr, f, d):
    if isinstance(emb, pa.ChunkedArray):
        emb = emb.combine_chunks()
    n = len(emb)
    lengths = None
    if f.encoding == "fsl":
        x, _ = _fsl_vectors(emb, d)
    elif f.encoding == "list":
        x, lengths = _list_vectors(emb, d)
    elif f.encoding == "fsb":
        x, _ = _fsb_vectors(emb, d)
    else:
        x, lengths = _list_vectors(emb, d, item_bytes=4)
    nulls = np.asarray(emb.is_null().to_numpy(zero_copy_only=False), bool) \
        if emb.null_count else None
    return _checked_part(start, x, ids_arr, np.zeros(n, bool), lengths, nulls)


def plain_vector_column(arr, what="vectors"):
    """An Arrow vector column as a type the readers take.

    Ray tensor columns (``ArrowTensorType``: what a ``map_batches`` returning
    NumPy ``(n, d)`` arrays makes) become ``fixed_size_list`` of their float
    type (integers become float32); other columns are returned as they are
    (the readers check them). ``what`` names the column in errors.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not isinstance(arr.type, pa.ExtensionType):
        return arr
    x = arr.to_numpy() if hasattr(arr, "to_numpy") else None
    if not isinstance(x, np.ndarray) or x.dtype == object or x.ndim != 2:
        raise InputError(f"{what}: tensor column of type {arr.type} (shape "
                         f"{getattr(x, 'shape', None)}); expected one vector of d numbers "
                         "per row")
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).reshape(-1)),
                                             x.shape[1])


def vectors_from_arrow(arr, d, what="vectors"):
    """float32 (n, d) from an Arrow vector column of any type ingest reads
    (``fixed_size_list`` / ``list`` of floats, float32 binary, a Ray tensor
    column); raises :class:`InputError` naming the first bad row (null, wrong
    length, NaN/inf). ``what`` names the column in the message."""
    arr = plain_vector_column(arr, what)
    encoding, _ = embedding_encoding(what, arr.type)
    part = _arrow_part(0, arr, None, SimpleNamespace(encoding=encoding), d)
    if part.bad.any():
        i = int(np.flatnonzero(part.bad)[0])
        raise InputError(f"{what}: row {i}: {part.reasons.get(i, 'bad row')}")
    return np.ascontiguousarray(part.x, np.float32)


def _checked_part(start, x, ids_arr, bad, lengths=None, nulls=None):
    """A :class:`Part` of float32 (n, d) vectors ``x`` with its bad rows flagged."""
    if ids_arr is not None and isinstance(ids_arr, pa.ChunkedArray):
        ids_arr = ids_arr.combine_chunks()
    reasons = {}
    _check_rows(x, bad, reasons, lengths, nulls)
    ids = _check_ids(ids_arr, bad, reasons) if ids_arr is not None else None
    return Part(start, x, ids, bad, reasons)


def _wanted(rows, pos, n):
    """Positions within rows ``[pos, pos + n)`` of the wanted file rows, and those rows."""
    lo, hi = np.searchsorted(rows, [pos, pos + n])
    return rows[lo:hi] - pos, rows[lo:hi]


def _fast_reader(f, pf, plan):
    """A :class:`FixedListColumn` for this file's embedding column, or None (Arrow reads it).
    Only local files: the fast reader reads them with ``pread``."""
    if not plan.fast_parquet or f.encoding not in ("fsl", "list") or is_remote(f.path):
        return None
    leaf = embedding_leaf(pf.metadata, plan.column)
    return None if leaf is None else FixedListColumn(f.path, pf.metadata, leaf, plan.d)


def _group_reader(pf, columns):
    """``table_of(g)``: ``columns`` of row group ``g`` (the last one read is kept)."""
    last = {}

    def table_of(g):
        if g not in last:
            last.clear()
            last[g] = pf.read_row_group(g, columns=columns, use_threads=False)
        return last[g]
    return table_of


def _fast_part(side_of, g, start, x, rows_in_group, id_column, attributes):
    """A part of vectors ``x`` read by the fast reader: rows ``rows_in_group``
    (int64, or a ``(first, n)`` range) of row group ``g``, starting at file row
    ``start``, with their id and attribute columns through ``side_of`` (None:
    neither)."""
    ids = attrs = None
    if side_of is not None:
        t = side_of(g)
        t = t.slice(*rows_in_group) if isinstance(rows_in_group, tuple) \
            else t.take(pa.array(rows_in_group))
        ids = t.column(id_column) if id_column else None
        attrs = t.select(attributes) if attributes else None
    part = _checked_part(start, x, ids, np.zeros(x.shape[0], bool))
    part.attrs = attrs
    return part


def _parquet_parts(f, block, plan, rows=None):
    # attributes go with full reads (encode), not with the sample's
    attributes = list(plan.attributes or ()) if rows is None else []
    side = ([plan.id_column] if plan.id_column else []) + attributes
    columns = [plan.column] + side
    source = open_input(f.path) if is_remote(f.path) else f.path
    pf = pq.ParquetFile(source, pre_buffer=False, buffer_size=_READ_BUFFER)
    fast = _fast_reader(f, pf, plan)
    side_of = _group_reader(pf, side) if side else None
    pos = block.start
    for g in block.row_groups:
        group_rows = pf.metadata.row_group(g).num_rows
        done = 0
        if rows is not None:
            sel, wanted = _wanted(rows, pos, group_rows)
            if not sel.size:
                pos += group_rows  # sampling: no row of this group drawn
                continue
        if fast is not None:
            try:
                if rows is None:
                    for x in fast.read(g, plan.block_rows):
                        yield _fast_part(side_of, g, pos + done, x, (done, x.shape[0]),
                                         plan.id_column, attributes)
                        done += x.shape[0]
                else:
                    part = _fast_part(side_of, g, pos, fast.read_rows(g, sel), sel,
                                      plan.id_column, attributes)
                    part.rows = wanted
                    yield part
                    done = group_rows
            except Unsupported as exc:
                # Arrow reads the rest of this row group (and reports what is wrong)
                logger.debug("%s row group %d: Arrow reads from row %d (%s)", f.path, g,
                             done, exc)
        skip = done
        batches = () if done == group_rows else pf.iter_batches(
            batch_size=plan.block_rows, row_groups=[g], columns=columns, use_threads=False)
        for batch in batches:
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            if skip:
                batch = batch.slice(skip)
            start = pos + done
            n = batch.num_rows
            wanted = None
            if rows is not None:
                # only some rows are wanted (sampling): take them before converting
                sel, wanted = _wanted(rows, start, n)
                if sel.size == 0:
                    done += n
                    skip = 0
                    continue
                batch = batch.take(pa.array(sel))
            emb = batch.column(0)
            ids = batch.column(1) if plan.id_column else None
            part = _arrow_part(start, emb, ids, f, plan.d)
            if attributes:
                part.attrs = pa.Table.from_batches([batch.select(attributes)])
            if wanted is not None:
                part.rows = wanted
            yield part
            done += n
            skip = 0
        if done != group_rows:
            raise InputError(f"{f.path}: read {done} rows of row group {g}; the footer "
                             f"says {group_rows}")
        pos += group_rows
    if pos != block.stop:
        raise InputError(f"{f.path}: read {pos - block.start} rows of row groups "
                         f"{list(block.row_groups)}; the footer says {block.stop - block.start}")


class _RemoteRows:
    """Rows of a remote ``.npy`` / ``.*vecs`` file, read by ``read_at`` of the spans
    they cover: ``rows[sel]`` (a slice or sorted int64 rows) is a uint8 (n, row_bytes)
    array. Sorted rows are read in spans joined across gaps under
    :data:`_REMOTE_GAP` bytes (one request each), so a sample costs few requests."""

    def __init__(self, f, d):
        self.file = open_input(f.path)
        if f.kind == "npy":
            shape, self.dtype, _, self.base = npy_header(f.path)
            self.row_bytes = shape[1] * self.dtype.itemsize
        else:
            self.base, self.row_bytes = 0, 4 + d * VECS_EXTS[f.kind][1]

    def _span(self, a, b):
        data = self.file.read_at((b - a) * self.row_bytes, self.base + a * self.row_bytes)
        return np.frombuffer(data, np.uint8).reshape(b - a, self.row_bytes)

    def __getitem__(self, sel):
        if isinstance(sel, slice):
            return self._span(sel.start, sel.stop)
        sel = np.asarray(sel, np.int64)
        gap = max(1, _REMOTE_GAP // self.row_bytes)
        cuts = np.flatnonzero(np.diff(sel) > gap) + 1
        out = []
        for run in np.split(sel, cuts):
            a = int(run[0])
            out.append(self._span(a, int(run[-1]) + 1)[run - a])
        return np.concatenate(out)


def _array_parts(f, block, plan, rows=None):
    d = plan.d
    if is_remote(f.path):
        mm = _RemoteRows(f, d)
        header = None
    elif f.kind == "npy":
        mm = np.load(f.path, mmap_mode="r")
        header = None
    else:
        dtype, item = VECS_EXTS[f.kind]
        row_bytes = 4 + d * item
        mm_raw = np.memmap(f.path, dtype=np.uint8, mode="r", shape=(f.rows, row_bytes))
        header, mm = mm_raw[:, :4], mm_raw[:, 4:]
    step = plan.block_rows
    ranges = [(s, min(block.stop, s + step)) for s in range(block.start, block.stop, step)]
    for s, e in ranges:
        if rows is not None:
            lo, hi = np.searchsorted(rows, [s, e])
            if lo == hi:
                continue
            sel = rows[lo:hi]
        else:
            sel = slice(s, e)
        raw = np.asarray(mm[sel])
        if is_remote(f.path):  # raw bytes of whole rows: the .npy dtype, or a vecs header + values
            if f.kind == "npy":
                raw = raw.view(mm.dtype)
            else:
                header, raw = raw[:, :4], raw[:, 4:]
            header_sel = slice(None)
        else:
            header_sel = sel
        if f.kind in VECS_EXTS:
            raw = np.ascontiguousarray(raw).view(VECS_EXTS[f.kind][0])
        x = np.ascontiguousarray(raw, dtype=np.float32)
        bad = np.zeros(x.shape[0], bool)
        reasons = {}
        if header is not None:
            dims = np.ascontiguousarray(header[header_sel]).view(np.int32).reshape(-1)
            wrong = dims != d
            for r in np.flatnonzero(wrong):
                reasons[int(r)] = f"row header says dimension {int(dims[r])}; expected {d}"
            bad |= wrong
        _check_rows(x, bad, reasons)
        part = Part(s, x, None, bad, reasons)
        if rows is not None:
            part.rows = sel
        yield part


def _byte_ranges(plan, block):
    """``[(start, end), ...]``: the bytes of its file that a block's rows are read
    from (for Parquet, the column chunks of the embedding and id columns only)."""
    f = plan.files[block.file]
    if f.kind == "parquet":
        md = pq.ParquetFile(f.path).metadata
        wanted = {plan.column, plan.id_column, *(plan.attributes or ())}
        leaves = [i for i in range(md.num_columns)
                  if md.schema.column(i).path.split(".")[0] in wanted]
        return [chunk_range(md.row_group(g).column(c))
                for g in block.row_groups for c in leaves]
    if f.kind == "npy":
        mm = np.load(f.path, mmap_mode="r")
        base, row_bytes = mm.offset, mm.strides[0]
    else:  # a .*vecs row is its length then its values
        base, row_bytes = 0, 4 + plan.d * VECS_EXTS[f.kind][1]
    return [(base + block.start * row_bytes, base + block.stop * row_bytes)]


def prefetch_block(plan, block):
    """Ask the kernel to start reading a block's bytes into the page cache, so
    that the disk works while the CPU encodes (the read itself still checks
    everything). Never raises: a file that cannot be read is reported by the
    read."""
    if not hasattr(os, "posix_fadvise") or is_remote(plan.files[block.file].path):
        return
    try:
        ranges = _byte_ranges(plan, block)
        fd = os.open(plan.files[block.file].path, os.O_RDONLY)
        try:
            for start, end in ranges:
                # Linux reads ahead at most one readahead window per call (the
                # larger of read_ahead_kb and max_sectors_kb, 128 KB to 8 MB) and
                # drops the rest: a 26 MB column chunk asked at once came off disk
                # at the cold speed, asked in pieces at the page cache's
                for at in range(start, end, _WILLNEED_PIECE):
                    os.posix_fadvise(fd, at, min(_WILLNEED_PIECE, end - at),
                                     os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
    except Exception as exc:  # only a hint: the read reports what is wrong
        logger.debug("prefetch of block %s skipped: %s", block, exc)


def read_block(plan, block, rows=None):
    """Stream a block's rows as :class:`Part` objects of at most ``block_rows`` rows.

    ``rows`` (sorted int64 row numbers within the file, inside the block)
    restricts the read to those rows (for sampling); each part then carries
    ``part.rows``, the file row of each of its rows. Raises whatever the
    reader raises for an unreadable file.
    """
    f = plan.files[block.file]
    if f.kind == "parquet":
        yield from _parquet_parts(f, block, plan, rows)
    else:
        yield from _array_parts(f, block, plan, rows)
