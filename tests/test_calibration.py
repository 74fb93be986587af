"""Calibrated columns and location-sensitivity verdicts (leaderboard/calibration.py, validity.py):
the formulas on hand-made frames, then a real grid of the controls through `flag-bench run` and
every report format."""

from __future__ import annotations

import csv
import io
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from flag_bench.cli import app
from flag_bench.leaderboard.calibration import add_calibration, bounds
from flag_bench.leaderboard.model import metric_direction
from flag_bench.leaderboard.validity import CONTROLS, NOISY, noise_config_hash, summary_line, verdicts_from_frame
from flag_bench.roles import Role

runner = CliRunner()


# the role each method's records store (what calibration reads: never the method's name)
ROLES = {"random-spot": Role.NULL, "gene-prior": Role.NULL, "null-shuffle": Role.TRUTH_NULL}


def _frame(rows):
    base = dict(dataset="d", dataset_spec="d", n_genes=10, split="slide", target_transform="log1p",
                panel_selector="hmhvg", config_hash="h", seed=0)
    return pd.DataFrame([{**base, "role": ROLES.get(r["method"], Role.METHOD).value, **r} for r in rows])


def test_calibration_uses_the_best_image_free_null_of_the_same_fold():
    f = _frame([
        # fold A: random-spot over two seeds (mean 0.5) beats gene-prior (0.2): the null is 0.5
        dict(method="random-spot", fold="A", seed=0, gsc=0.4, **{"ceiling.gsc": 0.9}),
        dict(method="random-spot", fold="A", seed=1, gsc=0.6, **{"ceiling.gsc": 0.9}),
        dict(method="gene-prior", fold="A", gsc=0.2, **{"ceiling.gsc": 0.9}),
        dict(method="ridge", fold="A", gsc=0.7, **{"ceiling.gsc": 0.9}),
        # fold B: only gene-prior; the ceiling sits below the null, so nothing is calibrated
        dict(method="gene-prior", fold="B", gsc=0.3, **{"ceiling.gsc": 0.25}),
        dict(method="ridge", fold="B", gsc=0.8, **{"ceiling.gsc": 0.25}),
        # fold C: no null control at all
        dict(method="ridge", fold="C", gsc=0.8, **{"ceiling.gsc": 0.9}),
        # a truth-reading null never sets the null, however high it scores
        dict(method="null-shuffle", fold="A", gsc=1.0, **{"ceiling.gsc": 0.9}),
    ])
    out = add_calibration(f)
    ridge = out[out["method"] == "ridge"].set_index("fold")
    assert ridge.loc["A", "gsc_null"] == pytest.approx(0.5)
    assert ridge.loc["A", "gsc_cal"] == pytest.approx((0.7 - 0.5) / (0.9 - 0.5))
    assert math.isnan(ridge.loc["B", "gsc_cal"]) and math.isnan(ridge.loc["C", "gsc_cal"])
    shuffle = out[out["method"] == "null-shuffle"].iloc[0]
    assert shuffle["gsc_cal"] == pytest.approx((1.0 - 0.5) / 0.4)  # above the ceiling: > 1, shown as is
    b = bounds(out, ["gsc"])[(10, "gsc")]
    assert b.null == pytest.approx((0.5 + 0.3) / 2) and b.ceiling == pytest.approx((0.9 + 0.25 + 0.9) / 3)


def _verdict_frame(noisy_ssc):
    rows = []
    for fold, v in zip("AB", noisy_ssc):
        rows.append(dict(method=NOISY, config_hash=noise_config_hash(), fold=fold, ssc=v, ssc_spot=0.9, mse=0.1))
        for c, ssc in zip(CONTROLS, (0.6, 0.0, 0.0, 0.7)):
            rows.append(dict(method=c, fold=fold, ssc=ssc, ssc_spot=0.05, mse=1.0))
    return _frame(rows)


def test_a_metric_is_location_sensitive_only_if_noisy_truth_beats_every_control_on_every_fold():
    direction = metric_direction()
    v = verdicts_from_frame(_verdict_frame([0.9, 0.65]), direction)
    assert v["ssc_spot"].sensitive and v["mse"].sensitive and v["ssc_spot"].folds == 2
    assert v["ssc"].sensitive is False and v["ssc"].failed_by == ("gene-prior",)  # fold B: 0.65 < 0.7
    assert verdicts_from_frame(_verdict_frame([0.9, 0.9]), direction)["ssc"].sensitive
    line = summary_line(v, str)
    assert "ssc_spot" in line and "NOT location-sensitive here (not beaten): ssc (gene-prior)" in line
    # without the controls there is no verdict from the results
    partial = _verdict_frame([0.9, 0.9])
    assert verdicts_from_frame(partial[partial["method"] != "null-rotate"], direction) == {}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    d = tmp_path_factory.mktemp("validity")
    args = ["--datasets", "synthetic:n_slides=4,n_genes=60,spots_per_slide=150,seed=2", "--genes", "20",
            "--folds", "0,1", "--encoder", "color-stats", "--results-dir", str(d), "--no-progress"]
    res = runner.invoke(app, ["run", *args, "--methods", "ridge,mean,random-spot,gene-prior,null-shuffle,"
                              "null-rotate,oracle-noise"])
    assert res.exit_code == 0, res.output
    return d


@pytest.mark.slow
def test_the_report_shows_calibrated_columns_null_ceiling_and_the_verdict(grid):
    out = runner.invoke(app, ["report", "--results-dir", str(grid), "--source", "store"], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "calibrated scores (0 = best image-free null, 1 = noise ceiling)" in text
    assert "null (raw)" in text and "ceiling (raw)" in text and "PCC cal" in text
    assert "random-spot [null]" in text and "oracle-noise [oracle]" in text
    flat = " ".join(text.split())
    assert "location-sensitive here (noisy truth beats rotated, shuffled, random-spot and gene-prior on every " \
           "fold; these results)" in flat
    md = runner.invoke(app, ["report", "--results-dir", str(grid), "--format", "markdown"]).stdout
    # reference rows come after every method of their G, marked
    main = md.split("Calibrated scores")[0]
    order = [ln.split("|")[2].strip() for ln in main.splitlines() if ln.startswith("| 20 |")]
    assert [m.split()[0] for m in order[:2]] == ["ridge", "mean"] and all(m.endswith(("[null]", "[oracle]")) for m in order[2:])
    assert len(order) == 7
    assert "Calibrated scores (0 = best image-free null of the fold, 1 = noise ceiling)" in md
    assert "*ceiling (raw, split-half)*" in md and "**location-sensitive here" in md
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, ["report", "--results-dir", str(grid),
                                                                 "--format", "csv"]).stdout)))
    ridge = next(r for r in rows if r["method"] == "ridge")
    assert ridge["role"] == "" and next(r for r in rows if r["method"] == "gene-prior")["role"] == "null"
    for m in ("pcc_mean", "gsc", "ssc", "ssc_spot", "lee_l"):
        assert ridge[f"{m}_location_sensitive"] in ("yes", "no"), m
        null, ceil = float(ridge[f"{m}_null"]), float(ridge[f"{m}_ceiling"])
        assert math.isfinite(null) and math.isfinite(ceil), m
        if ceil > null:
            assert math.isfinite(float(ridge[f"{m}_cal"])), m
    assert ridge["ssc_spot_location_sensitive"] == "yes"


@pytest.mark.slow
def test_the_html_page_has_calibrated_tables_and_bands(grid, tmp_path):
    page = tmp_path / "b.html"
    res = runner.invoke(app, ["report", "--results-dir", str(grid), "--format", "html", "--output", str(page)])
    assert res.exit_code == 0, res.output
    html = page.read_text()
    assert 'class="sortable calibrated"' in html and 'class="ceiling"' in html and 'class="null"' in html
    assert "validity" in html and "GSC frob" in html and "GSC cpm" in html
