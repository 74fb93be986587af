"""Image-free null controls: ordinary methods (they see TrainData and the test coordinates, never
test expression) that know nothing about what the test tissue looks like. Their scores are what a
metric gives for no image information, so a method's GSC or SSC means something only as its
excess over theirs (metric-validity.md §4). Role ``null`` (flag_bench/roles.py): shown on the
leaderboard beside ``mean``, never ranked as methods.

- ``random-spot``: each test spot gets the target profile of a training spot drawn uniformly, with
  replacement, from the pooled training slides. It reproduces the training co-expression (and the
  per-spot depth factor that dominates it on raw log counts), so it is the image-free GSC floor.
- ``gene-prior``: the per-gene training mean plus, per gene, an independent spatially smoothed
  noise field on the test slide's coordinates whose Moran's I matches the gene's mean Moran's I on
  the training slides. Moran's I is largely a property of the gene, so this is the image-free SSC
  floor (SSC of it is about Pearson(mean training I, test I)); PCC and GSC are about 0.

Construction of the gene-prior field, per test slide (vectorised over genes): white noise z0;
repeated smoothing z_l = spatial_smooth(z_{l-1}, k=6, blend=6/7), l = 1..levels, each level
standardised per gene; candidate fields (1 - w) z_l + w z_{l+1} on a grid of w; per gene the
candidate whose Moran's I (the SSC weights: ``metrics.structure.DEFAULT_WEIGHTS``) is closest to
the target, which leaves targets below white noise's I at white noise and targets above the
smoothest level at that level. The I of every candidate comes in closed form from a few
quadratic forms per level pair, so the grid costs (levels x grid x genes) scalars. The chosen
field is standardised and scaled by the gene's mean within-slide sd on the training slides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flag_bench.methods.base import PRESETS, Method, MethodCard, same_tuning
from flag_bench.methods.common.inputs import stack_targets
from flag_bench.roles import Role

_PRESETS: dict[str, dict[str, Any]] = {p: {} for p in PRESETS}


def _card(name: str, description: str, needs: frozenset[str], note: str, tuned_on=()) -> MethodCard:
    return MethodCard(name=name, description=description, needs=needs, default_run=True, role=Role.NULL,
                      extra={"note": note}, tuned_on=tuned_on)


@dataclass(frozen=True)
class RandomSpotConfig:
    pass


class RandomSpot(Method):
    card = _card("random-spot", "null control: each test spot gets the profile of a random training spot "
                                "(no image, no test data; the image-free GSC floor)", frozenset(),
                 "an image-free null: shown beside the methods, never ranked",
                 same_tuning("no hyper-parameters: a uniform draw from the pooled training spots", "none"))
    Config = RandomSpotConfig
    presets = _PRESETS

    def fit(self, train, val=None):
        self.pool_ = stack_targets(train, np.float32)
        self.summary = {"trained": False, "pool": "training spots pooled over the training slides",
                        "n_train_spots": int(self.pool_.shape[0])}
        return self

    def predict(self, test):
        streams = self.seed_streams(len(test.slides))  # one per test slide
        return [self.pool_[np.random.default_rng(ss).integers(0, len(self.pool_), size=s.n_spots)]
                for ss, s in zip(streams, test.slides)]


@dataclass(frozen=True)
class GenePriorConfig:
    levels: int = 8  # smoothing levels; the smoothest bounds the Moran's I the field can reach
    mix_steps: int = 40  # grid of mixing weights between consecutive levels: w = 0, 1/steps, ..., 1

    def __post_init__(self):
        if self.levels < 1:
            raise ValueError("levels must be >= 1")
        if self.mix_steps < 1:
            raise ValueError("mix_steps must be >= 1")


def _standardise(z: np.ndarray) -> np.ndarray:
    z = z - z.mean(axis=0)
    sd = z.std(axis=0)
    return z / np.where(sd > 0, sd, 1.0)


def _weights(coords: np.ndarray):
    """The SSC weights on ``coords``, or None where the slide is too small for them."""
    from flag_bench.metrics.structure import DEFAULT_WEIGHTS

    try:
        w = DEFAULT_WEIGHTS.build(np.asarray(coords, dtype=np.float64))
    except ValueError:
        return None
    return w if w.s0 > 0 else None


def moran_matched_field(z0: np.ndarray, coords: np.ndarray, target: np.ndarray, weights, levels: int,
                        mix_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """White noise z0 (N, G) -> (field (N, G) standardised per gene, candidate I (levels x
    (mix_steps + 1), G)): per gene the candidate whose Moran's I under ``weights`` is closest to
    ``target`` (G,) (a NaN target takes white noise)."""
    from flag_bench.methods.controls import spatial_smooth

    k = 6
    zs = [_standardise(z0)]
    for _ in range(levels):
        zs.append(_standardise(spatial_smooth(zs[-1], coords, k, k / (k + 1))))
    wz = [weights.matrix @ z for z in zs]
    scale = z0.shape[0] / weights.s0
    w = np.linspace(0.0, 1.0, mix_steps + 1)[:, None]  # (S, 1)
    a, b, c = (1.0 - w) ** 2, 2.0 * (1.0 - w) * w, w**2
    dot = lambda p, q: np.einsum("ij,ij->j", p, q)  # noqa: E731  (per-gene inner products)
    per_pair = []  # per level pair, (S, G): I of (1 - w) z_l + w z_{l+1} from the pair's quadratic forms
    for lo in range(levels):
        u, v, wu, wv = zs[lo], zs[lo + 1], wz[lo], wz[lo + 1]
        num = a * dot(u, wu) + b * 0.5 * (dot(u, wv) + dot(v, wu)) + c * dot(v, wv)
        den = a * dot(u, u) + b * dot(u, v) + c * dot(v, v)
        per_pair.append(scale * num / np.where(den > 0, den, np.inf))
    cand = np.concatenate(per_pair)  # (levels * S, G)
    t = np.where(np.isfinite(target), target, cand[0])
    pair, step = np.divmod(np.argmin(np.abs(cand - t[None, :]), axis=0), len(w))
    wt = w[step, 0]
    field = np.empty_like(zs[0])
    for lo in np.unique(pair):
        g = pair == lo
        field[:, g] = (1.0 - wt[g]) * zs[lo][:, g] + wt[g] * zs[lo + 1][:, g]
    return _standardise(field), cand


class GenePrior(Method):
    card = _card("gene-prior", "null control: training mean plus per-gene smoothed noise on the test coordinates "
                               "matching each gene's training Moran's I (no image, no test expression; the "
                               "image-free SSC floor)", frozenset({"coords"}),
                 "an image-free null: uses the test coordinates only; shown beside the methods, never ranked",
                 same_tuning("no hyper-parameters tuned on scores: levels = 8 and mix_steps = 40 bound the Moran's "
                             "I the field can reach and its resolution; what they were checked on is not recorded",
                             "not recorded (the field's Moran's I against the training target, not a test score)"))
    Config = GenePriorConfig
    presets = _PRESETS

    def fit(self, train, val=None):
        from flag_bench.metrics.moran import morans_i_values

        y = stack_targets(train, np.float64)
        self.mean_ = y.mean(axis=0)
        i_slides, sds = [], []
        for s in train.slides:
            t = np.asarray(s.targets, dtype=np.float64)
            sds.append(t.std(axis=0))
            w = _weights(s.coords_um)
            if w is not None:
                i_slides.append(morans_i_values(t, w))
        self.sd_ = np.mean(sds, axis=0)
        target = np.full(y.shape[1], np.nan)
        if i_slides:
            arr = np.stack(i_slides)
            seen = np.isfinite(arr).any(axis=0)
            target[seen] = np.nanmean(arr[:, seen], axis=0)
        self.target_ = target
        fin = target[np.isfinite(target)]
        self.summary = {"trained": True, "n_train_slides": len(train.slides),
                        "n_slides_with_moran": len(i_slides),
                        "moran_target_median": float(np.median(fin)) if fin.size else None,
                        "n_genes_without_target": int((~np.isfinite(target)).sum())}
        return self

    def predict(self, test):
        from flag_bench.metrics.moran import morans_i_values

        cfg = self.config
        out = []
        self.diagnostics_ = {}  # slide id -> per-gene target, achieved I and the reachable range
        for ss, s in zip(self.seed_streams(len(test.slides)), test.slides):
            coords = np.asarray(s.coords_um, dtype=np.float64)
            z0 = np.random.default_rng(ss).standard_normal((s.n_spots, len(self.mean_)))
            weights = _weights(coords)
            fit = {"slide": s.slide_id}
            if weights is None:
                field = _standardise(z0)
                fit["moran_match"] = "none: the slide is too small for the SSC weights (white noise)"
            else:
                field, cand = moran_matched_field(z0, coords, self.target_, weights, cfg.levels, cfg.mix_steps)
                achieved = morans_i_values(field, weights, check_finite=False)
                lo, hi = cand.min(axis=0), cand.max(axis=0)
                ok = np.isfinite(self.target_) & np.isfinite(achieved)
                inside = ok & (self.target_ >= lo) & (self.target_ <= hi)
                err = np.abs(achieved[ok] - self.target_[ok])
                fit.update({"moran_median_abs_error": float(np.median(err)) if err.size else None,
                            "n_genes_target_in_range": int(inside.sum()), "n_genes_with_target": int(ok.sum())})
                self.diagnostics_[s.slide_id] = {"target": self.target_, "achieved": achieved, "lo": lo, "hi": hi}
            out.append((self.mean_ + field * self.sd_).astype(np.float32))
            self.summary["last_slide"] = fit  # the last predicted slide's fit of Moran's I
        return out
