"""Helpers shared by the Parquet decoder tests (imported as ``parquet_support``)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardann._parquet import FixedListColumn, embedding_leaf
from shardann._parquet.levels import fixed_list_levels, rle_hybrid_decode


def vectors(n, d, seed=0, distinct=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    if distinct is not None:  # few distinct values: dictionary pages all the way
        x = rng.integers(0, distinct, (n, d)).astype(np.float32)
    return x


def fsl(x):
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def write(path, table, **opts):
    pq.write_table(table, path, **opts)
    return str(path)


def arrow_values(path, group, d):
    col = pq.ParquetFile(path).read_row_group(group).column("embedding").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d)


def fast_values(path, group, d, part_rows=1 << 20):
    pf = pq.ParquetFile(path)
    leaf = embedding_leaf(pf.metadata, "embedding")
    assert leaf is not None
    parts = list(FixedListColumn(path, pf.metadata, leaf, d).read(group, part_rows))
    for p in parts:
        assert p.dtype == np.float32 and p.flags.c_contiguous and p.shape[1] == d
        assert p.shape[0] <= part_rows
    return np.concatenate(parts) if parts else np.zeros((0, d), np.float32)


# -- a slow pure-Python twin ------------------------------------------------------------------
def _uleb128(buf, pos, end):
    value = shift = 0
    while True:
        if pos >= end or shift > 56:
            return None
        b = int(buf[pos])
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def slow_runs(buf, pos, end, width, n):
    """Yield the values of each run, at most ``n`` in all, then the end position;
    None for a truncated stream, an empty run or a width not in 0..32."""
    if not 0 <= width <= 32:
        yield None
        return
    got = 0
    while got < n:
        head = _uleb128(buf, pos, end)
        if head is None:
            yield None
            return
        header, pos = head
        if header % 2 == 0:
            nbytes = (width + 7) // 8
            if header == 0 or pos + nbytes > end:
                yield None
                return
            values = [int.from_bytes(bytes(buf[pos:pos + nbytes]), "little")] * min(
                header // 2, n - got)
            pos += nbytes
        else:
            groups = header // 2
            if groups == 0 or groups > 1 << 28 or pos + groups * width > end:
                yield None
                return
            bits = int.from_bytes(bytes(buf[pos:pos + groups * width]), "little")
            values = [(bits >> (j * width)) & ((1 << width) - 1)
                      for j in range(min(groups * 8, n - got))]
            pos += groups * width
        got += len(values)
        yield values
    yield pos


def slow_decode(buf, pos, end, width, n):
    out = []
    for run in slow_runs(buf, pos, end, width, n):
        if run is None:
            return -1, None
        if isinstance(run, int):
            return run, out
        out += run


def slow_fixed_list_levels(buf, pos, end, width, n, first, d, want, repetition):
    i = first
    for run in slow_runs(buf, pos, end, width, n):
        if run is None:
            return -1
        if isinstance(run, int):
            return run
        for v in run:
            if v != ((0 if i % d == 0 else 1) if repetition else want):
                return -2
            i += 1


def hybrid(runs, width):
    """Encode ``runs`` ([("rle", value, count) or ("packed", values)]) as a hybrid stream."""
    out = bytearray()

    def uleb(v):
        while True:
            b, v = v & 0x7F, v >> 7
            out.append(b | (0x80 if v else 0))
            if not v:
                return
    for run in runs:
        if run[0] == "rle":
            uleb(run[2] << 1)
            out += int(run[1]).to_bytes((width + 7) // 8, "little")
        else:
            values = list(run[1]) + [0] * (-len(run[1]) % 8)
            uleb((len(values) // 8) << 1 | 1)
            bits = sum(int(v) << (j * width) for j, v in enumerate(values))
            out += bits.to_bytes(len(values) * width // 8, "little")
    return np.frombuffer(bytes(out), np.uint8)


def check_against_twin(buf, pos, end, width, n, first, d, want, repetition):
    """The decoders give their slow twins' answers on these arguments."""
    out = np.zeros(n, np.uint32)
    got = rle_hybrid_decode(buf, pos, end, width, n, out)
    ref, values = slow_decode(buf, pos, end, width, n)
    assert got == ref
    if ref >= 0:
        assert pos <= got <= end
        assert out.tolist() == values
    for rep in (repetition, not repetition):
        assert fixed_list_levels(buf, pos, end, width, n, first, d, want, rep) == \
            slow_fixed_list_levels(buf, pos, end, width, n, first, d, want, rep)
