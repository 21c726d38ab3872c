"""Datasets and benchmarks (recall/QPS against FAISS)."""
