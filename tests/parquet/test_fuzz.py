"""The Parquet decoder on random and damaged bytes (hypothesis).

On any bytes the page-header parser raises nothing but its own
``MalformedPage`` or ``IndexError`` (the window was too short), the level
decoders return a position or a negative code — the same as their slow twin —
and the column reader gives Arrow's values or declines (``Unsupported``): no
other exception, no crash, no hang. The examples are bounded so that the whole
file takes a few seconds.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parquet_support import check_against_twin, fsl, hybrid, vectors

from shardann._parquet import FixedListColumn, Unsupported, chunk_range
from shardann._parquet.pages import (
    MalformedPage,
    bool_field,
    int_field,
    iter_pages,
    read_struct,
    struct_field,
)

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _parse(buf):
    """read_struct and iter_pages over ``buf``: the fields read, or the typed error."""
    try:
        fields, end = read_struct(buf, 0)
        assert 0 < end <= len(buf)
        for fid in list(fields)[:4]:  # typed access: a value or MalformedPage
            for get in (int_field, lambda f, i: bool_field(f, i, None), struct_field):
                try:
                    get(fields, fid)
                except MalformedPage:
                    pass
        for _ in iter_pages(buf, 0, len(buf)):
            pass
        return fields
    except (MalformedPage, IndexError) as exc:
        return type(exc)


def _page_headers():
    """The bytes of real page headers: dictionary, data v1 and data v2 pages."""
    out = []
    x = vectors(300, 4, distinct=5)
    for opts in (dict(), dict(data_page_version="2.0", compression="zstd"),
                 dict(write_page_checksum=True, use_dictionary=False)):
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"embedding": fsl(x)}), sink, **opts)
        raw = sink.getvalue().to_pybytes()
        md = pq.ParquetFile(pa.BufferReader(raw)).metadata
        start, end = chunk_range(md.row_group(0).column(0))
        for _, at, size in iter_pages(raw, start, end):
            out.append(raw[start:at])
            start = at + size
    return out


HEADERS = _page_headers()


@FUZZ
@given(st.binary(max_size=300))
def test_page_header_parser_on_random_bytes(buf):
    got = _parse(buf)
    # bytes, a memoryview and a uint8 array parse the same
    assert _parse(memoryview(buf)) == got
    assert _parse(np.frombuffer(buf, np.uint8)) == got


@FUZZ
@given(st.sampled_from(HEADERS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                          max_size=4), st.integers(0, 200))
def test_page_header_parser_on_damaged_headers(header, changes, cut):
    buf = bytearray(header)
    for at, value in changes:
        buf[at % len(buf)] = value
    _parse(bytes(buf))
    _parse(bytes(buf[:cut % (len(buf) + 1)]))


@pytest.mark.parametrize("unit", [b"\x19", b"\x1c", b"\x1b\x01\xcc", b"\x19\xf9\x01"])
def test_deep_nesting_is_refused_not_a_recursion_error(unit):
    # lists of lists, structs of structs, maps of maps...: Python's stack is not the limit
    with pytest.raises(MalformedPage, match="nested too deep"):
        read_struct(unit * 5000, 0)


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 40), st.integers(0, 300), st.integers(0, 50),
       st.integers(1, 20), st.integers(0, 3), st.booleans(), st.integers(0, 8))
def test_level_decoders_on_random_bytes(raw, width, n, first, d, want, repetition, cut):
    buf = np.frombuffer(raw, np.uint8)
    end = max(0, buf.size - cut)
    check_against_twin(buf, 0, end, width, n, first, d, want, repetition)
    check_against_twin(buf, min(cut, end), end, width, n, first, d, want, repetition)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["rle", "packed"]), st.integers(0, 3),
                          st.integers(1, 30)), min_size=1, max_size=6),
       st.integers(1, 8), st.integers(0, 8), st.booleans())
def test_level_decoders_on_well_formed_streams(runs, d, first, repetition):
    # random bytes rarely hold long valid streams: build some, values 0..3 in 2 bits
    rng = np.random.default_rng(len(runs))
    runs = [(k, v, c) if k == "rle" else (k, rng.integers(0, 4, c)) for k, v, c in runs]
    buf = hybrid(runs, 2)
    total = sum(r[2] if r[0] == "rle" else len(r[1]) for r in runs)
    for n in (total, total // 2):
        check_against_twin(buf, 0, buf.size, 2, n, first, d, 3, repetition)


# -- the column reader on damaged files ------------------------------------------------------
LAYOUTS = [dict(use_dictionary=False, compression="none"),
           dict(data_page_version="2.0", use_dictionary=False, compression="none"),
           dict(compression="snappy"),
           dict(data_page_version="2.0", compression="zstd")]


def _clean_files():
    x = vectors(400, 6, seed=4)
    x[::3] = vectors(134, 6, distinct=4)  # some repeated values: dictionary pages
    out = []
    for opts in LAYOUTS:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"embedding": fsl(x)}), sink, data_page_size=512,
                       row_group_size=400, **opts)
        out.append(sink.getvalue().to_pybytes())
    return x, out


CLEAN = _clean_files()


def _arrow(path, d):
    try:
        col = pq.read_table(path).column("embedding").combine_chunks()
    except Exception:
        return None
    if col.null_count or len(col.flatten()) != len(col) * d:
        return None
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.integers(0, len(LAYOUTS) - 1),
       st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1,
                max_size=3))
def test_column_reader_on_damaged_files(tmp_path, layout, changes):
    x, files = CLEAN
    raw = bytearray(files[layout])
    md = pq.ParquetFile(pa.BufferReader(bytes(raw))).metadata
    start, end = chunk_range(md.row_group(0).column(0))
    for at, value in changes:  # damage the pages, not the footer
        raw[start + at % (end - start)] = value
    path = tmp_path / "damaged.parquet"
    path.write_bytes(bytes(raw))
    try:
        got = np.concatenate(list(FixedListColumn(str(path), md, 0, 6).read(0, 128)))
    except Unsupported:
        return
    # read: the values are Arrow's for the same bytes; where Arrow fails on one
    # damaged byte that the fast reader has no use for (a statistic, the
    # uncompressed size of an uncompressed page), they are the values written
    arrow = _arrow(path, 6)
    if arrow is not None:
        assert got.view(np.uint32).tobytes() == arrow.view(np.uint32).tobytes()
    elif len(changes) == 1:
        assert got.view(np.uint32).tobytes() == x.view(np.uint32).tobytes()
