"""Datasets and benchmarks: recall/QPS against FAISS (``core``), sharded vs local
(``distributed``), and the HTTP load generator of the search service (``loadtest``)."""
