"""Moved to :mod:`shardann._parquet.pages`. Re-exported only for ``storage/_page_crc.py``
and ``storage/_codebooks.py`` (and their test); delete once they no longer import it."""

from ._parquet.pages import (  # noqa: F401
    DATA_PAGE,
    DATA_PAGE_V2,
    DICTIONARY_PAGE,
    MalformedPage,
    chunk_range,
    iter_pages,
    read_struct,
)
