"""Private Parquet decoding, used only by ingest's local-file fast path.

Arrow rebuilds a nested ``list<float>`` column value by value from its levels;
for an embedding column those levels only restate "d values in every row".
This package reads such a column chunk itself and declines (:class:`Unsupported`)
whatever it does not handle, so that Arrow reads that row group instead.

- :mod:`.pages`: page headers (Thrift compact protocol), column chunk ranges.
- :mod:`.levels`: the RLE / bit-packed hybrid decoder (Numba), levels and dictionary indices.
- :mod:`.column`: :class:`FixedListColumn`, the embedding-column reader.

Ingest turns it off with ``SHARDANN_PARQUET_FAST=0`` (read when the plan is
made; see ``shardann.distributed._ingest_plan``): Arrow then reads every row.
"""

from .column import FixedListColumn, Unsupported, embedding_leaf
from .pages import chunk_range

__all__ = ["FixedListColumn", "Unsupported", "chunk_range", "embedding_leaf"]
