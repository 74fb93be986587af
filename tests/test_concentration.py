"""The Gene Dimension Curse's model-free check and its tables: ``spot_correlation_spread``
against a brute-force np.corrcoef, the 1/sqrt(G) law on data with no spot structure, constant
spots left out and counted; ``scripts/gdc_tables.py`` on a synthetic results folder (records
written through ResultsStore as a sweep would leave them) against scipy's t-interval over folds
of seed-averaged values."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from flag_bench.metrics.concentration import spot_correlation_spread

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def brute_force(x: np.ndarray) -> dict:
    keep = x[np.array([len(set(row)) > 1 for row in x.tolist()])]
    c = np.corrcoef(keep)
    r = np.array([c[i, j] for i in range(len(keep)) for j in range(i + 1, len(keep))])
    q = np.quantile(r, [0.05, 0.25, 0.75, 0.95])
    return {"n_used": len(keep), "n_pairs": len(r), "mean": r.mean(), "sd": r.std(), "iqr": q[2] - q[1],
            "mean_abs": np.abs(r).mean(), "q05": q[0], "q95": q[3]}


def test_matches_brute_force_corrcoef():
    rng = np.random.default_rng(0)
    # spots with a shared mean profile plus spot-type structure, in counts-like log space
    profile = rng.gamma(2.0, 1.0, size=40)
    types = rng.normal(size=(3, 40))
    x = np.log2(1 + rng.poisson(np.exp(profile + types[rng.integers(0, 3, 60)] * 0.7)))
    got = spot_correlation_spread(x)
    want = brute_force(x)
    assert got["n_spots"] == 60 and got["n_genes"] == 40 and got["n_constant"] == 0
    assert got["n_used"] == want["n_used"] and got["n_pairs"] == want["n_pairs"] == 60 * 59 // 2
    for k in ("mean", "sd", "iqr", "mean_abs", "q05", "q95"):
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    assert 0.2 < got["mean"] < 0.95  # a shared profile: not centred on 0, so mean |r| is its own number


def test_iid_gaussian_sd_falls_like_one_over_sqrt_g():
    rng = np.random.default_rng(1)
    sd = {}
    for g in (50, 800):
        s = spot_correlation_spread(rng.normal(size=(300, g)))
        sd[g] = s["sd"]
        assert s["sd"] == pytest.approx(1 / math.sqrt(g - 1), rel=0.05), (g, s)
        assert abs(s["mean"]) < 0.01
        assert s["q95"] - s["q05"] == pytest.approx(2 * 1.645 / math.sqrt(g - 1), rel=0.08)
    assert sd[50] / sd[800] == pytest.approx(math.sqrt(799 / 49), rel=0.08)  # ~4.04
    # structure does not concentrate away: two spot types keep the spread at large G
    types = rng.normal(size=(2, 800))
    x = types[rng.integers(0, 2, 300)] + rng.normal(size=(300, 800))
    assert spot_correlation_spread(x)["sd"] > 5 * sd[800]


def test_constant_spots_are_left_out_and_counted():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 15))
    with_constant = np.vstack([x[:5], np.zeros((1, 15)), x[5:], np.full((1, 15), 5.0)])
    got = spot_correlation_spread(with_constant)
    assert (got["n_spots"], got["n_constant"], got["n_used"], got["n_pairs"]) == (22, 2, 20, 190)
    plain = spot_correlation_spread(x)
    for k in ("mean", "sd", "iqr", "mean_abs", "q05", "q95"):
        assert got[k] == pytest.approx(plain[k], abs=1e-12), k
    none = spot_correlation_spread(np.vstack([x[:1], np.ones((3, 15))]))
    assert (none["n_constant"], none["n_used"], none["n_pairs"]) == (3, 1, 0) and math.isnan(none["sd"])
    with pytest.raises(ValueError):
        spot_correlation_spread(x[:, :1])


# -- scripts/gdc_tables.py -----------------------------------------------------------------------
FOLDS = ("C2", "C3", "C4", "C5", "C6")
SCORES = ("pcc_mean", "mse", "gsc", "ssc")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _record(method, label_overrides, head, g, fold, seed, rng, *, transform="log2p1"):
    from flag_bench.grid import Cell
    from flag_bench.hashing import short_hash
    from flag_bench.record import CellRecord, MethodInfo, PanelInfo

    config = {"score_output": head, **{k: v for k, v in label_overrides.items() if k != "score_output"}}
    train = tuple(s for s in FOLDS if s != fold)
    cell = Cell(dataset="her2st-mini", dataset_spec="her2st-mini", dataset_version="v1", n_genes=g, panel="hmhvg",
                panel_params=(("n_top_hvg", 4096),), method=method, preset="small",
                config_hash=short_hash({"method": method, "config": config}), split="slide", fold=f"test={fold}",
                fold_train=train[1:], fold_val=train[:1], fold_test=(fold,), seed=seed, target_transform=transform,
                encoder="efficientnet-lite0", patch="112um")
    # fold effects large, seeds noisy: pooling the 15 cells would give a visibly different interval
    base = {"pcc_mean": 0.6 - 0.0002 * g, "mse": 0.7 + 0.0003 * g, "gsc": 0.8, "ssc": 0.3}
    shift = 0.05 * FOLDS.index(fold) + (0.02 if method == "flag-joint" else 0.0)
    scores = {k: float(v + shift + rng.normal(0, 0.04)) for k, v in base.items()}
    info = MethodInfo(method, "small", config, label_overrides, {"name": method}, {})
    return CellRecord(status="ok", cell=cell, method=info, protocol={"suite": "gdc"}, provenance={}, device="cpu",
                      started="2026-01-01T00:00:00+0000", finished="2026-01-01T00:01:00+0000",
                      panel=PanelInfo(f"p{g}{fold}", tuple(f"G{i}" for i in range(g)), "hmhvg", train),
                      scores=scores, scores_per_slide={fold: scores}, costs={})


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A gdc sweep's results: 2 methods x 2 heads x G 10, 800 x 5 folds x 3 seeds, minus fold C6 of
    flag-node raw at G = 800 and seed 2 of flag-joint edm's fold C3 at G = 10; plus cells the
    tables must leave out (another override, another target transform)."""
    from flag_bench.store import ResultsStore

    rd = tmp_path_factory.mktemp("gdc")
    store = ResultsStore(rd)
    rng = np.random.default_rng(7)
    # the edm head reached both ways: the preset's default (label "small") and restated
    heads = {("flag-joint", "edm"): {}, ("flag-node", "edm"): {"score_output": "edm"},
             ("flag-joint", "raw"): {"score_output": "raw"}, ("flag-node", "raw"): {"score_output": "raw"}}
    values = {}
    for (method, head), overrides in heads.items():
        for g in (10, 800):
            for fold in FOLDS:
                for seed in range(3):
                    if (method, head, g, fold) == ("flag-node", "raw", 800, "C6"):
                        continue
                    if (method, head, g, fold, seed) == ("flag-joint", "edm", 10, "C3", 2):
                        continue
                    rec = _record(method, overrides, head, g, fold, seed, rng)
                    store.write(rec)
                    values[(method, head, g, fold, seed)] = rec.scores
    store.write(_record("flag-joint", {"n_samples": 1}, "edm", 10, "C2", 0, rng))
    store.write(_record("flag-joint", {}, "edm", 10, "C2", 0, rng, transform="log1p"))
    return rd, values


def _rows(text: str, title: str) -> list[list[str]]:
    part = text[text.index(title):]
    lines = [ln for ln in part.splitlines() if ln.startswith("|")]
    end = next((i for i in range(1, len(lines)) if lines[i].startswith("| method") or lines[i].startswith("| head")),
               len(lines))
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:end]]


def _ci(values) -> str:
    v = np.asarray(values, dtype=float)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    return f"{v.mean():.6f} [{lo:.6f}, {hi:.6f}]"


def _fold_means(values, method, head, g, score):
    out = {}
    for fold in FOLDS:
        seeds = [values[k][score] for k in values if k[:4] == (method, head, g, fold)]
        if seeds:
            out[fold] = float(np.mean(seeds))
    return out


def test_gdc_tables_fold_intervals_match_scipy(sweep_dir, tmp_path):
    rd, values = sweep_dir
    tables = _load_script("gdc_tables")
    out = tmp_path / "t.md"
    assert tables.main([str(rd), "--genes", "10,800", "--seeds", "0,1,2", "--digits", "6", "--write", str(out)]) == 0
    text = out.read_text()
    expected = 2 * 2 * 2 * 5 * 3
    assert f"**{expected - 3 - 1} of {expected} expected cells found**" in text
    assert "1 cells of flag-joint (small n_samples=1) left out" in text

    main = {(r[0], r[1], int(r[2])): r for r in _rows(text, "### Scores per method")}
    assert len(main) == 8
    for (method, head, g), row in main.items():
        if (method, head, g) == ("flag-node", "raw", 800):
            assert row[3] == "4 of 5" and all(c == "n/a (4 of 5 folds)" for c in row[5:]), row
            continue
        assert row[3] == "5 of 5"
        assert row[4] == ("2-3" if (method, head, g) == ("flag-joint", "edm", 10) else "3")
        for score, cell in zip(SCORES, row[5:]):
            per_fold = _fold_means(values, method, head, g, score)
            assert cell.startswith(_ci(list(per_fold.values())) + "; seed sd "), (method, head, g, score, cell)
            # the seed sd: within-fold sd across seeds, pooled over folds
            var = [np.var([values[k][score] for k in values if k[:4] == (method, head, g, f)], ddof=1) for f in FOLDS]
            assert cell.endswith(f"seed sd {math.sqrt(np.mean(var)):.6f}")

    change = {(r[0], r[1]): r for r in _rows(text, "### Change from G = 10")}
    for (method, head), row in change.items():
        if (method, head) == ("flag-node", "raw"):
            assert row[3] == "4 of 5" and row[4] == "n/a (4 of 5 folds)"
            continue
        a, b = (_fold_means(values, method, head, g, "pcc_mean") for g in (10, 800))
        assert row[4] == _ci([b[f] - a[f] for f in FOLDS]), row

    contrast = {(r[0], int(r[1])): r for r in _rows(text, "### flag-joint minus flag-node")}
    assert contrast[("raw", 800)][3] == "n/a (4 of 5 folds)"
    for head in ("edm", "raw"):
        j, n = (_fold_means(values, m, head, 10, "ssc") for m in ("flag-joint", "flag-node"))
        assert contrast[(head, 10)][6] == _ci([j[f] - n[f] for f in FOLDS])
