"""`flag-bench report --format html|png|svg`: a self-contained page with every section and figure,
statistics that say "too few pairs" when they are, protocol flags, and sorting that works in a
real browser (headless Chromium, skipped with the reason when it is not installed, failed under CI: Debian
package ``chromium``)."""

from __future__ import annotations

import base64
import html
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from flag_bench.cli import app
from report_demo import write_demo_store
from flag_bench.leaderboard.html import section_ids

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NEEDS_BROWSER = pytest.mark.usefixtures("chromium")  # tests/conftest.py: skips saying why, fails under CI=true
MIN_COLOURS = 200  # a blank or one-colour image has a handful; a plotted figure has thousands


def distinct_colours(png: bytes) -> int:
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(np.uint32)
    return len(np.unique((im[:, 0] << 16) | (im[:, 1] << 8) | im[:, 2]))


def _report(rd, out, *args):
    res = runner.invoke(app, ["report", "--results-dir", str(rd), "--format", "html", "--output", str(out), *args])
    assert res.exit_code == 0, res.output
    return out.read_text()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    base = tmp_path_factory.mktemp("html")
    rd = base / "res"
    # 6 test slides per G: exactly enough units for the tests to run (seeds never count as units)
    write_demo_store(rd, methods=("mean", "ridge", "flag", "stem"), genes=(20, 50), folds=6, side=10,
                     test_informed=True, pretraining_overlap=["TCGA-BRCA"])
    out = base / "leaderboard.html"
    return rd, out, _report(rd, out, "--genes-to-plot", "GENE0003")


def _figures(text):
    return dict(re.findall(r'<figure data-figure="([^"]+)"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', text))


def test_self_contained_every_section_and_figure(page):
    rd, out, text = page
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<link" not in text
    assert re.findall(r'<script[^>]*src=', text) == []
    for sid in section_ids():
        assert f'<section id="{sid}" data-section="{sid}">' in text
    figs = _figures(text)
    want = {"curves-demo", "wilcoxon-pcc_mean-demo-g20", "wilcoxon-pcc_mean-demo-g50", "moran-demo", "pcc-genes-demo",
            *(f"cd-{m}-demo-g{g}" for m in ("pcc_mean", "pcc_pooled", "mse", "gsc", "ssc", "moran_abs_err")
              for g in (20, 50))}
    assert want <= set(figs), sorted(figs)
    assert len([k for k in figs if k.startswith("map-")]) == 4  # one per configuration
    for key, b64 in figs.items():
        assert distinct_colours(base64.b64decode(b64)) >= MIN_COLOURS, key
    assert out.stat().st_size < 10e6


def test_leaderboard_has_pooled_pcc_beside_pcc_ci_and_costs(page):
    _, _, text = page
    head = re.search(r'<table class="sortable board"[^>]*><thead><tr>(.*?)</tr>', text).group(1)
    cols = re.findall(r'data-col="([^"]+)"', head)
    assert cols[:4] == ["method", "cells", "pcc_mean", "pcc_pooled"]
    assert {"fit_seconds", "predict_seconds", "peak_rss_mb", "n_parameters"} <= set(cols)
    assert re.search(r'<span class="ci">\[[-0-9.]+, [-0-9.]+\]</span>', text)


@pytest.mark.slow
def test_pooled_pcc_joins_pcc_in_the_columns_asked_for(page, tmp_path):
    rd, _, _ = page
    text = _report(rd, tmp_path / "c.html", "--columns", "mse,PCC")
    head = re.search(r'<table class="sortable board"[^>]*><thead><tr>(.*?)</tr>', text).group(1)
    assert re.findall(r'data-col="([^"]+)"', head)[:5] == ["method", "cells", "mse", "pcc_mean", "pcc_pooled"]


def test_protocol_flags_and_coverage(page):
    text = html.unescape(page[2])
    assert "test-informed gene panel (12 of 12 panels" in text  # 2 G x 6 folds, every one flagged
    assert "pretraining overlap: the encoder's pretraining data shares TCGA-BRCA" in text
    assert "48 finished, 0 failed, 0 planned but missing." in text


def test_no_flags_when_the_records_have_none(tmp_path):
    rd = tmp_path / "res"
    write_demo_store(rd, methods=("mean", "ridge"), genes=(20, 50), folds=1, side=6, test_informed=False,
                     pretraining_overlap=[])
    text = _report(rd, tmp_path / "p.html")
    assert 'class="flag"' not in text
    assert "No test-informed panel, no pretraining overlap recorded." in text


@pytest.mark.slow
def test_few_test_slides_say_too_few_and_print_no_p(tmp_path):
    """5 test slides x 2 seeds: 10 cells per configuration, but 5 units, and no p-value anywhere."""
    rd = tmp_path / "res"
    write_demo_store(rd, methods=("mean", "ridge", "flag"), genes=(20,), folds=5, seeds=(0, 1), side=6)
    text = html.unescape(_report(rd, tmp_path / "p.html"))
    sig = text[text.index('<section id="significance"'):text.index('<section id="scaled"')]
    assert "demo, G = 20: over 5 test slides, seeds averaged" in sig
    assert "too few test slides (n=5)" in sig and "Friedman: too few test slides (n=5 complete" in sig
    assert "n = 5 test slides: no pair can reach p < 0.05" in sig and "minimum detectable effect with n = 5" in sig
    assert "Friedman χ²" not in sig and "data-figure" not in sig
    # no p-value anywhere: every pair row is the "too few" cell, with the CI of its difference
    # (n/a where the pair has no unit in common: Moran's I of the constant mean prediction)
    rows = re.findall(r'<tr><td class="l">[^<]*</td><td class="l">.*?</tr>', sig)
    assert rows and all("too few test slides" in r for r in rows)
    assert all(re.search(r"<td>\[[-0-9.]+, [-0-9.]+\]</td>", r) for r in rows if "<td>5</td>" in r)


def test_control_scaled_scores_section(page):
    _, _, text = page
    sc = text[text.index('<section id="scaled"'):text.index('<section id="maps"')]
    table = sc[sc.index("demo, G = 20"):]
    mean_row = re.search(r'<tr><td class="l" data-v="">mean \(tiny\)</td>(.*?)</tr>', table).group(1)
    ridge_row = re.search(r'<tr><td class="l" data-v="">ridge \(tiny\)</td>(.*?)</tr>', table).group(1)
    assert set(re.findall(r">([-0-9.]+)</td>", mean_row)) == {"0.000"}
    assert set(re.findall(r">([-0-9.]+)</td>", ridge_row)) == {"1.000"}  # the only positive control
    assert "best control (= 1)</td><td>ridge (tiny)</td>" in table


def test_maps_without_he_say_why_and_name_the_gene(page):
    _, _, text = page
    assert text.count("no H&amp;E underlay: dataset demo is not registered here") == 4
    assert "the 2 best and worst genes by per-gene PCC and the named genes" in text


@pytest.mark.slow
def test_png_folder(page, tmp_path):
    rd, _, text = page  # svg: tests/test_report_filters.py
    out = tmp_path / "png"
    res = runner.invoke(app, ["report", "--results-dir", str(rd), "--format", "png", "--output", str(out)])
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("*.png"))
    assert {f.stem for f in files} == set(_figures(text))  # the same figures as the page
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    assert distinct_colours((out / "curves-demo.png").read_bytes()) >= MIN_COLOURS


@pytest.mark.parametrize("args,needles", [
    (["--format", "html"], ["--format html", "--output"]),
    (["--format", "html", "--output", "OUT", "--genes-to-plot", "NOPE1"], ["--genes-to-plot NOPE1"]),
    (["--format", "html", "--output", "OUT", "--map-cells", "zzzz"], ["--map-cells zzzz", "no finished cell"]),
    (["--format", "png", "--output", "OUT/leaderboard.html/x"], ["--output"]),
])
@pytest.mark.slow
def test_errors_are_one_line_and_write_nothing(page, tmp_path, args, needles):
    rd, _, _ = page
    out = tmp_path / "o.html"
    if "OUT/leaderboard.html/x" in args:  # a file where a folder must go
        (tmp_path / "leaderboard.html").write_text("x")
    args = [a.replace("OUT", str(tmp_path)) if a.startswith("OUT") else a for a in args]
    args = [str(out) if a == str(tmp_path) else a for a in args]
    res = runner.invoke(app, ["report", "--results-dir", str(rd), *args])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert all(n in lines[0] for n in needles), lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_map_cells_by_prefix(page, tmp_path):
    rd, _, _ = page
    cid = sorted(p.stem for p in (rd / "cells").glob("*.json"))[0]
    text = _report(rd, tmp_path / "m.html", "--map-cells", cid[:10])
    assert [k for k in _figures(text) if k.startswith("map-")] == [f"map-{cid}"]


def test_he_thumbnail_from_tiles_of_a_real_dataset():
    from flag_bench.catalog import DATASETS
    from flag_bench.thumbnails import THUMB_PX, thumbnail

    ds = DATASETS.get("her2st-mini")()
    s = ds.slides[0]
    img, extent, why = thumbnail("her2st-mini", s.id, s.coords_um)
    assert why == "" and img.shape == (THUMB_PX, THUMB_PX, 3) and img.dtype == np.uint8
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    assert distinct_colours(buf.getvalue()) >= MIN_COLOURS
    x0, x1, y1, y0 = extent
    assert x0 <= s.coords_um[:, 0].min() and x1 >= s.coords_um[:, 0].max() and y0 <= s.coords_um[:, 1].min()


# -- in a real browser --------------------------------------------------------------------------
def _chromium(*args, timeout=90):
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=4000", *args],
                          capture_output=True, text=True, timeout=timeout)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc, console


@NEEDS_BROWSER
def test_console_error_detection_works(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notAFunction();</script></body></html>")
    _, console = _chromium("--dump-dom", bad.as_uri())
    assert any("notAFunction" in line for line in console)  # so an empty list below means something


@pytest.mark.slow
@NEEDS_BROWSER
def test_browser_renders_without_console_errors_and_sorts(page):
    _, out, _ = page
    proc, console = _chromium("--dump-dom", out.as_uri() + "#sort=mse:asc")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console == [], console
    dom = proc.stdout
    assert '<body data-js="ready">' in dom
    tables = re.findall(r'<table class="sortable board"([^>]*)>(.*?)</table>', dom, re.S)
    assert tables
    for attrs, body in tables:
        assert 'data-sort-col="mse"' in attrs and 'data-sort-dir="asc"' in attrs
        assert re.search(r'data-col="mse"[^>]*aria-sort="ascending"|aria-sort="ascending"[^>]*data-col="mse"', body)
        idx = re.findall(r'data-col="([^"]+)"', body).index("mse")
        values = []
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body.split("</thead>")[1], re.S):
            cells = re.findall(r'<td[^>]*data-v="([^"]*)"', row)
            values.append(float(cells[idx]))
        assert values == sorted(values) and len(set(values)) > 1
    # the other way round: the page's own order was by PCC, descending; mse:desc reverses the sort
    proc, _ = _chromium("--dump-dom", out.as_uri() + "#sort=mse:desc")
    attrs, body = re.findall(r'<table class="sortable board"([^>]*)>(.*?)</table>', proc.stdout, re.S)[0]
    assert 'data-sort-dir="desc"' in attrs


@NEEDS_BROWSER
def test_browser_screenshot_is_not_blank(page, tmp_path):
    _, out, _ = page
    shot = tmp_path / "shot.png"
    proc, console = _chromium(f"--screenshot={shot}", "--window-size=1280,5000", out.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    assert console == []
    from PIL import Image

    im = np.asarray(Image.open(shot).convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="PNG")
    assert distinct_colours(buf.getvalue()) >= 2000
    # the figures are painted: the image has content well below the first screen
    rows = np.flatnonzero((im.min(axis=(1, 2)) < 200))
    assert rows.max() > 4000


@pytest.mark.slow
def test_store_and_mlflow_give_the_same_page(tmp_path):
    from flag_bench.store import ResultsStore
    from flag_bench.tracking import Tracker, default_tracking_uri

    rd = tmp_path / "res"
    write_demo_store(rd, methods=("mean", "ridge"), genes=(20, 50), folds=1, side=6, test_informed=True)
    store, uri = ResultsStore(rd), default_tracking_uri(rd)
    with store.creation_lock():
        tracker = Tracker(uri, rd, "default")
    parent = tracker.start_parent({"genes": [20, 50]}, {"git_commit": "test", "packages": {}})
    for rec in store.records():
        tracker.log_record(rec, store.artifact_dir(rec.cell_id), parent)
    pages = [_report(rd, tmp_path / f"{s}.html", "--source", s) for s in ("store", "mlflow")]
    assert pages[0] == pages[1]  # artifacts, panel flags and figures read through MLflow, byte for byte
    assert "test-informed gene panel" in pages[1]
