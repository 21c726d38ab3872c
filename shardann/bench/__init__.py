"""Datasets and benchmarks: recall/QPS against FAISS (``core``), sharded vs local
(``distributed``), the HTTP load generator of the search service (``loadtest``),
and the parameter planner (:func:`plan`, ``shardann plan``)."""

from .planner import Plan, measure_sample, plan

__all__ = ["Plan", "measure_sample", "plan"]
