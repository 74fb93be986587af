"""flag-bench: benchmark harness for H&E -> spatial gene expression prediction.

Kept import-light on purpose: ``flag-bench --help`` and ``flag-bench list`` must not import
torch, MLflow or anndata.
"""

__version__ = "0.1.0"

# Bumped whenever a change alters what a cell's numbers mean (targets, splits, metric definitions).
PROTOCOL_VERSION = "p2"
