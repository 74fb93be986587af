"""Which differences are real, and how far a method gets from the negative to the best control.

Small pure functions on arrays plus table builders on the results frame.

Unit of replication: the test fold, one per dataset x G. A fold is one test slide (split
"slide") or one held-out patient (split "patient"; that patient's test slides are already
averaged in each cell). Seeds are averaged within (dataset, G, fold, configuration) before any
test (``unit_table``): seeds rerun the training on the same test data, so they are not
independent observations, and counting them as pairs (5 slides x 3 seeds = "15 pairs") reports
p-values the 5 slides cannot support. Seeds never count as units anywhere here. The unit is
named after the frame's split: "test slide", "held-out patient", else "test fold".

On the unit table of one dataset x G x metric (``metric_tests``; ``board_tests`` runs them all):

- every pair of configurations: the two-sided Wilcoxon signed-rank test
  (``metrics.stats.paired_wilcoxon``: scipy's defaults, ``zero_method="wilcox"`` drops zero
  differences, ``method="auto"`` is exact for n <= 50 without ties and the normal approximation
  otherwise), Holm step-down correction across the pairs of one metric; n = units with a finite
  value in both. Each pair also carries the mean paired difference (> 0: a is better) and its
  95% Student t interval, mean ± t_{0.975, n-1} sd / sqrt(n) (NaN for n < 2). A t interval and
  not a bootstrap: with 5 units a percentile bootstrap has only 5 distinct values to draw per
  resample, so its interval is coarse and too narrow (it ignores the n - 1 degrees of freedom),
  while the t interval is exact for normal differences and widens as n shrinks. ``min_p`` = 2 / 2**n is the smallest p an exact two-sided
  signed-rank test can reach with n non-zero differences (0.0625 at n = 5); ``mde`` the
  minimum detectable effect of a paired t-test at alpha 0.05 two-sided and 80% power for that n
  and the observed sd of the differences, (t_{0.975, n-1} + t_{0.80, n-1}) sd / sqrt(n): a true
  difference smaller than that is more likely missed than found.
- Friedman (``scipy.stats.friedmanchisquare``) over the units where every configuration has a
  value, with the Nemenyi critical difference of mean ranks.
- groups (a compact letter display): configurations ordered by mean, best first; a group is a
  maximal run of consecutive configurations with no separated pair inside (Holm p < 0.05; an
  untested pair counts as not separated). With fewer than MIN_PAIRS units everything is one group.
- the variance split of each configuration: the sd between units of the seed-averaged values,
  the within-unit seed sd (sqrt of the mean within-unit variance over seeds; NaN with one seed)
  and the seed share of the variance, seed var / (seed var + between var).

Enough units: MIN_PAIRS = 6, the smallest n at which an exact two-sided signed-rank test can
reach p < 0.05 (its smallest p is 2 / 2**n: 0.0625 at n = 5). Below it, and for Friedman with
fewer than MIN_PAIRS complete units or fewer than 3 configurations (scipy's Friedman needs 3),
the report says "too few" and prints no p-value.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from flag_bench.roles import CONTROL_ROLES, Role, parse_role

MIN_PAIRS = 6
ALPHA = 0.05
POWER = 0.80
UNIT = ("dataset", "n_genes", "fold")
UNIT_NAMES = {"slide": "test slide", "patient": "held-out patient"}
WILCOXON_NOTE = ("two-sided Wilcoxon signed-rank (scipy.stats.wilcoxon, zero_method='wilcox': zero differences "
                 "dropped; method='auto': the exact null for n <= 50 without tied |differences|, with ties an exact "
                 "permutation null for n <= 13 and the normal approximation above, the normal approximation for "
                 "n > 50; the 'null' column says which), Holm-corrected across the pairs of one metric")
CI_NOTE = ("95% CI of the mean paired difference: Student t over the units, mean ± t(0.975, n-1)·sd/√n (a "
           "percentile bootstrap of 5 units has too few distinct resamples to be trusted)")
MDE_NOTE = ("minimum detectable effect: the difference a paired t-test finds with 80% power at alpha 0.05 "
            "two-sided, (t(0.975, n-1) + t(0.80, n-1))·sd/√n with sd the observed sd of the differences")
# the built-in controls, named where a board lacks them (which method is one: the role its records store)
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
    """(n_units, k) values -> (n_units, k) ranks within each unit, 1 = best, ties averaged."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=np.float64)
    return rankdata(-v if higher_is_better else v, axis=1)


def nemenyi_cd(k: int, n_blocks: int, alpha: float = ALPHA) -> float:
    """Critical difference of mean ranks for k configurations over n_blocks units (Nemenyi).

    CD = q_alpha * sqrt(k (k + 1) / (6 N)), q_alpha the studentized range quantile with infinite
    degrees of freedom divided by sqrt(2) (Demšar 2006, Table 5: 2.343 for k = 3 at alpha 0.05).
    """
    from scipy.stats import studentized_range

    if k < 2 or n_blocks < 1:
        return float("nan")
    q = studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0)
    return float(q * math.sqrt(k * (k + 1) / (6.0 * n_blocks)))


def min_p(n: int) -> float:
    """The smallest two-sided p an exact signed-rank test reaches with n non-zero differences:
    every difference of one sign, 2 / 2**n (NaN for n < 1)."""
    return 2.0 / 2.0 ** n if n >= 1 else float("nan")


def t_interval(d, level: float = 0.95) -> tuple[float, float, float]:
    """(n,) paired differences -> (mean, low, high): the Student t interval of the mean,
    mean ± t_{(1+level)/2, n-1} sd / sqrt(n); bounds NaN for n < 2."""
    from scipy.stats import t

    v = np.asarray(d, dtype=np.float64).ravel()
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if v.size < 2:
        return mean, float("nan"), float("nan")
    half = float(t.ppf(0.5 + level / 2.0, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a paired t-test (two-sided alpha, power) with n units and
    differences of sd: (t_{1-alpha/2, n-1} + t_{power, n-1}) sd / sqrt(n); NaN for n < 2."""
    from scipy.stats import t

    if n < 2 or not math.isfinite(sd):
        return float("nan")
    return float((t.ppf(1.0 - alpha / 2.0, n - 1) + t.ppf(power, n - 1)) * sd / math.sqrt(n))


HOLDS, NOT_AT_SCALE, CONTRADICTED = "holds", "not reproduced at this scale", "contradicted"
NO_CI = "no CI: fewer than 2 units"


def claim_verdict(ci_low: float, ci_high: float, paper_effect: float | None) -> str:
    """A claim that a beats b (effect = a - b in the claim's direction, > 0 = as claimed) against
    the observed effect's CI over units and the paper's effect:

    - ``holds``: the CI excludes zero on the claimed side (low > 0);
    - ``contradicted``: the CI excludes the paper's effect (or, when the paper gives no number,
      lies wholly below zero: no positive effect is compatible);
    - ``not reproduced at this scale``: otherwise: the CI holds zero and the paper's effect, so
      this design can neither confirm nor refute it.

    A missing CI (one unit) gives NO_CI: one test slide or patient cannot judge a claim."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return NO_CI
    if ci_low > 0:
        return HOLDS
    if paper_effect is None or not math.isfinite(paper_effect):
        return CONTRADICTED if ci_high < 0 else NOT_AT_SCALE
    return NOT_AT_SCALE if ci_low <= paper_effect <= ci_high else CONTRADICTED


def letter_groups(order: Sequence[str], separated) -> tuple[tuple[str, ...], ...]:
    """Configurations in mean order, best first, and the separated pairs (frozensets) -> the
    maximal runs of consecutive configurations with no separated pair inside."""
    out: list[tuple[str, ...]] = []
    last = -1
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and not any(frozenset((order[k], order[j + 1])) in separated for k in range(i, j + 1)):
            j += 1
        # the run from i ends no later than the run from i - 1 did: it lies inside it, not maximal
        if j > last:
            out.append(tuple(order[i:j + 1]))
            last = j
    return tuple(out)


def letter(i: int) -> str:
    return string.ascii_lowercase[i] if i < 26 else f"[{i + 1}]"


def split_variance(unit_means, unit_vars) -> tuple[float, float, float]:
    """(n_units,) seed-averaged values and within-unit seed variances (NaN for a unit with one
    seed) -> (sd between units, seed sd, seed share of the variance)."""
    m = np.asarray(unit_means, dtype=np.float64)
    m = m[np.isfinite(m)]
    v = np.asarray(unit_vars, dtype=np.float64)
    v = v[np.isfinite(v)]
    between = float(m.std(ddof=1)) if m.size > 1 else float("nan")
    seed = float(math.sqrt(v.mean())) if v.size else float("nan")
    total = seed ** 2 + between ** 2
    share = seed ** 2 / total if math.isfinite(total) and total > 0 else float("nan")
    return between, seed, share


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


def units(n: int, unit: str) -> str:
    """'5 test slides', '1 held-out patient'."""
    return f"{n} {unit}{'' if n == 1 else 's'}"


def _g(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "n/a"


# -- paired tests on the results frame ----------------------------------------------------------
@dataclass(frozen=True)
class PairTest:
    a: str
    b: str
    n: int  # units where both have a finite value (seeds averaged within each)
    n_used: int  # of those, the units entering the signed-rank test (non-zero difference)
    statistic: float  # NaN when too few
    p: float
    p_holm: float
    mean_diff: float  # mean of a - b over the shared units, sign flipped so > 0 means a is better
    ci_low: float = math.nan  # 95% Student t interval of mean_diff (NaN for n < 2)
    ci_high: float = math.nan
    sd_diff: float = math.nan  # sd of the paired differences over the units
    min_p: float = math.nan  # the smallest p the exact test reaches with n_used differences
    mde: float = math.nan  # minimum detectable effect (paired t, alpha 0.05 two-sided, power 0.8)
    null: str = ""  # which null distribution scipy used (wilcoxon_null), empty when no test ran

    @property
    def enough(self) -> bool:
        return self.n_used >= MIN_PAIRS


@dataclass(frozen=True)
class FriedmanResult:
    labels: tuple[str, ...]
    n_units: int  # units where every configuration has a finite value
    statistic: float
    p: float
    mean_ranks: Mapping[str, float]
    cd: float
    reason: str = ""  # why no test was run ("too few test slides (n=3 complete)"), empty when it was
    excluded: tuple[str, ...] = ()  # configurations without any finite value (a constant prediction's Moran's I)

    @property
    def ran(self) -> bool:
        return not self.reason


@dataclass(frozen=True)
class Groups:
    order: tuple[str, ...]  # configurations by mean, best first (those with a value)
    groups: tuple[tuple[str, ...], ...]  # maximal runs with no separated pair inside
    letters: Mapping[str, str]  # configuration -> its groups' letters ("a", "ab")
    note: str  # what one group means here ("n = 5 test slides: no pair can reach p < 0.05"), or ""


@dataclass(frozen=True)
class VarianceSplit:
    label: str
    n_units: int  # units with a finite value
    n_seeds: int  # the most seeds in one unit
    sd_between: float  # sd over units of the seed-averaged values
    sd_seed: float  # sqrt of the mean within-unit variance over seeds (NaN with one seed)
    seed_share: float  # sd_seed**2 / (sd_seed**2 + sd_between**2)


@dataclass(frozen=True)
class MetricTests:
    metric: str
    higher_is_better: bool
    pairs: tuple[PairTest, ...]
    friedman: FriedmanResult
    dataset: str = ""  # the one dataset and G of the frame tested ("" / 0 when it held several)
    n_genes: int = 0
    unit: str = "test fold"
    n_units: int = 0  # units where at least one configuration has a value
    groups: Groups | None = None
    variance: tuple[VarianceSplit, ...] = field(default_factory=tuple)

    @property
    def over(self) -> str:
        """'over 5 test slides, seeds averaged'."""
        return f"over {units(self.n_units, self.unit)}, seeds averaged"

    def mde_line(self) -> str:
        """One line per metric: the minimum detectable effect at this n, over the pairs."""
        v = sorted(p.mde for p in self.pairs if math.isfinite(p.mde))
        n = max((p.n for p in self.pairs), default=self.n_units)
        head = f"minimum detectable effect with n = {units(n, self.unit)} (paired t, alpha 0.05 two-sided, 80% power)"
        if not v:
            return f"{head}: n/a (needs 2 or more units with a value in both)"
        return f"{head}: {_g(v[0])}" + (f" to {_g(v[-1])} across the {len(v)} pairs" if len(v) > 1 else "")


def unit_name(frame) -> str:
    """The unit's name from the frame's split: 'test slide', 'held-out patient', else 'test fold'
    (another split, or several pooled on one board)."""
    splits = set(frame["split"].astype(str)) if "split" in frame.columns else set()
    return UNIT_NAMES.get(splits.pop(), "test fold") if len(splits) == 1 else "test fold"


def _labelled(frame, label_of: Mapping[tuple[str, str], str]):
    return frame.assign(_label=[label_of[(m, c)] for m, c in zip(frame["method"], frame["config_hash"])])


def unit_table(frame, metric: str, label_of: Mapping[tuple[str, str], str]):
    """frame -> DataFrame indexed by UNIT, one column per configuration label: the mean over the
    unit's seeds (and any duplicate cells, e.g. two presets of one config); NaN values skipped."""
    import pandas as pd

    if frame.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=list(UNIT)))
    df = _labelled(frame, label_of).astype({metric: "float64"})
    return df.groupby([*UNIT, "_label"], sort=True)[metric].mean().unstack("_label")


def pairwise(table, higher_is_better: bool) -> tuple[PairTest, ...]:
    """(n_units, k) unit table -> Wilcoxon of every pair of columns, Holm across them, and each
    pair's mean difference with its t interval, min p and MDE."""
    from flag_bench.metrics.stats import paired_wilcoxon

    labels = list(table.columns)
    raw: list[dict[str, Any]] = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            x, y = table[a].to_numpy(float), table[b].to_numpy(float)
            both = np.isfinite(x) & np.isfinite(y)
            stat, p, n_used = paired_wilcoxon(x, y)
            d = (x - y)[both] * (1.0 if higher_is_better else -1.0)  # positive = a better, whatever the direction
            null = wilcoxon_null(d[d != 0])
            if n_used < MIN_PAIRS:
                stat, p, null = float("nan"), float("nan"), ""
            mean, low, high = t_interval(d)
            sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
            raw.append(dict(a=str(a), b=str(b), n=int(both.sum()), n_used=n_used, statistic=stat, p=p,
                            mean_diff=mean, ci_low=low, ci_high=high, sd_diff=sd, min_p=min_p(n_used),
                            mde=mde(sd, int(both.sum())), null=null))
    adj = holm([r["p"] for r in raw])
    return tuple(PairTest(p_holm=float(h), **r) for r, h in zip(raw, adj))


def friedman(table, higher_is_better: bool, unit: str = "unit") -> FriedmanResult:
    """(n_units, k) unit table -> Friedman over complete units + Nemenyi CD of mean ranks."""
    from scipy.stats import friedmanchisquare

    values = table.to_numpy(float).reshape(len(table), len(table.columns))
    # a configuration with no value at all would empty every unit: leave it out and say so
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
        return FriedmanResult(labels, n, nan, nan, mean_ranks, nan,
                              f"too few {unit}s (n={n} complete; a test needs {MIN_PAIRS})", excluded)
    if np.all(full == full[:, :1]):
        return FriedmanResult(labels, n, nan, nan, mean_ranks, nan,
                              f"every configuration scores the same in every {unit}", excluded)
    stat, p = friedmanchisquare(*full.T)
    return FriedmanResult(labels, n, float(stat), float(p), mean_ranks, nemenyi_cd(len(labels), n), "", excluded)


def groups(table, pairs: Sequence[PairTest], higher_is_better: bool, unit: str = "unit") -> Groups:
    """Configurations that cannot be told apart, as a compact letter display (``letter_groups``)."""
    means = {str(c): float(np.nanmean(v)) for c, v in table.items() if np.isfinite(v.to_numpy(float)).any()}
    order = tuple(sorted(means, key=lambda c: (-means[c] if higher_is_better else means[c], c)))
    separated = {frozenset((p.a, p.b)) for p in pairs if p.p_holm < ALPHA}  # NaN (untested) is not separated
    runs = letter_groups(order, separated)
    letters = {c: "".join(letter(i) for i, run in enumerate(runs) if c in run) for c in order}
    n = max((p.n for p in pairs), default=0)
    if not pairs:
        note = "One configuration only: nothing to compare"
    elif not any(p.enough for p in pairs):
        note = f"n = {units(n, unit)}: no pair can reach p < 0.05"
    elif len(runs) == 1:
        note = "No pair separated at Holm p < 0.05"
    else:
        note = ""
    return Groups(order, runs, letters, note)


def variance_split(frame, metric: str, label_of: Mapping[tuple[str, str], str]) -> tuple[VarianceSplit, ...]:
    """Per configuration: how much of the spread is between units and how much between seeds."""
    if frame.empty:
        return ()
    df = _labelled(frame, label_of).astype({metric: "float64"})
    df = df[np.isfinite(df[metric].to_numpy(float))]
    out = []
    for lab, sub in df.groupby("_label", sort=True):
        per = sub.groupby(list(UNIT), sort=True)[metric]
        means, var = per.mean().to_numpy(float), per.var(ddof=1).to_numpy(float)  # var: NaN for one seed
        out.append(VarianceSplit(str(lab), int(means.size), int(per.size().max()), *split_variance(means, var)))
    return tuple(out)


def _only(frame, column: str, empty):
    vals = frame[column].unique() if column in frame.columns else []
    return vals[0] if len(vals) == 1 else empty


def metric_tests(frame, metric: str, higher_is_better: bool, label_of) -> MetricTests:
    """Every test of one metric on ``frame`` (meant to hold one dataset x G: ``board_tests``)."""
    table = unit_table(frame, metric, label_of)
    unit = unit_name(frame)
    pairs = pairwise(table, higher_is_better)
    n_units = int(np.isfinite(table.to_numpy(float)).any(axis=1).sum()) if table.size else 0
    return MetricTests(metric, higher_is_better, pairs, friedman(table, higher_is_better, unit),
                       str(_only(frame, "dataset", "")), int(_only(frame, "n_genes", 0)), unit, n_units,
                       groups(table, pairs, higher_is_better, unit), variance_split(frame, metric, label_of))


def board_tests(frame, metrics: Sequence[str], direction: Mapping[str, bool | None],
                label_of) -> tuple[MetricTests, ...]:
    """Per dataset x G x metric (in that order): ``metric_tests``. Tests never pool G or datasets:
    a slide at G = 50 and the same slide at G = 100 are not two units."""
    out = []
    for _, sub in frame.groupby(["dataset", "n_genes"], sort=True):
        for m in metrics:
            if m in sub.columns:
                out.append(metric_tests(sub, m, direction.get(m) is not False, label_of))
    return tuple(out)


def ranked_tests(frame, metrics: Sequence[str], direction: Mapping[str, bool | None],
                 label_of) -> tuple[MetricTests, ...]:
    """``board_tests`` over the methods only: oracles and null controls are on every board but
    never ranked against methods."""
    ranked = frame[~frame["method"].isin(reference_methods(frame))]
    return board_tests(ranked, metrics, direction, label_of)


def tests_as_data(t: MetricTests) -> dict:
    """One MetricTests as plain data (floats may be NaN; the JSON writer turns them into null)."""
    fr, gr = t.friedman, t.groups
    return {
        "dataset": t.dataset, "n_genes": t.n_genes, "metric": t.metric, "higher_is_better": t.higher_is_better,
        "unit": t.unit, "n_units": t.n_units, "seeds": "averaged within each unit", "min_units": MIN_PAIRS,
        "test": WILCOXON_NOTE, "ci": CI_NOTE, "mde_note": t.mde_line(),
        "pairs": [{"a": p.a, "b": p.b, "unit": t.unit, "n": p.n, "n_nonzero": p.n_used, "statistic": p.statistic,
                   "p": p.p, "p_holm": p.p_holm, "mean_diff": p.mean_diff, "ci_low": p.ci_low, "ci_high": p.ci_high,
                   "sd_diff": p.sd_diff, "min_p": p.min_p, "mde": p.mde, "null": p.null or None} for p in t.pairs],
        "friedman": {"ran": fr.ran, "n_units": fr.n_units, "statistic": fr.statistic, "p": fr.p, "cd": fr.cd,
                     "labels": list(fr.labels), "mean_ranks": dict(fr.mean_ranks), "reason": fr.reason or None,
                     "excluded": list(fr.excluded)},
        "groups": None if gr is None else {"order": list(gr.order), "groups": [list(g) for g in gr.groups],
                                           "letters": dict(gr.letters), "note": gr.note or None},
        "variance": [{"label": v.label, "n_units": v.n_units, "n_seeds": v.n_seeds, "sd_between": v.sd_between,
                      "sd_seed": v.sd_seed, "seed_share": v.seed_share} for v in t.variance],
    }


# -- control-scaled scores ----------------------------------------------------------------------
@dataclass(frozen=True)
class ScaledCell:
    dataset: str
    n_genes: int
    metric: str
    best_control: str  # the positive control that set 1 ("" when none could)
    reason: str  # why nothing is scaled here ("" when scaled)
    scores: Mapping[str, float]  # configuration label -> scaled mean


def method_roles(frame) -> dict[str, Role]:
    """method -> its role as the records of ``frame`` store it (the ``role`` column of
    ``CellRecord.to_row``; a frame without one: every method a method). Where records of one
    method disagree (a card changed between runs), the role furthest from a ranked method wins:
    a row any of its records calls a reference is never ranked."""
    if frame.empty or "role" not in frame.columns:
        return {str(m): Role.METHOD for m in set(frame["method"])} if "method" in frame.columns else {}
    out: dict[str, Role] = {}
    for m, r in frame[["method", "role"]].drop_duplicates().itertuples(index=False):
        role = parse_role(r or Role.METHOD.value, f"results row of method '{m}'")
        if str(m) not in out or _PRECEDENCE.index(role) < _PRECEDENCE.index(out[str(m)]):
            out[str(m)] = role
    return out


_PRECEDENCE = (Role.ORACLE, Role.TRUTH_NULL, Role.NULL, Role.NEGATIVE_CONTROL, Role.POSITIVE_CONTROL, Role.METHOD)


def reference_roles(frame) -> dict[str, str]:
    """method -> "oracle" | "null" for the reference rows of ``frame`` (roles read from its records):
    every board shows them, no rank test counts them as methods."""
    return {m: role.board_mark for m, role in sorted(method_roles(frame).items()) if role.is_reference}


def oracle_methods(frame) -> list[str]:
    """The oracles among the methods of ``frame`` (computed from the test truth)."""
    return [m for m, role in sorted(method_roles(frame).items()) if role is Role.ORACLE]


def reference_methods(frame) -> list[str]:
    """The reference rows among the methods of ``frame``: oracles and null controls."""
    return list(reference_roles(frame))


def control_roles(frame) -> dict[str, str]:
    """method -> 'negative' | 'positive' for the controls among the methods of ``frame``, from
    the role its records store (``negative_control`` / ``positive_control``)."""
    return {m: CONTROL_ROLES[role] for m, role in sorted(method_roles(frame).items()) if role in CONTROL_ROLES}


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
