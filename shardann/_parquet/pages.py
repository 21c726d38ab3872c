"""Parquet page headers read without Arrow.

A column chunk is a run of pages, each a Thrift compact-protocol
``PageHeader`` followed by ``compressed_page_size`` bytes of body. The ingest
reader of embedding columns (:mod:`.column`) walks them.

``PageHeader`` fields used (parquet.thrift): 1 type, 2 uncompressed size,
3 compressed size, 4 crc (signed 32-bit CRC-32 of the body as stored),
5 data page header, 7 dictionary page header, 8 data page v2 header.
"""

import struct

# page types of parquet.thrift
DATA_PAGE, INDEX_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 1, 2, 3


class MalformedPage(ValueError):
    """A page header that does not parse or whose sizes do not fit its column chunk.

    Running off the end of the buffer raises ``IndexError`` instead, so that a
    reader holding only a window of the file can read more and try again. On
    any bytes the parser raises one of these two and nothing else (fuzzed in
    tests/parquet/test_fuzz.py).
    """


# -- Thrift compact protocol (just enough for page headers) ----------------------------------
# Values keep their Thrift type where Python's would lose it: an i32 is an int, a
# byte, i16 or i64 one of these, so that a field of the wrong type is damage (Arrow's
# reader, generated from parquet.thrift, skips it and then misses a required field).
class I8(int):
    """A Thrift byte."""


class I16(int):
    """A Thrift i16."""


class I64(int):
    """A Thrift i64."""


class ThriftMap(dict):
    """A Thrift map (a struct is a plain dict)."""


_INTS = {4: I16, 5: int, 6: I64}


def _varint(buf, pos):
    value = shift = 0
    while True:
        b = int(buf[pos])  # int: a NumPy uint8 would drop the bits shifted past 8
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise MalformedPage("malformed varint in a page header")


def _zigzag(v):
    return (v >> 1) ^ -(v & 1)


#: page headers nest three structs deep; more (structs, lists or maps) means damaged bytes
_MAX_DEPTH = 8
#: largest value of a Thrift i32 (page sizes and value counts)
I32_MAX = (1 << 31) - 1


def _size(buf, pos):
    """A list or map size, at most the bytes left (every element takes one or more)."""
    n, pos = _varint(buf, pos)
    if n > len(buf) - pos:
        raise IndexError("list or map runs past the buffer")
    return n, pos


def _value(buf, pos, t, depth):
    if t in (1, 2):  # booleans carry their value in the type
        return t == 1, pos
    if t == 3:
        return I8(buf[pos]), pos + 1
    if t in (4, 5, 6):
        v, pos = _varint(buf, pos)
        return _INTS[t](_zigzag(v)), pos
    if t == 7:
        if pos + 8 > len(buf):
            raise IndexError("double field runs past the buffer")
        return struct.unpack_from("<d", buf, pos)[0], pos + 8
    if t == 8:
        n, pos = _varint(buf, pos)
        if pos + n > len(buf):
            raise IndexError("binary field runs past the buffer")
        return bytes(buf[pos:pos + n]), pos + n
    if t in (9, 10):
        _nest(depth)
        head = int(buf[pos])
        pos += 1
        size, et = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _size(buf, pos)
        items = []
        for _ in range(size):
            v, pos = _element(buf, pos, et, depth + 1)
            items.append(v)
        return items, pos
    if t == 11:
        _nest(depth)
        size, pos = _size(buf, pos)
        out = ThriftMap()
        if size:
            kv = int(buf[pos])
            pos += 1
            for _ in range(size):
                k, pos = _element(buf, pos, kv >> 4, depth + 1)
                if isinstance(k, (list, dict)):
                    raise MalformedPage("a map key that is a list, map or struct")
                out[k], pos = _element(buf, pos, kv & 0x0F, depth + 1)
        return out, pos
    if t == 12:
        return read_struct(buf, pos, depth + 1)
    raise MalformedPage(f"unknown Thrift type {t} in a page header")


def _element(buf, pos, t, depth):
    """A list or map element: there booleans take a byte of their own."""
    if t in (1, 2):
        return buf[pos] == 1, pos + 1
    return _value(buf, pos, t, depth)


def _nest(depth):
    if depth >= _MAX_DEPTH:
        raise MalformedPage("page header nested too deep")


def read_struct(buf, pos, depth=0):
    """The compact-protocol struct at ``buf[pos]`` (bytes, memoryview or uint8
    array): ``({field id: value}, end)``. Nested structs are dicts too."""
    if depth > _MAX_DEPTH:
        raise MalformedPage("page header nested too deep")
    fields, last = {}, 0
    while True:
        b = int(buf[pos])
        pos += 1
        if b == 0:
            return fields, pos
        delta, t = b >> 4, b & 0x0F
        if delta:
            fid = last + delta
        else:
            v, pos = _varint(buf, pos)
            fid = _zigzag(v)
        fields[fid], pos = _value(buf, pos, t, depth)
        last = fid


# -- typed fields -------------------------------------------------------------------------------
#: ``default`` of a field that parquet.thrift declares required
REQUIRED = object()


def _field(fields, fid, default, kind, what):
    v = fields.get(fid)
    if v is None:
        if default is REQUIRED:
            raise MalformedPage(f"page header without its required field {fid}")
        return default
    if type(v) is not kind:
        raise MalformedPage(f"page header field {fid} is {v!r}; expected {what}")
    return v


def int_field(fields, fid, default=REQUIRED, low=0, high=I32_MAX):
    """Field ``fid`` of a parsed struct: an i32 in ``[low, high]``, or ``default``
    when absent. Damaged bytes can put anything there: :class:`MalformedPage`."""
    v = _field(fields, fid, default, int, "an i32")
    if v is not default and not low <= v <= high:
        raise MalformedPage(f"page header field {fid} is {v}; expected {low}..{high}")
    return v


def bool_field(fields, fid, default=REQUIRED):
    """Field ``fid`` of a parsed struct: a bool, or ``default`` when absent."""
    return _field(fields, fid, default, bool, "a bool")


def struct_field(fields, fid, default=REQUIRED):
    """Field ``fid`` of a parsed struct: a nested struct (dict), or ``default`` when absent."""
    return _field(fields, fid, default, dict, "a struct")


# -- pages of a column chunk -------------------------------------------------------------------
def chunk_range(column_chunk):
    """``(start, end)`` file offsets of a column chunk's pages, dictionary page
    included; ``column_chunk`` is a ``pyarrow.parquet.ColumnChunkMetaData``."""
    start = column_chunk.data_page_offset
    if column_chunk.has_dictionary_page and column_chunk.dictionary_page_offset:
        start = min(start, column_chunk.dictionary_page_offset)
    return start, start + column_chunk.total_compressed_size


def body_size(header, body_start, end):
    """The compressed body size of a page whose body starts at ``body_start``,
    checked to end by the chunk's ``end``."""
    int_field(header, 2)  # the uncompressed size, required
    csize = int_field(header, 3)
    if body_start + csize > end:
        raise MalformedPage("page header without sizes or past the column chunk")
    return csize


def iter_pages(buf, start, end):
    """Yield ``(header, body_start, body_size)`` for each page of the column
    chunk ``buf[start:end]`` (``buf`` holds the whole file, e.g. a memoryview
    of a memory map). Raises :class:`MalformedPage` or ``IndexError``."""
    pos = start
    while pos < end:
        header, at = read_struct(buf, pos)
        csize = body_size(header, at, end)
        yield header, at, csize
        pos = at + csize
