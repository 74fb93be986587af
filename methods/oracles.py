"""Oracle controls: predictions the harness makes from the test truth itself, to check that each
metric moves the way its definition says. They are not methods (nothing is learned; they read the
answer), never enter a default run, and every leaderboard marks their rows.

- ``oracle-noise``: truth + Gaussian noise whose standard deviation is ``sigma`` times each gene's
  standard deviation on that test slide. Per-gene PCC is then about 1 / sqrt(1 + sigma^2) and
  MSE about sigma^2 x the mean per-gene variance, so both move monotonically with sigma; GSC and
  SSC fall with it too (noise shrinks correlations and Moran's I towards 0, unevenly by gene).
  With ``spread`` > 0 each gene's sigma is drawn uniformly from [sigma (1 - spread),
  sigma (1 + spread)]: the shrink then differs by gene, so a Pearson-based GSC or SSC falls for a
  structural reason, not only from finite-sample noise (metric-validity.md §4).
- ``oracle-smooth``: each spot's truth averaged with its k nearest spots on the same slide (the
  spot itself included, equal weights). Smoothing keeps the genes' ranking by Moran's I while
  raising every I, so SSC should be high, PCC high but below 1, and GSC high (co-expression is
  kept, slightly sharpened).
- ``oracle-slide-mean``: each gene's mean on the test slide, for every spot. Its MSE is the
  within-slide part of the ``mean`` control's; the rest is the slide's offset from training.

Nulls that read the truth (role ``truth_null``, flag_bench/roles.py): what a metric gives a prediction
that is right about everything except where the expression is.

- ``null-shuffle``: the truth with its spots permuted on the slide. GSC is exactly 1 (it is
  invariant to permuting spots); PCC and SSC are draws from their null distributions.
- ``null-rotate``: the truth rotated 180 degrees about the centre of the slide's bounding box,
  each spot taking the truth of the spot nearest its rotated position: right texture, wrong place.

The harness, not the oracle, decides what an oracle sees: ``flag_bench.cell`` hands the test
truths to ``predict_from_truth`` of the classes the registry grants it (``receives_truth``: the
built-in names of ``catalog.TRUTH_RECEIVERS``, whatever a class's ``__module__`` says).
``predict`` (what a method, or a plugin subclassing ``Oracle``, gets) raises, so an oracle never
runs as a method and nothing else reads the answer.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from flag_bench.errors import CellFailure
from flag_bench.methods.base import Method, MethodCard, same_tuning
from flag_bench.methods.roles import is_oracle  # noqa: F401  (re-exported)
from flag_bench.roles import TRUTH_ROLES, Role


def receives_truth(cls) -> bool:
    """Whether the harness hands ``cls`` the test truths: granted by the registry to the built-in
    names of ``catalog.TRUTH_RECEIVERS`` (the class each resolves to), never by what a class says
    about itself: a plugin's subclass, even one setting ``__module__`` to this module's name, is
    not handed the answer."""
    from flag_bench.catalog import granted_truth

    return isinstance(cls, type) and issubclass(cls, Oracle) and granted_truth(cls)


def claims_truth(cls) -> bool:
    """Whether ``cls`` looks like a truth reader (an ``Oracle`` subclass, a card declaring the
    oracle or truth_null role, or ``extra['reads_truth']``) without the registry's grant: the
    harness will not hand it the truth (``flag-bench check`` says so)."""
    if not isinstance(cls, type) or receives_truth(cls):
        return False
    card = getattr(cls, "card", None)
    extra = getattr(card, "extra", None) or {}
    return issubclass(cls, Oracle) or getattr(card, "role", None) in TRUTH_ROLES or bool(extra.get("reads_truth"))


# oracles and truth-reading nulls: constants set by their definition, never compared on scores
UNTUNED = same_tuning("no hyper-parameters tuned: constants set by the definition (oracle-noise sigma 0.5 by "
                      "default, oracle-smooth k = 6, the hexagonal ring of Visium/ST spots)",
                      "none: an oracle or null is a reference for the metrics")


def _card(name: str, description: str, needs: frozenset[str]) -> MethodCard:
    return MethodCard(name=name, description=description, needs=needs, default_run=False, role=Role.ORACLE,
                      extra={"note": "computed from the test truth: a reference for the metrics, not a method"},
                      tuned_on=UNTUNED)


def _null_card(name: str, description: str, needs: frozenset[str], note: str) -> MethodCard:
    return MethodCard(name=name, description=description, needs=needs, default_run=False, role=Role.TRUTH_NULL,
                      extra={"note": note}, tuned_on=UNTUNED)


class Oracle(Method):
    """Base of the oracle controls: ``fit`` learns nothing; ``predict_from_truth`` gets the truth."""

    def fit(self, train, val=None):
        self.summary = {"trained": False, "oracle": "prediction computed from the test truth"}
        return self

    def predict(self, test):
        raise CellFailure(f"{self.card.name} is an oracle: only the harness can run it, with the test truth")

    @abc.abstractmethod
    def predict_from_truth(self, test, truths: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One float32 (n_spots, G) per test slide, from that slide's truth (n_spots, G)."""

    def _slide_rngs(self, n: int) -> list[np.random.Generator]:
        """One generator per test slide, spawned from the cell seed (slide i's stream is the same
        whatever the number of slides)."""
        return [np.random.default_rng(ss) for ss in np.random.SeedSequence(self.seed).spawn(n)]


@dataclass(frozen=True)
class NoiseConfig:
    sigma: float = 0.5  # noise sd / the gene's sd on the test slide
    spread: float = 0.0  # each gene's sigma ~ U[sigma (1 - spread), sigma (1 + spread)], per slide

    def __post_init__(self):
        if not self.sigma >= 0:
            raise ValueError("sigma must be >= 0")
        if not 0 <= self.spread <= 1:
            raise ValueError("spread must lie in [0, 1]")


class OracleNoise(Oracle):
    card = _card("oracle-noise", "oracle: test truth + Gaussian noise of sigma x each gene's sd on the slide, "
                                 "sigma optionally spread by gene (not a method; never in a default run)", frozenset())
    Config = NoiseConfig

    def predict_from_truth(self, test, truths):
        sigma, spread = self.config.sigma, self.config.spread
        out, ranges = [], {}
        for y, rng, s in zip(truths, self._slide_rngs(len(truths)), test.slides):
            y = np.asarray(y, dtype=np.float64)
            z = rng.standard_normal(y.shape)
            # drawn after the noise, so spread = 0 leaves the noise (and the numbers) as they were
            gene_sigma = sigma * (1.0 + spread * rng.uniform(-1.0, 1.0, size=y.shape[1])) if spread > 0 else sigma
            out.append((y + z * (gene_sigma * y.std(axis=0))).astype(np.float32))
            g = np.atleast_1d(gene_sigma)
            ranges[s.slide_id] = [float(g.min()), float(g.max())]
        self.summary.update({"sigma": sigma, "spread": spread, "gene_sigma_range": ranges})
        return out


@dataclass(frozen=True)
class SmoothConfig:
    k: int = 6  # neighbours averaged with the spot itself (6: the Visium/ST hexagonal ring)

    def __post_init__(self):
        if self.k < 1:
            raise ValueError("k must be >= 1")


class OracleSmooth(Oracle):
    card = _card("oracle-smooth", "oracle: test truth averaged over each spot and its k nearest spots "
                                  "(not a method; never in a default run)", frozenset({"coords"}))
    Config = SmoothConfig

    def predict_from_truth(self, test, truths):
        from flag_bench.methods.controls import spatial_smooth

        k = self.config.k
        return [spatial_smooth(np.asarray(y, np.float64), s.coords_um, k, k / (k + 1)).astype(np.float32)
                for y, s in zip(truths, test.slides)]


@dataclass(frozen=True)
class SlideMeanConfig:
    pass


class OracleSlideMean(Oracle):
    card = _card("oracle-slide-mean", "oracle: each gene's mean on the test slide, for every spot; splits MSE into "
                                      "slide offset and within-slide error (not a method; never in a default run)",
                 frozenset())
    Config = SlideMeanConfig

    def predict_from_truth(self, test, truths):
        return [np.tile(np.asarray(y, np.float64).mean(axis=0), (len(y), 1)).astype(np.float32) for y in truths]


@dataclass(frozen=True)
class ShuffleConfig:
    pass


class NullShuffle(Oracle):
    card = _null_card(
        "null-shuffle", "null: the test truth with its spots permuted within the slide (GSC 1 by construction; "
                        "the PCC and SSC null) (not a method; never in a default run)", frozenset(),
        "reads the test truth and keeps everything but location: the score a metric gives for no location "
        "information; shown, never ranked")
    Config = ShuffleConfig

    def predict_from_truth(self, test, truths):
        out = []
        for y, rng in zip(truths, self._slide_rngs(len(truths))):
            y = np.asarray(y, dtype=np.float32)
            out.append(y[rng.permutation(len(y))])
        self.summary.update({"null": "test truth, spots permuted within each slide"})
        return out


@dataclass(frozen=True)
class RotateConfig:
    pass


def rotated_sources(coords: np.ndarray) -> np.ndarray:
    """(N, 2) spot positions -> (N,) index of the spot nearest each spot's position rotated 180
    degrees about the centre of the bounding box."""
    from scipy.spatial import cKDTree

    c = np.asarray(coords, dtype=np.float64)
    centre = (c.min(axis=0) + c.max(axis=0)) / 2.0
    _, idx = cKDTree(c).query(2.0 * centre - c, k=1)
    return np.asarray(idx, dtype=np.int64).reshape(len(c))


class NullRotate(Oracle):
    card = _null_card(
        "null-rotate", "null: the test truth rotated 180 degrees on the slide, each spot taking the truth of the "
                       "spot nearest its rotated position (not a method; never in a default run)",
        frozenset({"coords"}),
        "reads the test truth: right texture, wrong place; where the tissue is asymmetric few spots serve as "
        "sources (summary: distinct_source_fraction); shown, never ranked")
    Config = RotateConfig

    def predict_from_truth(self, test, truths):
        out, frac = [], {}
        for y, s in zip(truths, test.slides):
            src = rotated_sources(s.coords_um)
            out.append(np.asarray(y, dtype=np.float32)[src])
            frac[s.slide_id] = float(np.unique(src).size / max(len(src), 1))
        self.summary.update({"null": "test truth rotated 180 degrees about the bounding-box centre",
                             "distinct_source_fraction": frac})
        return out
