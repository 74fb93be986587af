"""Space Ranger (the real 1.0.0 fixture and >= 2.0 runs written from her2st-mini) and plain h5ad,
each read and run end to end with mean and ridge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import layouts
from flag_bench.datasets import her2st_mini
from flag_bench.datasets.base import PatchSpec
from flag_bench.datasets.readers import h5ad, spaceranger

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def mini():
    return her2st_mini.load()


def _run_ok(tmp_path: Path, *args: str) -> list[dict]:
    return layouts.run_ok(tmp_path / "r", *args)


def test_spaceranger_1_0_fixture():
    ds = spaceranger.load(path=str(DATA / "visium_1.0.0"), image="spatial/tissue_lowres_image.png")
    s = ds.slides[0]
    assert s.n_spots == 100 and len(ds.genes) == 100 and s.counts.dtype == np.int32
    assert s.meta["pixel_size_source"] == "estimated from spot spacing"
    # the lattice's nearest neighbours are 100 um apart: the estimate must reproduce that
    from flag_bench.datasets.readers.validate import nn_spacing_px
    import csv

    rows = list(csv.reader(open(DATA / "visium_1.0.0" / "spatial" / "tissue_positions_list.csv")))
    lattice = np.array([[float(r[5]), float(r[4])] for r in rows])
    assert abs(nn_spacing_px(lattice) * s.pixel_size_um - 100.0) < 1e-6
    tiles = s.tiles(PatchSpec(112.0, 32))
    assert tiles.shape == (100, 32, 32, 3) and tiles.std() > 5  # real tissue, not a blank image
    no_image = spaceranger.load(path=str(DATA / "visium_1.0.0"))
    assert "embeddings" not in no_image.capabilities and no_image.slides[0].tile_reader is None


@pytest.mark.slow
def test_spaceranger_2_manifest_runs(mini, tmp_path):
    rows = ["sample_id,patient,path,image"]
    for sid in ("B4", "C2"):  # C2 without the header row, as Space Ranger 1.x writes it
        layouts.write_spaceranger2(mini, sid, tmp_path / sid / "outs", header=sid != "C2")
        rows.append(f"{sid},{mini.slide(sid).patient},{sid}/outs,{sid}/outs/image.tif")
    (tmp_path / "runs.csv").write_text("\n".join(rows) + "\n")
    ds = spaceranger.load(manifest=str(tmp_path / "runs.csv"))
    assert ds.patients == {"B4": "B", "C2": "C"} and ds.default_split == "patient"
    s, ref = ds.slide("C2"), mini.slide("C2")
    assert s.meta["pixel_size_source"] == "embedded"
    np.testing.assert_allclose(s.coords_um, ref.coords_um, rtol=1e-6, atol=1e-3)
    assert (s.counts != ref.counts).nnz == 0 and ds.genes == mini.genes
    cells = _run_ok(tmp_path, "--datasets", f"spaceranger:manifest={tmp_path / 'runs.csv'}", "--split", "patient")
    assert {c["cell"]["fold"] for c in cells} == {"test-patient=B", "test-patient=C"}


@pytest.mark.slow
def test_h5ad_with_patches_runs(mini, tmp_path):
    root = layouts.write_hest(mini, tmp_path / "hest", ["B4", "C2", "C3"])
    ds = h5ad.load(path=str(root / "st"), patches=str(root / "patches"), pixel_size=mini.slide("B4").pixel_size_um)
    assert ds.slide_ids == ("B4", "C2", "C3") and ds.slide("C3").meta["pixel_size_source"] == "given"
    # our own to_anndata files carry their pixel size and patient
    one = tmp_path / "C2.h5ad"
    mini.to_anndata("C2").write_h5ad(one)
    own = h5ad.load(path=str(one), patches=str(root / "patches" / "C2.h5"))
    assert own.slides[0].meta["pixel_size_source"] == "embedded" and own.patients == {"C2": "C"}
    _run_ok(tmp_path, "--datasets", f"h5ad:path={root / 'st'},patches={root / 'patches'},pixel_size=0.6878",
            "--split", "patient", "--patch-um", "100")


def test_pixel_size_estimate_matches_brute_force():
    from flag_bench.datasets.readers.validate import estimate_pixel_size

    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 1000, size=(200, 2))
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert estimate_pixel_size(pts, 100.0) == pytest.approx(100.0 / np.median(d.min(axis=1)), rel=1e-12)
    assert estimate_pixel_size(pts[:2], 100.0) is None


def test_spaceranger_toml_manifest_and_bad_rows(mini, tmp_path):
    from flag_bench.errors import UserError

    layouts.write_spaceranger2(mini, "C2", tmp_path / "C2" / "outs")
    (tmp_path / "runs.toml").write_text('[[sample]]\nsample_id = "C2"\npatient = "C"\npath = "C2/outs"\n'
                                        'image = "C2/outs/image.tif"\npixel_size = 2.75\n')
    ds = spaceranger.load(manifest=str(tmp_path / "runs.toml"))
    assert ds.slide("C2").pixel_size_um == 2.75 and ds.slide("C2").meta["pixel_size_source"] == "given"
    (tmp_path / "bad.csv").write_text("sample_id,patient,path,colour\nC2,C,C2/outs,red\n")
    with pytest.raises(UserError, match="unknown column"):
        spaceranger.load(manifest=str(tmp_path / "bad.csv"))
    with pytest.raises(UserError, match="either path="):
        spaceranger.load()


def test_hest_split_needs_a_hest_bench_dataset(mini):
    from flag_bench.datasets.splits import make_split
    from flag_bench.errors import UserError
    from flag_bench.spec import SplitSpec

    with pytest.raises(UserError, match="no HEST-Benchmark folds"):
        make_split(mini, SplitSpec.parse("hest"))
