"""Gene-embedding providers: FLAG's alignment target F[s, g] (flag-spec §3.5).

A provider maps raw panel counts of N spots to per-spot, per-gene embeddings and a mask of the
(spot, gene) entries that take part in the alignment loss:

    embed(counts (N, G) int, genes (G,) symbols, gene_ids (G,) Ensembl ids or "")
        -> emb float32 (N, G, D), mask bool (N, G)

Masked entries are zero. Providers live in ``PROVIDERS`` (a registry: plugins add their own
through the ``flag_bench.gene_embeddings`` entry-point group):

* ``geneformer`` (``geneformer.py``): Geneformer V1 rank-value tokenisation + a local Hugging
  Face BERT checkpoint, last hidden layer at each gene's token (the paper's target, with V1 in
  place of V2).
* ``table`` (``gene_tables.py``): a user file with one static vector per gene.
* ``her2st-expr`` (``gene_tables.py``, offline default): a co-expression gene table learned from
  her2st patients A, D–H (never the benchmarked B/C), plus a weight-free encoding of each gene's
  within-spot expression rank, so the target is contextual like a GFM token.

No provider substitutes for another: ``describe()`` names exactly what was used.
"""

from __future__ import annotations

import abc
import inspect
import math
import warnings
from importlib import resources
from typing import Any, Sequence

import numpy as np
from scipy.stats import rankdata

from flag_bench.errors import UserError
from flag_bench.registry import Registry


def package_file(name: str):
    return resources.files("flag_bench.methods").joinpath("data", name)


def load_package_npz(name: str) -> dict[str, np.ndarray]:
    with package_file(name).open("rb") as f, np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def check_counts(counts, genes: Sequence[str], gene_ids: Sequence[str] | None) -> tuple[np.ndarray, tuple, tuple]:
    if hasattr(counts, "toarray"):  # scipy sparse
        counts = counts.toarray()
    c = np.asarray(counts)
    genes = tuple(str(g) for g in genes)
    gene_ids = tuple("" if i is None else str(i) for i in (gene_ids if gene_ids is not None else [""] * len(genes)))
    if c.ndim != 2 or c.shape[1] != len(genes):
        raise ValueError(f"counts must be (N, G={len(genes)}), got {c.shape}")
    if len(gene_ids) != len(genes):
        raise ValueError(f"{len(gene_ids)} gene ids for {len(genes)} genes")
    if c.size and (not np.isfinite(c).all() or c.min() < 0):
        raise UserError("gene embeddings: counts must be finite and >= 0 raw counts; pass the panel's raw UMI counts")
    return c.astype(np.float64), genes, gene_ids


class GeneEmbeddingProvider(abc.ABC):
    """Interface; subclasses set ``name`` and ``dim`` and implement ``_lookup`` and ``embed``."""

    name: str = ""
    dim: int = 0

    def __init__(self) -> None:
        self._warned = False
        self.n_missing: int | None = None  # from the last embed()/coverage() call

    @abc.abstractmethod
    def _lookup(self, genes: tuple[str, ...], gene_ids: tuple[str, ...]) -> list[Any]:
        """Per gene, the provider's key for it, or None when the gene is not in its vocabulary."""

    @abc.abstractmethod
    def embed(self, counts: np.ndarray, genes: Sequence[str], gene_ids: Sequence[str] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """counts (N, G) raw -> (emb float32 (N, G, dim), mask bool (N, G)); masked rows zero."""

    @abc.abstractmethod
    def _describe(self) -> dict:
        """Provider-specific provenance (source files, versions, hashes)."""

    def describe(self) -> dict:
        return {"provider": self.name, "dim": self.dim, "n_missing_genes": self.n_missing, **self._describe()}

    def coverage(self, genes: Sequence[str], gene_ids: Sequence[str] | None = None) -> tuple[int, list[str]]:
        """-> (number of genes in the vocabulary, symbols of the missing ones)."""
        genes = tuple(str(g) for g in genes)
        gene_ids = tuple(gene_ids) if gene_ids is not None else ("",) * len(genes)
        keys = self._lookup(genes, gene_ids)
        missing = [g for g, k in zip(genes, keys) if k is None]
        return len(genes) - len(missing), missing

    def _keys_with_warning(self, genes, gene_ids) -> list[Any]:
        keys = self._lookup(genes, gene_ids)
        missing = [g for g, k in zip(genes, keys) if k is None]
        self.n_missing = len(missing)
        if missing and not self._warned:
            self._warned = True
            head = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            warnings.warn(f"gene embeddings '{self.name}': {len(missing)} of {len(genes)} genes are not in the "
                          f"vocabulary and are masked out of the alignment loss ({head})", UserWarning, stacklevel=3)
        return keys


# ------------------------------------------------------------------------------ rank encoding
def normalised_ranks(values: np.ndarray) -> np.ndarray:
    """values (N, G) >= 0 -> (N, G) rank of each non-zero entry within its row, descending,
    ties averaged, scaled to [0, 1] (0 = highest); zero entries get NaN."""
    v = np.where(values > 0, -values, np.inf)
    r = rankdata(v, method="average", axis=1) - 1.0
    n_nz = (values > 0).sum(1, keepdims=True)
    r = r / np.maximum(n_nz - 1, 1)
    return np.where(values > 0, r, np.nan)


def rank_encoding(r: np.ndarray, dim: int) -> np.ndarray:
    """Fixed sinusoidal encoding of r in [0, 1]: [sin(kπr), cos(kπr)], k = 1..dim/2, scaled to
    unit norm. (..., ) -> (..., dim)."""
    k = np.arange(1, dim // 2 + 1, dtype=np.float64)
    a = math.pi * r[..., None] * k
    return np.concatenate([np.sin(a), np.cos(a)], axis=-1) / math.sqrt(dim // 2)


def strip_version(ensembl_id: str) -> str:
    return ensembl_id.split(".", 1)[0] if ensembl_id.startswith("ENS") else ensembl_id


# ---------------------------------------------------------------------------------- factory
PROVIDERS: Registry = Registry("gene_embeddings", {
    "her2st-expr": "flag_bench.methods.flag.gene_tables:Her2stExprProvider",
    "geneformer": "flag_bench.methods.flag.geneformer:GeneformerProvider",
    "table": "flag_bench.methods.flag.gene_tables:TableProvider",
})
DEFAULT_PROVIDER = "her2st-expr"


def get_provider(name: str = DEFAULT_PROVIDER, **options) -> GeneEmbeddingProvider:
    """Build a provider by name with its options (see each class). Unknown name or option ->
    UserError."""
    if name not in PROVIDERS:
        raise UserError(f"unknown gene embedding provider '{name}'; choose one of {sorted(PROVIDERS.names())}")
    cls = PROVIDERS.get(name)
    try:  # checked against the signature, so a TypeError raised inside a provider is not mistaken for one
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        raise UserError(f"gene embeddings '{name}': bad options {sorted(options)} ({e}); "
                        f"see {cls.__name__} for its options") from None
    return cls(**options)
