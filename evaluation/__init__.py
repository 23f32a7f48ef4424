"""Retrieval evaluation: ranks and recall@k in pure NumPy (training, eval, benchmarks)."""
