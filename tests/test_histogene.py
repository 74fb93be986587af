"""HisToGene: grid positions, the position-table error, windowing, determinism and memory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from flag_bench.errors import UserError
from flag_bench.methods.base import seed_everything
from flag_bench.methods.histogene.method import HisToGene, grid_positions

from test_bleep import image_views, synthetic_without_images


@pytest.fixture(scope="module")
def views():
    return image_views(validation=False)


def _fit(views, overrides=None, seed=0):
    seed_everything(seed)
    m = HisToGene(HisToGene.make_config("tiny", overrides), seed=seed, device="cpu")
    return m, m.fit(views.train).predict(views.test)


def test_grid_positions_are_rounded_pitch_units_from_zero():
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(4)), -1).reshape(-1, 2)
    xy = grid * 187.0 + [500.0, 1000.0] + np.random.default_rng(0).normal(0, 5, grid.shape)
    pos, step = grid_positions(xy, None)
    assert step == pytest.approx(187.0, rel=0.1)
    np.testing.assert_array_equal(pos, grid - grid.min(0))
    pos, step = grid_positions(xy, 374.0)
    assert step == 374.0 and pos[:, 0].max() == 3


def test_tiny_fit_predict_determinism_and_summary(views):
    m, preds = _fit(views)
    for p, s in zip(preds, views.test.slides):
        assert p.shape == (s.n_spots, views.test.n_genes) and p.dtype == np.float32 and np.isfinite(p).all()
    s = m.summary
    assert s["n_pos"] == max(64, s["train_grid_extent"] + 1 + m.config.pos_margin)
    assert s["token_dim"] == 8 * 8 * 3 and "lr" in s["deviations"] and s["optimizer_steps"] >= 3
    _, again = _fit(views)
    for a, b in zip(preds, again):
        np.testing.assert_array_equal(a, b)


def test_windows_cover_every_spot_once_and_match_when_there_is_no_attention_mixing(views):
    """With max_seq_len below the slide size, slides are cut into contiguous windows and every
    test spot is predicted exactly once."""
    m, preds = _fit(views, {"max_seq_len": 7})
    assert m.summary["windowed_slides"] == len(views.train.slides) and m.summary["longest_sequence"] <= 7
    for p, s in zip(preds, views.test.slides):
        assert p.shape[0] == s.n_spots and np.isfinite(p).all()
    from flag_bench.methods.common.windows import windows

    for s in views.test.slides:
        idx = np.concatenate(windows(s.coords_um, 1e12, 7))
        assert sorted(idx.tolist()) == list(range(s.n_spots))


def test_a_slide_beyond_the_position_table_is_a_one_line_error(views):
    with pytest.raises(UserError, match=r"method 'histogene': slide .* beyond the position table \(n_pos=2\); "
                                        r"set \[methods.histogene\] n_pos = \d+") as e:
        _fit(views, {"n_pos": 2})
    assert "\n" not in str(e.value)
    # a test slide larger than every training slide: caught at predict, same message
    m, _ = _fit(views, {"grid_step_um": 100.0})
    big = dataclasses.replace(views.test.slides[0], coords_um=views.test.slides[0].coords_um * 10)
    with pytest.raises(UserError, match="beyond the position table"):
        m.predict(dataclasses.replace(views.test, slides=(big,)))


def test_embedding_tokens_are_a_recorded_deviation(views):
    m, preds = _fit(views, {"tokens": "embeddings", "token_encoder": "color-stats"})
    assert "tokens" in m.summary["deviations"] and m.summary["token_dim"] == 90


def test_paper_preset_is_the_tutorial_model():
    c = HisToGene.make_config("paper")
    assert (c.patch_px, c.pixel_scale, c.dim, c.depth, c.heads, c.dim_head, c.mlp_dim, c.lr, c.epochs) == \
        (112, 1.0, 1024, 8, 16, 64, 2048, 1e-5, 100)
    from flag_bench.methods.histogene.method import HisToGeneNet

    net = HisToGeneNet(3 * 112 * 112, 785, 64, c)
    n_patch = sum(p.numel() for p in net.patch_embedding.parameters())
    assert n_patch == 37632 * 1024 + 1024  # 38.5 M, as the tutorial prints


@pytest.mark.slow
def test_small_stays_under_4gb_on_synthetic_g800():
    """Synthetic at G = 800 with a 1,200-spot slide (windowed at 1,024) under the small preset."""
    import psutil

    v = image_views(validation=False, panel_size=800, n_genes=3000, n_slides=3, spots_per_slide=1200, seed=5)
    seed_everything(0)
    cfg = HisToGene.make_config("small", {"epochs": 2})
    m = HisToGene(cfg, seed=0, device="cpu").fit(v.train)
    preds = m.predict(v.test)
    assert preds[0].shape == (1200, 800)
    assert m.summary["windowed_slides"] == 2 and m.summary["sequence_memory_mb"] < 4096
    assert psutil.Process().memory_info().rss < 4 * 2**30


def test_the_planner_refuses_histogene_without_images(tmp_path):
    from flag_bench.catalog import DATASETS
    from flag_bench.config import RunConfig
    from flag_bench.driver import Driver

    DATASETS.register("no-images-htg", synthetic_without_images)
    try:
        with pytest.raises(UserError, match=r"method 'histogene' needs tiles"):
            Driver(RunConfig(datasets=("no-images-htg:n_slides=3",), methods=("histogene",), genes=(10,),
                             encoder="color-stats", preset="tiny", device="cpu",
                             results_dir=str(tmp_path / "res"))).run()
    finally:
        DATASETS.unregister("no-images-htg")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_mixed_precision(views):
    seed_everything(0)
    m = HisToGene(HisToGene.make_config("tiny", {"amp": True}), seed=0, device="cuda").fit(views.train)
    assert all(np.isfinite(p).all() for p in m.predict(views.test))
