"""FLAG family: alignment masking, variants, determinism, divergence handling (tiny presets)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from flag_bench.catalog import METHODS
from flag_bench.errors import CellFailure
from flag_bench.methods.base import seed_everything
from flag_bench.methods.flag.config import FLAG_SMALL, GRAPH_DIFFUSION_SMALL, FlagConfig
from flag_bench.methods.flag.method import Flag
from flag_bench.methods.flag.net import FlagNet
from flag_bench.methods.flag.objectives import alignment_loss, val_score
from flag_bench.methods.flag.variants import FlagPaper

from conftest import make_views

FLAG_NAMES = ["flag", "flag-paper", "flag-joint", "flag-node", "flag-no-gfm", "flag-no-graph", "flag-regression"]


@pytest.fixture(scope="module")
def data():
    train, test, truths = make_views(n_train_slides=3, n_test_slides=1, n_spots=36, n_genes=8, emb_dim=12)
    from flag_bench.datasets.views import TrainData

    # real symbols, so the default gene-embedding provider has targets for the alignment loss
    genes = ("ERBB2", "KRT19", "GAPDH", "ACTB", "MGP", "FN1", "COL1A1", "SCGB2A2")
    common = dict(genes=genes, gene_ids=train.gene_ids, target_transform="log1p", dataset="unit")
    test = dataclasses.replace(test, genes=genes)
    return TrainData(**common, slides=train.slides[:2]), TrainData(**common, slides=train.slides[2:]), test, truths


def _fit(name, data, overrides=None, seed=0):
    train, val, test, _ = data
    cls = METHODS.get(name)
    seed_everything(seed)
    m = cls(cls.make_config("tiny", overrides), seed=seed, device="cpu")
    m.fit(train, val)
    return m, m.predict(test)


def test_alignment_mask_excludes_absent_genes():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 5, 3, generator=g)
    target = z.clone()
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[:, 2] = False
    target[:, 2] = -z[:, 2]  # absent genes point the opposite way: they must not count
    assert float(alignment_loss(z, target, mask)) == pytest.approx(-1.0, abs=1e-6)
    assert float(alignment_loss(z, target, torch.ones_like(mask))) > -1.0 + 0.1


# name -> (graph_role, head, aligns, graph_mode at tiny, t_per at tiny, reads_cond_e at tiny, uses_alignment at tiny)
CAPABILITIES = {
    "flag": ("condition", "score", True, "cond", "spot", False, True),
    "flag-paper": ("condition", "score", True, "cond", "spot", True, True),
    "flag-no-gfm": ("condition", "score", True, "cond", "spot", False, False),
    "flag-no-graph": ("none", "score", True, "none", "spot", False, True),
    "flag-regression": ("condition", "regression", False, "cond", "spot", False, False),
    "flag-node": ("node", "score", False, "node", "window", True, False),
    "flag-joint": ("joint", "score", False, "joint", "window", True, False),
}


@pytest.mark.parametrize("name", FLAG_NAMES)
def test_variant_capabilities(name):
    cls = METHODS.get(name)
    m = cls(cls.make_config("tiny"), seed=0)
    got = (cls.graph_role, cls.head, cls.aligns, m.graph_mode, m.t_per, m.reads_cond_e, m.uses_alignment)
    assert got == CAPABILITIES[name]
    assert m.uses_graph is (cls.graph_role != "none")


def test_presets_are_the_variant_tables():
    """What `flag-joint --preset small` means is FLAG's small table with the graph-diffusion
    changes on top, and nothing else."""
    joint = METHODS.get("flag-joint").make_config("small")
    assert joint == FlagConfig(**{**FLAG_SMALL, **GRAPH_DIFFUSION_SMALL})
    assert (joint.graph_dim, joint.lr, joint.align_weight, joint.val_metric, joint.steps) == (48, 1e-3, 0.0, "mse", 800)
    paper = METHODS.get("flag-regression").make_config("paper")
    assert (paper.align_weight, paper.n_samples, paper.val_metric) == (0.0, 1, "pcc")


def test_val_score_uses_the_leaderboard_pearson():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 3)).astype(np.float32)
    y[:, 2] = 0.1  # a constant truth gene cannot be scored
    p = y + 0.1 * rng.normal(size=y.shape).astype(np.float32)
    p[:5] = np.nan  # spots of windows not drawn this time are ignored
    r0 = np.corrcoef(y[5:, 0], p[5:, 0])[0, 1]
    r1 = np.corrcoef(y[5:, 1], p[5:, 1])[0, 1]
    assert val_score([p], [y], "pcc") == pytest.approx((r0 + r1) / 2, rel=1e-5)
    p[:, 1] = 3.0  # a constant prediction of a varying gene scores 0, not "no score"
    assert val_score([p], [y], "pcc") == pytest.approx(r0 / 2, rel=1e-5)
    assert val_score([p[:, 2:]], [y[:, 2:]], "pcc") == -1.0
    assert val_score([p], [y], "mse") == pytest.approx(-np.mean((p[5:] - y[5:]) ** 2))


def test_every_variant_registered_with_distinct_cards():
    for name in FLAG_NAMES:
        cls = METHODS.get(name)
        assert cls.card.name == name
        assert cls.card.default_run is (name == "flag")
        assert {"tiny", "small", "paper"} <= set(cls.presets)
    assert FlagPaper.make_config("paper").use_cond_e_in_attn is True
    assert Flag.make_config("paper").use_cond_e_in_attn is False  # the released code's default
    assert METHODS.get("flag-no-gfm").make_config("paper").align_weight == 0.0
    paper = Flag.make_config("paper")
    assert (paper.depth, paper.hidden, paper.align_layer, paper.align_weight, paper.lr, paper.grad_accum,
            paper.sampling_steps, paper.n_samples, paper.sigma_max) == (12, 384, 8, 0.5, 3e-4, 16, 100, 8, 10.0)


@pytest.mark.parametrize("name", FLAG_NAMES)
def test_variant_fits_predicts_every_spot_and_is_deterministic(name, data):
    _, _, test, _ = data
    m, preds = _fit(name, data)
    assert len(preds) == len(test.slides)
    for p, s in zip(preds, test.slides):
        assert p.shape == (s.n_spots, test.n_genes) and p.dtype == np.float32
        assert np.isfinite(p).all() and (p >= 0).all()  # clipped at 0
    assert m.summary["graph_role"] == type(m).graph_role and m.summary["graph_mode"] == m.graph_mode
    assert m.summary["optimizer_steps"] > 0
    assert m.summary["validations"] > 0, "tiny presets validate on the validation slide"
    _, again = _fit(name, data)
    for a, b in zip(preds, again):
        np.testing.assert_array_equal(a, b)


def test_summary_records_protocol_choices(data):
    m, _ = _fit("flag-paper", data)
    s = m.summary
    assert s["use_cond_e_in_attn"] is True and s["clip_at_zero"] is True
    assert s["gene_embeddings"] and s["align_weight"] == 0.5
    # minus a mean cosine; its sign after 6 tiny steps depends on the seed streams, not the protocol
    assert "align" in s["last_loss_terms"] and -1.0 <= s["last_loss_terms"]["align"] <= 1.0
    assert "Heun" in s["sampler"] and s["n_samples"] == m.config.n_samples
    no_gfm, _ = _fit("flag-no-gfm", data)
    assert "align" not in no_gfm.summary["last_loss_terms"] and no_gfm.summary["gene_embeddings"] is None
    assert no_gfm.summary["align_weight"] == 0.0


def test_joint_loss_has_edge_and_consistency_terms(data):
    m, _ = _fit("flag-joint", data)
    assert {"score", "edge", "consistency"} <= set(m.summary["last_loss_terms"])


def test_regression_is_deterministic_across_sampling_seeds(data):
    m, p1 = _fit("flag-regression", data)
    m.seed = 123  # predict draws no noise: a different sampling seed changes nothing
    p2 = m.predict(data[2])
    np.testing.assert_array_equal(p1[0], p2[0])


def test_nan_loss_fails_the_cell_naming_method_and_step(data):
    train, val, test, _ = data
    from flag_bench.datasets.views import TrainData, TrainSlide

    s0 = train.slides[0]
    bad_targets = np.array(s0.targets)
    bad_targets[:] = np.nan
    fields = {f.name: getattr(s0, f.name) for f in dataclasses.fields(s0)}
    bad = TrainSlide(**{**fields, "targets": bad_targets})
    bad_train = TrainData(genes=train.genes, gene_ids=train.gene_ids, target_transform="log1p", dataset="unit",
                          slides=(bad,))
    m = Flag(Flag.make_config("tiny", {"standardize_targets": False}), seed=0, device="cpu")
    with pytest.raises(CellFailure, match=r"'flag' diverged.*step 0"):
        m.fit(bad_train, None)


def test_condition_only_graph_ignores_xt_and_cached_context_matches():
    """graph_input="cond": H_spatial = GraphEncoder(C_v, C_e); the sampler's reused per-window
    context must equal what a full forward computes at every step."""
    cfg = Flag.make_config("tiny")
    assert cfg.graph_input == "cond"
    torch.manual_seed(0)
    net = FlagNet("condition", 6, 5, cfg, None).eval()
    with torch.no_grad():  # give the zero-initialised adaLN/final layers weights so outputs move
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.1 * torch.randn(p.shape))
    g = torch.Generator().manual_seed(1)
    B, N = 2, 4
    cond_v, cond_e = torch.randn(B, N, 5, generator=g), torch.rand(B, N, N, 2, generator=g)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 3] = False
    x1, x2 = torch.randn(B, N, 6, generator=g), torch.randn(B, N, 6, generator=g)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        ctx = net.spot_context(cond_v, cond_e, mask)
        full, _, _ = net(x1, t, cond_v, cond_e, mask)
        cached, _, _ = net(x1, t, cond_v, cond_e, mask, ctx=ctx)
        torch.testing.assert_close(full, cached)
        other, _, _ = net(x2, t, cond_v, cond_e, mask)
        # the condition does not move with X_t; the score does
        torch.testing.assert_close(net.spot_context(cond_v, cond_e, mask), ctx)
        assert not torch.allclose(other, full)
        # per-spot times are accepted and differ from a shared time
        per_spot, _, _ = net(x1, torch.tensor([[0.3, 0.9, 0.3, 0.3], [0.8] * 4]), cond_v, cond_e, mask)
        assert not torch.allclose(per_spot[0, 1], full[0, 1]) and torch.allclose(per_spot[1], full[1])


def test_small_preset_switches_are_recorded(data):
    small = Flag.make_config("small")
    assert (small.graph_input, small.t_per) == ("cond", "spot")
    paper = Flag.make_config("paper")
    assert (paper.graph_input, paper.t_per, paper.max_gene_tokens) == ("x_t", "window", None)
    m, _ = _fit("flag", data)
    assert m.summary["graph_input"].startswith("cond") and m.summary["t_per"] == "spot"
    m, _ = _fit("flag", data, {"graph_input": "x_t", "t_per": "window"})
    assert m.summary["graph_input"] == "x_t" and m.summary["t_per"] == "window"


class _ConstantNet(torch.nn.Module):
    """Stands in for FlagNet: returns a fixed output and records what it was fed."""

    def __init__(self, value: float):
        super().__init__()
        self.value, self.seen = value, None

    def forward(self, x_t, t, cond_v, cond_e, mask, a_t=None, capture=False, ctx=None):
        self.seen = x_t
        return torch.full_like(x_t, self.value), None, None


@pytest.mark.parametrize("mode", ["raw", "over_sigma", "edm"])
def test_score_output_parameterisations(mode):
    # x0 ~ N(0, 1) per entry, so the exact score at noise sigma is -x_t / (1 + sigma^2): the "edm"
    # parameterisation must give it with a zero network output, and read x_t / sqrt(1 + sigma^2).
    m = Flag(Flag.make_config("tiny", {"score_output": mode}), seed=0)
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.05, 1.0, 9.0]).view(3, 1, 1)
    x_t = torch.randn(3, 4, 5, generator=g) * torch.sqrt(1 + sigma ** 2)
    mask = torch.ones(3, 4, dtype=torch.bool)
    net = _ConstantNet(0.0)
    s, _, _ = m._score(net, x_t, torch.zeros(3), sigma, None, None, mask)
    if mode == "edm":
        torch.testing.assert_close(s, -x_t / (1 + sigma ** 2))
        torch.testing.assert_close(net.seen, x_t / torch.sqrt(1 + sigma ** 2))
    else:
        assert torch.count_nonzero(s) == 0 and net.seen is x_t
    s, _, _ = m._score(_ConstantNet(1.0), x_t, torch.zeros(3), sigma, None, None, mask)
    expected = {"raw": torch.ones_like(x_t), "over_sigma": 1 / sigma.expand_as(x_t),
                "edm": -x_t / (1 + sigma ** 2) + 1 / (sigma * torch.sqrt(1 + sigma ** 2))}[mode]
    torch.testing.assert_close(s, expected)
