"""TRIPLEX on CUDA: (1) the method's fit/predict path with bf16 autocast on a small synthetic
fold; (2) peak GPU memory of one `paper`-size training step (random ResNet-18 weights, batch
128 x 224 px, 25 x 512 neighbour features, the global stream over the slides in the batch).

    python benchmarks/bench_triplex_gpu.py [--spots-per-slide 600] [--slides 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def method_on_cuda() -> None:
    import numpy as np
    from test_bleep import image_views

    from flag_bench.methods.base import seed_everything
    from flag_bench.methods.triplex.method import Triplex

    views = image_views(True)
    for amp in (False, True):
        seed_everything(0)
        m = Triplex(Triplex.make_config("tiny", {"epochs": 3, "amp": amp}), seed=0, device="cuda")
        pred = m.fit(views.train, views.val).predict(views.test)
        print(f"cuda fit/predict amp={amp}: finite={all(np.isfinite(p).all() for p in pred)} "
              f"epochs={m.summary['epochs_run']}")


def paper_step_memory(n_slides: int, spots: int, amp: bool) -> None:
    from flag_bench.methods.triplex import backbones
    from flag_bench.methods.triplex.method import Triplex
    from flag_bench.methods.triplex.model import TriplexNet
    from flag_bench.methods.triplex.nets import triplex_loss
    from flag_bench.methods.common import training

    cfg = Triplex.Config()  # paper preset = the defaults
    dev = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    net = TriplexNet(backbones.ResNet18(), 512, 250, cfg).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    b = 128
    side = int(spots ** 0.5) + 1
    cell = torch.arange(spots, device=dev)
    t0 = time.perf_counter()
    for _ in range(3):
        with training.autocast("cuda", amp):
            glob = torch.cat([net.encode_global(torch.randn(spots, 512, device=dev), cell, (side, side))[: b // n_slides + 1]
                              for _ in range(n_slides)])[:b]
            preds = net(torch.randn(b, 3, 224, 224, device=dev), torch.randn(b, 25, 512, device=dev),
                        torch.ones(b, 25, dtype=torch.bool, device=dev), glob)
        loss, _ = triplex_loss(preds, torch.rand(b, 250, device=dev), 0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    print(f"paper step: {n_slides} slides x {spots} spots in the batch, amp={amp}: peak "
          f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, {(time.perf_counter() - t0) / 3:.3f} s/step")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--spots-per-slide", type=int, default=600)
    a = ap.parse_args()
    try:
        method_on_cuda()
    except Exception as e:  # the harness's optional dependencies may be missing on a bare GPU box
        print(f"method path skipped: {type(e).__name__}: {e}")
    for amp in (False, True):
        for n, s in ((a.slides, a.spots_per_slide), (8, 4000)):
            paper_step_memory(n, s, amp)
