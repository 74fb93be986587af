"""Contract tests generated from the method registry: every registered method (plugins
included) passes the checks of ``flag-bench check`` (flag_bench/check.py: tiny preset on a real
fold built by FoldBuilder, shapes, dtype, finiteness, determinism, the TestData walk and the
scrambled-counts rerun); the checker fails, by name, methods built to break the contract; and the
walk, run on real folds and on views built to leak, finds what it must."""

from __future__ import annotations

import dataclasses
import functools
import types

import numpy as np
import pytest

from flag_bench.catalog import DATASETS, METHODS, method_card
from flag_bench.check import CHECK_DATASET, fold_builder, fold_views, run_checks, synthetic_dataset
from flag_bench.check_walk import leaks
from flag_bench.datasets import her2st_mini
from flag_bench.datasets.base import PatchSpec
from flag_bench.datasets.encoders import ColorStats
from flag_bench.datasets.fold import FoldSpec
from flag_bench.datasets.image import SlideImage
from flag_bench.datasets.panels import HMHVG
from flag_bench.datasets.splits import carve_validation, make_split
from flag_bench.methods.base import MethodCard
from flag_bench.methods.controls import MeanConfig, MeanControl
from flag_bench.methods.oracles import is_oracle, receives_truth
from flag_bench.methods.roles import is_reference
from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform


def _receives_truth(name: str) -> bool:
    """A built-in the harness hands the test truth (the oracles, and the nulls that shuffle or
    rotate the truth): only reference cards' classes are imported to ask, so collecting stays
    torch-free."""
    if METHODS.origin(name) != "built-in":
        return False
    card = method_card(name)
    return is_oracle(card) or (is_reference(card) and receives_truth(METHODS.get(name)))


# built-ins that receive the truth are checked by tests/test_oracles.py and tests/test_nulls.py; a
# plugin's card is not read here: the contract-breaking plugins of test_cli_catalog.py point back
# into this module
ALL_METHODS = [n for n in METHODS.names() if not _receives_truth(n)]


def test_the_image_free_nulls_are_held_to_the_contract():
    assert {"random-spot", "gene-prior"} <= set(ALL_METHODS)
    assert not {"null-shuffle", "null-rotate", "oracle-noise", "oracle-smooth", "oracle-slide-mean"} & set(ALL_METHODS)
PATCH = PatchSpec(112, 32)


@pytest.fixture(scope="module")
def data():
    ds = synthetic_dataset()
    return ds, fold_builder(ds)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_contract(name):
    results = run_checks(name)
    failed = [f"{r.name}: {r.status} {r.detail}" for r in results if not r.ok]
    assert not failed, "\n".join(failed)


# ---------------------------------------------------------------------------------------------
# the checker on methods built to break the contract
# ---------------------------------------------------------------------------------------------

def _card(name):
    return MethodCard(name=name, description="test: breaks the contract", needs=frozenset(), default_run=False)


class NaNMethod(MeanControl):
    card = _card("nan-method")

    def predict(self, test):
        preds = super().predict(test)
        preds[0][0, 0] = np.nan
        return preds


class PeekingMethod(MeanControl):
    """Loads the dataset by the name TestData carries and reads the test slides' counts, as a
    method reading a benchmark's files would."""

    card = _card("peeking")

    def predict(self, test):
        ds = DATASETS.get(test.dataset)()
        out = []
        for s in test.slides:
            counts = ds.slide(s.slide_id).counts
            cols = [list(ds.genes).index(g) for g in test.genes]
            out.append(np.log1p(counts[:, cols].toarray()).astype(np.float32))
        return out


class DriftingMethod(MeanControl):
    card = _card("drifting")
    _calls = 0

    def predict(self, test):
        DriftingMethod._calls += 1
        return [p + DriftingMethod._calls for p in super().predict(test)]


class BadPresetMethod(MeanControl):
    card = _card("bad-preset")
    presets = {"tiny": {"k": 1}, "small": {}}


class StrayDrawsMethod(MeanControl):
    """Returns draws whose mean is not its prediction: the harness would score one thing as the
    prediction and another as its draws."""

    card = _card("stray-draws")

    def predict_samples(self, test):
        return [np.stack([p, p + 1.0]) for p in super().predict(test)]


class RaggedDrawsMethod(MeanControl):
    card = _card("ragged-draws")

    def predict_samples(self, test):
        return [p[None] for p in super().predict(test)][:-1] or [np.zeros((1, 1, 1), np.float32)]


@dataclasses.dataclass
class _Loose:
    pass


class UnfrozenMethod(MeanControl):
    card = _card("unfrozen")
    Config = _Loose


@pytest.mark.parametrize("cls, check, reason", [
    (NaNMethod, "finite values", "1 NaN"),
    (PeekingMethod, "ignores test truth", "reads test expression"),
    (DriftingMethod, "deterministic", "predicts differently"),
    (BadPresetMethod, "presets type-check", "missing preset(s) paper"),
    (UnfrozenMethod, "presets type-check", "frozen dataclass"),
    (StrayDrawsMethod, "draws average to the prediction", "the mean of the 2 draws differs"),
    (RaggedDrawsMethod, "draws average to the prediction", "returned samples as list"),
])
def test_checker_names_the_broken_rule(cls, check, reason):
    results = {r.name: r for r in run_checks(cls.card.name, cls)}
    assert results[check].status == "FAIL", results[check]
    assert reason in results[check].detail
    assert [r.name for r in results.values() if r.status == "FAIL"] == [check]


def test_peeking_method_does_find_the_truth_when_unscrambled():
    """The scramble check is not vacuous: the peeking method's predictions are the test targets."""
    holder_ds = synthetic_dataset()
    DATASETS.register(CHECK_DATASET, lambda **_: holder_ds)
    try:
        views = fold_views(PeekingMethod, holder_ds)
        preds = PeekingMethod(MeanConfig(), seed=0).fit(views.train).predict(views.test)
    finally:
        DATASETS.unregister(CHECK_DATASET)
    np.testing.assert_allclose(preds[0], views.truths[0], rtol=1e-6)


def test_card_name_must_match_registration():
    results = {r.name: r for r in run_checks("not-the-name", MeanControl)}
    assert "registered as 'not-the-name'" in results["card"].detail


# ---------------------------------------------------------------------------------------------
# the walker on real folds, and on views built to leak (a test of the walker itself)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def her2st():
    return her2st_mini.load()


@pytest.mark.parametrize("validation", [False, True])
@pytest.mark.parametrize("which", ["her2st-mini", "synthetic"])
def test_real_folds_leak_nothing(which, validation, her2st):
    ds = her2st if which == "her2st-mini" else synthetic_dataset()
    plan = make_split(ds, SplitSpec("slide"), allow_patient_overlap=True)
    fold = carve_validation(plan, plan.folds[0]) if validation else plan.folds[0]
    views = fold_builder(ds).build(FoldSpec(PanelSpec("hmhvg"), 20, fold, TargetTransform.LOG1P_CPM), HMHVG(),
                               embeddings=True)
    assert leaks(ds, views) == []
    # the image access still works from the test side: tiles, regions, other encoders
    img = views.test.slides[0].image
    assert img.tiles().shape == (img.n_spots, PATCH.size_px, PATCH.size_px, 3)
    assert img.region(0, 300.0, 24).shape == (24, 24, 3)
    assert img.embeddings("color-stats").shape == (img.n_spots, ColorStats.dim)
    # and the walker does see the expression where it is: the truths, the training slides
    assert leaks(ds, views, root=views.truths)
    if validation:
        assert not leaks(ds, views, root=views.val)


def _leaky_closure_default(ds, test_input, views):
    slide = ds.slide(test_input.slide_id)
    return dataclasses.replace(test_input, image=lambda s=slide: s.tiles(PATCH))  # the old `tiles`


def _leaky_closure_cell(ds, test_input, views):
    slide = ds.slide(test_input.slide_id)
    return dataclasses.replace(test_input, image=lambda: slide.tiles(PATCH))


def _leaky_partial(ds, test_input, views):
    return dataclasses.replace(test_input, image=functools.partial(ds.slide(test_input.slide_id).tiles, PATCH))


def _leaky_reader(ds, test_input, views):
    # a reader bound to something that holds the dataset (as a FoldBuilder method would be)
    holder = types.SimpleNamespace(ds=ds)
    image = dataclasses.replace(test_input.image, reader=types.MethodType(lambda self, *a: None, holder))
    return dataclasses.replace(test_input, image=image)


class _Slotted:
    __slots__ = ("payload",)

    def __init__(self, payload):
        self.payload = payload


def _leaky_slots_kwdefaults(ds, test_input, views):
    def reader(*, cache=_Slotted({"x": views.truths[0].copy()})):  # noqa: B008  (the leak under test)
        return cache

    return dataclasses.replace(test_input, image=reader)


def _leaky_array_view(ds, test_input, views):
    return dataclasses.replace(test_input, embeddings=views.truths[0][:, :3])


def _leaky_panel_counts_float(ds, test_input, views):
    counts = ds.slide(test_input.slide_id).counts[:, np.asarray(views.panel.index)].toarray()
    return dataclasses.replace(test_input, embeddings=counts.astype(np.float32))


@pytest.mark.parametrize("make_leak", [
    _leaky_closure_default, _leaky_closure_cell, _leaky_partial, _leaky_reader,
    _leaky_slots_kwdefaults, _leaky_array_view, _leaky_panel_counts_float,
])
@pytest.mark.slow
def test_walker_finds_a_deliberate_leak(make_leak, data):
    ds, builder = data
    views = fold_views(METHODS.get("ridge"), ds, builder)
    first = views.test.slides[0]
    assert isinstance(first.image, SlideImage)
    leaky = dataclasses.replace(views.test, slides=(make_leak(ds, first, views), *views.test.slides[1:]))
    found = leaks(ds, dataclasses.replace(views, test=leaky))
    assert found, f"{make_leak.__name__} was not found"
    assert all(p.startswith("test.slides.[0]") for p in found), found
