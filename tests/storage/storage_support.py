"""Helpers shared by the storage tests (imported as ``storage_support``)."""

import numpy as np

D = 16  # dimension
NB = 2000  # vectors in each test index (ids 0..NB-1)
NQ = 40  # queries
NLIST = 16
K = 10


def search_kw(index):
    kw = {} if index.kind == "flat" else {"nprobe": 4}
    if getattr(index, "keep_vectors", None):
        kw["refine_factor"] = 2
    return kw


def content(store_or_lists):
    """{id: (list_no, payload bytes)} of a store's live rows (or read_lists output)."""
    if isinstance(store_or_lists, tuple):
        sizes, ids, cols = store_or_lists
    else:
        sizes, ids, cols = store_or_lists.read_lists()
    lists = np.repeat(np.arange(sizes.size), sizes)
    names = sorted(cols)
    out = {}
    for i, (id_, lst) in enumerate(zip(ids.tolist(), lists.tolist(), strict=True)):
        out[id_] = (lst,) + tuple(cols[k][i].tobytes() for k in names)
    return out


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
