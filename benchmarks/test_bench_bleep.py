"""BLEEP's retrieval (``methods/bleep/retrieval.py``): chunked cosine top-k over a training bank.

A 10,000-spot bank (embedding dim 256, G = 200), 500 queries, k = 50 (BLEEP's default), chunks
smaller than the bank and the queries so the running top-k merge is what is timed. The answer is
checked against one dense queries x bank top-k (fine at this size; what the chunks avoid at
100,000 spots, see ``bench_bleep_retrieval.py``).
"""

from __future__ import annotations

import pytest
import torch

from flag_bench.methods.bleep.retrieval import retrieve

BANK, QUERIES, DIM, GENES, K, SEED = 10_000, 500, 256, 200, 50, 0
QUERY_CHUNK, BANK_CHUNK = 128, 2_048


@pytest.fixture(scope="module")
def bank():
    g = torch.Generator().manual_seed(SEED)
    keys = torch.randn(BANK, DIM, generator=g)
    values = torch.rand(BANK, GENES, generator=g)
    queries = torch.randn(QUERIES, DIM, generator=g)
    return queries, keys, values


def dense(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, method: str) -> torch.Tensor:
    """The same prediction from the whole score matrix at once."""
    cos = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(keys, dim=1).T
    idx = torch.sort(cos, dim=1, descending=True, stable=True).indices[:, :K]
    if method == "average":
        return values[idx].mean(1)
    d2 = ((keys[idx] - queries[:, None, :]) ** 2).sum(-1)
    w = torch.exp(-(d2 - d2.min(dim=1, keepdim=True).values + 1.0))
    return ((w / w.sum(1, keepdim=True))[..., None] * values[idx]).sum(1)


@pytest.mark.parametrize("method", ["average", "weighted"])
def test_retrieve(benchmark, bank, method):
    queries, keys, values = bank
    out = benchmark(retrieve, queries, keys, values, method=method, k=K, query_chunk=QUERY_CHUNK,
                    bank_chunk=BANK_CHUNK)
    assert out.shape == (QUERIES, GENES)
    torch.testing.assert_close(out, dense(queries, keys, values, method))
