"""`flag-bench data check` and `flag-bench embed`, and the bad-input errors of the readers through
the CLI: one line naming the file and the fix, exit 2, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import layouts
from flag_bench.cli import app
from flag_bench.datasets import her2st_mini

DATA = Path(__file__).parent / "data"
runner = CliRunner()


@pytest.fixture(scope="module")
def mini():
    return her2st_mini.load()


@pytest.fixture(scope="module")
def hest_root(mini, tmp_path_factory):
    return layouts.write_hest(mini, tmp_path_factory.mktemp("hest") / "hest", ["B4", "C2"], drop_patches=2)


def _tree(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_data_check_prints_the_resolution(hest_root):
    res = runner.invoke(app, ["data", "check", f"hest:root={hest_root}"])
    assert res.exit_code == 0, res.output
    out = res.output
    for fragment in ("slides 2", "patients 2", "estimated from spot spacing", "B4", "C2", "patches",
                     "2 spot(s) without a patch", "corpora HEST-1k, her2st", "genes 3000"):
        assert fragment in out, out


def test_data_check_mob(tmp_path):
    before = _tree(DATA / "mob")
    res = runner.invoke(app, ["data", "check", f"st:root={DATA / 'mob'}"])
    assert res.exit_code == 0 and "patients 2 (manifest)" in res.output and "problems: none" in res.output
    assert _tree(DATA / "mob") == before


def _one_line_error(args, *fragments, watch: Path | None = None):
    before = _tree(watch) if watch is not None else None
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert "Traceback" not in text and text.startswith("error:") and len(text.splitlines()) == 1, text
    for f in fragments:
        assert f in text, text
    if watch is not None:
        assert _tree(watch) == before, "a failed check wrote files"


def test_missing_patch_file(mini, tmp_path):
    root = layouts.write_hest(mini, tmp_path / "hest", ["C2"])
    (root / "patches" / "C2.h5").unlink()
    _one_line_error(["data", "check", f"hest:root={root}"], "patches/C2.h5", "does not exist", "ids=", watch=tmp_path)


def test_patch_barcodes_do_not_match(mini, tmp_path):
    root = layouts.write_hest(mini, tmp_path / "hest", ["B4", "C2"])
    shutil.copy(root / "patches" / "B4.h5", root / "patches" / "C2.h5")
    _one_line_error(["data", "check", f"hest:root={root}"], "C2.h5", "are not spots of", "matching", watch=tmp_path)


def test_spaceranger_without_positions(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(DATA / "visium_1.0.0", run)
    (run / "spatial" / "tissue_positions_list.csv").unlink()
    _one_line_error(["data", "check", f"spaceranger:path={run}"], "tissue_positions", str(run / "spatial"), watch=tmp_path)


def test_coordinates_outside_the_image(tmp_path):
    # the low-resolution image with full-resolution coordinates: the spots fall off the image
    run = tmp_path / "run"
    shutil.copytree(DATA / "visium_1.0.0", run)
    shutil.copy(run / "spatial" / "tissue_lowres_image.png", run / "small.png")
    _one_line_error(["data", "check", f"spaceranger:path={run},image=small.png"], "outside the 600x600 image",
                    "small.png", "full-resolution", watch=tmp_path)


def test_no_pixel_size_and_no_estimate(mini, tmp_path):
    root = layouts.write_hest(mini, tmp_path / "hest", ["C2"], pixel_size_field="unused")
    meta = json.loads((root / "metadata" / "C2.json").read_text())
    meta["st_technology"] = "Unknown platform"
    (root / "metadata" / "C2.json").write_text(json.dumps(meta))
    _one_line_error(["data", "check", f"hest:root={root}"], "C2.h5ad", "no pixel size", "pixel_size=", watch=tmp_path)


def test_unknown_key_and_patch_too_wide(hest_root, tmp_path):
    _one_line_error(["data", "check", f"hest:root={hest_root},organs=Breast"], "unknown parameter", "organ")
    _one_line_error(["embed", f"hest:root={hest_root}", "--encoder", "color-stats", "--patch-um", "200",
                     "--cache-dir", str(tmp_path / "c")], "--patch-um 200", "112")
    assert not (tmp_path / "c").exists()


def test_embed_fills_the_cache_the_grid_reads(hest_root, tmp_path):
    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.embed_cache import _MEMO, get_embeddings
    from flag_bench.datasets.encoders import ColorStats
    from flag_bench.datasets.readers import hest

    cache = tmp_path / "cache"
    res = runner.invoke(app, ["embed", f"hest:root={hest_root}", "--encoder", "color-stats", "--patch-px", "64",
                              "--cache-dir", str(cache), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "embedded 2 slide(s)" in res.output
    files = sorted((cache / "embeddings").glob("*.npy"))
    assert len(files) == 2
    ds = hest.load(root=str(hest_root))
    enc, patch = ColorStats(), PatchSpec(112.0, 64)
    for sid in ds.slide_ids:
        streamed = get_embeddings(ds, sid, enc, patch, cache_dir=str(cache))  # read from the file
        whole = enc.encode(ds.slide(sid).tiles(patch))
        np.testing.assert_array_equal(streamed, whole)
    _MEMO.clear()
    again = runner.invoke(app, ["embed", f"hest:root={hest_root}", "--encoder", "color-stats", "--patch-px", "64",
                                "--cache-dir", str(cache), "--no-progress"])
    assert again.exit_code == 0 and "2 already cached" in again.output
