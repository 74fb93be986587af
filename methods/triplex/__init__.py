"""TRIPLEX: target, neighbourhood and whole-slide streams fused by cross-attention (see method.py)."""
