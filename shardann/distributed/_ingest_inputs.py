"""Ingest inputs: find the files, count their rows, cut them into blocks, read blocks.

No Ray here. The driver calls :func:`plan_inputs` once: it lists the input
files in a stable order, reads only metadata (Parquet footers, ``.npy``
headers, ``.fvecs`` sizes) to count rows and check columns and dimensions,
gives every row a global number (file offset + row index, the default id) and
cuts the rows into blocks of about ``block_rows``. Workers call
:func:`read_block` to stream one block as parts of at most ``block_rows``
rows, with the bad rows (wrong length, null, NaN, bad id) flagged.
"""

import glob
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._kernels.checks import finite_rows
from .._parquet_pages import chunk_range
from .._validation import MAX_ID
from ..errors import InputError  # defined there; imported from here by older code
from ._parquet_vectors import FixedListColumn, Unsupported, embedding_leaf

logger = logging.getLogger(__name__)

PARQUET_EXTS = (".parquet", ".pq", ".parq")
VECS_EXTS = {".fvecs": (np.float32, 4), ".ivecs": (np.int32, 4), ".bvecs": (np.uint8, 1)}
ARRAY_EXTS = (".npy",) + tuple(VECS_EXTS)
SUPPORTED = PARQUET_EXTS + ARRAY_EXTS
#: default block: about this many bytes of float32 vectors
BLOCK_BYTES = 64 << 20
#: Parquet read buffer: column chunks are streamed, never read whole
_READ_BUFFER = 4 << 20
#: bytes asked of the kernel per ``posix_fadvise(WILLNEED)`` (see :func:`prefetch_block`)
_WILLNEED_PIECE = 1 << 20


@dataclass
class InputFile:
    """One input file: where its rows start in the global row order, and how to read it."""

    path: str
    kind: str                 # "parquet", "npy" or one of ".fvecs" ".ivecs" ".bvecs"
    rows: int
    offset: int               # global row number of its first row
    size: int
    mtime_ns: int
    dim: int | None = None
    row_groups: list = field(default_factory=list)  # Parquet rows per row group
    encoding: str | None = None  # Parquet embedding column: "fsl", "list", "fsb", "binary"
    skipped: str | None = None   # reason, when --skip-bad-rows skips the whole file
    values: str = "float32"      # the type the values are stored in (read as float32)


@dataclass
class Block:
    """A unit of work: rows ``[start, stop)`` of one file (row groups for Parquet)."""

    block: int
    file: int
    start: int                # first row, within the file
    stop: int
    row_groups: tuple = ()    # Parquet row groups covering exactly [start, stop)


@dataclass
class InputPlan:
    files: list
    blocks: list
    d: int
    total_rows: int           # rows of every readable file (skipped files excluded)
    column: str
    id_column: str | None
    block_rows: int

    def block_offsets(self):
        """Global row number of each block's first row, int64 (nblocks,)."""
        return np.array([self.files[b.file].offset + b.start for b in self.blocks], np.int64)

    def identity(self):
        """What makes two runs the same job: paths, sizes, modification times, layout."""
        return {"files": [[f.path, f.size, f.mtime_ns, f.kind] for f in self.files],
                "column": self.column, "id_column": self.id_column, "d": self.d,
                "block_rows": self.block_rows}

    def fingerprint(self):
        text = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(text).hexdigest()


# -- finding files ------------------------------------------------------------------------
def _ext(path):
    return os.path.splitext(path)[1].lower()


def _hidden(name):
    return name.startswith((".", "_"))


def _walk(directory):
    out = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        out += [os.path.join(dirpath, n) for n in sorted(filenames)
                if not _hidden(n) and _ext(n) in SUPPORTED]
    return sorted(out)


def find_files(inputs):
    """Input files in a stable order: the given order, each directory or glob sorted.

    ``inputs`` is a path, a directory (searched recursively for supported
    files; names starting with ``.`` or ``_`` are ignored), a glob pattern, or
    a list of those.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = _walk(item)
            if not found:
                raise InputError(f"{item}: directory holds no input files ({', '.join(SUPPORTED)})")
        elif os.path.exists(item):
            found = [item]
        elif glob.has_magic(item):
            found = []
            for p in sorted(glob.glob(item, recursive=True)):
                found += _walk(p) if os.path.isdir(p) else [p]
            if not found:
                raise InputError(f"{item}: pattern matches no files")
        else:
            raise InputError(f"{item}: no such file or directory")
        for p in found:
            if _ext(p) not in SUPPORTED:
                raise InputError(f"{p}: unsupported input (expected {', '.join(SUPPORTED)})")
        files += [os.path.abspath(p) for p in found]
    if not files:
        raise InputError("no input files given")
    seen = set()
    for p in files:
        if p in seen:
            raise InputError(f"{p}: given twice; every input file must appear once")
        seen.add(p)
    return files


# -- metadata ------------------------------------------------------------------------------
def _embedding_encoding(path, field_type):
    """("fsl"|"list"|"fsb"|"binary", dim or None) for an embedding column type."""
    t = field_type
    if pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type):
        return "fsl", t.list_size
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_floating(
            t.value_type):
        return "list", None
    if pa.types.is_fixed_size_binary(t):
        if t.byte_width % 4:
            raise InputError(f"{path}: binary embedding column of {t.byte_width} bytes is not "
                             "a whole number of float32 values")
        return "fsb", t.byte_width // 4
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary", None
    raise InputError(f"{path}: embedding column has type {t}; expected fixed_size_list<float>, "
                     "list<float> or binary (float32 bytes)")


def _sniff_dim(path, pf, column, encoding):
    """Dimension of the first non-null vector of a list/binary column."""
    for batch in pf.iter_batches(batch_size=1024, columns=[column], use_threads=False):
        arr = batch.column(0)
        valid = np.flatnonzero(~np.asarray(arr.is_null().to_numpy(zero_copy_only=False)))
        if valid.size:
            n = len(arr[int(valid[0])].as_py())
            return n if encoding == "list" else n // 4
    return None


def _parquet_info(path, column, id_column):
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        md = pf.metadata
    except Exception as exc:
        raise InputError(f"{path}: cannot read Parquet file ({exc})") from None
    if column not in schema.names:
        raise InputError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)})")
    encoding, dim = _embedding_encoding(path, schema.field(column).type)
    if id_column is not None:
        if id_column not in schema.names:
            raise InputError(f"{path}: no id column {id_column!r} "
                             f"(columns: {', '.join(schema.names)})")
        t = schema.field(id_column).type
        if not pa.types.is_integer(t):
            raise InputError(f"{path}: id column {id_column!r} has type {t}; expected int64")
    groups = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    return pf, encoding, dim, groups


def _array_info(path, kind):
    if kind == "npy":
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY":
            raise InputError(f"{path}: not a valid .npy file (it does not start with the .npy "
                             "magic bytes; write it with numpy.save)")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise InputError(f"{path}: not a valid .npy file ({exc})") from None
        if arr.ndim != 2 or arr.dtype.kind not in "fiu":
            raise InputError(f"{path}: expected a 2-D array of numbers; got shape {arr.shape} "
                             f"dtype {arr.dtype}")
        return arr.shape[0], arr.shape[1], str(arr.dtype)
    dtype, item = VECS_EXTS[kind]
    size = os.path.getsize(path)
    if size == 0:
        return 0, None, str(np.dtype(dtype))
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) < 4:
        raise InputError(f"{path}: truncated {kind} file ({size} bytes)")
    d = int(np.frombuffer(head, np.int32)[0])
    row = 4 + d * item
    if d <= 0 or size % row:
        raise InputError(f"{path}: size {size} is not a multiple of the row size {row} implied "
                         f"by d={d}; truncated or not a {kind} file")
    return size // row, d, str(np.dtype(dtype))


def default_block_rows(d):
    return max(1024, BLOCK_BYTES // (4 * max(int(d), 1)))


def plan_inputs(inputs, *, column="embedding", id_column=None, d=None, block_rows=None,
                skip_bad_files=False):
    """Find and check the inputs; return an :class:`InputPlan`.

    Reads metadata only. ``d`` is the expected dimension (None: the first
    file's). With ``skip_bad_files`` a file that cannot be read or has the
    wrong column or dimension is recorded as skipped instead of raising.
    """
    paths = find_files(inputs)
    if id_column is not None:
        for p in paths:
            if _ext(p) not in PARQUET_EXTS:
                raise InputError(f"{p}: id_column={id_column!r} applies to Parquet inputs only")
    files, offset, d_from = [], 0, None
    for p in paths:
        st = os.stat(p)
        kind = "parquet" if _ext(p) in PARQUET_EXTS else ("npy" if _ext(p) == ".npy"
                                                        else _ext(p))
        f = InputFile(path=p, kind=kind, rows=0, offset=offset, size=st.st_size,
                      mtime_ns=st.st_mtime_ns)
        try:
            if kind == "parquet":
                pf, f.encoding, f.dim, f.row_groups = _parquet_info(p, column, id_column)
                t = pf.schema_arrow.field(column).type
                f.values = (np.dtype(t.value_type.to_pandas_dtype()).name
                            if f.encoding in ("fsl", "list") else "float32")
                f.rows = int(sum(f.row_groups))
                if f.dim is None and d is None and f.rows:
                    f.dim = _sniff_dim(p, pf, column, f.encoding)
            else:
                f.rows, f.dim, f.values = _array_info(p, kind)
            if f.dim is not None:
                if d is None:
                    d, d_from = f.dim, p
                elif f.dim != d:
                    source = f" (from {d_from})" if d_from else ""
                    raise InputError(f"{p}: vectors have dimension {f.dim}; expected d={d}"
                                     f"{source}")
        except InputError as exc:
            if not skip_bad_files:
                raise
            f.skipped, f.rows = str(exc), 0
        files.append(f)
        offset += f.rows
    if d is None:
        raise InputError("cannot tell the vector dimension: the inputs hold no vectors")
    _note_conversions(files)
    block_rows = int(block_rows or default_block_rows(d))
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1; got {block_rows}")
    blocks = []
    for fi, f in enumerate(files):
        if f.skipped or not f.rows:
            continue
        if f.kind == "parquet":
            start, group, first = 0, [], 0
            for g, n in enumerate(f.row_groups):
                if group and first - start + n > block_rows:
                    blocks.append(Block(len(blocks), fi, start, first, tuple(group)))
                    start, group, first = first, [], first
                group.append(g)
                first += n
            if group:
                blocks.append(Block(len(blocks), fi, start, first, tuple(group)))
        else:
            for s in range(0, f.rows, block_rows):
                blocks.append(Block(len(blocks), fi, s, min(f.rows, s + block_rows)))
    return InputPlan(files=files, blocks=blocks, d=int(d), total_rows=offset, column=column,
                     id_column=id_column, block_rows=block_rows)


def _note_conversions(files):
    """Say once (INFO) which inputs are not float32 and are converted when read."""
    other = {}
    for f in files:
        if not f.skipped and f.rows and f.values != "float32":
            other.setdefault(f.values, []).append(f.path)
    for t, paths in other.items():
        logger.info("%d input file(s) hold %s values (e.g. %s); they are converted to float32",
                    len(paths), t, paths[0])


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
    """A :class:`FixedListColumn` for this file's embedding column, or None."""
    if f.encoding not in ("fsl", "list"):
        return None
    leaf = embedding_leaf(pf.metadata, plan.column)
    return None if leaf is None else FixedListColumn(f.path, pf.metadata, leaf, plan.d)


def _id_reader(pf, column):
    """``ids_of(g)``: the id column of row group ``g`` (the last one read is kept)."""
    last = {}

    def ids_of(g):
        if g not in last:
            last.clear()
            last[g] = pf.read_row_group(g, columns=[column], use_threads=False).column(0)
        return last[g]
    return ids_of


def _fast_part(ids_of, g, start, x, rows_in_group):
    """A part of vectors ``x`` read by the fast reader: rows ``rows_in_group``
    (int64, or a ``(first, n)`` range) of row group ``g``, starting at file row
    ``start``, with their ids through ``ids_of`` (None: no id column)."""
    ids = None
    if ids_of is not None:
        ids = ids_of(g)
        ids = ids.slice(*rows_in_group) if isinstance(rows_in_group, tuple) \
            else ids.take(pa.array(rows_in_group))
    return _checked_part(start, x, ids, np.zeros(x.shape[0], bool))


def _parquet_parts(f, block, plan, rows=None):
    columns = [plan.column] + ([plan.id_column] if plan.id_column else [])
    pf = pq.ParquetFile(f.path, pre_buffer=False, buffer_size=_READ_BUFFER)
    fast = _fast_reader(f, pf, plan)
    ids_of = _id_reader(pf, plan.id_column) if plan.id_column else None
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
                        yield _fast_part(ids_of, g, pos + done, x, (done, x.shape[0]))
                        done += x.shape[0]
                else:
                    part = _fast_part(ids_of, g, pos, fast.read_rows(g, sel), sel)
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


def _array_parts(f, block, plan, rows=None):
    d = plan.d
    if f.kind == "npy":
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
        if f.kind in VECS_EXTS:
            raw = np.ascontiguousarray(raw).view(VECS_EXTS[f.kind][0])
        x = np.ascontiguousarray(raw, dtype=np.float32)
        bad = np.zeros(x.shape[0], bool)
        reasons = {}
        if header is not None:
            dims = np.ascontiguousarray(header[sel]).view(np.int32).reshape(-1)
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
        wanted = {plan.column, plan.id_column}
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
    if not hasattr(os, "posix_fadvise"):
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
