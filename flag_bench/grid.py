"""Grid cells and their ids.

A cell is one (dataset version, panel selector + G, method + preset + config hash, fold, seed,
protocol) combination. ``cell_id`` hashes exactly what changes results: never paths, worker
count or device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from flag_bench import PROTOCOL_VERSION
from flag_bench.hashing import short_hash


@dataclass(frozen=True)
class Cell:
    dataset: str
    dataset_spec: str  # name plus parameters, e.g. "synthetic:n_genes=500"
    dataset_version: str
    n_genes: int
    panel: str  # selector spec, e.g. "hmhvg" or "file:genes.txt"
    panel_params: tuple[tuple[str, Any], ...]
    method: str
    preset: str
    config_hash: str
    split: str
    fold: str
    fold_train: tuple[str, ...]
    fold_val: tuple[str, ...]
    fold_test: tuple[str, ...]
    seed: int
    target_transform: str
    encoder: str
    patch: str
    protocol_version: str = PROTOCOL_VERSION
    # the gene sets scored as pathways (flag_bench.gene_sets.GeneSets.identity: name@sha256, never a
    # path); "" for none, and then left out of the hash so every cell id from before stays the same
    gene_sets: str = ""

    @property
    def cell_id(self) -> str:
        d = asdict(self)
        # a file panel is identified by its content hash (in panel_params), not by its path
        if self.panel.startswith("file:"):
            d["panel"] = "file"
        if not self.gene_sets:
            del d["gene_sets"]
        return short_hash(d, n=16)

    def as_params(self) -> dict[str, str]:
        """Flat string params for MLflow."""
        return {
            "dataset": self.dataset,
            "dataset_spec": self.dataset_spec,
            "dataset_version": self.dataset_version,
            "n_genes": str(self.n_genes),
            "panel_selector": self.panel.split(":")[0],
            "method": self.method,
            "preset": self.preset,
            "config_hash": self.config_hash,
            "split": self.split,
            "fold": self.fold,
            "train_slides": ",".join(self.fold_train),
            "val_slides": ",".join(self.fold_val),
            "test_slides": ",".join(self.fold_test),
            "seed": str(self.seed),
            "target_transform": self.target_transform,
            "encoder": self.encoder,
            "patch": self.patch,
            "protocol_version": self.protocol_version,
            **({"gene_sets": self.gene_sets} if self.gene_sets else {}),
        }
