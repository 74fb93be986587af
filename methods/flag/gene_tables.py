"""Static-table gene-embedding providers: ``table`` (a user file) and ``her2st-expr`` (the
offline default, shipped in methods/data)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from flag_bench.errors import UserError
from flag_bench.methods.flag.gene_embeddings import (
    GeneEmbeddingProvider, check_counts, load_package_npz, normalised_ranks, rank_encoding, strip_version,
)

HER2ST_TABLE = "her2st_expr_gene_table.npz"
TABLE_GENE_COLUMNS = ("gene", "genes", "symbol", "gene_symbol", "gene_name", "gene_id")


def _parse_float(x: str, path: Path, where: str) -> float:
    try:
        v = float(x)
    except ValueError:
        raise UserError(f"gene table {path}: non-numeric value {x!r} at {where}; every column but the gene column "
                        "must be a number") from None
    if not math.isfinite(v):
        raise UserError(f"gene table {path}: non-finite value {x!r} at {where}; replace NaN/inf with numbers")
    return v


def read_gene_table(path: str | Path) -> tuple[list[str], np.ndarray]:
    """A gene × D table: .npz with ``genes`` (G,) and ``emb`` (G, D), or a TSV/CSV (optionally
    .gz) with a header, one gene column (named gene/symbol/gene_id/...) and D numeric columns.
    -> (genes, emb float32 (G, D)). Raises UserError naming the file and the problem."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"gene table {p} not found; pass option path=<file.tsv|.csv|.npz>")
    name = p.name.lower()
    if name.endswith(".npz"):
        try:
            with np.load(p, allow_pickle=False) as z:
                if "genes" not in z.files or "emb" not in z.files:
                    raise UserError(f"gene table {p}: .npz needs arrays 'genes' and 'emb', found {sorted(z.files)}")
                genes, emb = [str(g) for g in z["genes"].tolist()], z["emb"]
        except (ValueError, OSError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"gene table {p}: unreadable .npz ({e}); save with np.savez(genes=str array, emb=2-D)") from None
        if emb.ndim != 2 or emb.shape[0] != len(genes) or not np.issubdtype(emb.dtype, np.number):
            raise UserError(f"gene table {p}: 'emb' must be numeric (n_genes={len(genes)}, D), got {emb.shape} {emb.dtype}")
        if not np.isfinite(emb).all():
            raise UserError(f"gene table {p}: 'emb' contains NaN or inf")
        emb = emb.astype(np.float32)
    else:
        delim = "," if name.endswith((".csv", ".csv.gz")) else "\t"
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(p, "rt", newline="") as f:
                rows = [r for r in csv.reader(f, delimiter=delim) if r and any(x.strip() for x in r)]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"gene table {p}: unreadable ({e}); expected a text TSV/CSV") from None
        if len(rows) < 2:
            raise UserError(f"gene table {p}: needs a header row and at least one gene row")
        header = [h.strip() for h in rows[0]]
        gcols = [i for i, h in enumerate(header) if h.lower() in TABLE_GENE_COLUMNS]
        if not gcols:
            raise UserError(f"gene table {p}: missing gene column; name one header column 'gene' "
                            f"(found {header[:5]}{'...' if len(header) > 5 else ''})")
        gi = gcols[0]
        if len(header) < 2:
            raise UserError(f"gene table {p}: no embedding columns besides '{header[gi]}'")
        genes, values = [], []
        for n, r in enumerate(rows[1:], start=2):
            if len(r) != len(header):
                raise UserError(f"gene table {p}: ragged row at line {n} ({len(r)} fields, header has {len(header)})")
            genes.append(r[gi].strip())
            values.append([_parse_float(x, p, f"line {n}, column '{header[j]}'") for j, x in enumerate(r) if j != gi])
        emb = np.asarray(values, dtype=np.float32)
    seen, dups = set(), []
    for g in genes:
        if not g:
            raise UserError(f"gene table {p}: empty gene name; every row needs a gene")
        if g in seen:
            dups.append(g)
        seen.add(g)
    if dups:
        raise UserError(f"gene table {p}: duplicate genes {sorted(set(dups))[:5]}; keep one row per gene")
    return genes, emb


class TableProvider(GeneEmbeddingProvider):
    """Static per-gene vectors from a user file (see :func:`read_gene_table`). Genes are matched
    by symbol, then by Ensembl id. mask = count > 0 and gene in the table.

    Options: path (required).
    """

    name = "table"

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        if not path:
            raise UserError("gene embeddings 'table' needs option path=<gene table .tsv/.csv/.npz>")
        self.path = Path(path).expanduser()
        genes, self.table = read_gene_table(self.path)
        self.index = {g: i for i, g in enumerate(genes)}
        self.dim = int(self.table.shape[1])
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()

    def _lookup(self, genes, gene_ids):
        return [self.index.get(g, self.index.get(strip_version(i)) if i else None) for g, i in zip(genes, gene_ids)]

    def embed(self, counts, genes, gene_ids=None):
        c, genes, gene_ids = check_counts(counts, genes, gene_ids)
        keys = self._keys_with_warning(genes, gene_ids)
        rows = np.zeros((len(genes), self.dim), dtype=np.float32)
        known = np.array([k is not None for k in keys], dtype=bool)
        rows[known] = self.table[[k for k in keys if k is not None]]
        mask = (c > 0) & known[None, :]
        return rows[None] * mask[..., None], mask

    def _describe(self):
        return {"source": f"user gene table {self.path}", "sha256": self.sha256, "n_table_genes": len(self.index)}


# -------------------------------------------------------------------------------- her2st-expr
@lru_cache(maxsize=1)
def her2st_expr_table() -> dict[str, Any]:
    z = load_package_npz(HER2ST_TABLE)
    genes = z["genes"].tolist()
    return {"genes": genes, "index": {g: i for i, g in enumerate(genes)}, "emb": z["emb"],
            "median_cpm": z["median_cpm"].astype(np.float64), "meta": json.loads(str(z["meta"]))}


class Her2stExprProvider(GeneEmbeddingProvider):
    """The offline default: E[s, g] = concat(table[g], w · PE(r[s, g])).

    table[g]: unit-norm 64-d co-expression vector learned from her2st patients A, D–H (see
    ``scripts/build_gene_embeddings.py``). r[s, g]: the normalised rank of gene g within spot s,
    by count / (gene's median non-zero CPM in the reference spots), descending, over the
    spot's non-zero in-table panel genes (Geneformer's rank-value idea; per-spot depth cancels
    in a rank). PE: fixed sinusoidal encoding of ``rank_dim`` dims with unit norm, weighted by
    ``rank_weight`` so the gene identity dominates the cosine target. mask = count > 0 and gene
    in the table. No learned weights, deterministic.

    Options: rank_dim (16, even, 0 = static table only), rank_weight (0.5).
    """

    name = "her2st-expr"

    def __init__(self, rank_dim: int = 16, rank_weight: float = 0.5):
        super().__init__()
        if rank_dim < 0 or rank_dim % 2:
            raise UserError(f"gene embeddings 'her2st-expr': rank_dim must be an even number >= 0, got {rank_dim}")
        if rank_weight < 0:
            raise UserError(f"gene embeddings 'her2st-expr': rank_weight must be >= 0, got {rank_weight}")
        self.t = her2st_expr_table()
        self.rank_dim, self.rank_weight = int(rank_dim), float(rank_weight)
        self.dim = int(self.t["emb"].shape[1]) + self.rank_dim

    def _lookup(self, genes, gene_ids):
        idx = self.t["index"]
        return [idx.get(g, idx.get(g.upper())) for g in genes]

    def embed(self, counts, genes, gene_ids=None):
        c, genes, gene_ids = check_counts(counts, genes, gene_ids)
        keys = self._keys_with_warning(genes, gene_ids)
        known = np.array([k is not None for k in keys], dtype=bool)
        kidx = np.array([k for k in keys if k is not None], dtype=np.int64)
        N, G, D0 = c.shape[0], len(genes), self.t["emb"].shape[1]
        mask = (c > 0) & known[None, :]
        emb = np.zeros((N, G, self.dim), dtype=np.float32)
        emb[:, known, :D0] = self.t["emb"][kidx].astype(np.float32)[None]
        if self.rank_dim:
            value = np.zeros((N, G))
            value[:, known] = c[:, known] / self.t["median_cpm"][kidx][None, :]
            r = normalised_ranks(np.where(mask, value, 0.0))
            emb[:, :, D0:] = self.rank_weight * rank_encoding(np.nan_to_num(r), self.rank_dim)
        emb *= mask[..., None]
        return emb, mask

    def _describe(self):
        m = self.t["meta"]
        return {
            "source": m["source"], "sections": m["sections"], "excluded_patients": m["excluded_patients"],
            "build_hash": m["build_hash"], "table_dim": m["dim"], "n_table_genes": m["n_genes"],
            "method": m["method"], "context": f"sinusoidal within-spot rank encoding, rank_dim={self.rank_dim}, "
                                              f"rank_weight={self.rank_weight}",
        }
