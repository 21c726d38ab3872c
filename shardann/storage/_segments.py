"""List segments: immutable Parquet files of (list_id, id, code[, vector], attributes) rows.

Attribute columns (an index's ``attribute_schema``) follow the payload, each
named ``attr:<name>``, nullable, in the schema's order. A segment written
before its store had attributes has none of them: its rows read as nulls.

Rows are sorted by (list_id, id); row groups are cut at list boundaries so a
shard reads only the row groups of the lists it owns.

Integrity without parsing Parquet page headers: when a segment is written, the
CRC-32 of each of its column chunks (page headers and bodies, the chunk's whole
byte range) goes into its manifest entry, one list per row group; the footer's
CRC-32 too. A read checks the footer once, then the CRC of every column chunk it
reads, with ISA-L, before or while Arrow decodes the same bytes. The footer gives
the chunks' byte ranges, and the chunks, the leading ``PAR1`` and the footer
tile the file, so a flipped byte anywhere in it is caught. Segments of format
version 1 have no chunk CRCs; they carry Parquet page CRCs, which Arrow checks
as it decodes (``page_checksum_verification``).
"""

import base64
import contextlib
import io
import json
import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._rows import take_rows
from ..errors import CorruptIndexError
from ..filters import null_table
from ._crash import crash_point
from ._files import ChecksumWriter, fast_crc32
from ._manifest import FORMAT_VERSION, check_format_version

META_KEY = b"shardann"
FILE_FORMAT = "shardann-segment"
MAGIC = b"PAR1"
#: index payload column name -> segment column name
TO_FILE = {"codes": "code", "vectors": "vector"}
TO_INDEX = {v: k for k, v in TO_FILE.items()}
#: prefix of attribute column names in segment files
ATTR_PREFIX = "attr:"
#: the key of the rows' attributes (a pyarrow.Table) in read results and row dicts
ATTRIBUTES = "attributes"
ROW_GROUP_ROWS = 65536
# On object stores a shard reads its lists by ranged GETs of whole row groups, so
# smaller groups waste fewer bytes at the edges of its share: 200k x 128 on 4 shards
# read 41-70% of the store per shard at 65536 rows, 37% at 8192 (its share: 34%),
# for 18 GETs instead of 6-8 (tests/storage/bench_s3_load.py).
REMOTE_ROW_GROUP_ROWS = 8192
#: a filtered read decodes at most about this many payload bytes at a time
READ_BATCH_BYTES = 16 << 20
#: reads of at least this many bytes check chunk CRCs while Arrow decodes
PARALLEL_CHECK_BYTES = 4 << 20


def column_spec(columns):
    """Manifest column spec ``{"code"/"vector": {"dtype", "width"}}`` from payload
    columns ``{"codes"/"vectors": (width, dtype)}`` (``IndexState.columns``)."""
    spec = {}
    for name, (width, dtype) in columns.items():
        if name not in TO_FILE:
            raise ValueError(f"cannot store a list column named {name!r}")
        spec[TO_FILE[name]] = {"dtype": np.dtype(dtype).name, "width": int(width)}
    return spec


def payload_columns(spec):
    """The inverse of :func:`column_spec`: ``{"codes"/"vectors": (width, dtype)}``."""
    return {TO_INDEX[c]: (int(spec[c]["width"]), np.dtype(spec[c]["dtype"]))
            for c in ("code", "vector") if c in spec}
def attribute_spec(attr_schema):
    """The manifest's ``attributes`` entry of an attribute schema (None: none): the
    Arrow schema (IPC, base64) and, for people, each column's name and type."""
    if attr_schema is None:
        return None
    return {"arrow_schema": base64.b64encode(attr_schema.serialize().to_pybytes()).decode(),
            "columns": [{"name": f.name, "type": str(f.type)} for f in attr_schema]}


def attribute_schema(entry):
    """The inverse of :func:`attribute_spec`: a pyarrow.Schema, or None."""
    if not entry:
        return None
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(entry["arrow_schema"])))


def attribute_fields(attr_schema):
    """The segment fields of an attribute schema (None: none)."""
    if attr_schema is None:
        return []
    return [pa.field(ATTR_PREFIX + f.name, f.type, nullable=True) for f in attr_schema]


def arrow_schema(spec, meta=None, attr_schema=None):
    fields = [pa.field("list_id", pa.int32(), nullable=False),
              pa.field("id", pa.int64(), nullable=False)]
    for name in ("code", "vector"):
        if name in spec:
            c = spec[name]
            nbytes = c["width"] * np.dtype(c["dtype"]).itemsize
            fields.append(pa.field(name, pa.binary(nbytes), nullable=False, metadata={
                b"shardann.dtype": c["dtype"].encode(),
                b"shardann.width": str(c["width"]).encode()}))
    schema = pa.schema(fields + attribute_fields(attr_schema))
    return schema.with_metadata({META_KEY: json.dumps(meta)}) if meta else schema


def _fsb(arr, nbytes):
    """A (n, w) uint8 / float array as an Arrow fixed_size_binary array (no copy)."""
    arr = np.ascontiguousarray(arr)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(nbytes), arr.shape[0],
                                                [None, pa.py_buffer(arr)])


def sort_rows(list_ids, ids, data):
    """Rows ordered by (list_id, id); returns the inputs themselves when already sorted."""
    if list_ids.size > 1:
        dl = np.diff(list_ids)
        ordered = (dl >= 0).all() and (np.diff(ids)[dl == 0] >= 0).all()
        if not ordered:
            order = np.lexsort((ids, list_ids))
            list_ids, ids = list_ids[order], ids[order]
            data = {k: v.take(pa.array(order)) if isinstance(v, pa.Table) else take_rows(v, order)
                    for k, v in data.items()}
    return list_ids, ids, data


def row_group_cuts(list_ids, target):
    """Row offsets cutting sorted ``list_ids`` into groups of whole lists, ~``target`` rows."""
    n = list_ids.size
    starts = np.flatnonzero(np.concatenate([[True], list_ids[1:] != list_ids[:-1]]))
    group = starts // max(int(target), 1)
    first = starts[np.concatenate([[True], group[1:] != group[:-1]])]
    return np.concatenate([first, [n]])


def chunk_range(column_chunk):
    """``(start, end)`` file offsets of a column chunk (dictionary page included),
    from its ``pyarrow.parquet.ColumnChunkMetaData``."""
    start = column_chunk.data_page_offset
    if column_chunk.has_dictionary_page and column_chunk.dictionary_page_offset:
        start = min(start, column_chunk.dictionary_page_offset)
    return start, start + column_chunk.total_compressed_size


def layout_problem(metadata, size, footer_size):
    """None when the leading magic, the column chunks (in file order) and the footer
    tile a file of ``size`` bytes exactly; else what does not fit."""
    at = len(MAGIC)
    for g in range(metadata.num_row_groups):
        rg = metadata.row_group(g)
        for c in range(rg.num_columns):
            start, end = chunk_range(rg.column(c))
            if start != at:
                return f"row group {g}, column {c} starts at byte {start}, expected {at}"
            at = end
    if at != size - footer_size:
        return f"the column chunks end at byte {at}; the footer starts at {size - footer_size}"
    return None


def chunk_crcs(buf, metadata, row_groups=None):
    """CRC-32 of each column chunk: one list per row group, columns in file order."""
    groups = range(metadata.num_row_groups) if row_groups is None else row_groups
    out = []
    for g in groups:
        rg = metadata.row_group(g)
        crcs = []
        for c in range(rg.num_columns):
            start, end = chunk_range(rg.column(c))
            crcs.append(fast_crc32(buf[start:end]))
        out.append(crcs)
    return out


def write_segment(path, list_ids, ids, data, spec, *, format_version=FORMAT_VERSION,
                  row_group_rows=ROW_GROUP_ROWS, attr_schema=None):
    """Write one segment file (``path`` must not exist) and return its manifest entry.

    ``list_ids`` int (n,), ``ids`` int64 (n,), ``data`` {"codes"/"vectors": (n, w)}
    and, when the store has attributes, ``"attributes"``: a pyarrow.Table of
    the rows' attributes of ``attr_schema`` (n rows); ``spec`` the manifest
    column spec (:func:`column_spec`); rows are sorted here. The entry has
    path-independent fields: size, crc32, footer_size, footer_crc32, rows,
    min_id, max_id, row_groups (each {first_list, last_list, rows, crc32:
    [one per column chunk]}).
    """
    list_ids = np.asarray(list_ids, dtype=np.int32)
    ids = np.asarray(ids, dtype=np.int64)
    list_ids, ids, data = sort_rows(list_ids, ids, data)
    n = ids.size
    meta = {"format": FILE_FORMAT, "format_version": format_version, "columns": spec}
    schema = arrow_schema(spec, meta, attr_schema)
    arrays = [pa.array(list_ids, pa.int32()), pa.array(ids, pa.int64())]
    for name in ("code", "vector"):
        if name in spec:
            c = spec[name]
            arr = np.ascontiguousarray(data[TO_INDEX[name]], dtype=c["dtype"])
            if arr.shape != (n, c["width"]):
                raise ValueError(f"{TO_INDEX[name]} must have shape ({n}, {c['width']}); "
                                 f"got {arr.shape}")
            arrays.append(_fsb(arr, arr.shape[1] * arr.itemsize))
    if attr_schema is not None:
        attrs = data.get(ATTRIBUTES)
        if attrs is None or attrs.num_rows != n or attrs.schema.names != attr_schema.names:
            raise ValueError(f"attributes must be a table of {n} rows with the columns "
                             f"{attr_schema.names}")
        arrays += [attrs.column(f.name).cast(f.type) for f in attr_schema]
    table = pa.Table.from_arrays(arrays, schema=schema)
    cuts = row_group_cuts(list_ids, row_group_rows)
    crash_point("segment.before_write")
    sink = ChecksumWriter(path)
    try:
        # no page checksums: the chunk CRCs in the manifest cover every page
        writer = pq.ParquetWriter(sink, schema, compression="none", write_page_checksum=False,
                                  use_dictionary=["list_id"], write_statistics=["list_id"],
                                  write_page_index=False)
        for s, e in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            writer.write_table(table.slice(s, e - s), row_group_size=e - s)
            sink.flush()
            crash_point("segment.row_group")
        writer.close()
        sink.close()
    except BaseException:
        sink.abort()
        raise
    footer_size = int.from_bytes(sink.tail(8)[:4], "little") + 8
    footer_crc = fast_crc32(sink.tail(footer_size))
    md = pq.read_metadata(path)
    problem = layout_problem(md, sink.size, footer_size)
    if problem is not None:  # Arrow wrote something between the chunks (a page index?)
        raise RuntimeError(f"{path}: unexpected segment layout: {problem}")
    with open(path, "rb") as f:
        if sink.size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm, \
                    memoryview(mm) as buf:
                crcs = chunk_crcs(buf, md)
        else:  # pragma: no cover - a Parquet file is never empty
            crcs = []
    rg_rows = np.array([md.row_group(i).num_rows for i in range(md.num_row_groups)], np.int64)
    bounds = np.concatenate([[0], np.cumsum(rg_rows)])
    row_groups = [{"first_list": int(list_ids[s]), "last_list": int(list_ids[e - 1]),
                   "rows": int(e - s), "crc32": crc}
                  for s, e, crc in zip(bounds[:-1], bounds[1:], crcs, strict=True)]
    crash_point("segment.after_write")
    return {"size": sink.size, "crc32": sink.crc, "footer_size": footer_size,
            "footer_crc32": footer_crc, "rows": int(n),
            "min_id": int(ids.min()) if n else 0, "max_id": int(ids.max()) if n else -1,
            "row_groups": row_groups}


def _numpy_column(chunked, dtype=None, width=None):
    """NumPy view of an Arrow column: zero-copy when it is one chunk."""
    parts = []
    for chunk in chunked.chunks:
        if width is None:
            item = np.dtype(dtype).itemsize
            parts.append(np.frombuffer(chunk.buffers()[1], dtype, count=len(chunk),
                                       offset=chunk.offset * item))
        else:
            nbytes = chunk.type.byte_width
            raw = np.frombuffer(chunk.buffers()[1], np.uint8, count=len(chunk) * nbytes,
                                offset=chunk.offset * nbytes).reshape(len(chunk), nbytes)
            parts.append(raw.view(dtype).reshape(len(chunk), width))
    if len(parts) == 1:
        return parts[0]
    if not parts:
        shape = (0,) if width is None else (0, width)
        return np.zeros(shape, dtype)
    return np.concatenate(parts)


class SegmentFile:
    """Reads one segment named by a manifest entry; checks it before the first read.

    ``check_chunks=False`` skips the column chunk CRCs on reads (the footer,
    sizes and schema are still checked).
    """

    def __init__(self, loc, entry, spec, check_chunks=True, attr_schema=None):
        self.loc = loc
        self.path = loc.path(entry["path"])
        self.entry = entry
        self.spec = spec
        self.attr_schema = attr_schema
        self.has_attributes = False  # whether the file holds the attribute columns
        self.check_chunks = check_chunks
        self._pf = None
        self._map = None  # local: the whole file, memory-mapped; remote: fetched ranges
        self._crcs = None  # chunk CRCs from the manifest (None: a version-1 segment)

    def _open(self):
        if self._pf is not None:
            return self._pf
        if not self.loc.local:
            return self._open_remote()
        e = self.entry
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != e["size"]:
                    raise CorruptIndexError(
                        f"{self.path}: segment has {size} bytes but the manifest says "
                        f"{e['size']} (truncated or replaced)")
                f.seek(size - e["footer_size"])
                footer = f.read(e["footer_size"])
        except FileNotFoundError:
            raise CorruptIndexError(
                f"{self.path}: segment named by the manifest is missing") from None
        except OSError as exc:
            if isinstance(exc, CorruptIndexError):
                raise
            raise CorruptIndexError(f"{self.path}: cannot read segment ({exc})") from exc
        if (len(footer) != e["footer_size"] or footer[-4:] != MAGIC
                or int.from_bytes(footer[-8:-4], "little") + 8 != e["footer_size"]
                or fast_crc32(footer) != e["footer_crc32"]):
            raise CorruptIndexError(
                f"{self.path}: Parquet footer does not match its checksum in the manifest")
        try:
            # one mapping serves Arrow and the chunk checks, so each page is faulted in once
            with pa.memory_map(self.path) as f:
                self._map = f.read_buffer()
            pf = pq.ParquetFile(pa.BufferReader(self._map))
        except Exception as exc:
            raise CorruptIndexError(f"{self.path}: unreadable segment ({exc})") from exc
        if self._map[:len(MAGIC)].to_pybytes() != MAGIC:
            raise CorruptIndexError(f"{self.path}: does not start with Parquet's {MAGIC!r}")
        return self._check_opened(pf)

    def _open_remote(self):
        """Open a segment on an object store: one ranged read of the footer (its
        CRC checked), no more until row groups are read (see :class:`_Ranges`)."""
        e = self.entry
        try:
            footer = self.loc.read_range(e["path"], e["size"] - e["footer_size"],
                                         e["footer_size"])
        except FileNotFoundError:
            raise CorruptIndexError(
                f"{self.path}: segment named by the manifest is missing") from None
        except OSError as exc:
            raise CorruptIndexError(f"{self.path}: cannot read segment ({exc})") from exc
        if (len(footer) != e["footer_size"] or footer[-4:] != MAGIC
                or int.from_bytes(footer[-8:-4], "little") + 8 != e["footer_size"]
                or fast_crc32(footer) != e["footer_crc32"]):
            raise CorruptIndexError(
                f"{self.path}: Parquet footer does not match its checksum in the manifest")
        try:
            md = pq.read_metadata(pa.BufferReader(MAGIC + footer))
            self._map = _Ranges(self.loc, e["path"], e["size"])
            pf = pq.ParquetFile(pa.PythonFile(self._map, mode="r"), metadata=md)
        except Exception as exc:
            raise CorruptIndexError(f"{self.path}: unreadable segment ({exc})") from exc
        if self._map.get(0, len(MAGIC)) != MAGIC:
            raise CorruptIndexError(f"{self.path}: does not start with Parquet's {MAGIC!r}")
        return self._check_opened(pf)

    def _check_opened(self, pf):
        """Check an opened segment's metadata, schema and row groups against the
        manifest entry; keep it open."""
        e = self.entry
        try:
            meta = json.loads(pf.schema_arrow.metadata[META_KEY])
        except Exception as exc:
            raise CorruptIndexError(f"{self.path}: unreadable segment ({exc})") from exc
        if meta.get("format") != FILE_FORMAT:
            raise CorruptIndexError(f"{self.path}: not a shardann segment")
        check_format_version(meta.get("format_version"), self.path)
        want = arrow_schema(self.spec)
        got = pf.schema_arrow.remove_metadata()
        if self.attr_schema is not None and not got.equals(want, check_metadata=False):
            # with the attribute columns (a segment older than them has none)
            want = arrow_schema(self.spec, attr_schema=self.attr_schema)
            self.has_attributes = True
        if not got.equals(want, check_metadata=False):
            raise CorruptIndexError(
                f"{self.path}: segment schema {got} does not match the manifest's {want}")
        md = pf.metadata
        rg_rows = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        if rg_rows != [g["rows"] for g in e["row_groups"]]:
            raise CorruptIndexError(
                f"{self.path}: row groups hold {rg_rows} rows; the manifest says "
                f"{[g['rows'] for g in e['row_groups']]}")
        if meta["format_version"] >= 2:
            crcs = [g.get("crc32") for g in e["row_groups"]]
            if any(not isinstance(c, list) or len(c) != md.num_columns for c in crcs):
                raise CorruptIndexError(
                    f"{self.path}: the manifest entry lacks the column chunk CRCs of this "
                    f"format-version-{meta['format_version']} segment")
            self._crcs = crcs
        elif self.check_chunks:
            # version 1: page CRCs, checked by Arrow as it decodes
            source = (pa.BufferReader(self._map) if self.loc.local
                      else pa.PythonFile(self._map, mode="r"))
            pf = pq.ParquetFile(source, metadata=md, page_checksum_verification=True)
        self._pf = pf
        return pf

    def check_layout(self):
        """Raise unless the magic, the column chunks and the footer tile the file
        (then every byte of it is under a checksum); for ``verify``."""
        pf = self._open()
        problem = layout_problem(pf.metadata, self.entry["size"], self.entry["footer_size"])
        if problem is not None:
            raise CorruptIndexError(f"{self.path}: {problem}")

    def check_chunks_of(self, row_groups, columns):
        """Raise :class:`~shardann.CorruptIndexError` naming the file, the row group
        and the column of the first chunk whose bytes do not match their CRC.

        ``columns`` are leaf column indices; a no-op for version-1 segments.
        """
        if self._crcs is None:
            return
        md = self._pf.metadata
        names = self._pf.schema_arrow.names
        with contextlib.ExitStack() as stack:
            if self.loc.local:
                view = stack.enter_context(memoryview(self._map))
                buf = stack.enter_context(view.cast("B"))
                size = len(buf)
            else:
                buf, size = self._map, self.entry["size"]
            for g in row_groups:
                rg = md.row_group(g)
                for c in columns:
                    start, end = chunk_range(rg.column(c))
                    if end > size:
                        raise CorruptIndexError(
                            f"{self.path}: row group {g}, column {names[c]}: column chunk "
                            "runs past the end of the file")
                    got = fast_crc32(buf[start:end])
                    if got != self._crcs[g][c]:
                        raise CorruptIndexError(
                            f"{self.path}: row group {g}, column {names[c]}: column chunk "
                            f"fails its checksum (crc32 {got:08x}, manifest "
                            f"{self._crcs[g][c]:08x})")

    def read_where(self, row_groups, columns, keep):
        """Payload ``columns`` ("code", "vector") of the rows of ``row_groups``
        where ``keep`` (bool, one per row of those groups in order) is True.

        Reads a few row groups at a time and copies the kept rows into arrays
        allocated once, so memory peaks at the result plus one batch of about
        ``READ_BATCH_BYTES`` instead of every row of the groups (a shard owns
        some of the lists of each row group).
        """
        keep = np.asarray(keep, bool)
        specs = {name: self.spec[name] for name in columns}
        row_bytes = max(1, sum(c["width"] * np.dtype(c["dtype"]).itemsize
                               for c in specs.values()))
        out = {TO_INDEX[name]: np.empty((int(keep.sum()), c["width"]), np.dtype(c["dtype"]))
               for name, c in specs.items()}
        pos_in = pos_out = 0
        batch, batch_rows = [], 0
        groups = list(row_groups)
        for i, g in enumerate(groups):
            batch.append(g)
            batch_rows += self.entry["row_groups"][g]["rows"]
            if i + 1 < len(groups) and batch_rows * row_bytes < READ_BATCH_BYTES:
                continue
            m = keep[pos_in:pos_in + batch_rows]
            kept = int(m.sum())
            if kept:
                part = self.read(batch, list(columns))
                for name, arr in part.items():
                    np.compress(m, arr, axis=0, out=out[name][pos_out:pos_out + kept])
            pos_in, pos_out = pos_in + batch_rows, pos_out + kept
            batch, batch_rows = [], 0
        if pos_in != keep.size:
            raise ValueError(f"keep has {keep.size} entries for {pos_in} rows")
        return out

    def _decode(self, pf, row_groups, columns):
        """Arrow table of the columns of the row groups, chunk checksums checked.

        For reads of ``PARALLEL_CHECK_BYTES`` or more, Arrow decodes in a
        thread (it releases the GIL) while this one checks the CRCs, so the
        check costs little wall time; a mismatch is reported even when Arrow
        also failed. Smaller reads check first, then decode. The columns are
        flat and required, so damaged page bodies decode to wrong values or an
        error, never a crash.
        """
        def decode():
            try:
                return pf.read_row_groups(row_groups, columns=columns, use_threads=True)
            except Exception as exc:
                raise CorruptIndexError(
                    f"{self.path}: corrupt segment data ({exc})") from exc

        # one Parquet leaf per column (list<string> has one too): position = leaf index
        names = pf.schema_arrow.names
        leaves = [names.index(c) for c in columns]
        md = pf.metadata
        if not self.loc.local:
            # fetch exactly the chunks needed (a ranged read per contiguous run), check
            # them, decode them from memory; then let them go
            try:
                self._map.fetch([chunk_range(md.row_group(g).column(c))
                                 for g in row_groups for c in leaves])
            except OSError as exc:
                raise CorruptIndexError(f"{self.path}: cannot read segment ({exc})") from exc
            try:
                if self.check_chunks:
                    self.check_chunks_of(row_groups, leaves)
                return decode()
            finally:
                self._map.clear()
        if not self.check_chunks or self._crcs is None:
            return decode()
        nbytes = sum(md.row_group(g).column(c).total_compressed_size
                     for g in row_groups for c in leaves)
        # nullable and nested attribute columns are checked before Arrow decodes them:
        # only flat required columns are safe to decode from damaged bytes
        nested = any(c.startswith(ATTR_PREFIX) for c in columns)
        if nbytes < PARALLEL_CHECK_BYTES or nested:
            self.check_chunks_of(row_groups, leaves)
            return decode()
        with ThreadPoolExecutor(1, thread_name_prefix="shardann-decode") as pool:
            table = pool.submit(decode)
            self.check_chunks_of(row_groups, leaves)
            return table.result()

    def read(self, row_groups=None, columns=None):
        """{"list_id", "id", "codes", "vectors"}: NumPy arrays of the given row groups,
        and "attributes": a pyarrow.Table of the attribute columns.

        ``columns`` restricts to some of the segment columns (file names:
        "list_id", "id", "code", "vector", and "attributes" for all the
        attribute columns; by default all of them); one-chunk columns are
        zero-copy views of Arrow's buffers. A segment without the attribute
        columns gives null attributes.
        """
        pf = self._open()
        if row_groups is None:
            row_groups = list(range(len(self.entry["row_groups"])))
        if columns is None:
            columns = ["list_id", "id"] + [c for c in ("code", "vector") if c in self.spec]
            if self.attr_schema is not None:
                columns.append(ATTRIBUTES)
        want = sum(self.entry["row_groups"][i]["rows"] for i in row_groups)
        attrs = ATTRIBUTES in columns and self.attr_schema is not None
        columns = [c for c in columns if c != ATTRIBUTES]
        file_columns = columns + ([f.name for f in attribute_fields(self.attr_schema)]
                                  if attrs and self.has_attributes else [])
        if file_columns:
            table = self._decode(pf, row_groups, file_columns)
            if table.num_rows != want:
                raise CorruptIndexError(
                    f"{self.path}: read {table.num_rows} rows; the manifest says {want}")
        out = {}
        if attrs:
            out[ATTRIBUTES] = (pa.Table.from_arrays(
                [table.column(ATTR_PREFIX + f.name) for f in self.attr_schema],
                schema=self.attr_schema) if self.has_attributes
                else null_table(self.attr_schema, want))
        for name in columns:
            col = table.column(name)
            if name == "list_id":
                out[name] = _numpy_column(col, np.int32)
            elif name == "id":
                out[name] = _numpy_column(col, np.int64)
            else:
                c = self.spec[name]
                out[TO_INDEX[name]] = _numpy_column(col, np.dtype(c["dtype"]), c["width"])
        return out


class _Ranges(io.RawIOBase):
    """A remote segment as a read-only file for Arrow, serving the byte ranges
    :meth:`fetch` read (one ranged GET per contiguous run, several at once);
    any other read goes to the object store as it is asked for. ``get(start,
    end)`` / ``[start:end]`` give fetched bytes for the chunk checks."""

    #: concurrent ranged reads of one fetch
    PARALLEL = 8

    def __init__(self, loc, rel, size):
        super().__init__()
        self._loc, self._rel, self._size = loc, rel, size
        self._pos = 0
        self._runs = []  # (start, bytes), sorted, disjoint

    def fetch(self, ranges):
        """Read the byte ranges ``[(start, end)]``, merged where they touch."""
        merged = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        if len(merged) == 1:
            parts = [self._loc.read_range(self._rel, merged[0][0], merged[0][1] - merged[0][0])]
        else:
            with ThreadPoolExecutor(min(self.PARALLEL, len(merged)),
                                    thread_name_prefix="shardann-fetch") as pool:
                parts = list(pool.map(lambda r: self._loc.read_range(self._rel, r[0],
                                                                     r[1] - r[0]), merged))
        self._runs = [(s, p) for (s, _), p in zip(merged, parts, strict=True)]

    def clear(self):
        self._runs = []

    def get(self, start, end):
        for s, data in self._runs:
            if s <= start and end <= s + len(data):
                return memoryview(data)[start - s:end - s]
        return memoryview(self._loc.read_range(self._rel, start, end - start))

    def __getitem__(self, item):
        return self.get(item.start, item.stop)

    # the file protocol pyarrow's PythonFile needs
    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self):
        return self._pos

    def read(self, n=-1):
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        data = bytes(self.get(self._pos, end))
        self._pos += len(data)
        return data

    def readinto(self, buf):
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)
