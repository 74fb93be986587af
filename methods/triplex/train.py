"""TRIPLEX's training loop: epochs over shuffled training spots (the global stream re-encodes every
slide present in a batch, as the official training step), the fusion + distillation loss,
AdamW, ReduceLROnPlateau on the validation MSE and early stopping on the validation PCC (both on
the validation slide the harness carves from the training slides, never the test fold).

The shared loop (``common.training``) has no learning-rate schedule, hence this one; it reuses
its autocast and divergence check.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from flag_bench.methods.common.images import augment, normalise
from flag_bench.methods.common import training
from flag_bench.methods.triplex.inputs import Bank
from flag_bench.methods.triplex.nets import triplex_loss
from flag_bench.metrics.kernels import pearson_columns


@dataclass(frozen=True)
class Schedule:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    patience: int  # epochs without a better validation score before stopping
    plateau_patience: int
    plateau_factor: float
    monitor: str  # "pcc" (official) or "mse"
    alpha: float
    augment: bool
    amp: bool


def batch_inputs(net, bank: Bank, idx: torch.Tensor, dev, gen: torch.Generator | None):
    """-> (img, neighbour feats, mask, global tokens) for spots ``idx`` of the bank."""
    starts = torch.tensor([s[0] for s in bank.slides])
    slide_of = torch.searchsorted(starts, idx, right=True) - 1
    glob = None
    for s in slide_of.unique().tolist():
        st, n, cell, shape = bank.slides[s]
        tokens = net.encode_global(bank.feats[st:st + n].to(dev), cell.to(dev), shape)
        sel = (slide_of == s).to(dev)
        if glob is None:
            glob = tokens.new_zeros(len(idx), tokens.shape[1])
        glob[sel] = tokens[(idx.to(dev) - st)[sel]]
    img = bank.tiles[idx]
    if gen is not None:
        img = augment(img, gen)
    return normalise(img.to(dev)), bank.table[bank.rows[idx]].to(dev), bank.mask[idx].to(dev), glob


@torch.no_grad()
def predict_bank(net, bank: Bank, dev, chunk: int, amp: bool) -> np.ndarray:
    """Fusion predictions (N, G) float32; the global stream runs once per slide."""
    net.eval()
    out = []
    for st, n, cell, shape in bank.slides:
        with training.autocast(str(dev), amp):
            tokens = net.encode_global(bank.feats[st:st + n].to(dev), cell.to(dev), shape)
            for a in range(0, n, chunk):
                idx = torch.arange(st + a, st + min(n, a + chunk))
                img = normalise(bank.tiles[idx].to(dev))
                pred = net(img, bank.table[bank.rows[idx]].to(dev), bank.mask[idx].to(dev),
                           tokens[a:a + len(idx)], streams=False)[0]
                out.append(pred.float().cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, net.fc.out_features), np.float32)


def _targets(bank: Bank) -> torch.Tensor:
    if bank.targets is None:  # only a test bank comes without them
        raise ValueError("a training or validation bank needs targets")
    return bank.targets


def val_scores(net, bank: Bank, dev, amp: bool) -> tuple[float, float]:
    """(mean per-gene PCC, MSE) of the fusion output on the validation bank."""
    pred = predict_bank(net, bank, dev, 1024, amp)
    y = _targets(bank).numpy()
    r, valid = pearson_columns(y, pred)
    return (float(np.nanmean(r)) if valid.any() else 0.0), float(np.mean((pred - y) ** 2))


def _epoch(method, net, opt, bank: Bank, s: Schedule, dev, gen) -> tuple[float, dict]:
    net.train()
    perm = torch.randperm(len(bank.feats), generator=gen)
    total, seen = 0.0, 0
    logs: dict = {}
    for a in range(0, len(perm), s.batch_size):
        idx = perm[a:a + s.batch_size]
        inputs = batch_inputs(net, bank, idx, dev, gen if s.augment else None)
        with training.autocast(str(dev), s.amp):
            preds = net(*inputs)
        loss, logs = triplex_loss(preds, _targets(bank)[idx].to(dev), s.alpha)
        training.check_finite(loss, method.card.name, a)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
    return total / max(seen, 1), logs


def fit_loop(method, net, bank: Bank, val: Bank | None, s: Schedule, dev, gen) -> dict:
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=s.lr, weight_decay=s.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=s.plateau_factor,
                                                         patience=s.plateau_patience)
    t0 = time.perf_counter()
    best, best_state, best_epoch, bad, curve, done, stopped = -math.inf, None, None, 0, [], 0, False
    logs: dict = {}
    for epoch in method.track(range(s.epochs), s.epochs, "train"):
        loss, logs = _epoch(method, net, opt, bank, s, dev, gen)
        done = epoch + 1
        curve.append(round(loss, 5))
        if val is None:
            continue
        pcc, mse = val_scores(net, val, dev, s.amp)
        plateau.step(mse)
        score = pcc if s.monitor == "pcc" else -mse
        if score > best:
            best, best_epoch, bad, best_state = score, done, 0, copy.deepcopy(net.state_dict())
        else:
            bad += 1
            if s.patience and bad >= s.patience:
                stopped = True
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    step = max(1, len(curve) // 20)
    return {"epochs_run": done, "best_epoch": best_epoch, "best_val_score": None if best_state is None else best,
            "val_monitor": s.monitor if val is not None else None, "early_stopped": stopped,
            "final_lr": opt.param_groups[0]["lr"], "final_loss": curve[-1] if curve else None,
            "loss_curve": [(i + 1, curve[i]) for i in range(0, len(curve), step)],
            "last_loss_terms": logs, "train_seconds": round(time.perf_counter() - t0, 2)}
