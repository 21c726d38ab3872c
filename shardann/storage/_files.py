"""Durable local file writes and checked reads.

Every data file is written once under a fresh name (``open(..., "xb")``),
fsynced, and never modified; its size and CRC-32 go into the manifest.
"""

import os
import zlib

from ..errors import CorruptIndexError

try:  # ISA-L's CRC-32 runs at ~10 GB/s here, zlib's at 1.5-3 GB/s; same values
    from isal.isal_zlib import crc32 as fast_crc32
except ImportError:  # pragma: no cover - isal is a declared dependency
    fast_crc32 = zlib.crc32


def fsync_dir(path):
    """Make the directory entries under ``path`` durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ChecksumWriter:
    """A write-only binary file that computes its CRC-32 and size as it goes.

    Used as the sink of ``pyarrow.parquet.ParquetWriter``; keeps the last bytes
    written so the Parquet footer's checksum is known without reading back.
    """

    _TAIL = 1 << 22

    def __init__(self, path):
        self.path = path
        self._f = open(path, "xb")
        self.crc = 0
        self.size = 0
        self._tail = bytearray()
        self.closed = False

    # the file-object protocol pyarrow's PythonFile needs
    def write(self, data):
        mv = memoryview(data).cast("B")
        self._f.write(mv)
        self.crc = fast_crc32(mv, self.crc)
        self.size += len(mv)
        self._tail += mv[-self._TAIL:]
        if len(self._tail) > 2 * self._TAIL:
            del self._tail[: -self._TAIL]
        return len(mv)

    def tell(self):
        return self.size

    def flush(self):
        self._f.flush()

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    def close(self):
        """Flush, fsync and close (idempotent)."""
        if not self.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self.closed = True

    def abort(self):
        if not self.closed:
            self._f.close()
            self.closed = True
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def tail(self, n):
        """The last ``n`` bytes written (n must be <= what was kept)."""
        if n > len(self._tail):
            with open(self.path, "rb") as f:
                f.seek(self.size - n)
                return f.read(n)
        return bytes(self._tail[len(self._tail) - n:])


def write_bytes(path, data):
    """Create ``path`` (must not exist) holding ``data``, fsynced. Returns (size, crc32)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return len(data), fast_crc32(data)


def read_checked(loc, rel, size, crc32, what="file"):
    """Read a whole small file ``rel`` of location ``loc`` and check it against its
    manifest entry."""
    path = loc.path(rel)
    try:
        data = loc.read(rel)
    except FileNotFoundError:
        raise CorruptIndexError(f"{path}: {what} named by the manifest is missing") from None
    except OSError as exc:
        raise CorruptIndexError(f"{path}: cannot read {what} ({exc})") from exc
    if len(data) != size:
        raise CorruptIndexError(
            f"{path}: {what} has {len(data)} bytes but the manifest says {size} "
            "(truncated or replaced)")
    got = fast_crc32(data)
    if got != crc32:
        raise CorruptIndexError(
            f"{path}: {what} checksum mismatch (crc32 {got:08x}, manifest {crc32:08x})")
    return data


def file_crc32(loc, rel, chunk=1 << 22):
    """(size, crc32) of a whole file ``rel`` of location ``loc``, read in chunks."""
    crc, size = 0, 0
    with loc.open_stream(rel) as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            crc = fast_crc32(block, crc)
            size += len(block)
    return size, crc


def check_size(loc, rel, size, what="file"):
    try:
        got = loc.stat(rel)[0]
    except FileNotFoundError:
        raise CorruptIndexError(f"{loc.path(rel)}: {what} named by the manifest is "
                                "missing") from None
    if got != size:
        raise CorruptIndexError(
            f"{loc.path(rel)}: {what} has {got} bytes but the manifest says {size} "
            "(truncated or replaced)")
