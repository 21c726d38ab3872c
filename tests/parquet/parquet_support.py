"""Helpers shared by the Parquet decoder tests (imported as ``parquet_support``)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardann._parquet import FixedListColumn, embedding_leaf


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
