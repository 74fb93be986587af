"""The report's statistics against scipy and against their definitions: the unit of replication (test
folds, seeds averaged), Wilcoxon + Holm, the t interval of the difference, min p and MDE, Friedman +
Nemenyi CD, groups, the variance split, ``--format json`` and control-scaled scores. Numbers come
from seeded random data, never from a run."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from flag_bench.leaderboard import stats as S
from flag_bench.roles import Role


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


def _frame(n_methods=3, genes=(20,), folds=8, seeds=(0, 1), seed=0, ties=False):
    rng = np.random.default_rng(seed)
    rows = []
    for g, f, s in itertools.product(genes, range(folds), seeds):
        base = rng.normal()
        for m in range(n_methods):
            v = base + 0.3 * m + rng.normal(scale=0.5)
            rows.append({"dataset": "d", "n_genes": g, "fold": f"test=S{f}", "seed": s, "method": f"m{m}",
                         "config_hash": "h", "split": "slide", "pcc_mean": round(v, 1) if ties else v, "mse": -v})
    frame = pd.DataFrame(rows)
    return frame, {(f"m{m}", "h"): f"m{m}" for m in range(n_methods)}


def _seed_means(frame, metric="pcc_mean", column="method"):
    """The unit table by hand: seeds averaged within (dataset, G, fold, configuration)."""
    return frame.groupby(["dataset", "n_genes", "fold", column])[metric].mean().unstack(column)


@pytest.mark.parametrize("ties", [False, True])
def test_pairwise_wilcoxon_and_holm_match_scipy(ties):
    frame, labels = _frame(ties=ties)
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    table = _seed_means(frame)
    ref = {}
    for a, b in itertools.combinations(sorted(labels.values()), 2):
        d = table[a].to_numpy() - table[b].to_numpy()
        r = sps.wilcoxon(d)  # scipy's defaults are what the report states
        ref[(a, b)] = (r.statistic, r.pvalue, int((d != 0).sum()))
    assert {(p.a, p.b) for p in t.pairs} == set(ref)
    for p in t.pairs:
        stat, pv, n = ref[(p.a, p.b)]
        assert p.n_used == n and p.n == len(table) == 8 and p.enough
        assert abs(p.statistic - stat) <= 1e-12 and abs(p.p - pv) <= 1e-12
    want = _holm_reference([ref[(p.a, p.b)][1] for p in t.pairs])
    np.testing.assert_allclose([p.p_holm for p in t.pairs], want, rtol=0, atol=1e-12)


def test_direction_of_the_mean_difference():
    frame, labels = _frame(n_methods=2, seed=3)
    up = S.metric_tests(frame, "pcc_mean", True, labels).pairs[0]
    down = S.metric_tests(frame, "mse", False, labels).pairs[0]
    # mse = -pcc here, so "a better" reads the same through either direction, CI included
    assert up.mean_diff == pytest.approx(down.mean_diff) and up.mean_diff < 0  # m1 is better by construction
    assert (up.ci_low, up.ci_high) == pytest.approx((down.ci_low, down.ci_high))


def test_too_few_units_prints_no_p_value():
    frame, labels = _frame(folds=3, seeds=(0, 1, 2))  # 3 units, 9 cells per configuration
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    assert all(p.n == 3 and not p.enough and math.isnan(p.p) and math.isnan(p.p_holm) for p in t.pairs)
    assert not t.friedman.ran and t.friedman.reason == "too few test slides (n=3 complete; a test needs 6)"
    assert math.isnan(t.friedman.p)


def _a_beats_b(folds, seeds=(0, 1, 2)):
    """a beats b by a margin in every (fold, seed) block; c sits in between."""
    rng = np.random.default_rng(7)
    rows = []
    for f, s in itertools.product(range(folds), seeds):
        base = rng.normal()
        for m, shift in (("a", 1.0), ("b", 0.0), ("c", 0.5)):
            rows.append({"dataset": "d", "n_genes": 50, "fold": f"test=S{f}", "seed": s, "method": m,
                         "config_hash": "h", "split": "slide", "pcc_mean": base + shift + 0.1 * rng.normal()})
    return pd.DataFrame(rows), {(m, "h"): m for m in "abc"}


def _all_p(obj):
    """Every number under a key naming a p-value, anywhere in the JSON-like data."""
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k in ("p", "p_holm") and v is not None] + \
            [x for v in obj.values() for x in _all_p(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _all_p(v)]
    return []


def test_seeds_never_count_as_units():
    from flag_bench.leaderboard.render import json_safe

    frame, labels = _a_beats_b(folds=5)  # 15 blocks, but 5 test slides
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    assert t.n_units == 5 and t.unit == "test slide" and t.over == "over 5 test slides, seeds averaged"
    assert all(p.n == 5 and p.n_used == 5 and math.isnan(p.p) and math.isnan(p.p_holm) for p in t.pairs)
    assert all(p.min_p == 0.0625 for p in t.pairs)
    assert not t.friedman.ran and math.isnan(t.friedman.p) and t.friedman.n_units == 5
    data = json.loads(json.dumps(json_safe(S.tests_as_data(t)), allow_nan=False))  # what --format json writes
    assert data["pairs"] and all(p["n"] == 5 and p["p"] is None for p in data["pairs"])
    assert all(p >= 0.0625 for p in _all_p(data))
    # one group, and the text says why
    assert t.groups.groups == (("a", "c", "b"),) and set(t.groups.letters.values()) == {"a"}
    assert t.groups.note == "n = 5 test slides: no pair can reach p < 0.05"


def test_six_units_test_the_seed_averaged_values():
    frame, labels = _a_beats_b(folds=6)
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    table = _seed_means(frame)
    for p in t.pairs:
        assert p.n == 6 and p.enough
        ref = sps.wilcoxon(table[p.a].to_numpy() - table[p.b].to_numpy())
        assert abs(p.p - ref.pvalue) <= 1e-12 and abs(p.statistic - ref.statistic) <= 1e-12
        assert p.p == pytest.approx(2 / 2 ** 6)  # a beats b on every slide: the exact test's floor
    assert t.friedman.ran and t.friedman.n_units == 6


def test_the_unit_table_is_the_seed_mean():
    frame, labels = _frame(folds=4, seeds=(0, 1, 2), seed=5)
    got = S.unit_table(frame, "pcc_mean", labels)
    want = _seed_means(frame)
    assert list(got.index.names) == list(S.UNIT) == ["dataset", "n_genes", "fold"]
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=0, atol=1e-15)
    assert not np.allclose(got.to_numpy(), frame[frame["seed"] == 0].pivot_table(
        index=list(S.UNIT), columns="method", values="pcc_mean").to_numpy())  # the seeds did differ


def test_ci_mde_and_min_p_by_their_definitions():
    frame, labels = _frame(n_methods=2, folds=7, seed=11)
    (p,) = S.metric_tests(frame, "pcc_mean", True, labels).pairs
    table = _seed_means(frame)
    d = table["m0"].to_numpy() - table["m1"].to_numpy()
    n, sd = d.size, d.std(ddof=1)
    low, high = sps.t.interval(0.95, n - 1, loc=d.mean(), scale=sd / math.sqrt(n))
    assert (p.ci_low, p.ci_high) == pytest.approx((low, high), abs=1e-12) and p.mean_diff == pytest.approx(d.mean())
    assert p.mde == pytest.approx((sps.t.ppf(0.975, n - 1) + sps.t.ppf(0.8, n - 1)) * sd / math.sqrt(n), abs=1e-12)
    assert p.min_p == 2 / 2 ** n == S.min_p(7)
    one = S.t_interval([0.3])
    assert one[0] == 0.3 and math.isnan(one[1]) and math.isnan(one[2]) and math.isnan(S.mde(0.1, 1))


def _clusters(folds):
    """Two clusters far apart: x1, x2 near 1.0 and y1, y2 near 0.0 on every fold."""
    rng = np.random.default_rng(3)
    rows = []
    for f in range(folds):
        for m, mu in (("x1", 1.0), ("x2", 1.01), ("y1", 0.0), ("y2", 0.01)):
            rows.append({"dataset": "d", "n_genes": 50, "fold": f"test=S{f}", "seed": 0, "method": m,
                         "config_hash": "h", "split": "slide", "pcc_mean": mu + 0.05 * rng.normal()})
    return pd.DataFrame(rows), {(m, "h"): m for m in ("x1", "x2", "y1", "y2")}


def test_groups_two_clusters_over_ten_units_one_over_five():
    frame, labels = _clusters(10)
    g = S.metric_tests(frame, "pcc_mean", True, labels).groups
    assert len(g.groups) == 2 and g.note == ""
    assert {g.letters["x1"], g.letters["x2"]} == {"a"} and {g.letters["y1"], g.letters["y2"]} == {"b"}
    assert g.order[:2] in (("x1", "x2"), ("x2", "x1"))
    five = S.metric_tests(frame[frame["fold"].isin([f"test=S{i}" for i in range(5)])], "pcc_mean", True, labels)
    assert len(five.groups.groups) == 1 and five.groups.note.startswith("n = 5 test slides: no pair can reach")


def test_letter_groups_overlap():
    # a-b and b-c not separated, a-c separated: two overlapping groups, b in both
    assert S.letter_groups(["a", "b", "c"], {frozenset("ac")}) == (("a", "b"), ("b", "c"))
    assert S.letter_groups(["a", "b", "c"], set()) == (("a", "b", "c"),)


def test_variance_split_by_hand():
    rows = []
    vals = {("f0", 0): 1.0, ("f0", 1): 3.0, ("f1", 0): 4.0, ("f1", 1): 4.0, ("f2", 0): 6.0, ("f2", 1): 10.0}
    for (f, s), v in vals.items():
        rows.append({"dataset": "d", "n_genes": 5, "fold": f, "seed": s, "method": "a", "config_hash": "h",
                     "pcc_mean": v})
    rows.append({"dataset": "d", "n_genes": 5, "fold": "f0", "seed": 0, "method": "b", "config_hash": "h",
                 "pcc_mean": 2.0})
    (va, vb) = S.variance_split(pd.DataFrame(rows), "pcc_mean", {("a", "h"): "a", ("b", "h"): "b"})
    x = np.array([[1.0, 3.0], [4.0, 4.0], [6.0, 10.0]])  # units x seeds
    between = np.std(x.mean(axis=1), ddof=1)
    seed = np.sqrt(np.mean(np.var(x, axis=1, ddof=1)))
    assert (va.label, va.n_units, va.n_seeds) == ("a", 3, 2)
    assert va.sd_between == pytest.approx(between) and va.sd_seed == pytest.approx(seed)
    assert va.seed_share == pytest.approx(seed ** 2 / (seed ** 2 + between ** 2))
    assert vb.n_units == 1 and math.isnan(vb.sd_between) and math.isnan(vb.sd_seed) and math.isnan(vb.seed_share)


def test_friedman_matches_scipy_and_ranks():
    frame, labels = _frame(n_methods=4, seed=1)
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    table = _seed_means(frame)
    ref = sps.friedmanchisquare(*table.to_numpy().T)
    fr = t.friedman
    assert fr.ran and fr.n_units == len(table) == 8
    assert abs(fr.statistic - ref.statistic) <= 1e-12 and abs(fr.p - ref.pvalue) <= 1e-12
    ranks = sps.rankdata(-table.to_numpy(), axis=1).mean(axis=0)
    np.testing.assert_allclose([fr.mean_ranks[c] for c in table.columns], ranks, atol=1e-12)
    assert fr.cd == pytest.approx(S.nemenyi_cd(4, 8))
    # lower is better ranks the other way round
    low = S.friedman(table, higher_is_better=False)
    np.testing.assert_allclose([low.mean_ranks[c] for c in table.columns], 5 - ranks, atol=1e-12)


def test_friedman_drops_incomplete_units_and_needs_three():
    frame, labels = _frame(n_methods=3, seed=2)
    frame.loc[(frame["method"] == "m2") & (frame["fold"] == "test=S0"), "pcc_mean"] = np.nan
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    assert t.friedman.n_units == 7  # fold S0 lost in both seeds
    two = S.metric_tests(frame[frame["method"] != "m2"], "pcc_mean", True, labels)
    assert not two.friedman.ran and "at least 3" in two.friedman.reason


def test_board_tests_never_pool_g():
    frame, labels = _frame(genes=(20, 50), folds=5)  # 10 (G, fold) units, 5 test slides per G
    ts = S.board_tests(frame, ["pcc_mean"], {"pcc_mean": True}, labels)
    assert [(t.dataset, t.n_genes) for t in ts] == [("d", 20), ("d", 50)]
    assert all(p.n == 5 and math.isnan(p.p) for t in ts for p in t.pairs)


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


# what the records of the scaled frame's methods store (their cards' role)
ROLES = {"mean": Role.NEGATIVE_CONTROL, "ridge": Role.POSITIVE_CONTROL, "knn": Role.POSITIVE_CONTROL}


def _scaled_frame():
    rows = []
    vals = {"mean": (0.0, 2.0), "ridge": (0.4, 1.2), "knn": (0.5, 1.5), "flag": (0.7, 0.8)}
    for m, (pcc, mse) in vals.items():
        for fold in range(2):
            rows.append({"dataset": "d", "n_genes": 50, "fold": f"f{fold}", "seed": 0, "method": m,
                         "role": ROLES.get(m, Role.METHOD).value, "config_hash": "h", "pcc_mean": pcc + 0.01 * fold,
                         "mse": mse - 0.01 * fold})
    return pd.DataFrame(rows), {(m, "h"): m for m in vals}


def test_scaled_scores_pick_the_best_control_per_metric():
    frame, labels = _scaled_frame()
    roles = S.control_roles(frame)
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
    roles = S.control_roles(no_neg)
    (cell,) = S.scaled_scores(no_neg, ["pcc_mean"], {"pcc_mean": True}, labels, roles)
    assert not cell.scores and "no negative control" in cell.reason
    only = frame[frame["method"].isin(["mean", "flag"])]
    (cell,) = S.scaled_scores(only, ["pcc_mean"], {"pcc_mean": True}, labels, S.control_roles(only))
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
    (p,) = S.pairwise(S.unit_table(frame, "pcc_mean", {("a", "h"): "a", ("b", "h"): "b"}), True)
    assert p.null == "permutation"
    assert abs(p.p - sps.wilcoxon(d, method=sps.PermutationMethod()).pvalue) <= 1e-12


def test_friedman_leaves_out_a_configuration_without_values():
    frame, labels = _frame(n_methods=4, seed=4)
    frame.loc[frame["method"] == "m3", "pcc_mean"] = np.nan  # e.g. Moran's I of a constant prediction
    t = S.metric_tests(frame, "pcc_mean", True, labels)
    assert t.friedman.ran and t.friedman.excluded == ("m3",) and t.friedman.labels == ("m0", "m1", "m2")
    table = _seed_means(frame[frame["method"] != "m3"])
    assert abs(t.friedman.p - sps.friedmanchisquare(*table.to_numpy().T).pvalue) <= 1e-12


def test_report_format_json(tmp_path):
    from typer.testing import CliRunner

    from flag_bench.cli import app
    from report_demo import write_demo_store

    rd = tmp_path / "res"
    write_demo_store(rd, methods=("mean", "ridge", "flag"), genes=(20,), folds=6, seeds=(0, 1), side=6,
                     artifacts=False)
    out = tmp_path / "board.json"
    res = CliRunner().invoke(app, ["report", "--results-dir", str(rd), "--format", "json", "--output", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert {r["label"] for b in doc["boards"] for r in b["rows"]} == {"mean (tiny)", "ridge (tiny)", "flag (tiny)"}
    assert all(r["cells"] == 12 and "pcc_mean" in r["scores"] for b in doc["boards"] for r in b["rows"])
    tests = {t["metric"]: t for t in doc["tests"]}
    assert doc["metric"] in tests and all((t["dataset"], t["n_genes"]) == ("demo", 20) for t in doc["tests"])
    t = tests["pcc_mean"]
    assert t["unit"] == "test slide" and t["n_units"] == 6 and t["seeds"] == "averaged within each unit"
    assert len(t["pairs"]) == 3 and t["friedman"]["n_units"] == 6 and t["groups"]["order"]
    for p in t["pairs"]:
        assert p["unit"] == "test slide" and p["n"] == 6 and p["min_p"] == 2 / 2 ** p["n_nonzero"]
        assert {"p", "p_holm", "ci_low", "ci_high", "mde", "statistic", "mean_diff", "null"} <= set(p)
        assert p["ci_low"] <= p["mean_diff"] <= p["ci_high"] and p["p"] >= 2 / 2 ** 6
    assert {v["label"] for v in t["variance"]} == {"mean (tiny)", "ridge (tiny)", "flag (tiny)"}
    assert all(v["n_seeds"] == 2 for v in t["variance"])
    # stdout, without --output: the same document
    res = CliRunner().invoke(app, ["report", "--results-dir", str(rd), "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == doc


@pytest.mark.parametrize("low, high, paper, verdict", [
    (0.01, 0.20, 0.30, S.HOLDS),  # excludes zero on the claimed side, even if below the paper's effect
    (-0.05, 0.40, 0.30, S.NOT_AT_SCALE),  # holds zero and the paper's effect
    (-0.05, 0.10, 0.30, S.CONTRADICTED),  # excludes the paper's effect
    (-0.30, -0.10, 0.05, S.CONTRADICTED),  # the opposite direction
    (-0.05, 0.10, None, S.NOT_AT_SCALE),  # no paper number: only the sign can be judged
    (-0.30, -0.01, None, S.CONTRADICTED),
    (float("nan"), float("nan"), 0.3, S.NO_CI),  # one unit: no interval, no verdict
])
def test_claim_verdict_rules(low, high, paper, verdict):
    assert S.claim_verdict(low, high, paper) == verdict


def test_board_rows_and_curves_resample_folds_never_seeds(tmp_path):
    """A row's n, std and CI come from the seed-averaged folds: 3 seeds x 4 folds is 4 units."""
    from flag_bench.leaderboard.model import build, unit_means
    from flag_bench.leaderboard.results import load_results
    from flag_bench.metrics.stats import bootstrap_ci
    from tests.report_demo import write_demo_store

    write_demo_store(tmp_path, methods=("mean", "ridge"), genes=(20, 50), folds=4, seeds=(0, 1, 2),
                     artifacts=False)
    frame = load_results(tmp_path, source="store").frame()
    lb = build(frame, "pcc_mean")
    rows = [r for b in lb.datasets for r in b.rows if r.method == "ridge" and r.n_genes == 20]
    (row,) = rows
    cells = frame[(frame["method"] == "ridge") & (frame["n_genes"] == 20)]
    units = unit_means(cells, ["pcc_mean"])["pcc_mean"].to_numpy()
    assert len(cells) == 12 and units.size == 4
    st = row.stats["pcc_mean"]
    assert st.n == 4
    assert st.std == pytest.approx(np.std(units, ddof=1))
    assert (st.ci_low, st.ci_high) == pytest.approx(bootstrap_ci(units, level=0.95, seed=0))
    # the seeds differ, so pooling them would give another interval
    assert (st.ci_low, st.ci_high) != pytest.approx(bootstrap_ci(cells["pcc_mean"].to_numpy(), level=0.95, seed=0))
