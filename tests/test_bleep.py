"""BLEEP: loss, heads, chunked retrieval, determinism, encoders and the one-line errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from flag_bench.errors import UserError
from flag_bench.methods.base import seed_everything
from flag_bench.methods.bleep import nets
from flag_bench.methods.bleep.method import Bleep
from flag_bench.methods.bleep.retrieval import retrieve, topk_cosine

from conftest import make_views


def image_views(validation: bool, panel_size: int = 10, **params):
    """Fold views of a small synthetic dataset with images (color-stats embeddings, 32 px tiles)."""
    from flag_bench.datasets import synthetic
    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.encoders import ColorStats
    from flag_bench.datasets.fold import FoldBuilder, FoldSpec
    from flag_bench.datasets.panels import HMHVG
    from flag_bench.datasets.splits import carve_validation, make_split
    from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform

    ds = synthetic.load(**{"n_slides": 4, "spots_per_slide": 40, "n_genes": 60, "seed": 3, **params})
    plan = make_split(ds, SplitSpec("slide"), allow_patient_overlap=True)
    fold = carve_validation(plan, plan.folds[0]) if validation else plan.folds[0]
    builder = FoldBuilder(ds, patch=PatchSpec(112, 32), encoder=ColorStats(), device="cpu", cache_dir=None)
    return builder.build(FoldSpec(PanelSpec("hmhvg"), panel_size, fold, TargetTransform.LOG1P), HMHVG(), embeddings=True)


def synthetic_without_images(**params):
    from flag_bench.datasets.synthetic import load

    ds = load(**params)
    slides = tuple(dataclasses.replace(s, tile_reader=None) for s in ds.slides)
    return dataclasses.replace(ds, name="no-images", slides=slides)


@pytest.fixture(scope="module")
def data():
    return make_views(n_train_slides=3, n_test_slides=1, n_spots=40, n_genes=8, emb_dim=12)


def _fit(data, overrides=None, seed=0, val=True):
    train, test, _ = data
    tr = dataclasses.replace(train, slides=train.slides[:2])
    va = dataclasses.replace(train, slides=train.slides[2:]) if val else None
    seed_everything(seed)
    m = Bleep(Bleep.make_config("tiny", overrides), seed=seed, device="cpu")
    return m, m.fit(tr, va).predict(test)


def test_soft_clip_loss_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    img, spot = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    tau = 0.7
    i, s = img.numpy().astype(np.float64), spot.numpy().astype(np.float64)

    def softmax(a):
        e = np.exp(a - a.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    logits = s @ i.T / tau
    t = softmax((i @ i.T + s @ s.T) / 2 / tau)
    ce = lambda a, b: -(b * np.log(softmax(a))).sum(1)  # noqa: E731
    want = ((ce(logits, t) + ce(logits.T, t.T)) / 2).mean()
    assert float(nets.soft_clip_loss(img, spot, tau)) == pytest.approx(want, rel=1e-5)


def test_projection_head_is_residual_with_layernorm():
    head = nets.ProjectionHead(7, 4, dropout=0.0).eval()
    x = torch.randn(3, 7)
    h = head.project(x)
    want = torch.nn.functional.layer_norm(h + head.fc(torch.nn.functional.gelu(h)), (4,),
                                          head.norm.weight, head.norm.bias)
    torch.testing.assert_close(head(x), want)


@pytest.mark.parametrize("method", ["simple", "average", "weighted"])
def test_chunked_retrieval_equals_brute_force(method):
    g = torch.Generator().manual_seed(1)
    keys, q, vals = torch.randn(503, 6, generator=g), torch.randn(37, 6, generator=g), torch.randn(503, 4, generator=g)
    k = 9
    cos = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(keys, dim=1).T
    idx = torch.sort(cos, dim=1, descending=True, stable=True).indices[:, : (1 if method == "simple" else k)]
    if method == "weighted":
        d2 = ((keys[idx] - q[:, None]) ** 2).sum(-1)
        w = torch.exp(-(d2 - d2.min(1, keepdim=True).values + 1))
        want = ((w / w.sum(1, keepdim=True))[..., None] * vals[idx]).sum(1)
    else:
        want = vals[idx].mean(1)
    for qc, bc in [(1024, 16384), (5, 17), (1, 1)]:
        got = retrieve(q, keys, vals, method=method, k=k, query_chunk=qc, bank_chunk=bc)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_topk_with_exact_ties_returns_distinct_tied_keys_repeatably():
    # identical expression rows give identical keys; which of them is retrieved cannot change a
    # prediction, but the choice must repeat
    keys = torch.ones(10, 2)
    for bc in (3, 10):
        s, idx = topk_cosine(torch.ones(1, 2), keys, 4, bank_chunk=bc)
        assert torch.allclose(s, torch.ones(1, 4)) and len(set(idx[0].tolist())) == 4
        assert torch.equal(idx, topk_cosine(torch.ones(1, 2), keys, 4, bank_chunk=bc)[1])


def test_bleep_tiny_fit_predict_and_determinism(data):
    m, preds = _fit(data)
    _, test, _ = data
    assert preds[0].shape == (test.slides[0].n_spots, test.n_genes) and preds[0].dtype == np.float32
    s = m.summary
    assert s["checkpoint"].startswith("lowest validation") and s["validations"] >= 1
    assert s["bank_spots"] == 120 and s["contrastive_batch"] == 16
    assert {"harmony", "image_encoder", "validation", "contrastive_batch"} <= set(s["deviations"])
    _, again = _fit(data)
    np.testing.assert_array_equal(preds[0], again[0])
    # retrieval averages training expression: predictions stay inside the bank's range
    train, _, _ = data
    y = np.concatenate([t.targets for t in train.slides])
    assert preds[0].min() >= y.min() - 1e-6 and preds[0].max() <= y.max() + 1e-6


def test_bleep_without_validation_keeps_the_last_weights(data):
    m, _ = _fit(data, val=False)
    assert m.summary["checkpoint"].startswith("last") and m.summary["bank_spots"] == 80


def test_grad_accumulation_is_recorded(data):
    m, _ = _fit(data, {"grad_accum": 2, "epochs": 4})
    assert m.summary["grad_accum"] == 2 and m.summary["effective_batch"] == 32


def test_missing_resnet_weights_is_a_one_line_error_before_training(data, tmp_path):
    with pytest.raises(UserError, match=r"method 'bleep'.*encoder_weights") as e:
        Bleep.make_config("paper", {"encoder_weights": str(tmp_path / "nope.pth")})
    assert "\n" not in str(e.value)
    m = Bleep(Bleep.make_config("paper"), seed=0, device="cpu")  # the preset names no file
    with pytest.raises(UserError, match=r"method 'bleep'.*no encoder_weights set"):
        m.fit(data[0])
    assert not hasattr(m, "net_")


def test_resnet50_loads_a_torchvision_layout_state_dict(tmp_path):
    torch.manual_seed(0)
    ref = nets.ResNet50()
    state = {**ref.state_dict(), "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    got = nets.load_resnet50(str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(got(x), ref.eval()(x))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="not a ResNet-50"):
        nets.load_resnet50(str(tmp_path / "bad.pth"))


def test_augmentation_is_dihedral_and_seeded():
    from flag_bench.methods.common import images

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    a = images.augment(x, torch.Generator().manual_seed(3))
    b = images.augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    for i in range(2):  # each output is one of the 8 symmetries of the input tile
        variants = [torch.rot90(t, r, dims=(-2, -1)) for t in (x[i], x[i].flip(-1)) for r in range(4)]
        assert any(torch.equal(a[i], v) for v in variants)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["efficientnet-lite0", "resnet50"])
def test_trained_encoders_run_on_tiles(encoder, tmp_path):
    weights = None
    if encoder == "resnet50":
        weights = str(tmp_path / "r50.pth")
        torch.save(nets.ResNet50().state_dict(), weights)
    views = image_views(validation=True)
    cfg = Bleep.make_config("tiny", {"image_encoder": encoder, "encoder_weights": weights, "tile_px": 32,
                                     "epochs": 1, "batch_size": 32})
    seed_everything(0)
    m = Bleep(cfg, seed=0, device="cpu").fit(views.train, views.val)
    preds = m.predict(views.test)
    assert all(np.isfinite(p).all() for p in preds)
    assert "tile" in m.summary["deviations"] and m.summary["optimizer_steps"] >= 1


def test_the_planner_refuses_bleep_on_a_dataset_without_images(tmp_path):
    from flag_bench.catalog import DATASETS
    from flag_bench.config import RunConfig
    from flag_bench.driver import Driver
    DATASETS.register("no-images-bleep", synthetic_without_images)
    try:
        with pytest.raises(UserError, match=r"method 'bleep' needs .*tiles"):
            Driver(RunConfig(datasets=("no-images-bleep:n_slides=3",), methods=("bleep",), genes=(10,),
                             encoder="color-stats", preset="tiny", device="cpu",
                             results_dir=str(tmp_path / "res"))).run()
    finally:
        DATASETS.unregister("no-images-bleep")
