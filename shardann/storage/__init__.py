"""The on-disk format: versioned manifests, codebooks, list segments, tombstones.

:class:`IndexStore` is the API the single-process ``save`` / ``open_index``
and the distributed layer share; ``docs/format.md`` describes the files.
"""

from ._crash import POINTS as CRASH_POINTS
from ._manifest import FORMAT_VERSION
from ._store import IndexStore, Transaction

__all__ = ["CRASH_POINTS", "FORMAT_VERSION", "IndexStore", "Transaction"]
