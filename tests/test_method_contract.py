"""Contract tests generated from the method registry: every registered method, tiny preset, on
real folds built by FoldBuilder; and a walk of everything reachable from TestData, which must
lead to no test expression."""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping

import numpy as np
import pytest
import scipy.sparse as sp

from flag_bench.catalog import ENCODERS, METHODS
from flag_bench.datasets import her2st_mini, synthetic
from flag_bench.datasets.base import PatchSpec, Slide, SpatialDataset
from flag_bench.datasets.encoders import ColorStats
from flag_bench.datasets.fold import FoldBuilder, FoldSpec
from flag_bench.datasets.image import SlideImage
from flag_bench.datasets.panels import HMHVG
from flag_bench.datasets.splits import carve_validation, make_split
from flag_bench.methods.base import Method, seed_everything
from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform

ALL_METHODS = METHODS.names()
PATCH = PatchSpec(112, 32)  # small tiles: the contract, not the scores, is under test
G = 10


def _builder(ds: SpatialDataset) -> FoldBuilder:
    return FoldBuilder(ds, patch=PATCH, encoder=ColorStats(), device="cpu", cache_dir=None,
                       encoder_resolver=lambda name: ENCODERS.get(ENCODERS.check(name))())


def _synthetic(counts_of=None) -> SpatialDataset:
    """Five slides of three patients; ``counts_of(slide)`` may replace a slide's counts."""
    ds = synthetic.load(n_slides=5, n_patients=3, spots_per_slide=40, n_genes=60, seed=3)
    if counts_of is None:
        return ds
    return dataclasses.replace(ds, slides=tuple(dataclasses.replace(s, counts=counts_of(s)) for s in ds.slides))


def _views(cls, ds: SpatialDataset, builder: FoldBuilder | None = None):
    """A patient fold testing on two slides (S01, S04), carved for validation when asked."""
    plan = make_split(ds, SplitSpec("patient"))
    fold = carve_validation(plan, plan.folds[0]) if cls.card.uses_validation else plan.folds[0]
    spec = FoldSpec(PanelSpec("hmhvg"), G, fold, TargetTransform.LOG1P)
    return (builder or _builder(ds)).build(spec, HMHVG(), embeddings="embeddings" in cls.card.needs)


def _fit_predict(cls, views, seed=0):
    seed_everything(seed)
    m = cls(cls.make_config("tiny"), seed=seed, device="cpu")
    m.fit(views.train, views.val)
    return m, m.predict(views.test)


@pytest.fixture(scope="module")
def data():
    ds = _synthetic()
    return ds, _builder(ds)


# ---------------------------------------------------------------------------------------------
# the walker: everything reachable from an object, following references a method could follow
# ---------------------------------------------------------------------------------------------

_ATOMS = (str, bytes, int, float, complex, bool, type(None), np.generic, types.ModuleType, type)


def _children(obj) -> list[tuple[str, object]]:
    """(label, referent) pairs: containers, attributes, closures, defaults, bound selves."""
    if isinstance(obj, np.ndarray):
        kids = [("base", obj.base)] if obj.base is not None else []
        return kids + ([(f"[{i}]", v) for i, v in enumerate(obj.ravel())] if obj.dtype == object else [])
    if sp.issparse(obj):
        return []
    if isinstance(obj, Mapping):
        return [(f"key {k!r}", k) for k in obj] + [(f"[{k!r}]", v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, functools.partial):
        return [("func", obj.func), ("args", obj.args), ("keywords", obj.keywords)]
    if isinstance(obj, types.FunctionType):
        cells = [(f"closure {n}", c.cell_contents) for n, c in
                 zip(obj.__code__.co_freevars, obj.__closure__ or ()) if c.cell_contents is not None]
        return cells + [("__defaults__", obj.__defaults__), ("__kwdefaults__", obj.__kwdefaults__)]
    kids = []
    if isinstance(obj, (types.MethodType, types.BuiltinMethodType)):
        kids += [("__self__", obj.__self__), ("__func__", getattr(obj, "__func__", None))]
    if dataclasses.is_dataclass(obj):
        kids += [(f.name, getattr(obj, f.name, None)) for f in dataclasses.fields(obj)]
    kids += [(k, v) for k, v in getattr(obj, "__dict__", {}).items()]
    for klass in type(obj).__mro__:
        for slot in getattr(klass, "__slots__", ()):
            if hasattr(obj, slot):
                kids.append((slot, getattr(obj, slot)))
    return kids


def _walk(root, name="test"):
    """Yield (path, object) for everything reachable from ``root`` (each object once)."""
    seen: dict[int, object] = {}  # holds the objects so ids stay unique during the walk
    stack = [(name, root)]
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, _ATOMS) or id(obj) in seen:
            continue
        seen[id(obj)] = obj
        yield path, obj
        stack.extend((f"{path}.{label}", kid) for label, kid in _children(obj))


def _forbidden(ds: SpatialDataset, views) -> list[tuple[str, object]]:
    """The test slides' raw counts (whole pool, sparse and dense; panel columns) and targets."""
    out = []
    for s, truth in zip(views.test.slides, views.truths):
        counts = ds.slide(s.slide_id).counts
        panel = counts[:, np.asarray(views.panel.index)].toarray()
        out += [(f"{s.slide_id} counts", counts), (f"{s.slide_id} dense counts", counts.toarray()),
                (f"{s.slide_id} counts data", counts.data), (f"{s.slide_id} panel counts", panel),
                (f"{s.slide_id} targets", truth), (f"{s.slide_id} log1p", np.log1p(panel).astype(np.float32))]
    return out


def _same(obj, bad) -> bool:
    if sp.issparse(bad):
        if sp.issparse(obj):
            return obj.shape == bad.shape and (obj != bad).nnz == 0
        return False
    if sp.issparse(obj):
        obj = obj.toarray()
    if not isinstance(obj, np.ndarray) or obj.dtype == object:
        return False
    return np.may_share_memory(obj, bad) or (obj.shape == bad.shape and np.array_equal(obj, bad))


def leaks(ds: SpatialDataset, views, root=None) -> list[str]:
    """Paths from TestData (or ``root``) to the test slides' expression."""
    bad = _forbidden(ds, views)
    found = []
    for path, obj in _walk(views.test if root is None else root):
        if isinstance(obj, (Slide, SpatialDataset)):
            found.append(f"{path} is a {type(obj).__name__}")
        found += [f"{path} is {what}" for what, b in bad if _same(obj, b)]
    return found


# ---------------------------------------------------------------------------------------------
# the contract
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_METHODS)
def test_card_config_and_presets(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method)
    assert cls.card.name == name
    assert {"tiny", "small", "paper"} <= set(cls.presets)
    assert cls.Config.__dataclass_params__.frozen, "configs are frozen dataclasses"
    for preset in cls.presets:
        assert dataclasses.is_dataclass(cls.make_config(preset))
    from flag_bench.errors import UserError

    with pytest.raises(UserError, match="no config key"):
        cls.make_config("tiny", {"definitely_not_a_key": 1})


@pytest.mark.parametrize("name", ALL_METHODS)
def test_fit_predict_contract(name, data):
    cls = METHODS.get(name)
    views = _views(cls, *data)
    assert (views.val is not None) == cls.card.uses_validation
    m, preds = _fit_predict(cls, views)
    assert isinstance(preds, list) and len(preds) == len(views.test.slides) == 2
    for p, s in zip(preds, views.test.slides):
        assert p.shape == (s.n_spots, views.test.n_genes)
        assert p.dtype == np.float32
        assert np.isfinite(p).all()
    n = m.n_parameters()
    assert n is None or (isinstance(n, int) and n >= 0)
    assert isinstance(m.summary, dict) and m.summary, "a method must say what happened in fit"

    # same seed, same device -> identical predictions
    _, again = _fit_predict(cls, views)
    for a, b in zip(preds, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_no_access_to_test_expression(name, data):
    """Nothing reachable from TestData leads to the test expression, inputs are read-only, and
    scrambling the test slides' counts in the dataset changes no prediction."""
    cls = METHODS.get(name)
    ds, builder = data
    views = _views(cls, ds, builder)
    assert leaks(ds, views) == []
    for s in views.test.slides:
        assert not hasattr(s, "targets") and not hasattr(s, "counts")
        assert not s.coords_um.flags.writeable
        assert s.embeddings is None or not s.embeddings.flags.writeable
    for s in views.train.slides:
        assert not s.targets.flags.writeable and not s.counts.flags.writeable
    before = [s.targets.copy() for s in views.train.slides]
    _, preds = _fit_predict(cls, views)
    for b, s in zip(before, views.train.slides):
        np.testing.assert_array_equal(b, s.targets)

    test_ids = {s.slide_id for s in views.test.slides}
    rng = np.random.default_rng(1)

    def scramble(s: Slide) -> sp.csr_matrix:
        if s.id not in test_ids:
            return s.counts
        dense = s.counts.toarray()
        return sp.csr_matrix(rng.permutation(dense.ravel()).reshape(dense.shape))

    scrambled = _views(cls, _synthetic(scramble))
    assert scrambled.panel.panel_id == views.panel.panel_id
    assert not np.array_equal(scrambled.truths[0], views.truths[0])
    _, again = _fit_predict(cls, scrambled)
    for a, b in zip(preds, again):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# the walker on real folds, and on views built to leak (a test of the walker itself)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def her2st():
    return her2st_mini.load()


@pytest.mark.parametrize("validation", [False, True])
@pytest.mark.parametrize("which", ["her2st-mini", "synthetic"])
def test_real_folds_leak_nothing(which, validation, her2st):
    ds = her2st if which == "her2st-mini" else _synthetic()
    plan = make_split(ds, SplitSpec("slide"), allow_patient_overlap=True)
    fold = carve_validation(plan, plan.folds[0]) if validation else plan.folds[0]
    views = _builder(ds).build(FoldSpec(PanelSpec("hmhvg"), 20, fold, TargetTransform.LOG1P_CPM), HMHVG(),
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
    def reader(*, cache=_Slotted({"x": views.truths[0].copy()})):
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
def test_walker_finds_a_deliberate_leak(make_leak, data):
    ds, builder = data
    views = _views(METHODS.get("ridge"), ds, builder)
    first = views.test.slides[0]
    assert isinstance(first.image, SlideImage)
    leaky = dataclasses.replace(views.test, slides=(make_leak(ds, first, views), *views.test.slides[1:]))
    found = leaks(ds, dataclasses.replace(views, test=leaky))
    assert found, f"{make_leak.__name__} was not found"
    assert all(p.startswith("test.slides.[0]") for p in found), found
