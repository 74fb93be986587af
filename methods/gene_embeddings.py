"""Gene-embedding providers: FLAG's alignment target F[s, g] (flag-spec §3.5).

A provider maps raw panel counts of N spots to per-spot, per-gene embeddings and a mask of the
(spot, gene) entries that take part in the alignment loss:

    embed(counts (N, G) int, genes (G,) symbols, gene_ids (G,) Ensembl ids or "")
        -> emb float32 (N, G, D), mask bool (N, G)

Masked entries are zero. Providers:

* ``geneformer``: Geneformer V1 rank-value tokenisation + a local Hugging Face BERT checkpoint,
  last hidden layer at each gene's token (the paper's target, with V1 in place of V2).
* ``table``: a user file with one static vector per gene.
* ``her2st-expr`` (offline default): a co-expression gene table learned from her2st patients
  A, D–H (never the benchmarked B/C), plus a weight-free encoding of each gene's within-spot
  expression rank, so the target is contextual like a GFM token.

No provider substitutes for another: ``describe()`` names exactly what was used.
"""

from __future__ import annotations

import abc
import csv
import gzip
import hashlib
import json
import math
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import rankdata

from flag_bench.errors import UserError

GENEFORMER_DICTS = "geneformer_v1_dicts.npz"
HER2ST_TABLE = "her2st_expr_gene_table.npz"
GENEFORMER_V1_MAX_LEN = 2048
TABLE_GENE_COLUMNS = ("gene", "genes", "symbol", "gene_symbol", "gene_name", "gene_id")


def _package_file(name: str):
    return resources.files("flag_bench.methods").joinpath("data", name)


def _load_npz(name: str) -> dict[str, np.ndarray]:
    with _package_file(name).open("rb") as f, np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _check_inputs(counts, genes: Sequence[str], gene_ids: Sequence[str] | None) -> tuple[np.ndarray, tuple, tuple]:
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


# --------------------------------------------------------------------------------- geneformer
@lru_cache(maxsize=1)
def geneformer_v1_dictionaries() -> dict[str, dict]:
    """The shipped V1 dictionaries: token (Ensembl id -> token), median (id -> non-zero median),
    names (symbol -> id, in-vocabulary ids only), meta."""
    z = _load_npz(GENEFORMER_DICTS)
    return {
        "token": dict(zip(z["token_keys"].tolist(), z["token_values"].tolist())),
        "median": dict(zip(z["median_keys"].tolist(), z["median_values"].tolist())),
        "names": dict(zip(z["name_keys"].tolist(), z["name_values"].tolist())),
        "meta": json.loads(str(z["meta"])),
    }


def _strip_version(ensembl_id: str) -> str:
    return ensembl_id.split(".", 1)[0] if ensembl_id.startswith("ENS") else ensembl_id


class GeneformerProvider(GeneEmbeddingProvider):
    """Geneformer V1 contextual gene embeddings from a local checkpoint directory.

    Tokenisation (Geneformer V1 ``TranscriptomeTokenizer``): value = count / n_counts × 10⁴ /
    gene median; only non-zero genes with a median and a token are kept, ordered by value
    descending (ties: panel order, a stable sort), truncated to the model's maximum length
    (2048 for V1). V1 adds no <cls>/<eos> tokens (V2 does). n_counts is the sum of the panel
    counts, as in FLAG's extraction notebook; it does not change the order within a spot.
    E[s, g] = last hidden layer at g's position; genes not in the sequence are zero, mask 0.

    Options: model_dir (required), device ("cpu"), batch_size (16), max_len (model limit).
    """

    name = "geneformer"

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", batch_size: int = 16,
                 max_len: int | None = None):
        super().__init__()
        self.dicts = geneformer_v1_dictionaries()
        self.model_dir = Path(model_dir).expanduser() if model_dir else None
        self.device, self.batch_size = device, int(batch_size)
        self.model = self._load_model()
        cfg = self.model.config
        self.dim = int(cfg.hidden_size)
        limit = int(getattr(cfg, "max_position_embeddings", GENEFORMER_V1_MAX_LEN))
        self.max_len = min(limit, int(max_len) if max_len else GENEFORMER_V1_MAX_LEN)
        top = max(self.dicts["token"].values())
        if cfg.vocab_size <= top:
            raise UserError(f"Geneformer model in {self.model_dir} has vocab_size {cfg.vocab_size} but the V1 token "
                            f"dictionary needs {top + 1}; pass a Geneformer V1 (30M) checkpoint directory")

    def _load_model(self):
        fix = ("download the Geneformer checkpoint (Hugging Face ctheodoris/Geneformer, V1 files: config.json + "
               "model weights) on a machine with internet and pass its folder as model_dir")
        if self.model_dir is None:
            raise UserError(f"gene embeddings 'geneformer' needs option model_dir; {fix}")
        if not self.model_dir.is_dir():
            raise UserError(f"Geneformer model_dir {self.model_dir} does not exist; {fix}")
        try:
            from transformers import BertModel
            from transformers.utils import logging as hf_logging
        except ImportError as e:  # pragma: no cover - transformers is a declared dependency
            raise UserError("gene embeddings 'geneformer' needs the 'transformers' package; pip install transformers") from e
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a BertForMaskedLM checkpoint warns about its unused MLM head
        try:
            model = BertModel.from_pretrained(str(self.model_dir), local_files_only=True, add_pooling_layer=False)
        except (OSError, ValueError, EnvironmentError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"no loadable BERT model in Geneformer model_dir {self.model_dir} ({first[:160]}); {fix}") from e
        finally:
            hf_logging.set_verbosity(verbosity)
        return model.to(self.device).eval()

    def _lookup(self, genes, gene_ids):
        tok, med, names = self.dicts["token"], self.dicts["median"], self.dicts["names"]
        keys = []
        for g, i in zip(genes, gene_ids):
            eid = _strip_version(i) if i else ""
            if eid not in tok:
                eid = names.get(g, "")
            keys.append(eid if eid in tok and eid in med else None)
        return keys

    def tokenize(self, counts, genes, gene_ids) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """-> per spot (token ids in rank order, the panel column of each token)."""
        c, genes, gene_ids = _check_inputs(counts, genes, gene_ids)
        keys = self._keys_with_warning(genes, gene_ids)
        cols = np.array([j for j, k in enumerate(keys) if k is not None], dtype=np.int64)
        tokens = np.array([self.dicts["token"][keys[j]] for j in cols], dtype=np.int64)
        medians = np.array([self.dicts["median"][keys[j]] for j in cols], dtype=np.float64)
        n_counts = c.sum(1, keepdims=True)
        value = c[:, cols] / np.maximum(n_counts, 1e-12) * 10_000.0 / medians[None, :]
        out_tok, out_col = [], []
        for row in value:
            nz = np.flatnonzero(row > 0)
            order = nz[np.argsort(-row[nz], kind="stable")][: self.max_len]
            out_tok.append(tokens[order])
            out_col.append(cols[order])
        return out_tok, out_col

    def embed(self, counts, genes, gene_ids=None):
        import torch

        tok, col = self.tokenize(counts, genes, gene_ids)
        N, G = len(tok), len(tuple(genes))
        emb = np.zeros((N, G, self.dim), dtype=np.float32)
        mask = np.zeros((N, G), dtype=bool)
        with torch.no_grad():
            for start in range(0, N, self.batch_size):
                batch = [(s, t) for s, t in enumerate(tok[start:start + self.batch_size], start) if len(t)]
                if not batch:
                    continue
                L = max(len(t) for _, t in batch)
                ids = torch.zeros(len(batch), L, dtype=torch.long)  # <pad> = 0
                att = torch.zeros(len(batch), L, dtype=torch.long)
                for b, (_, t) in enumerate(batch):
                    ids[b, : len(t)] = torch.as_tensor(t)
                    att[b, : len(t)] = 1
                hidden = self.model(input_ids=ids.to(self.device), attention_mask=att.to(self.device)
                                    ).last_hidden_state.float().cpu().numpy()
                for b, (s, t) in enumerate(batch):
                    emb[s, col[s]] = hidden[b, : len(t)]
                    mask[s, col[s]] = True
        return emb, mask

    def _describe(self):
        cfg = self.model.config
        weights = sorted(p.name for p in self.model_dir.iterdir() if p.suffix in (".bin", ".safetensors"))
        h = hashlib.sha256()
        for w in weights:  # a cheap fingerprint: file names and sizes, not the full weights
            h.update(f"{w}:{(self.model_dir / w).stat().st_size}".encode())
        return {
            "source": f"Hugging Face BERT checkpoint at {self.model_dir} (local)",
            "tokenizer": "Geneformer V1 rank-value encoding, no <cls>, stable ties",
            "dictionaries": self.dicts["meta"]["source"], "dictionaries_sha256": self.dicts["meta"]["sha256"],
            "layer": "last hidden layer", "max_len": self.max_len,
            "model": {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "vocab_size": cfg.vocab_size},
            "weights_fingerprint": h.hexdigest()[:16],
        }


# ------------------------------------------------------------------------------------- table
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
        return [self.index.get(g, self.index.get(_strip_version(i)) if i else None) for g, i in zip(genes, gene_ids)]

    def embed(self, counts, genes, gene_ids=None):
        c, genes, gene_ids = _check_inputs(counts, genes, gene_ids)
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
    z = _load_npz(HER2ST_TABLE)
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
        c, genes, gene_ids = _check_inputs(counts, genes, gene_ids)
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


# ---------------------------------------------------------------------------------- factory
PROVIDERS: dict[str, type[GeneEmbeddingProvider]] = {
    "her2st-expr": Her2stExprProvider,
    "geneformer": GeneformerProvider,
    "table": TableProvider,
}
DEFAULT_PROVIDER = "her2st-expr"


def get_provider(name: str = DEFAULT_PROVIDER, **options) -> GeneEmbeddingProvider:
    """Build a provider by name with its options (see each class). Unknown name or option ->
    UserError."""
    cls = PROVIDERS.get(name)
    if cls is None:
        raise UserError(f"unknown gene embedding provider '{name}'; choose one of {sorted(PROVIDERS)}")
    try:
        return cls(**options)
    except TypeError as e:
        if "unexpected keyword" in str(e) or "positional argument" in str(e):
            raise UserError(f"gene embeddings '{name}': bad options {sorted(options)} ({e}); "
                            f"see {cls.__name__} for its options") from None
        raise
