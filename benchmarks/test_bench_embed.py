"""Embedding throughput: a small synthetic HEST-1k folder through the embedding cache with the
default encoder (EfficientNet-Lite0 on CPU), as ``flag-bench embed`` does it.

One slide of 32 spots (one encoder batch) written by ``bench_embed_stream.write_slide`` (224-px
patches at 0.5 um/px, rows shuffled against the h5ad; setup, not timed). Each round starts from an empty cache and reads,
encodes and writes every spot's embedding (``get_embeddings``, the call ``flag-bench embed`` makes
per slide). ``bench_embed_stream.py`` is the 20,000-spot version that checks memory. The cached
embeddings must be the encoder's output for the slide's own tiles, in spot order.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

SPOTS, SEED = 32, 0


@pytest.fixture(scope="module")
def hest(tmp_path_factory):
    from bench_embed_stream import write_slide
    from flag_bench.catalog import ENCODERS
    from flag_bench.cli.common import default_of
    from flag_bench.datasets.base import PatchSpec
    from flag_bench.plan import load_dataset
    from flag_bench.spec import DatasetSpec

    root = tmp_path_factory.mktemp("bench-embed") / "hest"
    for d in ("st", "patches", "metadata"):
        (root / d).mkdir(parents=True)
    write_slide(root, "SYN0", SPOTS, np.random.default_rng(SEED))
    ds = load_dataset(DatasetSpec.parse(f"hest:root={root}"))
    encoder = ENCODERS.get(default_of("encoder"))()
    patch = PatchSpec(float(default_of("patch_um")), int(default_of("patch_px")))  # `flag-bench embed`'s defaults
    return ds, encoder, patch, tmp_path_factory.mktemp("bench-embed-caches")


def test_embed_slide(benchmark, hest):
    from flag_bench.datasets import embed_cache

    ds, encoder, patch, caches = hest
    (slide,) = ds.slides

    def empty_cache():
        embed_cache.clear_memo()  # the in-process memo would answer without encoding
        return (tempfile.mkdtemp(dir=caches),), {}

    def embed(cache_dir: str) -> np.ndarray:
        return embed_cache.get_embeddings(ds, slide.id, encoder, patch, device="cpu", cache_dir=cache_dir)

    # a few seconds a round: a fixed number of rounds rather than pytest-benchmark's calibration
    emb = benchmark.pedantic(embed, setup=empty_cache, rounds=3, warmup_rounds=1)
    benchmark.extra_info["spots"] = slide.n_spots
    assert emb.shape == (slide.n_spots, encoder.dim) and np.isfinite(emb).all()
    want = encoder.encode(slide.tile_reader(slide.id, patch, np.arange(slide.n_spots)), device="cpu")
    # float32 network outputs; the cache goes through the same batches, so only rounding may differ
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-6)
