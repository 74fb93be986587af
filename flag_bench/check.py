"""The method contract as a library: `flag-bench check METHOD` and tests/test_method_contract.py
run the same checks against any registered method (built-in or plugin).

The method runs its ``tiny`` preset on a patient fold of a small synthetic dataset (two test
slides) built by the real FoldBuilder. Expression may reach a method only through TrainData;
two checks guard that from both sides: a walk of everything reachable from TestData (a harness
leak), and a rerun on a dataset whose test slides' counts are scrambled (a method that finds the
test expression some other way, e.g. by loading the dataset by the name TestData carries,
predicts differently). During a check the dataset is registered under ``CHECK_DATASET``, so a
lookup through the registry finds the scrambled counts on the second run, as a lookup of a real
dataset's files would find its true counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import scipy.sparse as sp

from flag_bench.check_walk import leaks
from flag_bench.errors import UserError
from flag_bench.spec import PRESETS, PanelSpec, SplitSpec, TargetTransform  # noqa: F401  (PRESETS: re-exported to check_rules)

CHECK_DATASET = "flag-bench-check"
G = 10
DATASET_PARAMS = dict(n_slides=5, n_patients=3, spots_per_slide=40, n_genes=60, seed=3)
FIXTURE = "tiny preset, patient fold of a synthetic dataset (5 slides, 3 patients, 40 spots each), G=10"


class Failed(Exception):
    """A check's named reason for failing."""


class Skipped(Exception):
    """A check that could not run because an earlier one failed."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "pass", "FAIL" or "skip"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "pass"


def synthetic_dataset(counts_of: Callable | None = None):
    """The check dataset; ``counts_of(slide)`` may replace a slide's counts."""
    from flag_bench.datasets import synthetic

    ds = dataclasses.replace(synthetic.load(**DATASET_PARAMS), name=CHECK_DATASET)
    if counts_of is None:
        return ds
    return dataclasses.replace(ds, slides=tuple(dataclasses.replace(s, counts=counts_of(s)) for s in ds.slides))


def fold_builder(ds):
    from flag_bench.catalog import RegisteredEncoders
    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.encoders import ColorStats
    from flag_bench.datasets.fold import FoldBuilder

    # small tiles: the contract, not the scores, is under test
    return FoldBuilder(ds, patch=PatchSpec(112, 32), encoder=ColorStats(), device="cpu", cache_dir=None,
                       encoder_resolver=RegisteredEncoders())


def fold_views(cls, ds, builder=None):
    """A patient fold testing on two slides, carved for validation when the card asks."""
    from flag_bench.datasets.fold import FoldSpec
    from flag_bench.datasets.panels import HMHVG
    from flag_bench.datasets.splits import carve_validation, make_split

    plan = make_split(ds, SplitSpec("patient"))
    fold = carve_validation(plan, plan.folds[0]) if cls.card.uses_validation else plan.folds[0]
    spec = FoldSpec(PanelSpec("hmhvg"), G, fold, TargetTransform.LOG1P)
    return (builder or fold_builder(ds)).build(spec, HMHVG(), embeddings="embeddings" in cls.card.needs)


def scrambled_dataset(views, seed: int = 1):
    """The check dataset with the test slides' counts permuted (same shape, same totals)."""
    test_ids = {s.slide_id for s in views.test.slides}
    rng = np.random.default_rng(seed)

    def scramble(s):
        if s.id not in test_ids:
            return s.counts
        dense = s.counts.toarray()
        return sp.csr_matrix(rng.permutation(dense.ravel()).reshape(dense.shape))

    return synthetic_dataset(scramble)


@contextlib.contextmanager
def registered_dataset(holder: dict) -> Iterator[None]:
    """``CHECK_DATASET`` resolves to ``holder["ds"]`` in the dataset registry meanwhile."""
    from flag_bench.catalog import DATASETS

    DATASETS.register(CHECK_DATASET, lambda **_: holder["ds"], origin="flag-bench check")
    try:
        yield
    finally:
        DATASETS.unregister(CHECK_DATASET)


def fit_predict(cls, views, seed: int = 0):
    from flag_bench.methods.base import seed_everything

    seed_everything(seed)
    m = cls(cls.make_config("tiny"), seed=seed, device="cpu")
    m.fit(views.train, views.val)
    return m, m.predict(views.test)


def resolve(name: str):
    """The registered class of ``name``; a UserError for an unknown or broken method."""
    from flag_bench.catalog import METHODS

    return _not_an_oracle(name, METHODS.get(METHODS.check(name)))


def _not_an_oracle(name: str, cls):
    """Refuses the built-ins the registry grants the test truth. A class that only claims the role
    (an Oracle subclass, a card saying oracle, a ``__module__`` set to the oracles' module) is a
    method like any other: the "card" check says the harness will not hand it the truth."""
    from flag_bench.methods.oracles import is_oracle, receives_truth

    if receives_truth(cls):
        what = "an oracle control" if is_oracle(cls) else "a null control built from the test truth"
        raise UserError(f"{name} is {what}: the harness computes it from the test truth, so the "
                        "method contract (no test expression) does not apply; tests/test_oracles.py and "
                        "tests/test_nulls.py check it")
    return cls


def run_checks(name: str, cls=None, on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Every contract check on method ``name`` (``cls`` defaults to the registered class)."""
    from flag_bench.check_rules import Contract

    contract = Contract(name, resolve(name) if cls is None else _not_an_oracle(name, cls))
    results = []
    with registered_dataset(contract.holder):
        for title, fn in contract.checks():
            results.append(_run_one(title, fn))
            if on_result:
                on_result(results[-1])
    return results


def _run_one(title: str, fn: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(title, "pass", fn() or "")
    except Failed as exc:
        return CheckResult(title, "FAIL", str(exc))
    except Skipped as exc:
        return CheckResult(title, "skip", str(exc))
    except UserError as exc:
        return CheckResult(title, "FAIL", str(exc))
    except Exception as exc:  # the method under test raised: that is its failure, named
        text = str(exc).strip().splitlines()
        return CheckResult(title, "FAIL", f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": "))


def jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


__all__ = ["CHECK_DATASET", "CheckResult", "Failed", "Skipped", "FIXTURE", "fit_predict", "fold_builder",
           "fold_views", "leaks", "run_checks", "scrambled_dataset", "synthetic_dataset"]
