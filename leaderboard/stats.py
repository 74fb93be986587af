"""Which differences are real, and how far a method gets from the negative to the best control.

Small pure functions on arrays plus two table builders on the results frame.

Pairing: two method configurations are compared on the blocks (dataset, G, fold, seed) where
both have a finite value of the same metric; a block is one paired observation.

- Wilcoxon signed-rank (``metrics.stats.paired_wilcoxon``: scipy's defaults, ``zero_method=
  "wilcox"`` drops zero differences, ``method="auto"`` is exact for n <= 50 without ties and
  the normal approximation otherwise), Holm step-down correction across the pairs of one metric.
- Friedman (``scipy.stats.friedmanchisquare``) over the blocks where every configuration has a
  value, with the Nemenyi critical difference of mean ranks.

Enough pairs: MIN_PAIRS = 6, the smallest n at which an exact two-sided signed-rank test can
reach p < 0.05 (its smallest p is 2 / 2**n: 0.0625 at n = 5). Below it, and for Friedman with
fewer than MIN_PAIRS complete blocks or fewer than 3 configurations (scipy's Friedman needs 3),
the report says "too few pairs (n=...)" and prints no p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

MIN_PAIRS = 6
ALPHA = 0.05
BLOCK = ("dataset", "n_genes", "fold", "seed")
WILCOXON_NOTE = ("two-sided Wilcoxon signed-rank (scipy.stats.wilcoxon, zero_method='wilcox': zero differences "
                 "dropped; method='auto': the exact null for n <= 50 without tied |differences|, with ties an exact "
                 "permutation null for n <= 13 and the normal approximation above, the normal approximation for "
                 "n > 50; the 'null' column says which), Holm-corrected across the pairs of one metric")
NEGATIVE_CONTROL = "mean"
POSITIVE_CONTROLS = ("ridge", "ridge-smooth", "knn")


# -- pure functions -----------------------------------------------------------------------------
def holm(pvalues) -> np.ndarray:
    """(k,) p-values -> (k,) Holm step-down adjusted p-values, same order; NaN stays NaN.

    Sorted ascending, p_(i) is multiplied by (m - i + 1) (m = number of finite p-values), a
    running maximum keeps the adjusted values monotone, and they are clipped at 1.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adj, 1.0)
    return out


def rank_blocks(values, higher_is_better: bool = True) -> np.ndarray:
    """(n_blocks, k) values -> (n_blocks, k) ranks within each block, 1 = best, ties averaged."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=np.float64)
    return rankdata(-v if higher_is_better else v, axis=1)


def nemenyi_cd(k: int, n_blocks: int, alpha: float = ALPHA) -> float:
    """Critical difference of mean ranks for k configurations over n_blocks blocks (Nemenyi).

    CD = q_alpha * sqrt(k (k + 1) / (6 N)), q_alpha the studentized range quantile with infinite
    degrees of freedom divided by sqrt(2) (Demšar 2006, Table 5: 2.343 for k = 3 at alpha 0.05).
    """
    from scipy.stats import studentized_range

    if k < 2 or n_blocks < 1:
        return float("nan")
    q = studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0)
    return float(q * math.sqrt(k * (k + 1) / (6.0 * n_blocks)))


def control_scale(value, negative, positive) -> np.ndarray:
    """Scaled score: negative control -> 0, positive control -> 1 (arrays broadcast).

    The same formula serves lower-is-better metrics: there the positive control's value is below
    the negative's, so (v - neg) / (pos - neg) still grows as v improves. NaN where pos == neg.
    """
    v, neg, pos = (np.asarray(x, dtype=np.float64) for x in (value, negative, positive))
    span = pos - neg
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(span != 0, (v - neg) / np.where(span != 0, span, 1.0), np.nan)


def wilcoxon_null(d) -> str:
    """(n,) non-zero differences -> the null distribution scipy's method='auto' uses for them
    (scipy 1.17 ``_wilcoxon_nd``): 'exact', 'permutation' or 'normal approx.'."""
    a = np.abs(np.asarray(d, dtype=np.float64))
    if a.size > 50:
        return "normal approx."
    if np.unique(a).size == a.size:
        return "exact"
    return "permutation" if a.size <= 13 else "normal approx."


# -- paired tests on the results frame ----------------------------------------------------------
@dataclass(frozen=True)
class PairTest:
    a: str
    b: str
    n: int  # pairs entering the test (finite in both, non-zero difference)
    n_blocks: int  # blocks where both have a finite value
    statistic: float  # NaN when too few
    p: float
    p_holm: float
    mean_diff: float  # mean of a - b over the shared blocks, sign flipped so > 0 means a is better
    null: str = ""  # which null distribution scipy used (wilcoxon_null), empty when no test ran

    @property
    def enough(self) -> bool:
        return self.n >= MIN_PAIRS


@dataclass(frozen=True)
class FriedmanResult:
    labels: tuple[str, ...]
    n_blocks: int  # blocks where every configuration has a finite value
    statistic: float
    p: float
    mean_ranks: Mapping[str, float]
    cd: float
    reason: str = ""  # why no test was run ("too few pairs (n=3)"), empty when it was
    excluded: tuple[str, ...] = ()  # configurations without any finite value (a constant prediction's Moran's I)

    @property
    def ran(self) -> bool:
        return not self.reason


@dataclass(frozen=True)
class MetricTests:
    metric: str
    higher_is_better: bool
    pairs: tuple[PairTest, ...]
    friedman: FriedmanResult


def block_table(frame, metric: str, label_of: Mapping[tuple[str, str], str]):
    """frame -> DataFrame indexed by BLOCK, one column per configuration label (mean over any
    duplicate cells of a block, e.g. two presets of one config)."""
    df = frame.assign(_label=[label_of[(m, c)] for m, c in zip(frame["method"], frame["config_hash"])])
    return df.pivot_table(index=list(BLOCK), columns="_label", values=metric, aggfunc="mean", dropna=False)


def pairwise(table, higher_is_better: bool) -> tuple[PairTest, ...]:
    """(n_blocks, k) block table -> Wilcoxon of every pair of columns, Holm across them."""
    from flag_bench.metrics.stats import paired_wilcoxon

    labels = list(table.columns)
    raw = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            x, y = table[a].to_numpy(float), table[b].to_numpy(float)
            both = np.isfinite(x) & np.isfinite(y)
            stat, p, n = paired_wilcoxon(x, y)
            d = (x - y)[both]
            null = wilcoxon_null(d[d != 0])
            if n < MIN_PAIRS:
                stat, p, null = float("nan"), float("nan"), ""
            diff = float(np.mean(d)) if both.any() else float("nan")
            if not higher_is_better:
                diff = -diff  # positive = a better, whatever the direction
            raw.append((a, b, n, int(both.sum()), stat, p, diff, null))
    adj = holm([r[5] for r in raw])
    return tuple(PairTest(a, b, n, nb, s, p, float(h), d, null) for (a, b, n, nb, s, p, d, null), h in zip(raw, adj))


def friedman(table, higher_is_better: bool) -> FriedmanResult:
    """(n_blocks, k) block table -> Friedman over complete blocks + Nemenyi CD of mean ranks."""
    from scipy.stats import friedmanchisquare

    values = table.to_numpy(float).reshape(len(table), len(table.columns))
    # a configuration with no value at all would empty every block: leave it out and say so
    has = np.isfinite(values).any(axis=0)
    excluded = tuple(str(c) for c, h in zip(table.columns, has) if not h)
    labels = tuple(str(c) for c, h in zip(table.columns, has) if h)
    full = values[:, has]
    full = full[np.isfinite(full).all(axis=1)]
    n = int(full.shape[0])
    ranks = rank_blocks(full, higher_is_better).mean(axis=0) if n else np.full(len(labels), np.nan)
    mean_ranks = dict(zip(labels, map(float, ranks)))
    nan = float("nan")
    if len(labels) < 3:
        return FriedmanResult(labels, n, nan, nan, mean_ranks, nan,
                              f"Friedman needs at least 3 configurations (here {len(labels)})", excluded)
    if n < MIN_PAIRS:
        return FriedmanResult(labels, n, nan, nan, mean_ranks, nan, f"too few pairs (n={n} complete blocks)", excluded)
    if np.all(full == full[:, :1]):
        return FriedmanResult(labels, n, nan, nan, mean_ranks, nan, "every configuration scores the same in every block",
                              excluded)
    stat, p = friedmanchisquare(*full.T)
    return FriedmanResult(labels, n, float(stat), float(p), mean_ranks, nemenyi_cd(len(labels), n), "", excluded)


def metric_tests(frame, metric: str, higher_is_better: bool, label_of) -> MetricTests:
    table = block_table(frame, metric, label_of)
    return MetricTests(metric, higher_is_better, pairwise(table, higher_is_better), friedman(table, higher_is_better))


# -- control-scaled scores ----------------------------------------------------------------------
@dataclass(frozen=True)
class ScaledCell:
    dataset: str
    n_genes: int
    metric: str
    best_control: str  # the positive control that set 1 ("" when none could)
    reason: str  # why nothing is scaled here ("" when scaled)
    scores: Mapping[str, float]  # configuration label -> scaled mean


def reference_roles(methods: Sequence[str]) -> dict[str, str]:
    """method -> "oracle" | "null" for the reference rows among ``methods`` (methods/roles.py;
    registered cards only): every board shows them, no rank test counts them as methods."""
    from flag_bench.catalog import METHODS, method_card
    from flag_bench.methods.roles import is_reference, role_of

    out = {}
    for m in methods:
        if m in METHODS.names():
            card = method_card(m)
            if is_reference(card):
                out[m] = str(role_of(card))
    return out


def oracle_methods(methods: Sequence[str]) -> list[str]:
    """The oracles among ``methods`` (methods/oracles.py: computed from the test truth)."""
    from flag_bench.methods.roles import ORACLE_ROLE

    return [m for m, role in reference_roles(methods).items() if role == ORACLE_ROLE]


def reference_methods(methods: Sequence[str]) -> list[str]:
    """The reference rows among ``methods``: oracles and null controls."""
    return list(reference_roles(methods))


def control_roles(methods: Sequence[str]) -> dict[str, str]:
    """method -> 'negative' | 'positive' for the controls among ``methods``.

    A card may say so in ``extra['role']`` (``negative_control`` / ``positive_control``);
    otherwise the built-in controls keep their documented roles (methods/controls.py).
    """
    from flag_bench.catalog import METHODS, method_card

    roles = {}
    for m in methods:
        role = None
        if m in METHODS.names():
            extra = dict(getattr(method_card(m), "extra", {}) or {})
            role = {"negative_control": "negative", "positive_control": "positive"}.get(extra.get("role"))
        if role is None:
            role = "negative" if m == NEGATIVE_CONTROL else "positive" if m in POSITIVE_CONTROLS else None
        if role:
            roles[m] = role
    return roles


def scaled_scores(frame, metrics: Sequence[str], direction: Mapping[str, bool | None], label_of,
                  roles: Mapping[str, str]) -> tuple[ScaledCell, ...]:
    """Per dataset x G x metric: each configuration's mean scaled so the negative control's mean is 0
    and the best positive control's mean is 1 (best by the metric's direction)."""
    out = []
    df = frame.assign(_label=[label_of[(m, c)] for m, c in zip(frame["method"], frame["config_hash"])])
    for (ds, g), sub in df.groupby(["dataset", "n_genes"], sort=True):
        for metric in metrics:
            hib = direction.get(metric)
            means = sub.groupby("_label")[metric].mean()
            method_of = dict(zip(sub["_label"], sub["method"]))
            neg = [lab for lab in means.index if roles.get(method_of[lab]) == "negative" and math.isfinite(means[lab])]
            pos = [lab for lab in means.index if roles.get(method_of[lab]) == "positive" and math.isfinite(means[lab])]
            reason, best, scores = "", "", {}
            if hib is None:
                reason = "not ranked"
            elif not neg:
                reason = f"no negative control ({NEGATIVE_CONTROL}) here"
            elif not pos:
                reason = f"no positive control ({', '.join(POSITIVE_CONTROLS)}) here"
            else:
                best = max(pos, key=lambda lab: means[lab] if hib else -means[lab])
                n0 = float(np.mean([means[lab] for lab in neg]))
                if means[best] == n0:
                    reason = f"best control {best} scores the same as the negative control"
                else:
                    scores = {lab: float(control_scale(means[lab], n0, means[best])) for lab in means.index}
            out.append(ScaledCell(str(ds), int(g), metric, best, reason, scores))
    return tuple(out)
