"""The training loop shared by the diffusion-family methods.

AdamW, gradient accumulation with clipping after every micro-backward (as FLAG's code does), EMA,
a divergence check that fails the cell with the method and step named, a step budget (the unit
that keeps CPU runs deterministic), an optional wall-clock cap, and early stopping on a
validation score computed with the EMA weights.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from flag_bench.errors import CellFailure
from flag_bench.methods.diffusion.ema import EMA


@dataclass(frozen=True)
class LoopSettings:
    steps: int  # optimiser steps
    lr: float
    weight_decay: float = 0.0
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = False
    eval_every: int = 0  # optimiser steps between validations; 0 = never
    patience: int = 0  # validations without improvement before stopping; 0 = never stop early
    max_seconds: float | None = None  # wall-clock cap; makes the step count machine dependent


def autocast(device: str, enabled: bool):
    """bf16 autocast on CUDA when asked; a no-op elsewhere (CPU stays fp32)."""
    if enabled and str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_finite(loss: torch.Tensor, method: str, step: int) -> None:
    if not torch.isfinite(loss).all():
        raise CellFailure(
            f"method '{method}' diverged: loss is {float(loss.detach().float().mean())} at optimiser step {step}; "
            "lower lr or check the inputs"
        )


def train(method, model: nn.Module, micro_step: Callable[[int, int], tuple[torch.Tensor, dict]],
          settings: LoopSettings, validate: Callable[[nn.Module], float] | None = None,
          description: str = "train") -> tuple[nn.Module, dict]:
    """Run the loop; return (the EMA model to sample from, a summary for ``method.summary``).

    ``micro_step(step, micro)`` returns (loss, logs) for one micro-batch. ``validate(ema_model)``
    returns a score where higher is better (e.g. validation PCC, or minus MSE).
    """
    name = method.card.name
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    ema = EMA(model, settings.ema_decay, settings.ema_warmup)
    t0 = time.perf_counter()
    running, history, last_logs = None, [], {}
    best_score, best_state, best_step, bad, stopped_early, capped = -math.inf, None, None, 0, False, False
    n_evals, done = 0, 0
    model.train()
    for step in method.track(range(settings.steps), settings.steps, description):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(settings.grad_accum):
            loss, last_logs = micro_step(step, micro)
            check_finite(loss, name, step)
            (loss / settings.grad_accum).backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            total += float(loss.detach()) / settings.grad_accum
        opt.step()
        ema.update(model)
        done = step + 1
        running = total if running is None else 0.98 * running + 0.02 * total
        if done % max(1, settings.steps // 20) == 0:
            history.append((done, round(running, 5)))
        if validate is not None and settings.eval_every and done % settings.eval_every == 0:
            model.eval()
            score = float(validate(ema.model))
            model.train()
            n_evals += 1
            if score > best_score:
                best_score, best_step, bad = score, done, 0
                best_state = copy.deepcopy(ema.model.state_dict())
            else:
                bad += 1
                if settings.patience and bad >= settings.patience:
                    stopped_early = True
                    break
        if settings.max_seconds is not None and time.perf_counter() - t0 > settings.max_seconds:
            capped = True
            break
    if best_state is not None:
        ema.model.load_state_dict(best_state)
    summary = {
        "optimizer_steps": done, "grad_accum": settings.grad_accum, "lr": settings.lr,
        "final_loss": running, "loss_curve": history,
        "last_loss_terms": {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in last_logs.items()},
        "ema_decay": settings.ema_decay, "ema_warmup": settings.ema_warmup,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "validations": n_evals, "best_val_score": None if best_state is None else best_score,
        "best_val_step": best_step, "early_stopped": stopped_early, "time_capped": capped,
    }
    return ema.model, summary
