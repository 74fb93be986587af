"""`flag-bench predict`: a saved model applied to slides without counts (the Space Ranger fixture
with its matrix ignored or removed) writes an h5ad that anndata reads and scanpy plots, with the
model's panel genes in order, and a PNG of the predicted maps."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flag_bench.cli import app
from flag_bench.errors import UserError

DATA = Path(__file__).parent / "data"
VISIUM = DATA / "visium_1.0.0"
LOWRES = "spatial/tissue_lowres_image.png"
PX = 32  # a small protocol patch keeps encoding cheap; the model carries it
N_GENES = 12


def _tissue(folder: Path) -> list[list[str]]:
    return [r for r in csv.reader(open(folder / "spatial" / "tissue_positions_list.csv")) if r[1] == "1"]


def _spec(folder: Path, image: bool = True) -> str:
    return f"spaceranger:path={folder}" + (f",image={LOWRES}" if image else "")


@pytest.fixture(scope="module")
def fitted():
    """ridge fitted on her2st-mini's patient C (the patient split's first fold), with the views of
    its test fold and the ModelInfo save_model would write for it."""
    from flag_bench.catalog import METHODS
    from flag_bench.datasets import her2st_mini
    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.encoders import ColorStats
    from flag_bench.datasets.fold import FoldBuilder, FoldSpec
    from flag_bench.datasets.panels import HMHVG
    from flag_bench.datasets.splits import make_split
    from flag_bench.models import ModelInfo
    from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform

    ds = her2st_mini.load()
    patch = PatchSpec(112.0, PX)
    fold = make_split(ds, SplitSpec("patient")).folds[0]
    views = FoldBuilder(ds, patch=patch, encoder=ColorStats(), device="cpu", cache_dir=None).build(
        FoldSpec(PanelSpec("hmhvg"), N_GENES, fold, TargetTransform.LOG1P), HMHVG(), embeddings=True)
    cls = METHODS.get("ridge")
    method = cls(cls.make_config("tiny"), seed=0, device="cpu").fit(views.train)
    info = ModelInfo(method="ridge", cell_id="0123456789abcdef-test", genes=tuple(views.test.genes),
                     target_transform="log1p", encoder="color-stats", encoder_info={}, patch_um=patch.size_um,
                     patch_px=patch.size_px, needs=frozenset(cls.card.needs),
                     trained_on={"dataset": "her2st-mini", "train_slides": list(fold.train)})
    return method, info, views


def _predict(fitted, tmp_path: Path, spec: str, name: str = "pred.h5ad", **kw):
    from flag_bench.predict import run_predict

    method, info, _ = fitted
    return run_predict(method, info, dataset_spec=spec, output=tmp_path / name, device="cpu", **kw)


def _is_png(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
        return im.format == "PNG"


@pytest.mark.slow
def test_spaceranger_without_counts_gives_a_valid_h5ad_scanpy_plots(fitted, tmp_path):
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    _, info, _ = fitted
    run = tmp_path / "run"
    shutil.copytree(VISIUM, run)
    written = _predict(fitted, tmp_path, _spec(run))
    adata = ad.read_h5ad(written.h5ad)
    tissue = _tissue(VISIUM)
    assert list(adata.var_names) == list(info.genes)  # the model's panel, in its order
    assert adata.n_obs == len(tissue) == written.n_spots  # one row per in-tissue spot
    assert adata.X.dtype == np.float32 and np.isfinite(adata.X).all() and adata.X.std(axis=0).max() > 0
    assert list(adata.obs["barcode"]) == [r[0] for r in tissue] and set(adata.obs["slide"]) == {"run"}
    assert list(adata.obs_names[:2]) == [f"run:{r[0]}" for r in tissue[:2]]
    # full-resolution pixels, as the positions file gives them (x = column, y = row)
    np.testing.assert_array_equal(adata.obsm["spatial"], [[float(r[5]), float(r[4])] for r in tissue])
    meta = adata.uns["flag_bench"]
    assert meta["model_cell_id"] == info.cell_id and meta["method"] == "ridge" and meta["target_transform"] == "log1p"
    assert "log" in meta["values"] and meta["encoder"] == "color-stats" and meta["flag_bench_version"]
    lib = adata.uns["spatial"]["run"]
    assert lib["images"]["hires"].dtype == np.uint8 and lib["scalefactors"]["spot_diameter_fullres"] > 0
    gene = info.genes[0]
    sc.pl.spatial(adata, color=gene, show=False)  # over the H&E, spot size from the scale factors
    sc.pl.embedding(adata, basis="spatial", color=gene, show=False)
    sc.pl.spatial(adata, color=gene, spot_size=float(lib["scalefactors"]["spot_diameter_fullres"]), img_key=None,
                  show=False)
    assert written.png == tmp_path / "pred.png" and _is_png(written.png)
    assert len(written.genes_plotted) == min(4, len(info.genes)) and written.chosen
    # the count matrix removed: the same file, spot for spot
    (run / "filtered_feature_bc_matrix.h5").unlink()
    again = ad.read_h5ad(_predict(fitted, tmp_path, _spec(run), "again.h5ad").h5ad)
    np.testing.assert_array_equal(again.X, adata.X)
    np.testing.assert_array_equal(again.obsm["spatial"], adata.obsm["spatial"])


@pytest.mark.slow
def test_a_saved_model_sees_its_cell_test_fold(fitted, tmp_path):
    """On her2st-mini loaded image-only the test slides' predictions are the ones the cell made."""
    import anndata as ad

    from flag_bench.datasets import her2st_mini

    method, info, views = fitted
    written = _predict(fitted, tmp_path, "her2st-mini", genes_to_plot=[info.genes[2], info.genes[0]],
                       plot=tmp_path / "maps.png")
    adata = ad.read_h5ad(written.h5ad)
    assert list(adata.obs["slide"].unique()) == list(her2st_mini.load(image_only=True).slide_ids)
    for s, want in zip(views.test.slides, method.predict(views.test)):
        np.testing.assert_array_equal(adata[adata.obs["slide"] == s.slide_id].X, want)
    assert written.genes_plotted == (info.genes[2], info.genes[0]) and not written.chosen
    assert _is_png(tmp_path / "maps.png")
    # several slides: one scanpy library each
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    one = adata[adata.obs["slide"] == "C2"]
    sc.pl.spatial(one, library_id="C2", color=info.genes[0], show=False)


@pytest.mark.slow
def test_generative_model_predicts_the_mean_of_one_draw_pass(fitted, tmp_path):
    """A generative method is asked for its draws once; the file holds their mean, as a cell
    scores it."""
    import anndata as ad

    from flag_bench.methods.controls import MeanControl

    _, info, views = fitted

    class Drawing(MeanControl):
        calls = 0

        def predict(self, test):
            raise AssertionError("predict_samples serves a generative method's prediction")

        def predict_samples(self, test):
            type(self).calls += 1
            base = np.arange(test.n_genes, dtype=np.float32)
            return [np.stack([np.tile(base + k, (sl.n_spots, 1)) for k in range(3)]) for sl in test.slides]

    method = Drawing(MeanControl.make_config("tiny"), seed=0, device="cpu").fit(views.train)
    from flag_bench.predict import run_predict

    written = run_predict(method, info, dataset_spec=_spec(VISIUM), output=tmp_path / "gen.h5ad", device="cpu")
    x = ad.read_h5ad(written.h5ad).X
    assert Drawing.calls == 1
    np.testing.assert_array_equal(x, np.tile(np.arange(len(info.genes), dtype=np.float32) + 1, (x.shape[0], 1)))


def test_refusals_are_one_line(fitted, tmp_path):
    _, info, _ = fitted
    with pytest.raises(UserError, match="does not predict NOPE") as err:
        _predict(fitted, tmp_path, _spec(VISIUM), genes_to_plot=["NOPE"])
    assert info.genes[0] in str(err.value) and "\n" not in str(err.value)
    # ridge reads embeddings: a run without its image cannot serve them
    with pytest.raises(UserError, match="needs embeddings") as err:
        _predict(fitted, tmp_path, _spec(VISIUM, image=False))
    assert "image=" in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.h5ad")) and not list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_cli_run_save_models_then_predict(tmp_path):
    """The acceptance path: a tiny grid saves its models; predict on the Space Ranger fixture
    (counts removed) through the command line; one printed line per file written."""
    import anndata as ad

    results = tmp_path / "results"
    runner = CliRunner()
    res = runner.invoke(app, ["run", "--methods", "ridge", "--preset", "tiny", "--encoder", "color-stats",
                              "--device", "cpu", "--no-progress", "--genes", str(N_GENES), "--patch-px", str(PX),
                              "--split", "patient", "--folds", "0", "--save-models", "--results-dir", str(results)])
    assert res.exit_code == 0, res.output
    [path] = list((results / "cells").glob("*.json"))
    cell, cell_id = json.loads(path.read_text()), path.stem  # cells/<cell_id>.json
    run = tmp_path / "run"
    shutil.copytree(VISIUM, run)
    (run / "filtered_feature_bc_matrix.h5").unlink()
    out = tmp_path / "pred.h5ad"
    res = runner.invoke(app, ["predict", "--model", cell_id[:10], "--results-dir", str(results), "--datasets",
                              _spec(run), "--output", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert [line.split()[1] for line in res.output.splitlines() if line.startswith("wrote ")] == \
        [str(out), str(out.with_suffix(".png"))]
    adata = ad.read_h5ad(out)
    assert list(adata.var_names) == list(cell["panel"]["genes"]) and adata.n_obs == len(_tissue(VISIUM))
    assert _is_png(out.with_suffix(".png"))
    bad = runner.invoke(app, ["predict", "--model", cell_id, "--results-dir", str(results), "--datasets",
                              _spec(run), "--output", str(out), "--genes-to-plot", "NOT_A_GENE"])
    assert bad.exit_code == 2 and "NOT_A_GENE" in bad.output and "Traceback" not in bad.output
