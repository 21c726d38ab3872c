"""Numba kernels: plain ``@njit`` functions over contiguous arrays.

A few inner loops are Numba intrinsics that emit LLVM vector IR (see
``_simd.py``): the 4-bit fast scan (``fastscan.py``, x86 AVX2 only, with the
scalar scan as fallback) and the low-dimensional argmin of PQ encoding.

Arrays in, arrays out; no classes, no I/O, no Ray. Every kernel minimises a
*key*: squared L2 for ``l2``, the negated inner product for ``ip``/``cosine``
(the orchestration layer converts back at the boundary). Ties break by the
smaller id so results are deterministic across shards and block sizes.

Kernels are compiled with ``cache=True``. Numba keys a cached kernel on its
own file only, so a kernel that calls a kernel of another file keeps stale
machine code after that other file changes (seen here: a stale scan ran 20x
slower). :func:`_drop_stale_cache` therefore clears this package's cache when
any kernel source changed since the cache was written.
"""

import hashlib
import logging
import os
import types

logger = logging.getLogger(__name__)


def serial_and_parallel(body):
    """A serial ``njit(cache=True)`` and a ``parallel=True`` kernel of one body.

    Numba keys its on-disk cache by a function's name and bytecode, not by
    its compile options: two kernels made from one function share one cache
    entry, and whichever compiled first is loaded for the other too (seen
    here: after a single-query search compiled first, every later process's
    "parallel" scan ran on one thread). Each kernel therefore compiles a
    copy of ``body`` named ``<name>_serial`` / ``<name>_parallel``.
    """
    from numba import njit

    def named(suffix):
        fn = types.FunctionType(body.__code__, body.__globals__, body.__name__ + suffix,
                                body.__defaults__, body.__closure__)
        fn.__qualname__ = body.__qualname__ + suffix
        fn.__doc__ = body.__doc__
        return fn

    return (njit(cache=True)(named("_serial")),
            njit(cache=True, parallel=True)(named("_parallel")))


def _drop_stale_cache():
    here = os.path.dirname(os.path.abspath(__file__))
    cache = os.path.join(here, "__pycache__")
    digest = hashlib.sha256()
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            with open(os.path.join(here, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    stamp = os.path.join(cache, "shardann-kernels.sha256")
    try:
        with open(stamp) as f:
            if f.read() == digest.hexdigest():
                return
    except OSError:
        pass
    try:
        os.makedirs(cache, exist_ok=True)
        for name in os.listdir(cache):
            if name.endswith((".nbi", ".nbc")):
                os.remove(os.path.join(cache, name))
        with open(stamp, "w") as f:
            f.write(digest.hexdigest())
        logger.debug("kernel sources changed: cleared the Numba cache in %s", cache)
    except OSError:  # read-only install: Numba then caches elsewhere
        pass


_drop_stale_cache()
