"""The report's statistics against scipy and against their definitions: Wilcoxon + Holm, Friedman +
Nemenyi CD, and control-scaled scores. Numbers come from seeded random data, never from a run."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from flag_bench.leaderboard import stats as S


def _holm_reference(p):
    """Holm (1979) from its definition: reject in order while p_(i) <= alpha / (m - i + 1); the
    adjusted p of H_(i) is max over j <= i of min(1, (m - j + 1) p_(j))."""
    p = list(p)
    finite = [i for i, v in enumerate(p) if math.isfinite(v)]
    m = len(finite)
    order = sorted(finite, key=lambda i: p[i])
    out = [math.nan] * len(p)
    for rank, i in enumerate(order):
        out[i] = max(min(1.0, (m - j) * p[order[j]]) for j in range(rank + 1))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, 9) ** 2
    p[rng.integers(0, 9)] = np.nan
    np.testing.assert_allclose(S.holm(p), _holm_reference(p), rtol=0, atol=1e-12)


def test_holm_by_hand():
    np.testing.assert_allclose(S.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06], atol=1e-15)
    assert np.isnan(S.holm([np.nan, 0.2])[0]) and S.holm([np.nan, 0.2])[1] == pytest.approx(0.2)


def _frame(n_methods=3, genes=(20, 50), folds=3, seeds=(0, 1), seed=0, ties=False):
    rng = np.random.default_rng(seed)
    rows = []
    for g, f, s in itertools.product(genes, range(folds), seeds):
        base = rng.normal()
        for m in range(n_methods):
            v = base + 0.3 * m + rng.normal(scale=0.5)
            rows.append({"dataset": "d", "n_genes": g, "fold": f"test=S{f}", "seed": s, "method": f"m{m}",
                         "config_hash": "h", "pcc_mean": round(v, 1) if ties else v, "mse": -v})
    frame = pd.DataFrame(rows)
    return frame, {(f"m{m}", "h"): f"m{m}" for m in range(n_methods)}


@pytest.mark.parametrize("ties", [False, True])
def test_pairwise_wilcoxon_and_holm_match_scipy(ties):
    frame, labels = _frame(ties=ties)
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    table = frame.pivot_table(index=list(S.BLOCK), columns="method", values="pcc_mean")
    ref = {}
    for a, b in itertools.combinations(sorted(labels.values()), 2):
        d = table[a].to_numpy() - table[b].to_numpy()
        r = sps.wilcoxon(d)  # scipy's defaults are what the report states
        ref[(a, b)] = (r.statistic, r.pvalue, int((d != 0).sum()))
    assert {(p.a, p.b) for p in t.pairs} == set(ref)
    for p in t.pairs:
        stat, pv, n = ref[(p.a, p.b)]
        assert p.n == n and p.n_blocks == len(table) and p.enough
        assert abs(p.statistic - stat) <= 1e-12 and abs(p.p - pv) <= 1e-12
    want = _holm_reference([ref[(p.a, p.b)][1] for p in t.pairs])
    np.testing.assert_allclose([p.p_holm for p in t.pairs], want, rtol=0, atol=1e-12)


def test_direction_of_the_mean_difference():
    frame, labels = _frame(n_methods=2, seed=3)
    up = S.metric_tests(frame, "pcc_mean", True, labels).pairs[0]
    down = S.metric_tests(frame, "mse", False, labels).pairs[0]
    # mse = -pcc here, so "a better" reads the same through either direction
    assert up.mean_diff == pytest.approx(down.mean_diff) and up.mean_diff < 0  # m1 is better by construction


def test_too_few_pairs_prints_no_p_value():
    frame, labels = _frame(genes=(20,), folds=1, seeds=(0, 1, 2))  # 3 blocks
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    assert all(p.n <= 3 and not p.enough and math.isnan(p.p) and math.isnan(p.p_holm) for p in t.pairs)
    assert not t.friedman.ran and t.friedman.reason == "too few pairs (n=3 complete blocks)"
    assert math.isnan(t.friedman.p)


def test_friedman_matches_scipy_and_ranks():
    frame, labels = _frame(n_methods=4, seed=1)
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    table = frame.pivot_table(index=list(S.BLOCK), columns="method", values="pcc_mean")
    ref = sps.friedmanchisquare(*table.to_numpy().T)
    fr = t.friedman
    assert fr.ran and fr.n_blocks == len(table)
    assert abs(fr.statistic - ref.statistic) <= 1e-12 and abs(fr.p - ref.pvalue) <= 1e-12
    ranks = sps.rankdata(-table.to_numpy(), axis=1).mean(axis=0)
    np.testing.assert_allclose([fr.mean_ranks[c] for c in table.columns], ranks, atol=1e-12)
    # lower is better ranks the other way round
    low = S.friedman(table, higher_is_better=False)
    np.testing.assert_allclose([low.mean_ranks[c] for c in table.columns], 5 - ranks, atol=1e-12)


def test_friedman_drops_incomplete_blocks_and_needs_three():
    frame, labels = _frame(n_methods=3, seed=2)
    frame.loc[(frame["method"] == "m2") & (frame["fold"] == "test=S0"), "pcc_mean"] = np.nan
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    assert t.friedman.n_blocks == 2 * 2 * 2  # fold S0 lost in both G and both seeds
    two = S.metric_tests(frame[frame["method"] != "m2"], "pcc_mean", True, labels)
    assert not two.friedman.ran and "at least 3" in two.friedman.reason


# Demšar (2006), Table 5(a): q_0.05 of the Nemenyi test for k = 2..10
DEMSAR_Q05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]


@pytest.mark.parametrize("k,q", list(zip(range(2, 11), DEMSAR_Q05)))
def test_nemenyi_cd_matches_demsar_table(k, q):
    n = 12
    cd = S.nemenyi_cd(k, n)
    assert cd / math.sqrt(k * (k + 1) / (6 * n)) == pytest.approx(q, abs=1e-3)


def test_control_scale_both_directions():
    assert S.control_scale(0.3, 0.0, 0.6) == pytest.approx(0.5)
    assert S.control_scale(0.0, 0.0, 0.6) == 0 and S.control_scale(0.6, 0.0, 0.6) == 1
    # MSE: negative control 2.0, best control 1.0; a method at 0.5 is better than the control -> 1.5
    assert S.control_scale(0.5, 2.0, 1.0) == pytest.approx(1.5)
    assert S.control_scale(3.0, 2.0, 1.0) == pytest.approx(-1.0)
    assert np.isnan(S.control_scale(1.0, 2.0, 2.0))


def _scaled_frame():
    rows = []
    vals = {"mean": (0.0, 2.0), "ridge": (0.4, 1.2), "knn": (0.5, 1.5), "flag": (0.7, 0.8)}
    for m, (pcc, mse) in vals.items():
        for fold in range(2):
            rows.append({"dataset": "d", "n_genes": 50, "fold": f"f{fold}", "seed": 0, "method": m,
                         "config_hash": "h", "pcc_mean": pcc + 0.01 * fold, "mse": mse - 0.01 * fold})
    return pd.DataFrame(rows), {(m, "h"): m for m in vals}


def test_scaled_scores_pick_the_best_control_per_metric():
    frame, labels = _scaled_frame()
    roles = S.control_roles(sorted(set(frame["method"])))
    assert roles == {"mean": "negative", "ridge": "positive", "knn": "positive"}
    cells = {c.metric: c for c in S.scaled_scores(frame, ["pcc_mean", "mse"], {"pcc_mean": True, "mse": False},
                                                  labels, roles)}
    pcc, mse = cells["pcc_mean"], cells["mse"]
    assert pcc.best_control == "knn" and mse.best_control == "ridge"  # knn wins PCC, ridge wins MSE
    assert pcc.scores["mean"] == 0 and pcc.scores["knn"] == 1 and mse.scores["ridge"] == 1
    assert pcc.scores["flag"] == pytest.approx((0.705 - 0.005) / (0.505 - 0.005))
    assert mse.scores["flag"] == pytest.approx((0.795 - 1.995) / (1.195 - 1.995))
    assert mse.scores["flag"] > 1 and pcc.scores["flag"] > 1


def test_scaled_scores_say_why_not():
    frame, labels = _scaled_frame()
    no_neg = frame[frame["method"] != "mean"]
    roles = S.control_roles(sorted(set(no_neg["method"])))
    (cell,) = S.scaled_scores(no_neg, ["pcc_mean"], {"pcc_mean": True}, labels, roles)
    assert not cell.scores and "no negative control" in cell.reason
    only = frame[frame["method"].isin(["mean", "flag"])]
    (cell,) = S.scaled_scores(only, ["pcc_mean"], {"pcc_mean": True}, labels, S.control_roles(["mean", "flag"]))
    assert not cell.scores and "no positive control" in cell.reason


def test_the_null_scipy_used_is_named():
    assert S.wilcoxon_null([0.1, -0.2, 0.3]) == "exact"
    assert S.wilcoxon_null([0.1, -0.1, 0.3]) == "permutation"  # tied |d|, n <= 13
    assert S.wilcoxon_null(np.r_[0.1, -0.1, np.arange(1, 13)]) == "normal approx."  # tied, n = 14
    assert S.wilcoxon_null(np.arange(1, 52)) == "normal approx."  # n > 50
    # and the p-values agree with the scipy call each label stands for
    rng = np.random.default_rng(0)
    d = np.round(rng.normal(0.3, 1, 10), 1)
    d = d[d != 0]
    assert S.wilcoxon_null(d) == "permutation"
    frame = pd.DataFrame({"dataset": "d", "n_genes": 5, "fold": [f"f{i}" for i in range(d.size)] * 2, "seed": 0,
                          "method": ["a"] * d.size + ["b"] * d.size, "config_hash": "h",
                          "pcc_mean": np.r_[d, np.zeros(d.size)]})
    (p,) = S.pairwise(S.block_table(frame, "pcc_mean", {("a", "h"): "a", ("b", "h"): "b"}), True)
    assert p.null == "permutation"
    assert abs(p.p - sps.wilcoxon(d, method=sps.PermutationMethod()).pvalue) <= 1e-12


def test_friedman_leaves_out_a_configuration_without_values():
    frame, labels = _frame(n_methods=4, seed=4)
    frame.loc[frame["method"] == "m3", "pcc_mean"] = np.nan  # e.g. Moran's I of a constant prediction
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    assert t.friedman.ran and t.friedman.excluded == ("m3",) and t.friedman.labels == ("m0", "m1", "m2")
    table = frame[frame["method"] != "m3"].pivot_table(index=list(S.BLOCK), columns="method", values="pcc_mean")
    assert abs(t.friedman.p - sps.friedmanchisquare(*table.to_numpy().T).pvalue) <= 1e-12
