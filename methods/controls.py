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

from flag_bench.methods.base import Method, MethodCard, Tuning, same_tuning
from flag_bench.methods.common.inputs import EmbeddingNormalizer, slide_groups, stack_embeddings, stack_targets
from flag_bench.roles import Role


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
        role=Role.NEGATIVE_CONTROL,
        description="negative control: predicts the training-mean expression for every spot",
        needs=frozenset(),
        tuned_on=same_tuning("no hyper-parameters: the training mean", "none"),
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
        role=Role.POSITIVE_CONTROL,
        description="ridge on standardised encoder embeddings (HEST-Benchmark probe), alpha by slide-wise CV",
        citation="Jaume et al., HEST-1k, NeurIPS 2024 Datasets & Benchmarks",
        code_url="https://github.com/mahmoodlab/HEST",
        tuned_on=same_tuning("no hyper-parameters tuned by hand: alpha is chosen in every fold by "
                             "leave-one-training-slide-out CV on the training slides; 256 PCA components are "
                             "HEST-Benchmark's dimreduce setting; the alpha grid (15 values, 1e-2 to 1e5): "
                             "not recorded", "squared error of the CV on the training slides, never a test slide"),
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
        role=Role.POSITIVE_CONTROL,
        description="mean expression of the k nearest training spots in standardised embedding space",
        tuned_on=(Tuning("paper", "no published configuration: the same k = 10 as small", "not recorded"),
                  Tuning("small", "not recorded (k = 10 since the first commit, dd021d2); 256 PCA components as "
                                  "ridge", "not recorded"),
                  Tuning("tiny", "not tuned: a test-speed preset (k = 5)", "none")),
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


@dataclass(frozen=True)
class RidgeSmoothConfig(RidgeConfig):
    blend: float | None = None  # weight of the neighbour mean; None: chosen on the training slides
    k: int | None = None  # spatial neighbours; None: chosen on the training slides
    blends: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    ks: tuple[int, ...] = (4, 6, 8)
    distance_quantile: float | None = None  # neighbours farther than this quantile of the slide's kNN distances are dropped

    def __post_init__(self):
        super().__post_init__()
        if self.blend is not None and not 0 <= self.blend <= 1 or any(not 0 <= b <= 1 for b in self.blends):
            raise ValueError("blend and blends must lie in [0, 1]")
        if (self.k is not None and self.k < 1) or not self.ks or min(self.ks) < 1:
            raise ValueError("k and ks must be >= 1")
        if self.distance_quantile is not None and not 0 < self.distance_quantile <= 1:
            raise ValueError("distance_quantile must lie in (0, 1]")
        object.__setattr__(self, "blends", tuple(float(b) for b in self.blends))
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))


def spatial_smooth(pred: np.ndarray, coords: np.ndarray, k: int, blend: float,
                   distance_quantile: float | None = None) -> np.ndarray:
    """(1 - blend) * own prediction + blend * mean prediction of the k nearest other spots of the
    same slide (a spot whose neighbours are all beyond the distance cap keeps its own)."""
    from scipy.spatial import cKDTree

    n = len(pred)
    k = min(k, n - 1)
    if k < 1 or blend == 0:
        return pred.copy()
    d, idx = cKDTree(coords).query(coords, k=k + 1)
    d, idx = d[:, 1:], idx[:, 1:]  # drop the spot itself
    keep = np.ones_like(d, dtype=bool)
    if distance_quantile is not None:
        keep = d <= np.quantile(d, distance_quantile)
    cnt = keep.sum(axis=1, keepdims=True)
    neigh = (pred[idx] * keep[..., None]).sum(axis=1) / np.maximum(cnt, 1)
    return np.where(cnt > 0, (1 - blend) * pred + blend * neigh, pred)


class RidgeSmoothControl(RidgeControl):
    """Ridge, then smoothing on the test slide's own spatial graph: no test expression is used
    (baselines-verified §5, after the "prior-guided ridge + smoothing" HEST control)."""

    card = MethodCard(
        name="ridge-smooth",
        role=Role.POSITIVE_CONTROL,
        description="ridge probe, then each spot's prediction blended with the mean prediction of its k nearest "
                    "spots on the same slide (blend and k fixed or chosen on training slides)",
        citation="Jaume et al., HEST-1k, NeurIPS 2024; smoothing after Codex-STFlow repro/PRIOR_GUIDED_STFLOW.md",
        code_url="https://github.com/mahmoodlab/HEST",
        needs=frozenset({"embeddings", "coords"}),
        tuned_on=(
            Tuning("paper", "the published recipe (0.75 own + 0.25 mean of 8 neighbours, 95th-percentile distance "
                            "cap) of Codex-STFlow repro/PRIOR_GUIDED_STFLOW.md on 9 HEST-Benchmark tasks with UNI2-h "
                            "features (baselines-verified §5)",
                   "the published recipe's mean PCC over those tasks (0.4424 vs 0.4142 without smoothing)",
                   note="not tuned by flag-bench; alpha as ridge (CV on the training slides)"),
            Tuning("small", "no values tuned by hand: blend and k are chosen in every fold on the training slides "
                            "(leave-one-training-slide-out ridge predictions, blends 0-0.75, k 4/6/8)",
                   "squared error on the training slides, never a test slide"),
            Tuning("tiny", "not tuned: a test-speed preset (the same choice on the training slides as small)", "none"),
        ),
    )
    Config = RidgeSmoothConfig
    # paper: the published recipe (0.75 own + 0.25 neighbours, 8 neighbours, 95th-percentile cap)
    presets = {"tiny": {}, "small": {}, "paper": {"blend": 0.25, "k": 8, "distance_quantile": 0.95}}

    def fit(self, train, val=None):
        super().fit(train, val)
        cfg = self.config
        blends = (cfg.blend,) if cfg.blend is not None else cfg.blends
        ks = (cfg.k,) if cfg.k is not None else cfg.ks
        if len(blends) * len(ks) == 1 or len(train.slides) < 2:
            self.blend_, self.k_ = blends[len(blends) // 2], ks[len(ks) // 2]
            how = "fixed" if len(blends) * len(ks) == 1 else "none (one training slide): middle of the grids"
        else:
            self.blend_, self.k_ = self._choose(train, blends, ks)
            how = "leave-one-training-slide-out ridge predictions"
        self.summary.update({"blend": self.blend_, "k": self.k_, "smoothing_chosen_by": how,
                             "distance_quantile": cfg.distance_quantile})
        return self

    def _choose(self, train, blends, ks) -> tuple[float, int]:
        """(blend, k) with the lowest squared error when each training slide is predicted by a
        ridge (the chosen alpha) fitted on the other training slides, then smoothed."""
        x, y, groups = _stack(train)
        z = self.space_(x)
        err = np.zeros((len(blends), len(ks)))
        for g, s in enumerate(train.slides):
            tr, te = groups != g, groups == g
            coef, b = _ridge_path(z[tr], y[tr], [self.alpha_])[0]
            raw = z[te] @ coef + b
            for i, bl in enumerate(blends):
                for j, k in enumerate(ks):
                    sm = spatial_smooth(raw, s.coords_um, k, bl, self.config.distance_quantile)
                    err[i, j] += np.sum((sm - y[te]) ** 2)
        bi, bj = np.unravel_index(int(np.argmin(err)), err.shape)
        return float(blends[bi]), int(ks[bj])

    def predict(self, test):
        return [spatial_smooth(p, s.coords_um, self.k_, self.blend_, self.config.distance_quantile).astype(np.float32)
                for p, s in zip(super().predict(test), test.slides)]
