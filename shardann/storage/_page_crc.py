"""Check the CRC-32 of every page of some column chunks of a segment.

Arrow can verify page checksums as it decodes, but its CRC runs at about
2 GB/s here and doubled the time to load lists. This walks the page headers of
the wanted column chunks in the file's memory map and checks each page
body with ISA-L's CRC-32 (about 10 GB/s); ``SegmentFile`` runs it before or
while Arrow decodes the same bytes. Segments are always written with page
checksums, so a data or dictionary page without one is damage too.
"""

from .._parquet_pages import (
    DATA_PAGE,
    DATA_PAGE_V2,
    DICTIONARY_PAGE,
    MalformedPage,
    chunk_range,
    iter_pages,
)
from ..errors import CorruptIndexError
from ._files import fast_crc32

_CHECKED = (DATA_PAGE, DATA_PAGE_V2, DICTIONARY_PAGE)


def check_page_crcs(path, data, metadata, row_groups, columns):
    """Raise :class:`~shardann.CorruptIndexError` naming ``path``, the row group
    and the column at the first page whose body does not match its CRC.

    Parameters
    ----------
    path : the segment file (for messages). data : its bytes (any buffer, e.g.
    a memory map). metadata : its ``pyarrow.parquet.FileMetaData``.
    row_groups : row group numbers. columns : leaf column indices.
    """
    # as unsigned bytes: an Arrow buffer exports signed ones
    with memoryview(data) as view, view.cast("B") as buf:
        for g in row_groups:
            rg = metadata.row_group(g)
            for c in columns:
                _check_chunk(buf, rg.column(c), path, g)


def _check_chunk(buf, cc, path, group):
    where = f"{path}: row group {group}, column {cc.path_in_schema}"
    start, end = chunk_range(cc)
    if end > len(buf):
        raise CorruptIndexError(f"{where}: column chunk runs past the end of the file")
    try:
        for header, at, size in iter_pages(buf, start, end):
            want = header.get(4)
            if want is None:
                if header.get(1) in _CHECKED:
                    raise CorruptIndexError(f"{where}: page at byte {at} has no checksum")
                continue
            # the header holds a signed 32-bit value
            if fast_crc32(buf[at:at + size]) != want & 0xFFFFFFFF:
                raise CorruptIndexError(f"{where}: page at byte {at} fails its checksum")
    except (MalformedPage, IndexError) as exc:
        raise CorruptIndexError(f"{where}: unreadable page header ({exc})") from None
