"""The embedded her2st-mini dataset: contents, geometry, tiles, versioning, no outside reads."""

from __future__ import annotations

import inspect
import time

import numpy as np
import pytest
import scipy.sparse as sp

from flag_bench.datasets import her2st_mini
from flag_bench.datasets.base import PatchSpec
from flag_bench.errors import UserError


@pytest.fixture(scope="module")
def ds():
    return her2st_mini.load()


def test_slides_patients_and_genes(ds):
    assert ds.name == "her2st-mini"
    assert ds.slide_ids == ("B4", "C2", "C3", "C4", "C5", "C6")
    assert ds.patients == {"B4": "B", "C2": "C", "C3": "C", "C4": "C", "C5": "C", "C6": "C"}
    assert ds.default_split == "slide" and ds.default_test_slides == ("C2", "C3", "C4", "C5", "C6")
    assert len(ds.genes) >= 2000 and len(ds.genes) == len(set(ds.genes)) == len(ds.gene_ids)
    assert all(isinstance(g, str) for g in ds.genes)
    assert not any(g.upper().startswith(("MT-", "RPS", "RPL")) for g in ds.genes)
    assert sum(i.startswith("ENSG") for i in ds.gene_ids) > 0.9 * len(ds.genes)
    assert "CC BY 4.0" in ds.licence and "Nat Commun" in ds.citation
    assert sum(s.n_spots for s in ds.slides) == 1193


def test_counts_coords_and_metadata(ds):
    for s in ds.slides:
        assert sp.isspmatrix_csr(s.counts) and s.counts.dtype == np.int32
        assert s.counts.shape == (s.n_spots, len(ds.genes)) and s.counts.data.min() >= 0
        # upstream has a few near-empty spots (array defects, kept as published); not more
        assert (np.asarray(s.counts.sum(axis=1)).ravel() < 10).sum() <= 2
        assert s.coords.shape == (s.n_spots, 2) and s.coords.dtype == np.float64
        w, h = s.meta["image_size"]
        assert (s.coords >= 0).all() and (s.coords[:, 0] < w).all() and (s.coords[:, 1] < h).all()
        assert 0.67 < s.pixel_size_um < 0.71 and s.spot_diameter_um == 100.0
        assert len(set(s.barcodes)) == s.n_spots
        xy = s.meta["array_xy"]
        assert list(s.barcodes) == [f"{x}x{y}" for x, y in xy]
        ann = s.meta["annotations"]
        assert ann.shape == (s.n_spots,) and ann.min() >= -1 and ann.max() <= 6
        assert (ann >= 0).mean() > 0.7
    # B4 is much shallower than patient C (the README's median UMIs: 648 vs 8.5k-12.4k)
    depth = {s.id: np.median(np.asarray(s.counts.sum(axis=1))) for s in ds.slides}
    assert depth["B4"] * 4 < min(depth[c] for c in ("C2", "C3", "C4", "C5", "C6"))


def test_version_stable_and_load_fast(ds):
    t0 = time.perf_counter()
    again = her2st_mini.load()
    assert time.perf_counter() - t0 < 2.0  # ~0.15 s on an idle machine
    assert again.version == ds.version and len(ds.version) == 12
    assert (again.slides[2].counts != ds.slides[2].counts).nnz == 0


def test_tiles_any_patch_spec_up_to_stored_field(ds):
    s = ds.slide("C3")
    t = s.tiles(PatchSpec(112, 224))
    assert t.shape == (s.n_spots, 224, 224, 3) and t.dtype == np.uint8
    assert 60 < t.mean() < 250 and t.std() > 10  # tissue, not blank or black
    small = s.tiles(PatchSpec(56, 32))
    assert small.shape == (s.n_spots, 32, 32, 3)
    assert np.array_equal(s.tiles(PatchSpec(56, 32)), small)  # deterministic
    with pytest.raises(UserError, match="112"):
        s.tiles(PatchSpec(224, 224))


def test_patch_crop_matches_larger_field(ds):
    """A 56-um request is the centre of the 112-um patch, not a rescaled copy of it."""
    s = ds.slide("C2")
    big = s.tiles(PatchSpec(112, 128)).astype(np.float32)
    half = s.tiles(PatchSpec(56, 64)).astype(np.float32)
    centre = big[:, 32:96, 32:96]
    whole = big[:, ::2, ::2]
    assert np.abs(centre - half).mean() < np.abs(whole - half).mean()


def test_loader_reads_only_package_data():
    src = inspect.getsource(her2st_mini)
    assert "/work/" not in src and "shared" not in src
    assert her2st_mini.DATA_FILE.parent.name == "data"
    assert her2st_mini.DATA_FILE.parent.parent.name == "datasets"


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="missing"):
        her2st_mini.load(tmp_path / "nope.h5")
