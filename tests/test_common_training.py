"""The shared training loop: early stopping, divergence, with and without EMA."""

from __future__ import annotations

import pytest
import torch

from flag_bench.errors import CellFailure
from flag_bench.methods.common import training


class _Fake:
    class card:
        name = "fake-method"

    def track(self, it, total, desc):
        return iter(it)


def test_training_loop_reduces_a_loss_and_picks_the_best_validation():
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 32)[:, None]
    y = 3 * x + 1

    def micro(step, micro):
        return ((model(x) - y) ** 2).mean(), {}

    scores = iter([0.1, 0.5, 0.2, 0.1, 0.0])
    settings = training.LoopSettings(steps=50, lr=0.1, ema_decay=0.5, eval_every=10, patience=3)
    ema_model, summary = training.train(_Fake(), model, micro, settings, validate=lambda m: next(scores))
    assert summary["best_val_step"] == 20 and summary["early_stopped"] and summary["optimizer_steps"] == 50
    assert summary["final_loss"] < 5.0


def test_training_loop_fails_the_cell_on_nan_naming_method_and_step():
    model = torch.nn.Linear(1, 1)

    def micro(step, micro):
        loss = model(torch.ones(1, 1)).sum()
        return (loss * float("nan") if step == 3 else loss), {}

    with pytest.raises(CellFailure, match=r"fake-method.*step 3"):
        training.train(_Fake(), model, micro, training.LoopSettings(steps=10, lr=0.01))


def test_without_ema_the_trained_model_is_returned_with_its_best_validated_weights():
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 32)[:, None]
    y = 3 * x + 1
    seen = []

    def micro(step, micro):
        return ((model(x) - y) ** 2).mean(), {}

    def validate(m):
        seen.append((m is model, m.weight.detach().clone()))
        return [0.1, 0.9, 0.2][len(seen) - 1]

    settings = training.LoopSettings(steps=30, lr=0.05, ema_decay=None, eval_every=10)
    out, summary = training.train(_Fake(), model, micro, settings, validate=validate)
    assert out is model and not out.training
    assert all(is_model for is_model, _ in seen), "without EMA the live weights are validated"
    assert summary["best_val_step"] == 20 and summary["ema_decay"] is None and not summary["ema_warmup"]
    torch.testing.assert_close(out.weight, seen[1][1])  # the step-20 weights were restored


def test_with_ema_the_copy_is_validated_and_returned():
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    seen = []

    def micro(step, micro):
        return model(torch.ones(4, 1)).pow(2).mean(), {}

    settings = training.LoopSettings(steps=4, lr=0.01, ema_decay=0.5, eval_every=2)
    out, summary = training.train(_Fake(), model, micro, settings,
                                  validate=lambda m: seen.append(m is model) or 0.0)
    assert out is not model and seen == [False, False] and summary["validations"] == 2
