"""Gene-panel selectors, fitted on training slides only.

A selector sees the raw counts of the training slides (candidate pool columns) and returns an
ordered GenePanel of exactly G genes. ``panel_id`` hashes the selector, its parameters, the
fold's training slides, the dataset version and the genes, so a panel is identified exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp

from flag_bench.errors import UserError
from flag_bench.hashing import canonical_json, short_hash
from flag_bench.spec import PanelSpec

_EXCLUDED = re.compile(r"^(MT-|mt-|MT|mt|RPS|RPL)")


@dataclass(frozen=True)
class GenePanel:
    genes: tuple[str, ...]
    index: tuple[int, ...]  # column indices into the dataset's gene list
    selector: str
    params: dict[str, Any]
    train_slides: tuple[str, ...]
    dataset_version: str
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. K found by the hmhvg search

    @property
    def size(self) -> int:
        return len(self.genes)

    @property
    def panel_id(self) -> str:
        return short_hash(
            {
                "selector": self.selector,
                "params": self.params,
                "train": sorted(self.train_slides),
                "dataset": self.dataset_version,
                "genes": list(self.genes),
            },
            n=10,
        )


def _check_size(n_genes: int, pool: int, what: str) -> None:
    if n_genes <= 0:
        raise UserError(f"--genes {n_genes}: a panel needs at least one gene")
    if n_genes > pool:
        raise UserError(f"--genes {n_genes}: only {pool} candidate genes are available ({what}); use --genes {pool} or fewer")


def _descending_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, largest value first; ties broken by column order (deterministic)."""
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def seurat_hvg(counts: sp.csr_matrix, n_top: int) -> np.ndarray:
    """Indices of the top highly variable genes, scanpy's ``flavor='seurat'`` recipe.

    counts: (n_spots, n_genes) raw counts of one slide. Normalise each spot to its median
    library size, log1p, then rank genes by dispersion (var/mean of expm1 data, log) normalised
    within 20 mean bins. Genes detected in no spot are never selected.
    """
    x = sp.csr_matrix(counts, dtype=np.float64)
    lib = np.asarray(x.sum(axis=1)).ravel()
    keep = lib > 0
    x = x[keep]
    lib = lib[keep]
    target = np.median(lib)
    x = sp.diags(target / lib) @ x
    x.data = np.log1p(x.data)
    # scanpy's seurat flavour computes mean/var on expm1 of the log data
    e = x.copy()
    e.data = np.expm1(e.data)
    mean = np.asarray(e.mean(axis=0)).ravel()
    sq = e.multiply(e)
    var = (np.asarray(sq.mean(axis=0)).ravel() - mean**2) * (e.shape[0] / max(e.shape[0] - 1, 1))
    detected = mean > 0
    mean[mean == 0] = 1e-12
    disp = var / mean
    disp[disp == 0] = np.nan
    disp = np.log(disp)
    mean_log = np.log1p(mean)
    bins = np.digitize(mean_log, np.histogram_bin_edges(mean_log, bins=20)[1:-1])
    norm = np.full_like(disp, np.nan)
    for b in np.unique(bins):
        sel = bins == b
        d = disp[sel]
        mu, sd = np.nanmean(d), np.nanstd(d, ddof=1) if np.sum(np.isfinite(d)) > 1 else np.nan
        # scanpy: a bin with a single gene gets normalised dispersion 1 (sd undefined)
        norm[sel] = (d - mu) / sd if np.isfinite(sd) and sd > 0 else 1.0
    norm[~detected] = np.nan
    norm = np.where(np.isfinite(norm), norm, -np.inf)
    order = np.argsort(-norm, kind="stable")
    n_ok = int(np.isfinite(norm[order]).sum())
    return np.sort(order[: min(n_top, n_ok)])


def _column_mean_std(x: sp.csc_matrix, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (ddof 1) per column, two-pass on dense column blocks (as pandas does),
    so near-tied genes rank the same way as in the reference notebook; memory stays bounded."""
    means, stds = [], []
    for j in range(0, x.shape[1], chunk):
        block = x[:, j:j + chunk].toarray().astype(np.float64)
        means.append(block.mean(axis=0))
        stds.append(block.std(axis=0, ddof=1) if block.shape[0] > 1 else np.zeros(block.shape[1]))
    return np.concatenate(means), np.concatenate(stds)


class PanelSelector:
    name: str = ""

    def __init__(self, **params: Any):
        self.params = params

    def fit(self, train_counts: Sequence[sp.csr_matrix], genes: Sequence[str], n_genes: int,
            *, train_slides: Sequence[str], dataset_version: str) -> GenePanel:
        raise NotImplementedError

    def _panel(self, genes, idx, train_slides, dataset_version, **stats) -> GenePanel:
        idx = [int(i) for i in idx]
        return GenePanel(
            genes=tuple(genes[i] for i in idx),
            index=tuple(idx),
            selector=self.name,
            params=dict(self.params),
            train_slides=tuple(train_slides),
            dataset_version=dataset_version,
            stats=stats,
        )


class HMHVG(PanelSelector):
    """FLAG's high-mean ∩ high-variance genes (flag-spec §1.3), exact size G.

    1. candidates: union over training slides of the seurat-HVG top ``n_top_hvg`` genes,
       minus MT-/RPS/RPL genes;
    2. mean and sample std (ddof 1) of raw counts over all pooled training spots;
    3. S(K) = top-K by mean ∩ top-K by std; the smallest K with |S(K)| >= G is taken, and
       genes with the largest max(rank_mean, rank_std) are dropped until |S| = G (ties: the
       lower mean rank stays).
    """

    name = "hmhvg"

    def __init__(self, n_top_hvg: int = 4096):
        super().__init__(n_top_hvg=n_top_hvg)

    def fit(self, train_counts, genes, n_genes, *, train_slides, dataset_version):
        genes = list(genes)
        cand = np.zeros(len(genes), dtype=bool)
        for c in train_counts:
            cand[seurat_hvg(c, self.params["n_top_hvg"])] = True
        cand &= np.array([not _EXCLUDED.match(g) for g in genes])
        cidx = np.flatnonzero(cand)
        _check_size(n_genes, len(cidx), "HVG candidates on the training slides")
        pooled = sp.vstack([sp.csr_matrix(c)[:, cidx] for c in train_counts]).tocsc()
        mean, std = _column_mean_std(pooled)
        r_mu, r_sd = _descending_ranks(mean), _descending_ranks(std)
        m = np.maximum(r_mu, r_sd)
        # |S(K)| = #{g : max rank <= K}; the smallest K reaching G is the G-th smallest m
        order = np.lexsort((r_mu, m))
        chosen = np.sort(order[:n_genes])
        k_found = int(m[order[n_genes - 1]])
        return self._panel(genes, cidx[chosen], train_slides, dataset_version,
                           k_search=k_found, n_candidates=int(len(cidx)))


class HVG(PanelSelector):
    """Top-G seurat highly variable genes on the pooled training spots (MT-/RPS/RPL excluded)."""

    name = "hvg"

    def fit(self, train_counts, genes, n_genes, *, train_slides, dataset_version):
        genes = list(genes)
        ok = np.array([not _EXCLUDED.match(g) for g in genes])
        pooled = sp.vstack([sp.csr_matrix(c) for c in train_counts])[:, np.flatnonzero(ok)]
        _check_size(n_genes, int(ok.sum()), "genes after excluding MT-/RPS/RPL")
        sel = seurat_hvg(pooled, n_genes)
        if len(sel) < n_genes:
            _check_size(n_genes, len(sel), "genes detected on the training slides")
        return self._panel(genes, np.flatnonzero(ok)[sel], train_slides, dataset_version)


def _read_gene_list(p: Path, path: str) -> list[str]:
    """Symbols from a text file (one per line, '#' comments) or a JSON list / ``{"genes": [...]}``."""
    if p.suffix.lower() == ".json":
        import json

        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"--panel file:{path}: not valid JSON ({exc.msg}, line {exc.lineno}); fix the file") from None
        genes = data.get("genes") if isinstance(data, dict) else data
        if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
            raise UserError(f"--panel file:{path}: expected a JSON list of gene symbols or {{\"genes\": [...]}}")
        return [g.strip() for g in genes if g.strip()]
    genes = [ln.split("#")[0].strip() for ln in p.read_text().splitlines()]
    return [g for g in genes if g]


class FilePanel(PanelSelector):
    """The first G genes of a user's gene list: a text file (one symbol per line, '#' comments)
    or a JSON list / ``{"genes": [...]}`` such as HEST-Benchmark's ``var_50genes.json``.

    ``stats['test_informed']`` is False here; the fold builder sets it True when the dataset
    declares the file as chosen with its test samples (``meta['test_informed_files']``).
    """

    name = "file"

    def __init__(self, path: str):
        super().__init__(path=str(path))
        p = Path(path)
        if not p.is_file():
            raise UserError(f"--panel file:{path}: no such file; give a text file with one gene symbol per line "
                            "or a JSON list of genes")
        self._genes = _read_gene_list(p, path)
        if not self._genes:
            raise UserError(f"--panel file:{path}: the file lists no genes")
        if len(set(self._genes)) != len(self._genes):
            dup = sorted({g for g in self._genes if self._genes.count(g) > 1})
            raise UserError(f"--panel file:{path}: duplicate genes {', '.join(dup[:5])}; list each gene once")
        self.params["sha"] = short_hash(self._genes)

    def fit(self, train_counts, genes, n_genes, *, train_slides, dataset_version):
        _check_size(n_genes, len(self._genes), f"genes listed in {self.params['path']}")
        pos = {g: i for i, g in enumerate(genes)}
        wanted = self._genes[:n_genes]
        missing = [g for g in wanted if g not in pos]
        if missing:
            raise UserError(
                f"--panel file:{self.params['path']}: {len(missing)} gene(s) not in the dataset "
                f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); remove them from the file"
            )
        return self._panel(list(genes), [pos[g] for g in wanted], train_slides, dataset_version,
                           test_informed=False)


def make_selector(spec: PanelSpec, cls: Callable[..., PanelSelector]) -> PanelSelector:
    """Instantiate the selector class the caller resolved from the PANELS registry for ``spec``
    (a file selector gets the spec's path; the others take no argument)."""
    if spec.kind == "file":
        if not spec.path:
            raise UserError("--panel file needs a path: --panel file:genes.txt")
        return cls(spec.path)
    return cls()


def selector_key(selector: PanelSelector) -> str:
    """Canonical text of a selector and its parameters (a memo key: equal text, equal panels)."""
    return f"{selector.name}:{canonical_json(selector.params)}"
