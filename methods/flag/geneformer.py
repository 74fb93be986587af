"""The ``geneformer`` gene-embedding provider: Geneformer V1 contextual embeddings from a local
checkpoint (the paper's alignment target, with V1 in place of V2)."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from flag_bench.errors import UserError
from flag_bench.methods.flag.gene_embeddings import GeneEmbeddingProvider, check_counts, load_package_npz, strip_version

GENEFORMER_DICTS = "geneformer_v1_dicts.npz"
GENEFORMER_V1_MAX_LEN = 2048


@lru_cache(maxsize=1)
def geneformer_v1_dictionaries() -> dict[str, dict]:
    """The shipped V1 dictionaries: token (Ensembl id -> token), median (id -> non-zero median),
    names (symbol -> id, in-vocabulary ids only), meta."""
    z = load_package_npz(GENEFORMER_DICTS)
    return {
        "token": dict(zip(z["token_keys"].tolist(), z["token_values"].tolist())),
        "median": dict(zip(z["median_keys"].tolist(), z["median_values"].tolist())),
        "names": dict(zip(z["name_keys"].tolist(), z["name_values"].tolist())),
        "meta": json.loads(str(z["meta"])),
    }


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
            eid = strip_version(i) if i else ""
            if eid not in tok:
                eid = names.get(g, "")
            keys.append(eid if eid in tok and eid in med else None)
        return keys

    def tokenize(self, counts, genes, gene_ids) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """-> per spot (token ids in rank order, the panel column of each token)."""
        c, genes, gene_ids = check_counts(counts, genes, gene_ids)
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
