"""The child process of ``shardann bench core --fresh-process-latency``.

Run as a script by its path, in a new interpreter with ``-P`` (nothing of its
directory on ``sys.path``)::

    python -P .../shardann/bench/_fresh_child.py LIB INDEX QUERIES K NPROBE REFINE

so that nothing of shardann is imported before the clock starts: the import
of numpy and of the library (shardann or faiss) is part of the measured
``import_s``. Prints one JSON line: ``import_s``, ``open_s`` and
``search_ms``, the wall milliseconds of the first three single-query searches
of the first rows of the ``.npy`` file QUERIES. Only the standard library is
imported at module level.
"""

import json
import sys
import time

LIBS = ("shardann", "faiss")


def first_searches(lib, index_path, queries_path, k, nprobe, refine_factor, searches=3):
    """Import ``lib``, open its index at ``index_path`` and time its first
    ``searches`` single-query searches; return the figures as a dict."""
    t0 = time.perf_counter()
    import numpy as np

    if lib == "shardann":
        import shardann
        t1 = time.perf_counter()
        index = shardann.open_index(index_path)
        t2 = time.perf_counter()

        def search(q):
            index.search(q, k, nprobe=nprobe, refine_factor=refine_factor)
    elif lib == "faiss":
        import faiss
        t1 = time.perf_counter()
        index = faiss.read_index(index_path)
        t2 = time.perf_counter()
        faiss.extract_index_ivf(index).nprobe = nprobe
        if refine_factor:
            index.k_factor = float(refine_factor)

        def search(q):
            index.search(q, k)
    else:
        raise ValueError(f"lib must be one of {LIBS}; got {lib!r}")
    q = np.load(queries_path)
    lat = []
    for i in range(searches):
        s = time.perf_counter()
        search(q[i:i + 1])
        lat.append(time.perf_counter() - s)
    return {"import_s": t1 - t0, "open_s": t2 - t1, "search_ms": [x * 1e3 for x in lat]}


def main(argv):
    lib, index_path, queries_path, k, nprobe, refine_factor = argv
    out = first_searches(lib, index_path, queries_path, int(k), int(nprobe), int(refine_factor))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
