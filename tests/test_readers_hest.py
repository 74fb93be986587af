"""HEST-1k and HEST-Benchmark folders written from her2st-mini in the published layouts and read
back: identical patches, counts and ridge scores; shuffled patch rows; spots without patches;
HEST-Benchmark folds, pooled PCC and the test-informed panel file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flag_bench.cli import app
from flag_bench.datasets import her2st_mini
from flag_bench.datasets.base import PatchSpec
from flag_bench.datasets.readers import hest, hest_bench
import layouts

runner = CliRunner()
RUN = ["run", "--methods", "mean,ridge", "--preset", "tiny", "--encoder", "color-stats", "--device", "cpu",
       "--genes", "30", "--no-progress"]


@pytest.fixture(scope="module")
def mini():
    return her2st_mini.load()


def _records(results: Path) -> dict[str, dict]:
    out = {}
    for p in sorted((results / "cells").glob("*.json")):
        if ".failed-" in p.name:
            continue
        d = json.loads(p.read_text())
        out[d["cell"]["method"]] = d
    return out


@pytest.mark.slow
def test_round_trip_gives_identical_ridge_scores(mini, tmp_path):
    root = layouts.write_hest(mini, tmp_path / "hest", ["B4", "C2", "C3"])
    split = tmp_path / "fold.json"
    split.write_text(json.dumps({"folds": [{"name": "C->B4", "train": ["C2", "C3"], "test": ["B4"]}]}))
    scores = {}
    for name, spec in (("mini", "her2st-mini"), ("hest", f"hest:root={root}")):
        res = runner.invoke(app, [*RUN, "--datasets", spec, "--split", f"file:{split}",
                                  "--results-dir", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        scores[name] = _records(tmp_path / name)
    a, b = scores["mini"]["ridge"], scores["hest"]["ridge"]
    assert a["panel"]["genes"] == b["panel"]["genes"]
    # domain scores (ari/nmi) take k from her2st-mini's annotations, which a HEST folder does
    # not carry; every expression score must be identical
    def expr(d):
        return {k: v for k, v in d.items() if not k.startswith(("ari", "nmi"))}

    assert len(expr(a["scores"])) >= 5 and expr(a["scores"]) == expr(b["scores"])
    assert {s: expr(v) for s, v in a["scores_per_slide"].items()} == {s: expr(v) for s, v in b["scores_per_slide"].items()}
    assert "pcc_pooled" in b["scores"]


def test_shuffled_rows_and_spots_without_patches(mini, tmp_path):
    root = layouts.write_hest(mini, tmp_path / "hest", ["C2"], shuffle_seed=7, drop_patches=4)
    with pytest.warns(UserWarning, match="dropped 4 spot"):
        ds = hest.load(root=str(root))
    a, b = ds.slide("C2"), mini.slide("C2")
    keep = np.arange(b.n_spots - 4)
    assert a.n_spots == len(keep) and ds.meta["dropped_spots"] == {"C2": 4}
    assert list(a.barcodes) == list(b.barcodes[keep])
    assert (a.counts != b.counts[keep]).nnz == 0
    np.testing.assert_array_equal(a.coords, b.coords[keep])
    # full field, and a smaller resampled field for a subset of spots: same pixels either way
    for patch, spots in ((layouts.stored_patch(mini), None), (PatchSpec(56.0, 48), np.array([0, 3, 17, 40]))):
        got = a.tile_reader("C2", patch, spots)
        want = b.tile_reader("C2", patch, keep if spots is None else spots)
        np.testing.assert_array_equal(got, want)
    assert a.meta["pixel_size_source"] == "estimated from spot spacing"
    assert ds.meta["corpora"] == ("HEST-1k", "her2st")
    assert ds.patients == {"C2": "C"} and ds.meta["patients_known"] is True
    with pytest.raises(Exception, match="stores 112-um patches only"):
        a.tile_reader("C2", PatchSpec(150.0, 224), np.array([0]))


def test_unknown_patient_and_embedded_pixel_size(mini, tmp_path):
    root = layouts.write_hest(mini, tmp_path / "hest", ["B4", "C2"], with_patient=False,
                              pixel_size_field="pixel_size_um_embedded")
    ds = hest.load(root=str(root), ids="C2")
    assert ds.slide_ids == ("C2",) and ds.patients == {"C2": "C2"} and ds.default_split == "slide"
    assert ds.slide("C2").meta["pixel_size_source"] == "embedded"
    given = hest.load(root=str(root), pixel_size=0.5, patch_um=100)
    s = given.slide("B4")
    assert s.pixel_size_um == 0.5 and s.meta["pixel_size_source"] == "given"
    assert s.tile_reader.max_field_um == 100
    assert hest.load(root=str(root), organ="breast+lung").slide_ids == ("B4", "C2")
    from flag_bench.errors import UserError

    with pytest.raises(UserError, match="no sample"):
        hest.load(root=str(root), organ="Lung")


@pytest.mark.slow
def test_hest_bench_two_folds_pooled_pcc_and_test_informed_panel(mini, tmp_path):
    task = layouts.write_hest_bench(mini, tmp_path / "bench" / "IDC", [(("C2", "C3"), ("B4",)), (("B4",), ("C2", "C3"))],
                                    genes=list(mini.genes[:40]))
    # her2st is legacy ST (200-um pitch); the task folder has no metadata, so give the pitch
    ds = hest_bench.load(root=str(tmp_path / "bench"), task="IDC", pitch_um=200)
    assert ds.default_split == "hest" and ds.meta["hest_folds"] == 2
    assert ds.patients == {"C2": "group1", "C3": "group1", "B4": "group0"}
    assert "HEST-Benchmark" in ds.meta["corpora"]
    res = runner.invoke(app, [*RUN, "--datasets", f"hest-bench:root={tmp_path / 'bench'},task=IDC,pitch_um=200", "--split", "hest",
                              "--panel", f"file:{task / 'var_50genes.json'}", "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    cells = [json.loads(p.read_text()) for p in (tmp_path / "r" / "cells").glob("*.json")]
    assert sorted({c["cell"]["fold"] for c in cells}) == ["split0", "split1"]
    for c in cells:
        assert "pcc_pooled" in c["scores"] and "pcc_mean" in c["scores"]
        assert c["panel"]["stats"]["test_informed"] is True
        assert c["panel"]["genes"] == list(mini.genes[:30])


def test_plain_panel_file_is_not_test_informed(mini, tmp_path):
    from flag_bench.datasets.panels import FilePanel

    genes = tmp_path / "genes.json"
    genes.write_text(json.dumps(list(mini.genes[:10])))
    panel = FilePanel(str(genes)).fit([], mini.genes, 5, train_slides=("C2",), dataset_version=mini.version)
    assert panel.genes == mini.genes[:5] and panel.stats["test_informed"] is False


def test_hestcore_cut_patches_run_at_the_default_112_um(tmp_path):
    """HEST cuts round(112 um / um-per-px) whole source pixels: half of all slides store a field a
    fraction of a pixel under 112 um. The default --patch-um 112 runs on them (one source pixel
    of tolerance, recorded in the protocol card); wider still fails in one line."""
    root = tmp_path / "hest"
    sizes = {"S1": 112 / 223.49, "S2": 112 / 224.31, "S3": 112 / 222.6}  # src 223, 224, 223 px
    for k, (sid, um) in enumerate(sizes.items()):
        slide = layouts.synthetic_slide(4, 3, 25, um_per_px=um, seed=k)
        layouts.write_hest_cut(root, sid, slide, patient=f"P{k}")
    ds = hest.load(root=str(root))
    s1 = ds.slide("S1")
    assert s1.tile_reader.max_field_um == pytest.approx(223 * sizes["S1"]) and s1.tile_reader.max_field_um < 111.76
    assert s1.tile_reader.field_tolerance_um == pytest.approx(sizes["S1"])
    assert s1.meta["patch_field_tolerance_um"] == pytest.approx(sizes["S1"])
    # a 112-um request reads the whole stored patch (what HEST-Benchmark feeds its encoders)
    with __import__("h5py").File(root / "patches" / "S1.h5", "r") as f:
        stored = f["img"][()][s1.tile_reader.rows]
    np.testing.assert_array_equal(s1.tiles(PatchSpec(112.0, 224)), stored)
    cells = layouts.run_ok(tmp_path / "r", "--datasets", f"hest:root={root}")
    for c in cells:
        assert c["protocol"]["patch_stored_um"] == pytest.approx(223 * sizes["S1"])
        assert c["protocol"]["patch_tolerance_um"] == pytest.approx(sizes["S1"])  # the narrowest slide's pixel
    res = runner.invoke(app, [*RUN, "--datasets", f"hest:root={root}", "--patch-um", "113",
                              "--results-dir", str(tmp_path / "r2")])
    text = res.output.strip()
    assert res.exit_code == 2 and len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert "at most 111.754 um" in text and "use --patch-um 112.255 or less" in text, text
    # patch_um= given in the spec is exact: no tolerance
    exact = hest.load(root=str(root), patch_um=111.75)
    assert exact.slide("S1").tile_reader.field_tolerance_um == 0.0
