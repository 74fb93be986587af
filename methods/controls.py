"""Controls: ordinary methods that calibrate the leaderboard.

- ``mean``: the training-mean profile for every spot (negative control; PCC 0 by convention).
- ``ridge``: ridge regression on standardised encoder embeddings, HEST-Benchmark's linear probe.
  Policy (stated because HEST users could not reproduce its hard-coded alpha): embeddings are
  standardised with training statistics (features without training spread are dropped:
  ``common.inputs.RELATIVE_SPREAD_FLOOR``), reduced by PCA fitted on training spots (256
  components, HEST's dimreduce setting, when D > 256), and alpha is chosen from a log grid by
  leave-one-training-slide-out CV on the training slides only (never the test slide).
- ``knn``: mean expression of the k nearest training spots in the same standardised PCA space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flag_bench.methods.base import Method, MethodCard
from flag_bench.methods.common.inputs import EmbeddingNormalizer, slide_groups, stack_embeddings, stack_targets


def _stack(train):
    return stack_embeddings(train), stack_targets(train, np.float64), slide_groups(train)


def _embedding_space(x: np.ndarray, n_components: int) -> EmbeddingNormalizer:
    """Standardise with training statistics, then PCA on training spots, components unscaled
    (the ridge penalty and kNN distances are defined on them)."""
    return EmbeddingNormalizer(x, n_components, dtype=np.float64)


@dataclass(frozen=True)
class MeanConfig:
    pass


class MeanControl(Method):
    card = MethodCard(
        name="mean",
        description="negative control: predicts the training-mean expression for every spot",
        needs=frozenset(),
    )
    Config = MeanConfig

    def fit(self, train, val=None):
        y = stack_targets(train, np.float64)
        self.mean_ = y.mean(axis=0).astype(np.float32)
        self.summary = {"trained": True, "n_train_spots": int(y.shape[0])}
        return self

    def predict(self, test):
        return [np.tile(self.mean_, (s.n_spots, 1)) for s in test.slides]


@dataclass(frozen=True)
class RidgeConfig:
    pca_components: int = 256
    alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 5, 15))

    def __post_init__(self):
        if not self.alphas or min(self.alphas) <= 0:
            raise ValueError("alphas must be positive")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))


def _ridge_path(x: np.ndarray, y: np.ndarray, alphas) -> list[tuple[np.ndarray, np.ndarray]]:
    """(coef (p, G), intercept (G,)) for each alpha, from one SVD of the centred design."""
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    u, s, vt = np.linalg.svd(x - xm, full_matrices=False)
    uty = u.T @ (y - ym)
    out = []
    for a in alphas:
        coef = vt.T @ ((s / (s**2 + a))[:, None] * uty)
        out.append((coef, ym - xm @ coef))
    return out


class RidgeControl(Method):
    card = MethodCard(
        name="ridge",
        description="ridge on standardised encoder embeddings (HEST-Benchmark probe), alpha by slide-wise CV",
        citation="Jaume et al., HEST-1k, NeurIPS 2024 Datasets & Benchmarks",
        code_url="https://github.com/mahmoodlab/HEST",
    )
    Config = RidgeConfig

    def fit(self, train, val=None):
        x, y, groups = _stack(train)
        self.space_ = _embedding_space(x, self.config.pca_components)
        z = self.space_(x)
        alphas = self.config.alphas
        if len(np.unique(groups)) >= 2:
            err = np.zeros(len(alphas))
            for g in np.unique(groups):
                tr, te = groups != g, groups == g
                for i, (coef, b) in enumerate(_ridge_path(z[tr], y[tr], alphas)):
                    err[i] += np.sum((z[te] @ coef + b - y[te]) ** 2)
            best = int(np.argmin(err))
            cv = "leave-one-training-slide-out"
        else:
            best, cv = len(alphas) // 2, "none (one training slide): middle of the grid"
        self.alpha_ = alphas[best]
        self.coef_, self.intercept_ = _ridge_path(z, y, [self.alpha_])[0]
        self.summary = {"trained": True, "alpha": self.alpha_, "alpha_cv": cv,
                        "pca_components": int(z.shape[1]), "embeddings": self.space_.describe()}
        return self

    def predict(self, test):
        return [(self.space_(s.embeddings) @ self.coef_ + self.intercept_).astype(np.float32) for s in test.slides]

    def n_parameters(self):
        return int(self.coef_.size + self.intercept_.size)


@dataclass(frozen=True)
class KNNConfig:
    k: int = 10
    pca_components: int = 256

    def __post_init__(self):
        if self.k < 1:
            raise ValueError("k must be >= 1")


class KNNControl(Method):
    card = MethodCard(
        name="knn",
        description="mean expression of the k nearest training spots in standardised embedding space",
    )
    Config = KNNConfig
    presets = {"tiny": {"k": 5}, "small": {"k": 10}, "paper": {"k": 10}}

    def fit(self, train, val=None):
        from sklearn.neighbors import NearestNeighbors

        x, y, _ = _stack(train)
        self.space_ = _embedding_space(x, self.config.pca_components)
        self.k_ = min(self.config.k, len(x))
        self.nn_ = NearestNeighbors(n_neighbors=self.k_, algorithm="brute").fit(self.space_(x))
        self.y_ = y
        self.summary = {"trained": True, "k": self.k_, "embeddings": self.space_.describe()}
        return self

    def predict(self, test):
        out = []
        for s in test.slides:
            _, idx = self.nn_.kneighbors(self.space_(s.embeddings))
            out.append(self.y_[idx].mean(axis=1).astype(np.float32))
        return out
