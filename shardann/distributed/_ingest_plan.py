"""Ingest planning: find the input files, read their metadata, cut them into blocks.

No Ray here, and no data read: the driver calls :func:`plan_inputs` once. It
lists the input files in a stable order, reads only metadata (Parquet
footers, ``.npy`` headers, ``.fvecs`` sizes) to count rows and check columns
and dimensions, gives every row a global number (file offset + row index, the
default id) and cuts the rows into :class:`Block` s of about ``block_rows``.
Workers read blocks with :mod:`._ingest_read`.

The plan also carries whether Parquet embedding columns may be read by the
fast reader of ``shardann._parquet`` (``fast_parquet``; the environment
variable ``SHARDANN_PARQUET_FAST=0`` turns it off): it is decided once, on
the driver, and travels to the workers with the plan.
"""

import glob
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InputError  # noqa: F401  (raised here; importable from here too)
from ._ingest_fs import is_remote, list_uri, local_path, open_input

logger = logging.getLogger(__name__)

PARQUET_EXTS = (".parquet", ".pq", ".parq")
VECS_EXTS = {".fvecs": (np.float32, 4), ".ivecs": (np.int32, 4), ".bvecs": (np.uint8, 1)}
ARRAY_EXTS = (".npy",) + tuple(VECS_EXTS)
SUPPORTED = PARQUET_EXTS + ARRAY_EXTS
#: default block: about this many bytes of float32 vectors
BLOCK_BYTES = 64 << 20
#: environment variable that turns the fast Parquet reader off ("0"; "1" or unset: on)
FAST_PARQUET_ENV = "SHARDANN_PARQUET_FAST"


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
    #: read Parquet embedding columns with shardann._parquet where it applies (the
    #: results are the same either way, so it is not part of the job's identity)
    fast_parquet: bool = True
    #: attribute columns stored beside the vectors (None: none) and their Arrow schema
    attributes: list | None = None
    attribute_schema: pa.Schema | None = None

    def block_offsets(self):
        """Global row number of each block's first row, int64 (nblocks,)."""
        return np.array([self.files[b.file].offset + b.start for b in self.blocks], np.int64)

    def identity(self):
        """What makes two runs the same job: paths, sizes, modification times, layout."""
        ident = {"files": [[f.path, f.size, f.mtime_ns, f.kind] for f in self.files],
                 "column": self.column, "id_column": self.id_column, "d": self.d,
                 "block_rows": self.block_rows}
        if self.attributes:
            ident["attributes"] = list(self.attributes)
        return ident

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
    a list of those; each may be a URI (``s3://bucket/emb/*.parquet``, see
    ``_ingest_fs``). Returns ``(paths, stats)``: ``stats`` maps each URI to its
    ``(size, mtime_ns)`` from the listing.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = []
    stats = {}
    for item in inputs:
        item = local_path(item)
        if is_remote(item):
            found = list_uri(item, SUPPORTED, _hidden)
            stats.update({p: (size, mtime) for p, size, mtime in found})
            found = [p for p, _, _ in found]
        elif os.path.isdir(item):
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
        files += [p if is_remote(p) else os.path.abspath(p) for p in found]
    if not files:
        raise InputError("no input files given")
    seen = set()
    for p in files:
        if p in seen:
            raise InputError(f"{p}: given twice; every input file must appear once")
        seen.add(p)
    return files, stats


# -- metadata ------------------------------------------------------------------------------
def embedding_encoding(path, field_type):
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


def _sniff_dim(path, pf, column, encoding, rows=1024):
    """Dimension of the vectors of a list/binary column, from its first ``rows``
    non-null rows: the length most of them have. A few rows of another length
    are rejected one by one when read (with their row and length); when no
    length has a majority the file is refused, naming the rows and lengths."""
    lengths, first = [], None
    for batch in pf.iter_batches(batch_size=rows, columns=[column], use_threads=False):
        arr = batch.column(0)
        valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
        length = pc.list_value_length if encoding == "list" else pc.binary_length
        lens = np.asarray(length(arr).fill_null(0).to_numpy(zero_copy_only=False),
                          np.int64)[valid]
        if lens.size:
            lengths, first = lens, np.flatnonzero(valid)
            break
    if not len(lengths):
        return None
    values, counts = np.unique(lengths, return_counts=True)
    best = int(np.argmax(counts))
    unit = 1 if encoding == "list" else 4
    if counts[best] * 2 <= lengths.size:
        seen = ", ".join(f"row {int(first[np.flatnonzero(lengths == v)[0]])} has {int(v) // unit}"
                         for v in values[:5])
        raise InputError(f"{path}: the rows of column {column!r} have different lengths "
                         f"({seen}{', ...' if values.size > 5 else ''}); pass d= to say which "
                         "is right (rows of another length are then skipped)")
    odd = np.flatnonzero(lengths != values[best])
    if odd.size:
        logger.warning("%s: %d of the first %d rows of %r do not have %d values (row %d has "
                       "%d); they will be rejected", path, odd.size, lengths.size, column,
                       int(values[best]) // unit, int(first[odd[0]]),
                       int(lengths[odd[0]]) // unit)
    return int(values[best]) // unit


def _parquet_info(path, column, id_column):
    try:
        pf = pq.ParquetFile(open_input(path) if is_remote(path) else path)
        schema = pf.schema_arrow
        md = pf.metadata
    except Exception as exc:
        raise InputError(f"{path}: cannot read Parquet file ({exc})") from None
    if column not in schema.names:
        raise InputError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)})")
    encoding, dim = embedding_encoding(path, schema.field(column).type)
    if id_column is not None:
        if id_column not in schema.names:
            raise InputError(f"{path}: no id column {id_column!r} "
                             f"(columns: {', '.join(schema.names)})")
        t = schema.field(id_column).type
        if not pa.types.is_integer(t):
            raise InputError(f"{path}: id column {id_column!r} has type {t}; expected int64")
    groups = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    return pf, encoding, dim, groups


def check_attribute_columns(attributes, column, id_column):
    """``attributes`` (names, or None) as a list of distinct names, or None when
    empty; ValueError for a name that is the vector or id column or repeats."""
    if attributes is None:
        return None
    if isinstance(attributes, str):
        attributes = [attributes]
    attributes = list(attributes)
    if not all(isinstance(a, str) and a for a in attributes):
        raise TypeError(f"attributes must be column names; got {attributes!r}")
    for a in attributes:
        if a in (column, id_column):
            raise ValueError(f"attribute column {a!r} is the {'vector' if a == column else 'id'}"
                             " column")
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"attributes names a column twice: {attributes}")
    return attributes or None


def _merge_attribute_fields(known, fields, path):
    """``known`` {column: (type, file)} updated with a file's attribute ``fields``;
    InputError when a column's type differs from another file's. A column of
    type null (all nulls, e.g. one batch of a SQL result) fits any type."""
    out = dict(known)
    for f in fields:
        have = out.get(f.name)
        if have is None or pa.types.is_null(have[0]):
            out[f.name] = (f.type, path)
        elif not pa.types.is_null(f.type) and f.type != have[0]:
            raise InputError(f"{path}: attribute column {f.name!r} has type {f.type}; "
                             f"{have[1]} has {have[0]}")
    return out


def attribute_fields(path, schema, attributes):
    """The Arrow schema of the ``attributes`` columns of a Parquet file's ``schema``;
    InputError naming the file and the missing column."""
    missing = [a for a in attributes if a not in schema.names]
    if missing:
        raise InputError(f"{path}: no attribute column {missing[0]!r} "
                         f"(columns: {', '.join(schema.names)})")
    return pa.schema([schema.field(a) for a in attributes])


def npy_header(path):
    """``(shape, dtype, fortran_order, data offset)`` of a ``.npy`` file (any URI),
    read from its first bytes; raises :class:`InputError` for anything else."""
    with open_input(path) as f:
        head = f.read_at(min(f.size(), 1 << 16), 0)
    if not head.startswith(b"\x93NUMPY"):
        raise InputError(f"{path}: not a valid .npy file (it does not start with the .npy "
                         "magic bytes; write it with numpy.save)")
    try:
        bio = io.BytesIO(head)
        version = np.lib.format.read_magic(bio)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(bio)
    except Exception as exc:
        raise InputError(f"{path}: not a valid .npy file ({exc})") from None
    return shape, dtype, fortran, bio.tell()


def _remote_array_info(path, kind):
    if kind == "npy":
        shape, dtype, fortran, _ = npy_header(path)
        if len(shape) != 2 or dtype.kind not in "fiu" or fortran:
            raise InputError(f"{path}: expected a 2-D C-order array of numbers; got shape "
                             f"{shape} dtype {dtype}{' (Fortran order)' if fortran else ''}")
        return shape[0], shape[1], str(dtype)
    dtype, item = VECS_EXTS[kind]
    with open_input(path) as f:
        size = f.size()
        head = f.read_at(4, 0) if size else b""
    if size == 0:
        return 0, None, str(np.dtype(dtype))
    return _vecs_rows(path, kind, size, head, item) + (str(np.dtype(dtype)),)


def _vecs_rows(path, kind, size, head, item):
    if len(head) < 4:
        raise InputError(f"{path}: truncated {kind} file ({size} bytes)")
    d = int(np.frombuffer(head, np.int32)[0])
    row = 4 + d * item
    if d <= 0 or size % row:
        raise InputError(f"{path}: size {size} is not a multiple of the row size {row} implied "
                         f"by d={d}; truncated or not a {kind} file")
    return size // row, d


def _array_info(path, kind):
    if is_remote(path):
        return _remote_array_info(path, kind)
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
    return _vecs_rows(path, kind, size, head, item) + (str(np.dtype(dtype)),)


def default_block_rows(d):
    return max(1024, BLOCK_BYTES // (4 * max(int(d), 1)))


def fast_parquet_default():
    """Whether the fast Parquet reader is on: ``SHARDANN_PARQUET_FAST`` is unset,
    ``1``/``true``/``yes``/``on`` (on) or ``0``/``false``/``no``/``off`` (off)."""
    raw = os.environ.get(FAST_PARQUET_ENV, "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{FAST_PARQUET_ENV} must be 0 or 1; got {os.environ[FAST_PARQUET_ENV]!r}")


def plan_inputs(inputs, *, column="embedding", id_column=None, d=None, block_rows=None,
                skip_bad_files=False, fast_parquet=None, attributes=None):
    """Find and check the inputs; return an :class:`InputPlan`.

    Reads metadata only. ``d`` is the expected dimension (None: the first
    file's). With ``skip_bad_files`` a file that cannot be read or has the
    wrong column or dimension is recorded as skipped instead of raising.
    ``fast_parquet``: read Parquet embedding columns with the fast reader
    where it applies (None: :func:`fast_parquet_default`, from the environment);
    False: Arrow reads every row. ``attributes``: Parquet columns to store
    beside the vectors; every file must hold them with the same types.
    """
    if fast_parquet is None:
        fast_parquet = fast_parquet_default()
    attributes = check_attribute_columns(attributes, column, id_column)
    paths, stats = find_files(inputs)
    for name, value in (("id_column", id_column), ("attributes", attributes)):
        if value is not None:
            for p in paths:
                if _ext(p) not in PARQUET_EXTS:
                    raise InputError(f"{p}: {name}={value!r} applies to Parquet inputs only")
    files, offset, d_from = [], 0, None
    attr_fields = {}  # attribute column -> (its type, the file it comes from)
    for p in paths:
        # a job is named by its inputs' paths, sizes and modification times (remote
        # files: from the listing; pyarrow's filesystems do not expose ETags)
        size, mtime = stats[p] if p in stats else (lambda st: (st.st_size, st.st_mtime_ns))(
            os.stat(p))
        kind = "parquet" if _ext(p) in PARQUET_EXTS else ("npy" if _ext(p) == ".npy"
                                                        else _ext(p))
        f = InputFile(path=p, kind=kind, rows=0, offset=offset, size=size, mtime_ns=mtime)
        try:
            if kind == "parquet":
                pf, f.encoding, f.dim, f.row_groups = _parquet_info(p, column, id_column)
                if attributes:
                    attr_fields = _merge_attribute_fields(
                        attr_fields, attribute_fields(p, pf.schema_arrow, attributes), p)
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
        said = [f"{f.path} ({'no rows' if not f.rows else 'only null vectors'})"
                for f in files if not f.skipped]
        said += [f"{f.path} (skipped: {f.skipped})" for f in files if f.skipped]
        raise InputError("cannot tell the vector dimension: the inputs hold no vectors: "
                         + "; ".join(said[:5]) + (" ..." if len(said) > 5 else ""))
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
                     id_column=id_column, block_rows=block_rows, fast_parquet=bool(fast_parquet),
                     attributes=attributes,
                     attribute_schema=pa.schema([(a, attr_fields[a][0]) for a in attributes])
                     if attributes and attr_fields else None)


def _note_conversions(files):
    """Say once (INFO) which inputs are not float32 and are converted when read."""
    other = {}
    for f in files:
        if not f.skipped and f.rows and f.values != "float32":
            other.setdefault(f.values, []).append(f.path)
    for t, paths in other.items():
        logger.info("%d input file(s) hold %s values (e.g. %s); they are converted to float32",
                    len(paths), t, paths[0])
