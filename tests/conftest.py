"""Shared fixtures: small in-memory TrainData/TestData and isolated caches."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # embeddings computed by tests never land in the user's cache
    monkeypatch.setenv("FLAG_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "embed-cache"))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium's path for the browser tests; where it is missing they skip, or fail under
    CI=true (tests/services.py: missing_engine). Session-scoped so it is checked before any costly
    module fixture the test also needs."""
    from services import chromium_path, missing_engine, note_engine

    path = chromium_path()
    if path is None:
        missing_engine("chromium", "headless Chromium not installed (apt-get install chromium)")
    note_engine("chromium", f"ran ({path})")
    return path


def make_views(n_train_slides=3, n_test_slides=1, n_spots=48, n_genes=12, emb_dim=16, seed=0):
    """Smooth spatial expression driven by a hidden state that the embeddings also see.

    Returns (TrainData, TestData, test truths list).
    """
    from flag_bench.datasets.views import SlideInput, TestData, TrainData, TrainSlide

    rng = np.random.default_rng(seed)
    load = rng.normal(size=(4, n_genes))
    proj = rng.normal(size=(4, emb_dim))
    side = int(np.ceil(np.sqrt(n_spots)))

    def slide(i):
        xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n_spots]
        coords = xy.astype(np.float32) * 100.0
        phase = rng.uniform(0, 2 * np.pi, size=4)
        h = np.sin(xy[:, :1] / 2.0 + phase) + np.cos(xy[:, 1:] / 3.0 + phase)
        mu = np.exp(1.0 + 0.5 * h @ load / np.sqrt(4))
        counts = rng.poisson(mu).astype(np.int32)
        emb = (h @ proj + 0.3 * rng.normal(size=(n_spots, emb_dim))).astype(np.float32)
        base = dict(slide_id=f"S{i}", patient=f"P{i}", barcodes=np.array([f"b{j}" for j in range(n_spots)]),
                    coords_um=coords, embeddings=emb, image=None, spot_diameter_um=55.0)
        return base, counts

    genes = tuple(f"G{g}" for g in range(n_genes))
    common = dict(genes=genes, gene_ids=("",) * n_genes, target_transform="log1p", dataset="unit")
    train_slides = []
    for i in range(n_train_slides):
        base, counts = slide(i)
        train_slides.append(TrainSlide(**base, targets=np.log1p(counts).astype(np.float32), counts=counts))
    test_slides, truths = [], []
    for i in range(n_train_slides, n_train_slides + n_test_slides):
        base, counts = slide(i)
        test_slides.append(SlideInput(**base))
        truths.append(np.log1p(counts).astype(np.float32))
    return TrainData(**common, slides=tuple(train_slides)), TestData(**common, slides=tuple(test_slides)), truths


@pytest.fixture
def views():
    return make_views()


def her2st_fold_views(n_genes: int = 200) -> dict:
    """Real her2st-mini folds at HMHVG-``n_genes``, log1p, no embeddings: C -> B4 and C2 left out,
    keyed by their test slides (("B4",), ("C2",)); for the tests of the controls and the ceilings."""
    from flag_bench.datasets import her2st_mini
    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.fold import FoldBuilder, FoldSpec
    from flag_bench.datasets.panels import HMHVG
    from flag_bench.datasets.splits import make_split
    from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform

    ds = her2st_mini.load()
    builder = FoldBuilder(ds, patch=PatchSpec(112, 32), encoder=None, device="cpu", cache_dir=None)
    out = {}
    for split in ("patient", "slide"):  # fold 0 of each: C -> B4, and C2 left out
        fold = make_split(ds, SplitSpec(split)).folds[0]
        out[fold.test] = builder.build(FoldSpec(PanelSpec("hmhvg"), n_genes, fold, TargetTransform.LOG1P), HMHVG(),
                                       embeddings=False)
    return out


@pytest.fixture
def counting():
    """An encoder class (color statistics) that counts its encode calls, with empty embedding memos
    before and after: the tests of the embedding cache check what was encoded again."""
    from flag_bench.datasets import embed_cache
    from flag_bench.datasets.encoders import ColorStats

    class Counting(ColorStats):
        calls = 0

        def encode(self, tiles, device="cpu", **kw):
            type(self).calls += 1
            return super().encode(tiles, device)

    embed_cache.clear_memo()
    yield Counting
    embed_cache.clear_memo()
