"""``example-smoother``: ridge regression on PCA-reduced image embeddings, then each test spot's
prediction blended with the mean prediction of its k nearest spots on the same slide.

A small but real method, written to show every part of the flag-bench method contract: the card,
``needs``, a frozen Config with tiny/small/paper presets, seed streams, progress reporting and
the summary. Only numpy: a plugin may import anything, but `flag-bench list` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flag_bench.methods.base import Method, MethodCard, Tuning


@dataclass(frozen=True)
class SmootherConfig:
    pca_components: int = 32  # principal components of the standardised embeddings
    alpha: float = 10.0  # ridge penalty
    k: int = 6  # neighbours averaged on the test slide (0: no smoothing)
    blend: float = 0.5  # weight of the neighbour mean against the spot's own prediction
    max_train_spots: int | None = None  # random subset of training spots (None: all)

    def __post_init__(self):
        # make_config turns a ValueError here into a one-line error before any cell runs
        if self.pca_components < 1 or self.alpha <= 0 or self.k < 0 or not 0 <= self.blend <= 1:
            raise ValueError("need pca_components >= 1, alpha > 0, k >= 0 and 0 <= blend <= 1")


class Smoother(Method):
    card = MethodCard(
        name="example-smoother",
        description="example plugin: PCA-ridge on image embeddings, smoothed over the k nearest spots",
        citation="flag-bench documentation, 'Writing a method plugin'",
        code_url="https://example.invalid/flag-bench/examples/flag-bench-example-plugin",
        needs=frozenset({"embeddings", "coords"}),  # coords: TestData always has them
        licence="MIT",
        default_run=False,  # plugins run when named in --methods
        # what each preset was chosen on; a preset chosen by its scores on a benchmark's test slides
        # lists them ("her2st-mini:C2"), and every leaderboard of that dataset flags its rows
        tuned_on=(
            Tuning("tiny", "not tuned: a test-speed preset", "none"),
            Tuning("small", "not tuned: illustrative values for the documentation", "none"),
            Tuning("paper", "no published configuration: illustrative values", "none"),
        ),
    )
    Config = SmootherConfig
    presets = {
        "tiny": {"pca_components": 4, "k": 3, "max_train_spots": 64},  # tests: seconds, not scores
        "small": {"pca_components": 32, "k": 6},
        "paper": {"pca_components": 64, "k": 6, "alpha": 10.0},
    }

    def fit(self, train, val=None):
        (subset_seed,) = self.seed_streams(1)  # one named stream; add more without moving this one
        xs, ys = [], []
        for s in self.track(train.slides, len(train.slides), "stacking training slides"):
            xs.append(s.embeddings)
            ys.append(s.targets)
        x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
        n = self.config.max_train_spots
        if n is not None and n < len(x):
            keep = np.sort(np.random.default_rng(subset_seed).choice(len(x), n, replace=False))
            x, y = x[keep], y[keep]
        self.mu_, sd = x.mean(0), x.std(0)
        self.sd_ = np.where(sd > 0, sd, 1.0)
        z = (x - self.mu_) / self.sd_
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        self.components_ = vt[: self.config.pca_components].T
        p = z @ self.components_
        self.y_mean_ = y.mean(0)
        gram = p.T @ p + self.config.alpha * np.eye(p.shape[1])
        self.coef_ = np.linalg.solve(gram, p.T @ (y - self.y_mean_))
        # recorded next to the scores: what fit did, in JSON-able values
        self.summary = {"trained": True, "n_train_spots": int(len(x)), "pca_components": int(p.shape[1]),
                        "alpha": self.config.alpha, "k": self.config.k, "blend": self.config.blend}
        return self

    def predict(self, test):
        out = []
        for s in self.track(test.slides, len(test.slides), "predicting"):
            z = (s.embeddings.astype(np.float64) - self.mu_) / self.sd_
            pred = z @ self.components_ @ self.coef_ + self.y_mean_
            out.append(self._smooth(pred, s.coords_um).astype(np.float32))
        return out

    def _smooth(self, pred: np.ndarray, coords: np.ndarray) -> np.ndarray:
        k = min(self.config.k, len(pred) - 1)
        if k < 1 or self.config.blend == 0:
            return pred
        d = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)
        np.fill_diagonal(d, np.inf)
        nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
        return (1 - self.config.blend) * pred + self.config.blend * pred[nearest].mean(axis=1)

    def n_parameters(self):
        return int(self.components_.size + self.coef_.size + self.y_mean_.size)
