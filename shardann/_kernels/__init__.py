"""Numba kernels: plain ``@njit`` functions over contiguous arrays.

A few inner loops are Numba intrinsics that emit LLVM vector IR (see
``_simd.py``): the 4-bit fast scan (``fastscan.py``, x86 AVX2, AVX-512 where the host has it)
and the 8-bit one (``fastscan8.py``, x86 AVX-512 VBMI only), each with the scalar scan as
fallback, and the low-dimensional argmin of PQ encoding.

Arrays in, arrays out; no classes, no I/O, no Ray. Every kernel minimises a
*key*: squared L2 for ``l2``, the negated inner product for ``ip``/``cosine``
(the orchestration layer converts back at the boundary). Ties break by the
smaller id so results are deterministic across shards and block sizes.

Kernels are compiled with ``cache=True``. Numba keys a cached kernel on its
own file only, so a kernel that calls a kernel of another file keeps stale
machine code after that other file changes (seen here: a stale scan ran 20x
slower). :func:`_drop_stale_cache` therefore clears this package's cache when
any kernel source changed since the cache was written.

Compilation is lazy: a kernel compiles (or loads from the cache) on its first
call with a given set of argument types, so a process pays only for what it
runs. Keeping that cheap on a fresh install: no slice assignment,
broadcasting, ``reshape`` or ``view`` inside kernels (Numba compiles its
generic versions of those, with their error-message formatting, per kernel);
no literal-int arguments (``f(x, 0)`` compiles a second specialisation for
``Literal[int](0)``); paths that data decides once (code width, sub-vector
width) are separate kernels chosen in Python rather than branches that all
compile.

The first time a process compiles one of these kernels (a cache miss),
:data:`COMPILE_LOGGER` ("shardann.kernels") logs one INFO record saying so,
since the first run after an install or upgrade takes seconds longer. INFO
keeps it out of library users' output (Python shows WARNING and up by
default); the ``shardann`` command shows it by setting that logger to INFO.
"""

import hashlib
import logging
import os
import types

from numba.core import event

logger = logging.getLogger(__name__)
#: name of the logger of the one "compiling kernels" record per process
COMPILE_LOGGER = "shardann.kernels"
#: wall seconds a typical first run spends compiling (IVF-PQ train, add and
#: search on 2 cores: 9-13 s measured); said in the record, not enforced
_COMPILE_SECONDS = 10


def serial_and_parallel(body):
    """A serial ``njit(cache=True, nogil=True)`` and a ``parallel=True`` kernel of one body.

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

    # the serial one releases the GIL: callers may split a batch over Python
    # threads (the coarse probe of a sharded index's coordinator does)
    return (njit(cache=True, nogil=True)(named("_serial")),
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


class _FirstCompile(event.Listener):
    """Logs once, when a shardann kernel first misses the cache in this process."""

    logged = False

    def on_start(self, ev):
        if self.logged:
            return
        dispatcher = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not module.startswith("shardann."):
            return
        self.logged = True  # (unregistering here would skip the next listener)
        logging.getLogger(COMPILE_LOGGER).info(
            "compiling Numba kernels for this machine, once per install (about %d s in "
            "all); later runs load them from the cache", _COMPILE_SECONDS)

    def on_end(self, ev):
        pass


event.register("numba:compile", _FirstCompile())
