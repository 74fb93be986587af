"""Noise ceilings (metrics/ceilings.py): the PCC ceiling against its closed form on Poisson data, the
structure ceilings against the score of the true rate, determinism, refusal of non-count data, and
the ceilings the harness records with every cell of a real her2st-mini fold."""

from __future__ import annotations

import numpy as np
import pytest

from flag_bench.catalog import METRICS
from flag_bench.metrics.base import SlideContext
from flag_bench.metrics.ceilings import ceiling_name, slide_ceilings, spearman_brown, split_halves

def IDENTITY(c, lib):
    return np.asarray(c, dtype=np.float64)


def _poisson_slide(n_side=45, g=24, seed=0, low=False):
    """Counts ~ Poisson(rate) on a square lattice; each gene's log-rate is a smooth field of its own
    wavelength plus a per-gene level, so genes differ in depth, spatial scale and reliability."""
    rng = np.random.default_rng(seed)
    xy = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2).astype(float) * 100.0
    scale = rng.uniform(300, 1500, size=g)
    phase = rng.uniform(0, 2 * np.pi, size=(2, g))
    field = np.sin(xy[:, :1] / scale + phase[0]) + np.cos(xy[:, 1:] / scale + phase[1])
    shared = np.sin(xy[:, :1] / 700.0)  # some co-expression, so GSC has structure to see
    level = rng.uniform(-0.5, 1.5, size=g) if low else rng.uniform(0.5, 3.0, size=g)
    rate = np.exp(level + 0.5 * field + 0.4 * shared)
    counts = rng.poisson(rate)
    library = counts.sum(axis=1) + rng.poisson(500, size=len(xy))
    return xy, rate, counts, library


def _ctx(xy, g, slide="S1"):
    return SlideContext(slide, xy, tuple(f"g{i}" for i in range(g)), 0, None)


def test_spearman_brown():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(1.0) == 1.0 and spearman_brown(-0.3) == 0.0
    assert np.isnan(spearman_brown(np.nan))


def test_thinning_splits_every_count_and_the_library():
    rng = np.random.default_rng(1)
    counts = rng.poisson(5, size=(50, 7))
    library = counts.sum(axis=1) + 100
    a, b, la, lb = split_halves(counts, library, rng)
    assert (a + b == counts).all() and (a >= 0).all() and (b >= 0).all()
    assert np.allclose(la + lb, library) and (la >= a.sum(axis=1)).all()


def test_pcc_ceiling_matches_the_poisson_closed_form():
    """Identity scale, Poisson counts: the split-half Spearman-Brown ceiling equals
    sqrt(var(rate) / (mean(rate) + var(rate))) per gene, the correlation of the rate with the counts."""
    xy, rate, counts, library = _poisson_slide()
    out, notes = slide_ceilings(counts, library, IDENTITY, _ctx(xy, rate.shape[1]), {})
    closed = np.sqrt(rate.var(axis=0) / (rate.mean(axis=0) + rate.var(axis=0)))
    empirical = np.array([np.corrcoef(rate[:, j], counts[:, j])[0, 1] for j in range(rate.shape[1])])
    assert out[ceiling_name("pcc_mean")] == pytest.approx(closed.mean(), abs=0.01)
    assert out[ceiling_name("pcc_mean")] == pytest.approx(empirical.mean(), abs=0.01)
    assert 0.3 < closed.mean() < 0.95  # the test data are neither noise-free nor pure noise


@pytest.mark.parametrize("seed", [0, 1])
def test_structure_ceilings_match_an_independent_replicate(seed):
    """A structure ceiling is the score a second full-depth measurement of the same spots gets:
    Spearman-Brown from the split halves of replicate 1 lands within 0.04 of scoring replicate 1
    against a simulated replicate 2 (same rates, independent Poisson draws)."""
    xy, rate, counts, library = _poisson_slide(seed=seed, low=True)
    other = np.random.default_rng(100 + seed).poisson(rate)
    metrics = METRICS.load_all()
    ctx = _ctx(xy, rate.shape[1])
    out, notes = slide_ceilings(counts, library, IDENTITY, ctx, metrics)
    replicate = {}
    for m in metrics.values():
        if m.scope == "slide":
            replicate.update(m.compute(counts.astype(np.float64), other.astype(np.float64), ctx).values)
    for name in ("gsc", "gsc_cpm", "ssc", "ssc_spot", "lee_l"):
        assert out[ceiling_name(name)] == pytest.approx(replicate[name], abs=0.04), (name, out, replicate)
        assert notes[f"ceiling_split_half_{name}"] < out[ceiling_name(name)]  # the correction raises it
    assert replicate["ssc_spot"] < 0.9  # the data are noisy enough for the check to mean something


def test_ceilings_are_seeded_by_slide_and_refuse_non_counts():
    xy, rate, counts, library = _poisson_slide(n_side=12, g=6)
    key = ceiling_name("pcc_mean")
    a = slide_ceilings(counts, library, IDENTITY, _ctx(xy, 6), {})[0][key]
    b = slide_ceilings(counts, library, IDENTITY, _ctx(xy, 6), {})[0][key]
    c = slide_ceilings(counts, library, IDENTITY, _ctx(xy, 6, slide="S2"), {})[0][key]
    assert a == b and a != c
    out, notes = slide_ceilings(np.log1p(counts) + 0.1, library, IDENTITY, _ctx(xy, 6), {})
    assert all(np.isnan(v) for v in out.values()) and "not integers" in notes["ceiling_reason"]


def test_the_harness_records_ceilings_on_a_real_fold():
    """Every cell scored with its fold's counts carries ceiling.<score> per slide and per cell; on
    her2st-mini C2 at G = 200 the PCC ceiling is about 0.91 (metric-validity.md's split-half value)."""
    from flag_bench.datasets import her2st_mini
    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.fold import FoldBuilder, FoldSpec
    from flag_bench.datasets.panels import HMHVG
    from flag_bench.datasets.splits import make_split
    from flag_bench.methods.controls import MeanControl, MeanConfig
    from flag_bench.scoring import score_cell
    from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform

    ds = her2st_mini.load()
    builder = FoldBuilder(ds, patch=PatchSpec(112, 32), encoder=None, device="cpu", cache_dir=None)
    fold = make_split(ds, SplitSpec("slide")).folds[0]
    views = builder.build(FoldSpec(PanelSpec("hmhvg"), 200, fold, TargetTransform.LOG1P), HMHVG(), embeddings=False)
    preds = MeanControl(MeanConfig(), seed=0).fit(views.train).predict(views.test)
    cell, per_slide, _, _ = score_cell(preds, views.truths, views.test, 0, views.annotations,
                                       counts=views.truth_counts, libraries=views.truth_libraries,
                                       target_transform="log1p")
    assert cell[ceiling_name("pcc_mean")] == pytest.approx(0.91, abs=0.02)
    for name in ("gsc", "ssc", "ssc_spot", "lee_l"):
        assert 0 < cell[ceiling_name(name)] <= 1, name
    assert per_slide[fold.test[0]][ceiling_name("pcc_mean")] == cell[ceiling_name("pcc_mean")]
    # no counts given: no ceilings (the scores themselves are unchanged)
    plain = score_cell(preds, views.truths, views.test, 0, views.annotations, target_transform="log1p")[0]
    assert not any(k.startswith("ceiling.") for k in plain)
    assert {k: v for k, v in cell.items() if not k.startswith("ceiling.")}.keys() == plain.keys()
