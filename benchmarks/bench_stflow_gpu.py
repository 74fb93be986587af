"""STFlow on CUDA: mixed precision works end to end, and the ``paper`` model's GPU memory.

  python benchmarks/bench_stflow_gpu.py

1. fit + predict of the ``small`` preset (epochs cut) on a synthetic fold with device cuda and
   bf16 autocast (amp=True): finite, non-negative predictions.
2. Peak GPU memory of one training step (forward + backward) of the ``paper`` denoiser (UNI-width
   1,024-d features, G 50) on one item of N spots, fp32 and bf16, and of the 4-evaluation
   whole-slide sampling without gradients.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import torch

from flag_bench.methods.stflow import nets
from flag_bench.methods.stflow.method import STFlow


def _fake(n_slides: int, n: int, genes: int, seed: int):
    """Slides shaped like the harness's fold views (embeddings, um coordinates, targets), built
    without the dataset stack so the check needs only torch, numpy and scipy on the GPU machine."""
    rng = np.random.default_rng(seed)
    slides = []
    for i in range(n_slides):
        xy = np.stack(np.meshgrid(np.arange(int(n ** 0.5)), np.arange(int(n ** 0.5))), -1).reshape(-1, 2) * 100.0
        emb = rng.normal(size=(len(xy), 64)).astype(np.float32)
        y = np.log1p(rng.poisson(np.exp(emb[:, :genes] * 0.5 + np.sin(xy[:, :1] / 300)))).astype(np.float32)
        slides.append(SimpleNamespace(slide_id=f"s{i}", n_spots=len(xy), coords_um=xy, embeddings=emb, targets=y))
    return SimpleNamespace(slides=tuple(slides), n_genes=genes, target_transform="log1p")


def method_on_cuda() -> None:
    from flag_bench.methods.base import seed_everything

    train, val, test = _fake(3, 400, 20, 0), _fake(1, 400, 20, 1), _fake(1, 400, 20, 2)
    seed_everything(0)
    m = STFlow(STFlow.make_config("small", {"amp": True, "epochs": 5}), seed=0, device="cuda")
    t = time.perf_counter()
    preds = m.fit(train, val).predict(test)
    ok = all(np.isfinite(p).all() and (p >= 0).all() for p in preds)
    print(f"cuda + bf16 small: fit+predict {time.perf_counter() - t:.1f} s, finite and >= 0: {ok}, "
          f"val score {m.summary['best_val_score']:.3f}, steps {m.summary['optimizer_steps']}")


def paper_memory(n: int, amp: bool) -> None:
    c = STFlow.make_config("paper")
    torch.manual_seed(0)
    net = nets.Denoiser(1024, 50, c.hidden_dim, c.edge_dim, c.n_layers, c.n_heads, c.n_neighbors, c.activation,
                        c.dropout, c.attn_dropout, c.mlp_ratio, True).cuda()
    x, f = torch.rand(1, n, 50, device="cuda"), torch.randn(1, n, 1024, device="cuda")
    xy = torch.rand(1, n, 2, device="cuda") * 100 * n ** 0.5
    mask, t = torch.ones(1, n, dtype=torch.bool, device="cuda"), torch.rand(1, device="cuda")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cuda", enabled=False)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with ctx:
        loss = net(x, f, xy, t, mask).mean()
    loss.backward()
    train_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad(), ctx:
        g = net.graph(xy, mask)
        for _ in range(4):
            net(x, f, xy, t, mask, g)
    infer_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    print(f"paper denoiser, {n} spots, {'bf16' if amp else 'fp32'}: train step {train_mb:,.0f} MB, "
          f"4-NFE sampling {infer_mb:,.0f} MB")


if __name__ == "__main__":
    print(torch.cuda.get_device_name(0))
    method_on_cuda()
    for n in (5000, 20000):
        for amp in (False, True):
            paper_memory(n, amp)
