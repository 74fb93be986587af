"""BLEEP's prediction: cosine top-k retrieval of training spots, computed in chunks.

Queries (test image embeddings) and keys (training expression embeddings) are L2-normalised and
compared by dot product, ``query_chunk`` x ``bank_chunk`` scores at a time with a running top-k,
so memory is O(query_chunk x (bank_chunk + k)) whatever the bank size: never a queries x bank
matrix. The prediction averages the retrieved spots' measured expression.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flag_bench.methods.bleep.config import RETRIEVALS


def topk_cosine(queries: torch.Tensor, keys: torch.Tensor, k: int, bank_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, p), (N, p) -> (scores (q, k), indices (q, k)) of the k most cosine-similar keys, best
    first. Each bank chunk contributes its own top k, merged with the running best by a stable
    sort of 2k candidates, so memory is one (q, bank_chunk) score block."""
    q = F.normalize(queries.float(), dim=-1)
    k = min(k, keys.shape[0])
    best_s = torch.full((q.shape[0], 0), -float("inf"), device=q.device)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=q.device)
    for a in range(0, keys.shape[0], bank_chunk):
        s = q @ F.normalize(keys[a:a + bank_chunk].float(), dim=-1).T
        cs, ci = s.topk(min(k, s.shape[1]), dim=1)
        cand_s, cand_i = torch.cat([best_s, cs], 1), torch.cat([best_i, ci + a], 1)
        # earlier chunks first, so an exact tie across chunks keeps the lower key index
        order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices[:, :k]
        best_s, best_i = cand_s.gather(1, order), cand_i.gather(1, order)
    return best_s, best_i


def retrieve(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *, method: str, k: int,
             query_chunk: int = 1024, bank_chunk: int = 16384) -> torch.Tensor:
    """Predicted expression (q, G) from the bank ``keys`` (N, p) / ``values`` (N, G).

    ``simple``: the top-1 spot; ``average``: unweighted mean of the top k; ``weighted``: top k
    weighted by exp(-(d^2 - d_min^2 + 1)) with d the Euclidean distance between the unnormalised
    embeddings (BLEEP's inference notebook), normalised to sum 1.
    """
    if method not in RETRIEVALS:
        raise ValueError(f"retrieval must be one of {RETRIEVALS}, got {method!r}")
    kk = 1 if method == "simple" else k
    out = []
    for a in range(0, queries.shape[0], query_chunk):
        qc = queries[a:a + query_chunk]
        _, idx = topk_cosine(qc, keys, kk, bank_chunk)
        got = values[idx]  # (c, kk, G)
        if method != "weighted":
            out.append(got.float().mean(1))
            continue
        d2 = ((keys[idx].float() - qc.float()[:, None, :]) ** 2).sum(-1)
        w = torch.exp(-(d2 - d2.min(dim=1, keepdim=True).values + 1.0))
        w = w / w.sum(dim=1, keepdim=True)
        out.append((w[..., None] * got.float()).sum(1))
    return torch.cat(out) if out else values.new_zeros((0, values.shape[1]))
