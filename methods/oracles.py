"""Oracle controls: predictions the harness makes from the test truth itself, to check that each
metric moves the way its definition says. They are not methods (nothing is learned; they read the
answer), never enter a default run, and every leaderboard marks their rows.

- ``oracle-noise``: truth + Gaussian noise whose standard deviation is ``sigma`` times each gene's
  standard deviation on that test slide. Per-gene PCC is then about 1 / sqrt(1 + sigma^2) and
  MSE about sigma^2 x the mean per-gene variance, so both move monotonically with sigma; GSC and
  SSC fall with it too (noise shrinks correlations and Moran's I towards 0, unevenly by gene).
- ``oracle-smooth``: each spot's truth averaged with its k nearest spots on the same slide (the
  spot itself included, equal weights). Smoothing keeps the genes' ranking by Moran's I while
  raising every I, so SSC should be high, PCC high but below 1, and GSC high (co-expression is
  kept, slightly sharpened).

The harness, not the oracle, decides what an oracle sees: ``flag_bench.cell`` hands the test
truths to ``predict_from_truth`` of the oracles defined in this module only (``receives_truth``).
``predict`` (what a method, or a plugin subclassing ``Oracle``, gets) raises, so an oracle never
runs as a method and nothing else reads the answer.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from flag_bench.errors import CellFailure
from flag_bench.methods.base import Method, MethodCard

ORACLE_ROLE = "oracle"


def is_oracle(cls_or_card) -> bool:
    """True for an oracle's class or card (as a card's ``to_dict`` records it, too)."""
    card = getattr(cls_or_card, "card", cls_or_card)
    extra = card.get("extra", {}) if isinstance(card, dict) else getattr(card, "extra", {})
    return (extra or {}).get("role") == ORACLE_ROLE


def receives_truth(cls) -> bool:
    """Whether the harness hands ``cls`` the test truths: the oracles defined here only, never a
    plugin's subclass (which would otherwise read the answer under any card it likes)."""
    return isinstance(cls, type) and issubclass(cls, Oracle) and cls.__module__ == __name__


def _card(name: str, description: str, needs: frozenset[str]) -> MethodCard:
    return MethodCard(name=name, description=description, needs=needs, default_run=False,
                      extra={"role": ORACLE_ROLE,
                             "note": "computed from the test truth: a reference for the metrics, not a method"})


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


@dataclass(frozen=True)
class NoiseConfig:
    sigma: float = 0.5  # noise sd / the gene's sd on the test slide

    def __post_init__(self):
        if not self.sigma >= 0:
            raise ValueError("sigma must be >= 0")


class OracleNoise(Oracle):
    card = _card("oracle-noise", "oracle: test truth + Gaussian noise of sigma x each gene's sd on the slide "
                                 "(not a method; never in a default run)", frozenset())
    Config = NoiseConfig

    def predict_from_truth(self, test, truths):
        streams = np.random.SeedSequence(self.seed).spawn(len(truths))
        out = []
        for y, ss in zip(truths, streams):
            y = np.asarray(y, dtype=np.float64)
            noise = np.random.default_rng(ss).standard_normal(y.shape) * (self.config.sigma * y.std(axis=0))
            out.append((y + noise).astype(np.float32))
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
