"""Image-only mode of every loader (`flag-bench predict`): spots, coordinates and images without
counts. Each loader reads its test fixture with the counts made unreadable (ignored), and with the
counts file removed where the format allows; a fold refuses to train on the result."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

import layouts
from flag_bench import resolve
from flag_bench.datasets import her2st_mini, synthetic
from flag_bench.datasets.base import PatchSpec
from flag_bench.datasets.fold import FoldBuilder, FoldSpec
from flag_bench.datasets.panels import HMHVG
from flag_bench.datasets.readers import h5ad, hest, hest_bench, legacy_st, spaceranger
from flag_bench.datasets.splits import Fold, make_split
from flag_bench.datasets.unlabelled import missing_needs, prediction_views
from flag_bench.errors import UserError
from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform

DATA = Path(__file__).parent / "data"
VISIUM = DATA / "visium_1.0.0"
LOWRES = "spatial/tissue_lowres_image.png"


@pytest.fixture(scope="module")
def mini():
    return her2st_mini.load()


def _image_only_ok(ds) -> None:
    """What every image-only dataset is: no counts served or held, images and spots kept."""
    assert ds.image_only and "counts" not in ds.capabilities and ds.genes == ()
    assert {"coords", "tiles", "embeddings"} <= ds.capabilities
    for s in ds.slides:
        assert s.counts.shape == (s.n_spots, 0) and s.n_spots == len(s.barcodes) == len(s.coords) > 0


def _garble(path: Path) -> None:
    """Make a counts file unreadable: a loader that reads it fails."""
    path.write_bytes(b"not a count matrix\n" * 4)


def _refuses_training(ds) -> None:
    ids = ds.slide_ids  # train on every slide, test on the first: any fold will do
    fold = Fold("all", train=ids, val=(), test=ids[:1])
    builder = FoldBuilder(ds, patch=PatchSpec(112, 32), encoder=None, device="cpu", cache_dir=None)
    with pytest.raises(UserError, match="image-only") as err:
        builder.build(FoldSpec(PanelSpec("hmhvg"), 10, fold, TargetTransform.LOG1P), HMHVG(), embeddings=False)
    assert "\n" not in str(err.value)


def _tissue_rows(folder: Path) -> list[list[str]]:
    rows = list(csv.reader(open(folder / "spatial" / "tissue_positions_list.csv")))
    return [r for r in rows if r[1] == "1"]


def test_spaceranger_keeps_the_tissue_spots_counts_ignored_or_absent(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(VISIUM, run)
    _garble(run / "filtered_feature_bc_matrix.h5")
    with pytest.raises(UserError, match="filtered_feature_bc_matrix.h5"):
        spaceranger.load(path=str(run), image=LOWRES)
    tissue = _tissue_rows(VISIUM)
    for state in ("garbled", "removed"):
        if state == "removed":
            (run / "filtered_feature_bc_matrix.h5").unlink()
        ds = spaceranger.load(path=str(run), image=LOWRES, image_only=True)
        _image_only_ok(ds)
        s = ds.slides[0]
        # every in-tissue spot of the positions file, in its order, at its full-resolution pixel
        assert list(s.barcodes) == [r[0] for r in tissue]
        np.testing.assert_array_equal(s.coords, [[float(r[5]), float(r[4])] for r in tissue])
        assert s.tiles(PatchSpec(112.0, 16)).shape == (len(tissue), 16, 16, 3)
    # the same pixel size and geometry as the full load, whose spots are a subset
    full = spaceranger.load(path=str(VISIUM), image=LOWRES)
    assert s.pixel_size_um == full.slides[0].pixel_size_um
    assert set(full.slides[0].barcodes) <= set(s.barcodes)
    _refuses_training(ds)


def test_resolve_memoises_the_two_modes_apart():
    spec = f"spaceranger:path={VISIUM},image={LOWRES}"
    full, only = resolve.dataset(spec), resolve.dataset(spec, image_only=True)
    assert not full.image_only and only.image_only and full.version != only.version
    assert resolve.dataset(spec, image_only=True) is only and resolve.dataset(spec) is full


def test_hest_counts_ignored_then_spots_from_the_patch_file(mini, tmp_path):
    root = layouts.write_hest(mini, tmp_path / "hest", ["C2", "C3"])
    s = mini.slide("C2")
    # counts that are not counts: the full loader refuses them, image-only mode never reads X
    layouts.write_h5ad_arrays(root / "st" / "C2.h5ad", np.full((s.n_spots, 3), np.nan), list(s.barcodes),
                              ["A", "B", "C"], s.coords)
    with pytest.raises(UserError, match="NaN"):
        hest.load(root=str(root))
    ds = hest.load(root=str(root), image_only=True)
    _image_only_ok(ds)
    got = ds.slide("C2")
    np.testing.assert_array_equal(got.barcodes, s.barcodes)
    np.testing.assert_allclose(got.coords, s.coords)
    np.testing.assert_array_equal(got.tiles(PatchSpec(100.0, 16), ), s.tiles(PatchSpec(100.0, 16)))
    # no st/ file at all: the patch file's barcodes and corners (+ half a patch) give the spots
    (root / "st" / "C2.h5ad").unlink()
    with pytest.raises(UserError, match="C2"):
        hest.load(root=str(root), ids="C2")
    ds = hest.load(root=str(root), ids="C2", image_only=True)
    _image_only_ok(ds)
    got = ds.slide("C2")
    order = {b: i for i, b in enumerate(s.barcodes)}
    idx = np.array([order[b] for b in got.barcodes])
    assert sorted(idx) == list(range(s.n_spots))
    # hestcore rounds a patch's corner to a whole pixel: a centre is exact to half a pixel
    assert np.abs(got.coords - s.coords[idx]).max() <= 0.5
    np.testing.assert_array_equal(got.tiles(PatchSpec(100.0, 16)), s.tiles(PatchSpec(100.0, 16))[idx])
    _refuses_training(ds)


def test_hest_bench_without_adata(mini, tmp_path):
    task = layouts.write_hest_bench(mini, tmp_path / "IDC", [(("C2",), ("C3",)), (("C3",), ("C2",))])
    s = mini.slide("C2")  # X that is not counts: refused by the full loader, never read here
    layouts.write_h5ad_arrays(task / "adata" / "C2.h5ad", np.full((s.n_spots, 2), 0.5), list(s.barcodes),
                              ["A", "B"], s.coords)
    with pytest.raises(UserError, match="C2.h5ad"):
        hest_bench.load(root=str(task))
    ds = hest_bench.load(root=str(task), image_only=True)
    _image_only_ok(ds)
    shutil.rmtree(task / "adata")
    ds = hest_bench.load(root=str(task), image_only=True)
    _image_only_ok(ds)
    assert set(ds.slide_ids) == {"C2", "C3"}
    assert all(set(ds.slide(s).barcodes) == set(mini.slide(s).barcodes) for s in ds.slide_ids)
    _refuses_training(ds)


def test_h5ad_with_empty_or_bad_x(mini, tmp_path):
    root = layouts.write_hest(mini, tmp_path / "hest", ["C2"])
    s = mini.slide("C2")
    empty = layouts.write_h5ad_arrays(tmp_path / "C2.h5ad", np.zeros((s.n_spots, 0)), list(s.barcodes), [], s.coords)
    with pytest.raises(UserError, match="share no gene"):
        h5ad.load(path=str(empty), patches=str(root / "patches" / "C2.h5"))
    for x in (np.zeros((s.n_spots, 0)), np.full((s.n_spots, 2), -1.5)):
        layouts.write_h5ad_arrays(empty, x, list(s.barcodes), [f"G{i}" for i in range(x.shape[1])], s.coords)
        ds = h5ad.load(path=str(empty), patches=str(root / "patches" / "C2.h5"), pixel_size=s.pixel_size_um,
                       image_only=True)
        _image_only_ok(ds)
        np.testing.assert_array_equal(ds.slides[0].barcodes, s.barcodes)
    _refuses_training(ds)


def test_legacy_st_without_count_tables(tmp_path):
    root = tmp_path / "mob"
    shutil.copytree(DATA / "mob", root)
    full = legacy_st.load(root=str(DATA / "mob"))
    for f in root.glob("*.tsv.gz"):
        _garble(f)
    with pytest.raises(UserError, match="MOB1"):
        legacy_st.load(root=str(root))
    ds = legacy_st.load(root=str(root), image_only=True)
    _image_only_ok(ds)
    for f in root.glob("*.tsv.gz"):
        f.unlink()
    for manifest in (True, False):  # sections found by the manifest, or by their spot tables
        if not manifest:
            (root / "manifest.csv").unlink()
        ds = legacy_st.load(root=str(root), image_only=True)
        _image_only_ok(ds)
        assert ds.slide_ids == full.slide_ids
        for sid in ds.slide_ids:
            np.testing.assert_array_equal(ds.slide(sid).barcodes, full.slide(sid).barcodes)
            np.testing.assert_array_equal(ds.slide(sid).coords, full.slide(sid).coords)
    _refuses_training(ds)


def test_her2st_mini_and_synthetic(mini):
    ds = her2st_mini.load(image_only=True)
    _image_only_ok(ds)
    assert ds.slide_ids == mini.slide_ids and ds.version != mini.version
    for a, b in zip(ds.slides, mini.slides):
        np.testing.assert_array_equal(a.barcodes, b.barcodes)
        np.testing.assert_array_equal(a.coords, b.coords)
    _refuses_training(ds)
    params = dict(n_slides=2, spots_per_slide=16, n_genes=8)
    syn, syn_only = synthetic.load(**params), synthetic.load(**params, image_only=True)
    _image_only_ok(syn_only)
    patch = PatchSpec(112.0, 8)
    np.testing.assert_array_equal(syn_only.slides[0].tiles(patch), syn.slides[0].tiles(patch))
    _refuses_training(syn_only)


def test_prediction_views_match_the_cell_test_fold(mini):
    """The TestData a saved model gets is the one its cell's test fold held: same spots, same
    coordinates, same embeddings through the same cache, the model's genes in its order."""
    from flag_bench.datasets.encoders import ColorStats

    patch = PatchSpec(112.0, 32)
    fold = make_split(mini, SplitSpec("slide")).folds[0]
    views = FoldBuilder(mini, patch=patch, encoder=ColorStats(), device="cpu", cache_dir=None).build(
        FoldSpec(PanelSpec("hmhvg"), 10, fold, TargetTransform.LOG1P), HMHVG(), embeddings=True)
    ds = her2st_mini.load(image_only=True)
    genes = tuple(reversed(views.test.genes))
    test = prediction_views(ds, genes=genes, target_transform="log1p", patch=patch, encoder=ColorStats(),
                            embeddings=True, device="cpu", cache_dir=None, slide_ids=fold.test)
    assert test.genes == genes and test.target_transform == "log1p" and test.gene_ids == ("",) * len(genes)
    for a, b in zip(test.slides, views.test.slides):
        assert a.slide_id == b.slide_id
        np.testing.assert_array_equal(a.barcodes, b.barcodes)
        np.testing.assert_array_equal(a.coords_um, b.coords_um)
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
        np.testing.assert_array_equal(a.image.tiles(), b.image.tiles())
    every = prediction_views(ds, genes=genes, target_transform="log1p", patch=patch, encoder=None,
                             embeddings=False, device="cpu", cache_dir=None)
    assert [s.slide_id for s in every.slides] == list(ds.slide_ids) and every.slides[0].embeddings is None


def test_needs_at_prediction_time():
    """Training counts (FLAG's gene tokens) are the model's; images are the dataset's to serve."""
    spec = f"spaceranger:path={VISIUM}"
    no_image = resolve.dataset(spec, image_only=True)
    assert missing_needs(no_image, frozenset({"embeddings", "coords", "counts"})) == ("embeddings",)
    assert missing_needs(no_image, frozenset({"coords", "counts"})) == ()
