"""The training loop shared by the torch methods.

AdamW, gradient accumulation with clipping after every micro-backward (as FLAG's code does), an
optional EMA of the weights, a divergence check that fails the cell with the method and step
named, a step budget (the unit that keeps CPU runs deterministic), an optional wall-clock cap,
and early stopping on a validation score (computed with the EMA weights when there are any).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from flag_bench.errors import CellFailure
from flag_bench.methods.common.ema import EMA

# micro_step(step, micro) -> (loss, logs) for one micro-batch
MicroStep = Callable[[int, int], tuple[torch.Tensor, dict]]
# validate(model) -> score, higher is better (e.g. validation PCC, or minus MSE)
Validate = Callable[[nn.Module], float]


@dataclass(frozen=True)
class LoopSettings:
    steps: int  # optimiser steps
    lr: float
    weight_decay: float = 0.0
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999  # None: no EMA, validate and return the trained weights
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


class _Selection:
    """Keeps the best validated weights; says when patience has run out."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_score = -math.inf
        self.best_state: dict[str, Any] | None = None
        self.best_step: int | None = None
        self.bad, self.n_evals = 0, 0

    def offer(self, score: float, step: int, model: nn.Module) -> bool:
        """Record a validation; True when training should stop."""
        self.n_evals += 1
        if score > self.best_score:
            self.best_score, self.best_step, self.bad = score, step, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad += 1
        return bool(self.patience and self.bad >= self.patience)


def _optimiser_step(model, params, opt, micro_step: MicroStep, settings: LoopSettings, step: int,
                    name: str) -> tuple[float, dict]:
    opt.zero_grad(set_to_none=True)
    total = 0.0
    logs: dict = {}  # the last micro-step's
    for micro in range(settings.grad_accum):
        loss, logs = micro_step(step, micro)
        check_finite(loss, name, step)
        (loss / settings.grad_accum).backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        total += float(loss.detach()) / settings.grad_accum
    opt.step()
    return total, logs


def train(method, model: nn.Module, micro_step: MicroStep, settings: LoopSettings,
          validate: Validate | None = None, description: str = "train") -> tuple[nn.Module, dict]:
    """Run the loop; return (the model to sample from: the EMA copy, or ``model`` itself without
    EMA, holding the best validated weights when there was validation; a summary)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    ema = EMA(model, settings.ema_decay, settings.ema_warmup) if settings.ema_decay is not None else None
    scored = ema.model if ema is not None else model
    sel = _Selection(settings.patience)
    t0 = time.perf_counter()
    last_logs: dict = {}
    running, history, stopped_early, capped, done = None, [], False, False, 0
    model.train()
    for step in method.track(range(settings.steps), settings.steps, description):
        total, last_logs = _optimiser_step(model, params, opt, micro_step, settings, step, method.card.name)
        if ema is not None:
            ema.update(model)
        done = step + 1
        running = total if running is None else 0.98 * running + 0.02 * total
        if done % max(1, settings.steps // 20) == 0:
            history.append((done, round(running, 5)))
        if validate is not None and settings.eval_every and done % settings.eval_every == 0:
            model.eval()
            score = float(validate(scored))
            model.train()
            if sel.offer(score, done, scored):
                stopped_early = True
                break
        if settings.max_seconds is not None and time.perf_counter() - t0 > settings.max_seconds:
            capped = True
            break
    if sel.best_state is not None:
        scored.load_state_dict(sel.best_state)
    scored.eval()
    summary = {
        "optimizer_steps": done, "grad_accum": settings.grad_accum, "lr": settings.lr,
        "final_loss": running, "loss_curve": history,
        "last_loss_terms": {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in last_logs.items()},
        "ema_decay": settings.ema_decay, "ema_warmup": settings.ema_warmup and ema is not None,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "validations": sel.n_evals, "best_val_score": None if sel.best_state is None else sel.best_score,
        "best_val_step": sel.best_step, "early_stopped": stopped_early, "time_capped": capped,
    }
    return scored, summary
