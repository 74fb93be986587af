"""The contract's checks on one method, in order; a check that needs an earlier result (a fit,
predictions) is skipped when that failed, so one broken step is reported once, by name."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from flag_bench.check import (
    CHECK_DATASET,
    PRESETS,
    Failed,
    Skipped,
    fit_predict,
    fold_builder,
    fold_views,
    jsonable,
    leaks,
    scrambled_dataset,
    synthetic_dataset,
)
from flag_bench.errors import CellFailure, UserError


class Contract:
    def __init__(self, name: str, cls):
        self.name, self.cls = name, cls
        self.ds = synthetic_dataset()
        self.holder = {"ds": self.ds}  # what the registered check dataset resolves to
        self.views: Any = None  # what fold_views gives, once fit_predict has run
        self.model = None
        self.preds = None
        self.before: list[np.ndarray] = []  # training targets as handed over, before fit
        self.shaped = False
        self.configurable = False
        self.repeatable = False  # the scramble comparison means something only then

    def checks(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("card", self.card),
            ("presets type-check", self.presets),
            ("needs served", self.needs),
            ("fit and predict", self.fit_predict),
            ("shapes and dtype", self.shapes),
            ("finite values", self.finite),
            ("summary, n_parameters", self.summary),
            ("inputs unchanged", self.inputs_unchanged),
            ("deterministic", self.deterministic),
            ("draws average to the prediction", self.draws),
            ("save/load, same numbers", self.saved),
            ("TestData holds no truth", self.walk),
            ("ignores test truth", self.scramble),
        ]

    # -- static: the class, its card and presets ---------------------------------------------
    def card(self) -> str:
        from flag_bench.methods.base import Method, MethodCard

        cls, card = self.cls, getattr(self.cls, "card", None)
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise Failed(f"{cls!r} is not a subclass of flag_bench.methods.base.Method")
        if not isinstance(card, MethodCard):
            raise Failed(f"card is {type(card).__name__}, not a MethodCard")
        if card.name != self.name:
            raise Failed(f"card.name is '{card.name}' but the method is registered as '{self.name}'")
        if not card.description.strip() or "\n" in card.description:
            raise Failed("description must be one non-empty line (`flag-bench list` shows it)")
        if card.code_url and not card.code_url.startswith(("http://", "https://")):
            raise Failed(f"code_url {card.code_url!r} is not an http(s) URL")
        for p in card.pretrained:
            if not p.trained_on.strip():
                raise Failed(f"pretrained weights '{p.name}' do not say what they were trained on")
        if not jsonable(card.to_dict()):
            raise Failed("card.extra holds values that are not JSON-able (the card is stored with every result)")
        from flag_bench.methods.oracles import claims_truth

        if claims_truth(cls):
            raise Failed("claims to read the test truth (an Oracle subclass, or a card with role oracle or truth_null "
                         "or saying reads_truth), "
                         "but the harness hands the truth only to the built-in names its registry grants "
                         "(catalog.TRUTH_RECEIVERS), whatever the class's __module__ says: it runs as a method "
                         "and is never handed the truth")
        return f"needs {', '.join(sorted(card.needs)) or 'nothing'}"

    def presets(self) -> str:
        cls = self.cls
        missing = [p for p in PRESETS if p not in getattr(cls, "presets", {})]
        if missing:
            raise Failed(f"missing preset(s) {', '.join(missing)} (every method has tiny, small and paper)")
        params = getattr(getattr(cls, "Config", None), "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise Failed("Config must be a frozen dataclass")
        for preset in cls.presets:
            cfg = cls.make_config(preset)  # a UserError names the key and the expected type
            if not dataclasses.is_dataclass(cfg):
                raise Failed(f"preset '{preset}' did not build a Config")
        try:
            cls.make_config("tiny", {"definitely_not_a_key": 1})
        except UserError:
            pass
        else:
            raise Failed("make_config accepted an unknown key")
        self.configurable = True
        return ", ".join(cls.presets)

    def needs(self) -> str:
        missing = sorted(set(self.cls.card.needs) - set(self.ds.capabilities))
        if missing:
            raise Failed(f"needs {', '.join(missing)}, which the synthetic check dataset does not provide")
        return ""

    # -- dynamic: fit and predict on the fold ------------------------------------------------
    def fit_predict(self) -> str:
        self._require(card_ok=True)
        self.views = fold_views(self.cls, self.ds, fold_builder(self.ds))
        if (self.views.val is not None) != self.cls.card.uses_validation:
            raise Failed("a validation slide was handed over against the card's uses_validation")
        self.before = [s.targets.copy() for s in self.views.train.slides]
        self.model, self.preds = fit_predict(self.cls, self.views)
        return f"{len(self.views.train.slides)} train, {len(self.views.test.slides)} test slides"

    def shapes(self) -> str:
        preds, test = self._predictions(shaped=False), self.views.test
        if not isinstance(preds, list) or len(preds) != len(test.slides):
            raise Failed(f"predict returned {type(preds).__name__} of {_len(preds)} items for "
                         f"{len(test.slides)} test slides (expected a list, one array per slide)")
        for p, s in zip(preds, test.slides):
            want = (s.n_spots, test.n_genes)
            if not isinstance(p, np.ndarray) or p.shape != want or p.dtype != np.float32:
                got = f"{getattr(p, 'shape', '?')} {getattr(p, 'dtype', type(p).__name__)}"
                raise Failed(f"slide {s.slide_id}: got {got}, expected {want} float32")
        self.shaped = True
        return f"{len(preds)} x ({test.slides[0].n_spots}, {test.n_genes}) float32"

    def finite(self) -> str:
        for p, s in zip(self._predictions(), self.views.test.slides):
            arr = np.asarray(p, dtype=np.float64)
            bad = ~np.isfinite(arr)
            if bad.any():
                n_nan = int(np.isnan(arr).sum())
                raise Failed(f"slide {s.slide_id}: {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values "
                             f"of {arr.size}")
        return ""

    def summary(self) -> str:
        m = self._fitted()
        if not isinstance(m.summary, dict) or not m.summary:
            raise Failed("self.summary is empty: say what happened in fit (epochs, loss, choices made)")
        if not jsonable(m.summary):
            raise Failed("self.summary holds values that are not JSON-able")
        n = m.n_parameters()
        if not (n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 0)):
            raise Failed(f"n_parameters() returned {n!r} (an int >= 0, or None when not parametric)")
        return f"{len(m.summary)} entries; n_parameters {n}"

    def inputs_unchanged(self) -> str:
        self._fitted()
        for s in self.views.train.slides:
            if s.targets.flags.writeable or s.counts.flags.writeable:
                raise Failed(f"training slide {s.slide_id} arrays became writeable")
        for before, s in zip(self.before, self.views.train.slides):
            if not np.array_equal(before, s.targets):
                raise Failed(f"fit changed the targets of training slide {s.slide_id}")
        return ""

    def deterministic(self) -> str:
        preds = self._predictions()
        _, again = fit_predict(self.cls, self.views)
        for a, b, s in zip(preds, again, self.views.test.slides):
            if not np.array_equal(a, b, equal_nan=True):
                raise Failed(f"slide {s.slide_id}: a second fit with seed 0 predicts differently "
                             "(draw randomness from self.seed_streams(k))")
        self.repeatable = True
        return "same seed, same predictions"

    def draws(self) -> str:
        """A method that returns its draws (``predict_samples``): one (n, N, G) array per slide,
        the same n everywhere, finite, and their mean is ``predict``'s output (the harness scores
        the mean as the prediction and each draw apart)."""
        from flag_bench.scoring import check_samples

        preds = self._predictions()
        draws = self._fitted().predict_samples(self.views.test)
        if draws is None:
            return "no separate draws"
        try:
            draws = check_samples(self.name, draws, self.views.test)
        except CellFailure as exc:
            raise Failed(str(exc)) from None
        for x, p, s in zip(draws, preds, self.views.test.slides):
            mean = x.mean(axis=0)
            if not np.allclose(mean, p, rtol=1e-5, atol=1e-5):
                raise Failed(f"slide {s.slide_id}: the mean of the {x.shape[0]} draws differs from predict's "
                             f"output by up to {float(np.abs(mean - p).max()):.3g}")
        return f"{draws[0].shape[0]} draw(s) per slide"

    def saved(self) -> str:
        """The fitted method saved (``save_state``, through the files a saved model keeps) and
        rebuilt in a fresh object (``from_state``) predicts the same numbers, bit for bit: what
        ``--save-models`` keeps is what was scored, and ``flag-bench predict`` applies it."""
        import tempfile
        from pathlib import Path

        from flag_bench.methods.common.state import saving_refusal
        from flag_bench.models import read_state, write_state

        preds = self._predictions()
        why = saving_refusal(self.cls, self.name)
        if why:
            return "saving not supported: --save-models refuses this method (implement save_state and from_state)"
        fitted = self._fitted()
        state = fitted.save_state()
        with tempfile.TemporaryDirectory(prefix="flag-bench-check-model-") as tmp:
            write_state(state, Path(tmp))
            state = read_state(Path(tmp), state.meta)
        loaded = self.cls.from_state(state, fitted.config, seed=fitted.seed, device=fitted.device)
        again = loaded.predict(self.views.test)
        for a, b, s in zip(preds, again, self.views.test.slides):
            if not (isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)):
                diff = float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()) \
                    if np.shape(a) == np.shape(b) else float("nan")
                raise Failed(f"slide {s.slide_id}: the model rebuilt by from_state(save_state()) predicts differently "
                             f"(max |difference| {diff:.3g}); save every attribute predict reads, and draw with "
                             "self.seed_streams(k)")
        return f"{len(state.tensors)} tensor(s) saved; same predictions after loading"

    def walk(self) -> str:
        views = self.views if self.views is not None else fold_views(self.cls, self.ds)
        found = leaks(self.ds, views)
        for s in views.test.slides:
            if hasattr(s, "targets") or hasattr(s, "counts"):
                found.append(f"test slide {s.slide_id} has expression attributes")
            if s.coords_um.flags.writeable or (s.embeddings is not None and s.embeddings.flags.writeable):
                found.append(f"test slide {s.slide_id} inputs are writeable")
        if found:
            raise Failed(f"{len(found)} path(s), e.g. {found[0]}")
        return ""

    def scramble(self) -> str:
        preds = self._predictions()
        if not self.repeatable:
            raise Skipped("predictions are not repeatable, so a change proves nothing")
        scrambled = scrambled_dataset(self.views)
        self.holder["ds"] = scrambled
        try:
            views = fold_views(self.cls, scrambled)
            if views.panel.panel_id != self.views.panel.panel_id:
                raise Skipped("scrambling moved the panel")
            _, again = fit_predict(self.cls, views)
        finally:
            self.holder["ds"] = self.ds
        for a, b, s in zip(preds, again, self.views.test.slides):
            if not np.array_equal(a, b, equal_nan=True):
                raise Failed(f"slide {s.slide_id}: predictions change when the test slides' true counts are "
                             f"scrambled in the dataset ('{CHECK_DATASET}'): the method reads test expression")
        return ""

    # -- prerequisites -----------------------------------------------------------------------
    def _require(self, card_ok: bool) -> None:
        from flag_bench.methods.base import Method

        if card_ok and not (isinstance(self.cls, type) and issubclass(self.cls, Method)):
            raise Skipped("not a Method")
        if not self.configurable:
            raise Skipped("the tiny preset does not build")
        if set(self.cls.card.needs) - set(self.ds.capabilities):
            raise Skipped("needs not served")

    def _fitted(self):
        if self.model is None:
            raise Skipped("fit/predict failed")
        return self.model

    def _predictions(self, shaped: bool = True):
        self._fitted()
        if shaped and not self.shaped:
            raise Skipped("predictions have the wrong shape")
        return self.preds


def _len(x) -> str:
    try:
        return str(len(x))
    except TypeError:
        return "?"
