"""Numba kernels: plain ``@njit`` functions over contiguous arrays.

Arrays in, arrays out; no classes, no I/O, no Ray. Every kernel minimises a
*key*: squared L2 for ``l2``, the negated inner product for ``ip``/``cosine``
(the orchestration layer converts back at the boundary). Ties break by the
smaller id so results are deterministic across shards and block sizes.
"""
