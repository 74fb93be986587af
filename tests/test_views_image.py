"""Image access from the views: tiles at any patch spec, neighbourhood regions, embeddings by a
method-chosen encoder through the cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flag_bench.datasets import embed_cache, her2st_mini, synthetic
from flag_bench.datasets.base import PatchSpec
from flag_bench.datasets.embed_cache import SlideRef
from flag_bench.datasets.encoders import ColorStats
from flag_bench.datasets.image import BACKGROUND, EncoderSource, SlideImage
from flag_bench.errors import UserError


def _image(ds, sid, **kw) -> SlideImage:
    s = ds.slide(sid)
    return SlideImage(ref=SlideRef.of(ds, sid), reader=s.tile_reader, coords_um=s.coords_um,
                      patch=PatchSpec(112, 32), encoders=EncoderSource(ColorStats()), **kw)


@pytest.fixture(scope="module")
def her2st():
    return her2st_mini.load()


@pytest.fixture(scope="module")
def syn():
    return synthetic.load(n_slides=2, spots_per_slide=30, n_genes=20, seed=4)


def test_tiles_default_to_the_protocol_patch_and_take_another(syn):
    img = _image(syn, "S02")
    np.testing.assert_array_equal(img.tiles(), syn.slide("S02").tiles(PatchSpec(112, 32)))
    assert img.tiles(PatchSpec(60, 20)).shape == (30, 20, 20, 3)


def test_reader_reads_a_subset_of_spots_identically(her2st, syn):
    for ds, sid in ((her2st, "C4"), (syn, "S01")):
        reader, spots = ds.slide(sid).tile_reader, np.array([1, 4, 7])
        full = reader(sid, PatchSpec(56, 24))
        np.testing.assert_array_equal(reader(sid, PatchSpec(56, 24), spots), full[spots])
        assert reader(sid, PatchSpec(56, 24), np.array([], dtype=np.int64)).shape == (0, 24, 24, 3)


def test_region_around_a_spot_is_its_patch_on_her2st(her2st):
    """her2st-mini stores one 112-um patch per spot: a region is composed from the spots'
    patches at their true positions, and the gaps between them are background."""
    img = _image(her2st, "C3")
    i = 10
    tile = her2st.slide("C3").tiles(PatchSpec(112, 40))[i]
    np.testing.assert_array_equal(img.region(i, 112.0, 40), tile)
    np.testing.assert_array_equal(img.region(tuple(img.coords_um[i]), 112.0, 40), tile)
    wide = img.region(i, 600.0, 120)
    assert wide.shape == (120, 120, 3) and wide.dtype == np.uint8
    # spot pitch ~187 um > 112-um patches: part of a wide region is bare background
    blank = (wide == BACKGROUND).all(axis=2).mean()
    assert 0.2 < blank < 0.95
    # the centre of the wide region is the spot's own patch, resampled
    c = wide[55:65, 55:65].astype(float)
    assert np.abs(c - her2st.slide("C3").tiles(PatchSpec(50, 10))[i].astype(float)).mean() < 25
    far = img.region((-5000.0, -5000.0), 100.0, 16)
    assert (far == BACKGROUND).all()


def test_region_on_synthetic_is_a_mosaic_of_spot_renderings(syn):
    """Synthetic tiles render at any size: each spot's patch spans twice the spot pitch, so the
    nearest-spot mosaic leaves no gap inside the tissue."""
    img = _image(syn, "S01")
    field = img._field_um()
    assert field == pytest.approx(200.0)  # twice the 100-um pitch
    i = 12
    # 32 um around a spot at 2 um/px: the centre of the spot's own 100-px rendering
    tile = syn.slide("S01").tiles(PatchSpec(field, 100))[i]
    np.testing.assert_array_equal(img.region(i, 32.0, 16), tile[42:58, 42:58])
    mosaic = img.region(i, 400.0, 80)
    assert (mosaic != BACKGROUND).any(axis=2).mean() > 0.5
    np.testing.assert_array_equal(mosaic, img.region(i, 400.0, 80))  # deterministic


def test_region_errors_and_native_readers(syn):
    img = _image(syn, "S01")
    with pytest.raises(UserError, match="spots 0..29"):
        img.region(30, 100.0, 10)
    with pytest.raises(UserError, match="spot index or"):
        img.region((1.0, 2.0, 3.0), 100.0, 10)
    with pytest.raises(UserError, match="positive"):
        img.region(0, 0.0, 10)

    class WholeImage:
        def __call__(self, slide_id, patch, spots=None):
            raise AssertionError("a native reader is not asked for patches")

        def region(self, slide_id, center_um, size_um, px):
            return np.full((px, px, 3), 7, np.uint8)

    native = dataclasses.replace(img, reader=WholeImage())
    assert (native.region(3, 100.0, 8) == 7).all()


def test_embeddings_by_name_through_the_cache(syn, tmp_path):
    embed_cache.clear_memo()
    img = _image(syn, "S02", cache_dir=str(tmp_path))
    a = img.embeddings("color-stats")
    b = embed_cache.get_embeddings(syn, "S02", ColorStats(), PatchSpec(112, 32), cache_dir=tmp_path)
    assert a is b and not a.flags.writeable
    assert img.embeddings("color-stats", PatchSpec(56, 16)).shape == (30, ColorStats.dim)
    with pytest.raises(UserError, match="encoder 'efficientnet-lite0' is not available"):
        img.embeddings("efficientnet-lite0")
    resolved = dataclasses.replace(img, encoders=EncoderSource(None, lambda name: ColorStats()))
    assert resolved.embeddings("anything") is a  # the resolver picks; the cache keys on the encoder
    embed_cache.clear_memo()
