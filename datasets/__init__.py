"""Datasets, splits, gene panels, image encoders and the embedding cache (``flag_bench.datasets``)."""
