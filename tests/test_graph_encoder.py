"""FLAG graph encoder (flag-spec §3.1) and spot-graph helpers (§1.5, §2.2, §2.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flag_bench.methods.common.windows import windows
from flag_bench.methods.flag.edges import spot_pcc, static_edge_conditions
from flag_bench.methods.flag.graph_encoder import GraphEncoder, GraphEncoderConfig

G, DC = 12, 10


def make(mode1: bool, cond_e_in_attn: bool | None = None, edge_stream: bool | None = None, seed: int = 0):
    torch.manual_seed(seed)
    cfg = GraphEncoderConfig(
        n_genes=G, node_cond_dim=DC, d_model=16, n_layers=2, n_heads=4, dropout=0.1,
        ada_norm=mode1, use_cond_e_in_attn=mode1 if cond_e_in_attn is None else cond_e_in_attn,
        use_edge_stream=mode1 if edge_stream is None else edge_stream,
    )
    return GraphEncoder(cfg).eval()


def inputs(B=2, N=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, G, generator=g)
    t = torch.rand(B, generator=g)
    cv = torch.randn(B, N, DC, generator=g)
    ce = torch.rand(B, N, N, 2, generator=g)
    ce = 0.5 * (ce + ce.transpose(1, 2))
    a = torch.randn(B, N, N, 1, generator=g)
    mask = torch.ones(B, N, dtype=torch.bool)
    return x, t, cv, ce, mask, a


def perturb_nonzero_init(model: GraphEncoder, seed: int = 5) -> None:
    """adaLN heads and pools start at zero; give them weights so the tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0 and p.dim() >= 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("mode1", [True, False])
def test_shapes_and_finite(mode1):
    model = make(mode1)
    x, t, cv, ce, mask, a = inputs()
    node, edge = model(x, t, cv, ce, mask, a)
    assert node.shape == x.shape and torch.isfinite(node).all()
    if mode1:
        assert edge.shape == (2, 7, 7, 1) and torch.isfinite(edge).all()
    else:
        assert edge is None
    # gradients reach every parameter that the mode uses
    node.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("node_in"))


def test_mode2_ignores_t_and_mode1_uses_it():
    x, t, cv, ce, mask, a = inputs()
    flag = make(False)
    assert torch.equal(flag(x, t, cv, ce, mask)[0], flag(x, 1 - t, cv, ce, mask)[0])
    joint = make(True)
    perturb_nonzero_init(joint)
    assert not torch.allclose(joint(x, t, cv, ce, mask, a)[0], joint(x, 1 - t, cv, ce, mask, a)[0])


@pytest.mark.parametrize("mode1", [True, False])
def test_padding_does_not_change_real_spots(mode1):
    model = make(mode1)
    perturb_nonzero_init(model)
    x, t, cv, ce, _, a = inputs(B=1, N=5)
    node, edge = model(x, t, cv, ce, torch.ones(1, 5, dtype=torch.bool), a)
    P = 4  # padded spots with garbage content
    g = torch.Generator().manual_seed(9)
    xp = torch.cat([x, 100 * torch.randn(1, P, G, generator=g)], 1)
    cvp = torch.cat([cv, 100 * torch.randn(1, P, DC, generator=g)], 1)
    cep = torch.rand(1, 5 + P, 5 + P, 2, generator=g) * 50
    cep[:, :5, :5] = ce
    ap = torch.randn(1, 5 + P, 5 + P, 1, generator=g) * 50
    ap[:, :5, :5] = a
    maskp = torch.tensor([[True] * 5 + [False] * P])
    node_p, edge_p = model(xp, t, cvp, cep, maskp, ap)
    assert torch.isfinite(node_p).all()
    torch.testing.assert_close(node_p[:, :5], node, rtol=1e-5, atol=1e-5)
    assert torch.all(node_p[:, 5:] == 0)
    if mode1:
        torch.testing.assert_close(edge_p[:, :5, :5], edge, rtol=1e-5, atol=1e-5)
        assert torch.all(edge_p[:, 5:] == 0) and torch.all(edge_p[:, :, 5:] == 0)


@pytest.mark.parametrize("mode1", [True, False])
def test_permutation_equivariance(mode1):
    model = make(mode1)
    perturb_nonzero_init(model)
    x, t, cv, ce, mask, a = inputs(B=1, N=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    node, edge = model(x, t, cv, ce, mask, a)
    node_p, edge_p = model(x[:, perm], t, cv[:, perm], ce[:, perm][:, :, perm], mask, a[:, perm][:, :, perm])
    torch.testing.assert_close(node_p, node[:, perm], rtol=1e-5, atol=1e-5)
    if mode1:
        torch.testing.assert_close(edge_p, edge[:, perm][:, :, perm], rtol=1e-5, atol=1e-5)


def test_cond_e_matters_only_when_used_in_attention():
    x, t, cv, ce, mask, a = inputs()
    ce2 = torch.rand_like(ce)
    for mode1 in (True, False):
        off = make(mode1, cond_e_in_attn=False)
        torch.testing.assert_close(off(x, t, cv, ce, mask, a)[0], off(x, t, cv, ce2, mask, a)[0], rtol=0, atol=0)
        on = make(mode1, cond_e_in_attn=True)
        perturb_nonzero_init(on)
        assert not torch.allclose(on(x, t, cv, ce, mask, a)[0], on(x, t, cv, ce2, mask, a)[0])
    with pytest.raises(ValueError, match="cond_e"):
        make(False, cond_e_in_attn=True)(x, t, cv, None, mask)


def test_edge_stream_input_and_output():
    x, t, cv, ce, mask, a = inputs()
    joint = make(True)
    _, edge = joint(x, t, cv, ce, mask, a)
    torch.testing.assert_close(edge, edge.transpose(1, 2))
    assert torch.all(torch.diagonal(edge[..., 0], dim1=1, dim2=2) == 0)
    assert not torch.allclose(edge, joint(x, t, cv, ce, mask, torch.randn_like(a))[1])
    # without the edge stream A_t is ignored
    node_only = make(True, edge_stream=False)
    n1, e1 = node_only(x, t, cv, ce, mask, a)
    assert e1 is None
    torch.testing.assert_close(n1, node_only(x, t, cv, ce, mask, torch.randn_like(a))[0], rtol=0, atol=0)


def test_determinism_and_init():
    x, t, cv, ce, mask, a = inputs()
    m1, m2 = make(True, seed=3), make(True, seed=3)
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(p, q), n
    assert torch.equal(m1(x, t, cv, ce, mask, a)[0], m2(x, t, cv, ce, mask, a)[0])
    assert not torch.equal(make(True, seed=4).node_in[0].weight, m1.node_in[0].weight)
    blk = m1.blocks[0]
    assert torch.all(blk.norm_attn_x.head[1].weight == 0) and torch.all(blk.pool_v.weight == 0)
    assert float(blk.alpha.detach()) == pytest.approx(0.1) and float(blk.delta.detach()) == pytest.approx(0.1)
    # training-mode dropout is random but seeded
    m1.train()
    torch.manual_seed(0)
    y1 = m1(x, t, cv, ce, mask, a)[0]
    torch.manual_seed(0)
    assert torch.equal(y1, m1(x, t, cv, ce, mask, a)[0])


def test_fully_padded_window_and_dtype():
    model = make(True)
    x, t, cv, ce, mask, a = inputs()
    mask[1] = False
    node, edge = model(x, t, cv, ce, mask, a)
    assert torch.isfinite(node).all() and torch.all(node[1] == 0) and torch.all(edge[1] == 0)
    node64, _ = model.double()(x.double(), t.double(), cv.double(), ce.double(), mask, a.double())
    assert node64.dtype == torch.float64
    torch.testing.assert_close(node64.float(), node, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- edges
def test_static_edge_conditions():
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 500, (6, 2))
    v = rng.normal(size=(6, 5))
    ce = static_edge_conditions(u, v, sigma_um=100.0)
    assert ce.shape == (6, 6, 2) and ce.dtype == torch.float32
    d = np.linalg.norm(u[1] - u[4])
    assert float(ce[1, 4, 0]) == pytest.approx(np.exp(-d**2 / (2 * 100.0**2)), rel=1e-5)
    cos = v[2] @ v[3] / (np.linalg.norm(v[2]) * np.linalg.norm(v[3]))
    assert float(ce[2, 3, 1]) == pytest.approx(cos, rel=1e-5)
    torch.testing.assert_close(ce, ce.transpose(0, 1))
    assert torch.all(ce[torch.arange(6), torch.arange(6)] == 0)
    # a zero feature vector gives cosine 0, not NaN
    v[0] = 0
    assert torch.isfinite(static_edge_conditions(u, v)).all()


def test_spot_pcc_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 9))
    x[1, 2] = 3.0  # a constant spot: correlation 0, not NaN
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 5] = False
    p = spot_pcc(torch.tensor(x), mask)
    assert p.shape == (2, 6, 6, 1) and torch.isfinite(p).all()
    ref = np.corrcoef(x[0])
    np.fill_diagonal(ref, 0)
    np.testing.assert_allclose(p[0, ..., 0].numpy(), ref, atol=1e-10)
    ok = [0, 1, 3, 4]
    ref1 = np.corrcoef(x[1][ok])
    np.fill_diagonal(ref1, 0)
    np.testing.assert_allclose(p[1, ..., 0].numpy()[np.ix_(ok, ok)], ref1, atol=1e-10)
    assert torch.all(p[1, 2] == 0) and torch.all(p[1, 5] == 0) and torch.all(p[1, :, 5] == 0)
    assert spot_pcc(torch.tensor(x, dtype=torch.float16)).dtype == torch.float32


@pytest.mark.parametrize("seed", range(12))
def test_windows_partition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    coords = rng.uniform(-300, 3000, (n, 2))
    if seed % 3 == 0:  # lattice with spots exactly on tile borders
        coords = np.round(coords / 100) * 100
    size = float(rng.choice([100.0, 512.0, 1024.0]))
    cap = None if seed % 2 else int(rng.integers(1, 40))
    wins = windows(coords, size, cap)
    allidx = np.concatenate(wins)
    assert sorted(allidx.tolist()) == list(range(n))
    assert all(len(w) > 0 and w.dtype == np.int64 for w in wins)
    for w in wins:
        key = coords[w, 0] * size + coords[w, 1]
        assert np.all(np.diff(key) >= 0)
        if cap is None:  # one grid tile per window
            assert len(np.unique(np.floor(coords[w] / size), axis=0)) == 1
        else:
            assert len(w) <= cap
    # deterministic
    assert all(np.array_equal(a, b) for a, b in zip(wins, windows(coords, size, cap)))


def test_windows_tile_layout():
    coords = np.array([[10.0, 10.0], [1030.0, 5.0], [5.0, 1030.0], [20.0, 20.0], [1023.9, 0.0]])
    wins = windows(coords, 1024.0)
    assert [w.tolist() for w in wins] == [[0, 3, 4], [2], [1]]
    with pytest.raises(ValueError):
        windows(np.zeros((3, 3)), 10.0)
    assert windows(np.zeros((0, 2)), 10.0) == []
