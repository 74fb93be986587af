"""BLEEP: bi-modal contrastive embedding and retrieval (see method.py)."""
