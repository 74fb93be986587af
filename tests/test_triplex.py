"""TRIPLEX: grid inference and APEG collisions, the neighbourhood mask, the loss, attention
masking, determinism, and the one-line errors."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from flag_bench.errors import UserError
from flag_bench.methods.base import seed_everything
from flag_bench.methods.triplex import geometry, nets
from flag_bench.methods.triplex.method import Triplex

from test_bleep import image_views


def square(rows: int, cols: int, pitch: float = 200.0) -> np.ndarray:
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([c.ravel() * pitch, r.ravel() * pitch], axis=1).astype(float)


def test_square_grid_has_no_collisions_and_pitch_steps():
    g = geometry.infer_grid(square(4, 6) + 500.0)
    assert g.shape == (4, 6) and g.collisions == 0
    assert g.step_um == pytest.approx((200.0, 200.0))


def test_hex_grid_steps_keep_rows_apart():
    # Visium-like: rows sqrt(3)/2 pitch apart, odd rows shifted by half a pitch
    pts = [((c + 0.5 * (r % 2)) * 100.0, r * 100.0 * np.sqrt(3) / 2) for r in range(6) for c in range(8)]
    g = geometry.infer_grid(np.array(pts))
    assert g.collisions == 0
    assert g.step_um == pytest.approx((50.0, 100.0 * np.sqrt(3) / 2))


def test_collisions_are_counted():
    c = square(3, 3)
    c = np.vstack([c, c[[0, 4]] + 20.0])  # two extra spots inside occupied cells
    g = geometry.infer_grid(c)
    assert g.collisions == 2 and len(g.cells) == 9
    # merged cells average their spots' features
    feats = np.arange(len(c), dtype=float)[:, None]
    means = geometry.cell_means(g, feats)
    assert means[g.cell_row[0], 0] == pytest.approx((0 + 9) / 2)


def test_neighbourhood_mask_excludes_off_slide_positions():
    c = square(3, 3)
    g = geometry.infer_grid(c)
    rows, mask = geometry.neighbourhood(g, radius=2)
    assert rows.shape == mask.shape == (9, 25)
    corner = 0  # (row 0, col 0): only offsets (0..2, 0..2) land on the slide
    expect = np.zeros((5, 5), bool)
    expect[2:, 2:] = True
    assert (mask[corner].reshape(5, 5) == expect).all()
    centre = 4
    expect = np.zeros((5, 5), bool)
    expect[1:4, 1:4] = True
    assert (mask[centre].reshape(5, 5) == expect).all()
    # every unmasked position points at the spot in that cell
    assert rows[centre, 12] == g.cell_row[centre]
    # a hole inside the tissue is masked too
    g2 = geometry.infer_grid(np.delete(c, 5, axis=0))
    _, m2 = geometry.neighbourhood(g2, radius=1)
    assert not m2[4].reshape(3, 3)[1, 2]


def test_smoothing_averages_the_3x3_block():
    c = square(3, 3)
    g = geometry.infer_grid(c)
    y = np.arange(9, dtype=np.float32)[:, None]
    s = geometry.smooth_targets(g, y)
    assert s[4, 0] == pytest.approx(4.0)
    assert s[0, 0] == pytest.approx(np.mean([0, 1, 3, 4]))


def test_key_mask_blocks_attention_to_masked_tokens():
    torch.manual_seed(0)
    att = nets.Attention(8, 2, 0.0, bias_res=3).eval()
    x = torch.randn(1, 9, 8)
    mask = torch.ones(1, 9, dtype=torch.bool)
    mask[0, :4] = False
    y = x.clone()
    y[:, :4] = torch.randn(1, 4, 8)  # only the masked keys differ
    assert torch.allclose(att(x, x, mask), att(x, y, mask), atol=1e-6)
    assert not torch.allclose(att(x, x, None), att(x, y, None), atol=1e-6)


def test_loss_matches_its_definition():
    g = torch.Generator().manual_seed(1)
    f, t, n, gl, y = (torch.rand(5, 3, generator=g) for _ in range(5))
    loss, _ = nets.triplex_loss((f, t, n, gl), y, 0.3)
    mse = lambda a, b: ((a - b) ** 2).mean()  # noqa: E731
    want = mse(f, y) + sum(0.7 * mse(s, y) + 0.3 * mse(f, s) for s in (t, n, gl))
    assert float(loss) == pytest.approx(float(want), rel=1e-6)


def test_apeg_reads_back_each_spot_cell():
    torch.manual_seed(0)
    apeg = nets.APEG(4)
    with torch.no_grad():
        apeg.proj.weight.zero_()
        apeg.proj.weight[:, 0, 1, 1] = 1.0  # identity kernel
        apeg.proj.bias.zero_()
    x = torch.randn(3, 4)
    cell = torch.tensor([0, 5, 5])  # two spots merged in cell 5
    out = apeg(x, cell, (2, 3))
    assert torch.allclose(out[0], x[0]) and torch.allclose(out[1], (x[1] + x[2]) / 2)


@pytest.fixture(scope="module")
def views():
    return image_views(True)


def _fit(views, seed=0, **over):
    seed_everything(seed)
    m = Triplex(Triplex.make_config("tiny", {"epochs": 3, **over}), seed=seed, device="cpu")
    return m, m.fit(views.train, views.val).predict(views.test)


def test_fit_predict_is_deterministic_and_records_geometry(views):
    m, a = _fit(views)
    _, b = _fit(views)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all((x >= 0).all() for x in a)  # clamp_outputs
    s = m.summary
    assert "grid_collisions" in s and all("neighbour_masked_fraction" in i for i in s["slides"])
    assert s["val_monitor"] == "pcc" and "validation" in s["deviations"]
    assert "neighbour_source" in s["deviations"] and "target_encoder" in s["deviations"]


def test_unclamped_and_smoothed_options_run(views):
    m, a = _fit(views, clamp_outputs=False, smooth_targets=True, target_norm="panel_cpm_ln")
    assert m.summary["deviations"]["clamp_outputs"].startswith("off")
    assert "not the harness target" in m.summary["output_space"]
    assert all(np.isfinite(x).all() for x in a)


@pytest.mark.slow
def test_region_neighbourhood_source_runs(views):
    m, a = _fit(views, neighbour_source="region", feature_encoder="color-stats", epochs=1)
    assert "neighbour_source" not in m.summary["deviations"]
    assert all(x.shape[1] == views.test.n_genes for x in a)


def test_missing_ciga_weights_is_one_line(tmp_path):
    cfg = Triplex.make_config("paper")
    with pytest.raises(UserError, match="tenpercent_resnet18") as e:
        Triplex.check_resources(cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(Exception, match="does not exist"):
        Triplex.make_config("paper", {"ciga_weights": str(tmp_path / "nope.ckpt")})


def test_ciga_checkpoint_loads_with_lightning_prefixes(tmp_path):
    from flag_bench.methods.triplex import backbones

    net = backbones.ResNet18()
    state = {f"model.resnet.{k}": v for k, v in net.state_dict().items()}
    state["model.resnet.fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "tenpercent_resnet18.ckpt"
    torch.save({"state_dict": state}, path)
    loaded = backbones.load_ciga_resnet18(str(path))
    assert torch.equal(loaded.conv1.weight, net.conv1.weight)
    assert loaded(torch.zeros(1, 3, 224, 224)).shape == (1, 512, 7, 7)
