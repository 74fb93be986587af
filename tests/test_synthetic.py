"""The synthetic generator: parameter validation, determinism, shapes, learnability."""

from __future__ import annotations

import time

import numpy as np
import pytest

from flag_bench.datasets import synthetic
from flag_bench.datasets.base import PatchSpec
from flag_bench.datasets.encoders import ColorStats
from flag_bench.errors import UserError


def test_defaults_shapes_and_speed():
    t0 = time.perf_counter()
    ds = synthetic.load()
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0  # < 1 s on an idle machine; slack for a loaded CI box
    assert len(ds.slides) == 4 and len(set(ds.patients.values())) == 4
    assert len(ds.genes) == 300 and ds.genes[0] == "SYN0001" and set(ds.gene_ids) == {""}
    for s in ds.slides:
        assert s.counts.shape == (200, 300) and s.counts.dtype == np.int32
        assert s.counts.data.min() >= 0
        assert s.coords.shape == (200, 2) and s.barcodes.shape == (200,)
        assert len(set(s.barcodes)) == 200
        assert s.meta["annotations"].shape == (200,)
    t = ds.slides[0].tiles(PatchSpec(112, 32))
    assert t.shape == (200, 32, 32, 3) and t.dtype == np.uint8


def test_deterministic_and_versioned():
    a = synthetic.load(seed=3, n_slides=2, spots_per_slide=30)
    b = synthetic.load(seed=3, n_slides=2, spots_per_slide=30)
    c = synthetic.load(seed=4, n_slides=2, spots_per_slide=30)
    assert a.version == b.version != c.version
    assert (a.slides[0].counts != b.slides[0].counts).nnz == 0
    assert np.array_equal(a.slides[1].tiles(PatchSpec(112, 24)), b.slides[1].tiles(PatchSpec(112, 24)))
    assert (a.slides[0].counts != c.slides[0].counts).nnz > 0
    # the CLI parses "image_signal=1" as an int: same dataset as 1.0
    assert synthetic.load(image_signal=1).version == synthetic.load(image_signal=1.0).version


def test_large_gene_pool_and_options():
    ds = synthetic.load(n_slides=2, n_patients=1, spots_per_slide=50, n_genes=2500, grid="square", noise=0.0)
    assert len(ds.genes) == 2500 and ds.slides[0].counts.shape == (50, 2500)
    assert set(ds.patients.values()) == {"P1"}


@pytest.mark.parametrize(
    "params, word",
    [
        ({"n_slide": 3}, "n_slide"),
        ({"image_signal": 1.5}, "image_signal"),
        ({"n_genes": 1}, "n_genes"),
        ({"n_genes": 2.5}, "n_genes"),
        ({"noise": -1}, "noise"),
        ({"grid": "round"}, "grid"),
        ({"n_patients": 5, "n_slides": 2}, "n_patients"),
        ({"seed": True}, "seed"),
    ],
)
def test_bad_parameters_name_the_key(params, word):
    with pytest.raises(UserError, match=word):
        synthetic.load(**params)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UserError) as e:
        synthetic.load(colour=1)
    assert "n_genes" in str(e.value) and "image_signal" in str(e.value)


def _ridge_vs_mean(image_signal, seed):
    """Leave-one-slide-out ridge on ColorStats embeddings: mean per-gene PCC and MSE ratio
    (ridge MSE / training-mean MSE), averaged over folds."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    ds = synthetic.load(n_slides=4, spots_per_slide=120, n_genes=40, image_signal=image_signal, seed=seed)
    enc = ColorStats()
    X = [enc.encode(s.tiles(PatchSpec(112, 64))) for s in ds.slides]
    Y = [np.log1p(s.counts.toarray()) for s in ds.slides]
    pccs, ratios = [], []
    for k in range(4):
        xtr = np.concatenate([x for i, x in enumerate(X) if i != k])
        ytr = np.concatenate([y for i, y in enumerate(Y) if i != k])
        sc = StandardScaler().fit(xtr)
        pred = Ridge(alpha=30.0).fit(sc.transform(xtr), ytr).predict(sc.transform(X[k]))
        yt = Y[k]
        ok = yt.std(axis=0) > 0
        pccs.append(np.mean([np.corrcoef(pred[:, g], yt[:, g])[0, 1] for g in np.flatnonzero(ok)]))
        ratios.append(((pred - yt) ** 2).mean() / ((ytr.mean(axis=0) - yt) ** 2).mean())
    return float(np.mean(pccs)), float(np.mean(ratios))


@pytest.mark.parametrize("seed", [0, 1])
def test_image_to_expression_is_learnable_only_with_image_signal(seed):
    pcc_hi, ratio_hi = _ridge_vs_mean(1.0, seed)
    pcc_0, ratio_0 = _ridge_vs_mean(0.0, seed)
    assert pcc_hi > 0.25 and ratio_hi < 0.9, (pcc_hi, ratio_hi)
    assert abs(pcc_0) < 0.1 and ratio_0 > 0.97, (pcc_0, ratio_0)
