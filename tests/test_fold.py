"""Fold building: one panel per fold for every method, validation carved without changing it,
panels fitted on non-test slides only, the target transforms' maths, splits computed once."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from flag_bench.catalog import METHODS
from flag_bench.datasets import embed_cache, her2st_mini, splits, synthetic
from flag_bench.datasets.base import PatchSpec
from flag_bench.datasets.encoders import ColorStats
from flag_bench.datasets.fold import TARGET_TRANSFORMS, FoldBuilder, FoldSpec, prepare_embeddings, transform_counts
from flag_bench.datasets.panels import HMHVG
from flag_bench.datasets.splits import carve_validation, make_split
from flag_bench.errors import UserError
from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform

PATCH = PatchSpec(112, 32)
HM = PanelSpec("hmhvg")


@pytest.fixture(scope="module")
def her2st():
    return her2st_mini.load()


def _builder(ds, encoder=None):
    return FoldBuilder(ds, patch=PATCH, encoder=encoder, device="cpu", cache_dir=None)


def _old_transform(counts, library, how):
    """flag_bench/runner.py's transform_counts before the fold moved to datasets/ (verbatim)."""
    c = counts.astype(np.float64)
    if how == "log1p":
        out = np.log1p(c)
    elif how == "log2p1":
        out = np.log2(1.0 + c)
    elif how == "log1p_cpm":
        out = np.log1p(c / np.maximum(library, 1.0)[:, None] * 1e6)
    return out.astype(np.float32)


def test_every_method_gets_the_fold_panel(her2st):
    """Defect 1: flag (validation carved) was scored on a panel fitted without its val slide."""
    plan = make_split(her2st, SplitSpec("slide"))
    fold = plan.folds[0]
    builder = _builder(her2st)
    ids = {}
    for name in METHODS.names():
        cls = METHODS.get(name)
        f = carve_validation(plan, fold) if cls.card.uses_validation else fold
        views = builder.build(FoldSpec(HM, 50, f, TargetTransform.LOG1P), HMHVG(), embeddings=False)
        ids[name] = views.panel.panel_id
        assert views.test.genes == views.train.genes == views.panel.genes
    assert len(set(ids.values())) == 1, ids
    assert any(METHODS.get(n).card.uses_validation for n in ids), "some method validates"


def test_validation_is_carved_without_changing_the_panel(her2st):
    plan = make_split(her2st, SplitSpec("slide"))
    fold = plan.folds[0]
    assert fold.test == ("C2",) and fold.val == ()
    carved = carve_validation(plan, fold)
    assert carved == splits.Fold("test=C2", ("C4", "C5", "C6"), ("C3",), ("C2",))  # what the old code gave
    builder = _builder(her2st)
    plain = builder.build(FoldSpec(HM, 50, fold, TargetTransform.LOG1P), HMHVG(), embeddings=False)
    val = builder.build(FoldSpec(HM, 50, carved, TargetTransform.LOG1P), HMHVG(), embeddings=False)
    assert plain.val is None and [s.slide_id for s in val.val.slides] == ["C3"]
    assert [s.slide_id for s in val.train.slides] == ["C4", "C5", "C6"]
    assert val.panel is plain.panel and plain.panel.train_slides == ("C3", "C4", "C5", "C6")
    # what the old code gave the validating method: a panel without C3, on other genes
    old = HMHVG().fit([her2st.slide(s).counts for s in carved.train], her2st.genes, 50,
                      train_slides=carved.train, dataset_version=her2st.version)
    assert 0 < len(set(old.genes) - set(plain.panel.genes)) < 50
    # the carved val slide carries the same targets as when it trains
    np.testing.assert_array_equal(val.val.slides[0].targets, plain.train.slides[0].targets)


def test_old_validation_slides_are_kept(her2st):
    """The old rule, fold by fold: slide scheme in the test pool's order, patient scheme in
    dataset order (B4 tested, C2 validates)."""
    slide = make_split(her2st, SplitSpec("slide"))
    assert [carve_validation(slide, f).val for f in slide.folds] == [("C3",), ("C4",), ("C5",), ("C6",), ("C2",)]
    patient = make_split(her2st, SplitSpec("patient"))
    (fold,) = patient.folds
    assert carve_validation(patient, fold) == splits.Fold("test-patient=B", ("C3", "C4", "C5", "C6"), ("C2",), ("B4",))


def test_panel_is_fitted_on_non_test_slides_only():
    ds = synthetic.load(n_slides=4, spots_per_slide=60, n_genes=80, seed=2)
    plan = make_split(ds, SplitSpec("slide"))
    fold = plan.folds[0]
    spec = FoldSpec(HM, 15, fold, TargetTransform.LOG1P)
    base = _builder(ds).build(spec, HMHVG(), embeddings=False).panel

    def with_counts(sid, counts):
        return dataclasses.replace(ds, slides=tuple(
            dataclasses.replace(s, counts=counts) if s.id == sid else s for s in ds.slides))

    test_id, train_id = fold.test[0], fold.train[0]
    shuffled = np.random.default_rng(0).permutation(ds.slide(test_id).counts.toarray().T).T
    changed_test = with_counts(test_id, sp.csr_matrix(shuffled * 7))
    assert _builder(changed_test).build(spec, HMHVG(), embeddings=False).panel.genes == base.genes
    flipped = sp.csr_matrix(ds.slide(train_id).counts.toarray()[:, ::-1])
    assert _builder(with_counts(train_id, flipped)).build(spec, HMHVG(), embeddings=False).panel.genes != base.genes


class _CountingHMHVG(HMHVG):
    fits = 0

    def fit(self, *args, **kwargs):
        type(self).fits += 1
        return super().fit(*args, **kwargs)


def test_panels_and_expression_are_memoised_per_builder(monkeypatch):
    ds = synthetic.load(n_slides=3, spots_per_slide=30, n_genes=50, seed=1)
    plan = make_split(ds, SplitSpec("slide"))
    # the builder never splits: the split is made once, by the caller
    monkeypatch.setattr(splits, "make_split", lambda *a, **k: pytest.fail("make_split called in a build"))
    builder = _builder(ds)
    _CountingHMHVG.fits = 0
    for fold in plan.folds:
        for f in (fold, carve_validation(plan, fold)):
            a = builder.build(FoldSpec(HM, 10, f, TargetTransform.LOG1P), _CountingHMHVG(), embeddings=False)
            b = builder.build(FoldSpec(HM, 10, f, TargetTransform.LOG1P), _CountingHMHVG(), embeddings=False)
            assert a.truths[0] is b.truths[0] and not a.truths[0].flags.writeable
    assert _CountingHMHVG.fits == len(plan.folds)
    with pytest.raises(ValueError, match="does not implement"):
        builder.build(FoldSpec(PanelSpec("hvg"), 10, plan.folds[0], TargetTransform.LOG1P), HMHVG(),
                      embeddings=False)


@pytest.mark.parametrize("how", list(TargetTransform))
def test_target_transforms_match_the_old_maths(how):
    assert set(TARGET_TRANSFORMS) == set(TargetTransform)
    rng = np.random.default_rng(4)
    counts = rng.poisson(rng.gamma(0.5, 20.0, size=(50, 8))).astype(np.int32)
    counts[0] = 0
    library = counts.sum(axis=1) + rng.integers(0, 500, size=50)
    out = transform_counts(counts, library, how)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, _old_transform(counts, library, how.value))
    np.testing.assert_array_equal(transform_counts(counts, library, how.value), out)


def test_views_carry_the_transformed_panel_counts():
    ds = synthetic.load(n_slides=3, spots_per_slide=30, n_genes=50, seed=1)
    plan = make_split(ds, SplitSpec("slide"))
    views = _builder(ds).build(FoldSpec(HM, 10, plan.folds[1], TargetTransform.LOG1P_CPM), HMHVG(),
                               embeddings=False)
    idx = np.asarray(views.panel.index)
    for s in views.train.slides:
        full = ds.slide(s.slide_id).counts
        np.testing.assert_array_equal(s.counts, full[:, idx].toarray())
        library = np.asarray(full.sum(axis=1)).ravel()  # the whole candidate pool, not the panel
        np.testing.assert_array_equal(s.targets, _old_transform(s.counts, library, "log1p_cpm"))
    (test_id,) = plan.folds[1].test
    assert [s.slide_id for s in views.test.slides] == [test_id]
    np.testing.assert_array_equal(views.annotations[0], ds.slide(test_id).meta["annotations"])
    assert views.test.target_transform == "log1p_cpm" and views.test.gene_ids == ("",) * 10


def test_specs_are_picklable():
    plan = make_split(synthetic.load(n_slides=3, spots_per_slide=10, n_genes=20), SplitSpec("slide"))
    spec = FoldSpec(PanelSpec.parse("file:/tmp/genes.txt"), 50, carve_validation(plan, plan.folds[0]),
                    TargetTransform.LOG2P1)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert pickle.loads(pickle.dumps(plan)) == plan


class _CountingEncoder(ColorStats):
    calls = 0

    def encode(self, tiles, device="cpu", on_batch=None):
        type(self).calls += 1
        return super().encode(tiles, device, on_batch)


def test_prepare_embeddings_encodes_each_missing_slide_once(tmp_path):
    ds = synthetic.load(n_slides=3, spots_per_slide=12, n_genes=20, seed=8)
    embed_cache.clear_memo()
    _CountingEncoder.calls = 0
    progress = []
    kw = dict(device="cpu", cache_dir=str(tmp_path))
    spent = prepare_embeddings(ds, ["S01", "S02", "S01"], _CountingEncoder(), PATCH,
                               on_progress=lambda d, t: progress.append((d, t)), **kw)
    assert spent > 0 and _CountingEncoder.calls == 2 and progress == [(0, 24), (12, 24), (24, 24)]
    embed_cache.clear_memo()  # as in a new process: S01 and S02 come from disk, only S03 is encoded
    assert prepare_embeddings(ds, ds.slide_ids, _CountingEncoder(), PATCH, **kw) > 0
    assert _CountingEncoder.calls == 3
    embed_cache.clear_memo()
    assert prepare_embeddings(ds, ds.slide_ids, _CountingEncoder(), PATCH, **kw) == 0.0
    builder = FoldBuilder(ds, patch=PATCH, encoder=_CountingEncoder(), **kw)
    plan = make_split(ds, SplitSpec("slide"))
    views = builder.build(FoldSpec(HM, 5, plan.folds[0], TargetTransform.LOG1P), HMHVG(), embeddings=True)
    assert _CountingEncoder.calls == 3 and views.test.slides[0].embeddings.shape == (12, ColorStats.dim)
    embed_cache.clear_memo()


def test_embeddings_need_an_encoder_and_images():
    ds = synthetic.load(n_slides=2, spots_per_slide=10, n_genes=20)
    fold = make_split(ds, SplitSpec("slide")).folds[0]
    spec = FoldSpec(HM, 5, fold, TargetTransform.LOG1P)
    with pytest.raises(UserError, match="no encoder"):
        _builder(ds).build(spec, HMHVG(), embeddings=True)
    blind = dataclasses.replace(ds, slides=tuple(dataclasses.replace(s, tile_reader=None) for s in ds.slides))
    assert blind.capabilities == {"coords", "counts", "slide_context"}
    assert ds.capabilities == {"coords", "counts", "slide_context", "tiles", "embeddings", "region"}
    with pytest.raises(UserError, match="has no images"):
        _builder(blind, ColorStats()).build(spec, HMHVG(), embeddings=True)
    views = _builder(blind).build(spec, HMHVG(), embeddings=False)
    assert views.test.slides[0].image is None and views.test.slides[0].embeddings is None
