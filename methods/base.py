"""The Method contract every built-in and plugin method implements.

A method declares a frozen dataclass ``Config`` and named ``presets`` (``tiny`` for tests,
``small`` for CPU demos/CI, ``paper`` for the published hyper-parameters). The runner builds the
config from a preset plus user overrides (unknown keys are errors), seeds everything, then calls
``fit(train, val)`` and ``predict(test)``.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager, Iterable, Iterator, Mapping, TypeVar

import numpy as np

from flag_bench.errors import UserError
from flag_bench.hashing import short_hash

PRESETS = ("tiny", "small", "paper")

NEEDS = frozenset({"embeddings", "tiles", "coords", "slide_context", "counts"})


@dataclass(frozen=True)
class MethodCard:
    name: str
    description: str
    citation: str = ""
    code_url: str = ""
    needs: frozenset[str] = frozenset({"embeddings"})
    generative: bool = False
    licence: str = ""
    uses_validation: bool = False  # asks the runner for a validation slide carved from train
    default_run: bool = True  # part of `flag-bench run` without --methods
    extra: Mapping[str, Any] = field(default_factory=dict)


# hook(total, description) -> context manager yielding advance(n=1)
ProgressHook = Callable[[int, str], ContextManager[Callable[..., None]]]

Self = TypeVar("Self", bound="Method")


class Method(abc.ABC):
    card: ClassVar[MethodCard]
    Config: ClassVar[type]
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {"tiny": {}, "small": {}, "paper": {}}

    def __init__(self, config: Any, *, seed: int, device: str = "cpu"):
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.seed = int(seed)
        self.device = device
        self.progress_hook: ProgressHook | None = None
        # What the runner records next to the scores: epochs run, final loss, early-stop epoch,
        # which gene-embedding provider was used, ... A method that did not train says so here.
        self.summary: dict[str, Any] = {}

    # -- config ------------------------------------------------------------------------------
    @classmethod
    def make_config(cls, preset: str = "small", overrides: Mapping[str, Any] | None = None) -> Any:
        if preset not in cls.presets:
            raise UserError(
                f"method '{cls.card.name}' has no preset '{preset}' (presets: {', '.join(cls.presets)})"
            )
        values = dict(cls.presets[preset])
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        for key, value in (overrides or {}).items():
            if key not in fields:
                raise UserError(
                    f"method '{cls.card.name}' has no config key '{key}' "
                    f"(keys: {', '.join(sorted(fields))})"
                )
            values[key] = value
        try:
            return cls.Config(**values)
        except (TypeError, ValueError) as exc:
            raise UserError(f"method '{cls.card.name}' config is invalid: {exc}") from None

    @classmethod
    def config_hash(cls, config: Any) -> str:
        return short_hash({"method": cls.card.name, "config": dataclasses.asdict(config)})

    # -- contract ----------------------------------------------------------------------------
    @abc.abstractmethod
    def fit(self: Self, train, val=None) -> Self:
        """Fit on TrainData; ``val`` is a TrainData for early stopping when the card asks for it."""

    @abc.abstractmethod
    def predict(self, test) -> list[np.ndarray]:
        """One float32 (n_spots, n_genes) array per test slide, in target space."""

    def n_parameters(self) -> int | None:
        """Trainable parameter count, or None for non-parametric methods."""
        return None

    # -- helpers for subclasses --------------------------------------------------------------
    def track(self, iterable: Iterable, total: int, description: str) -> Iterator:
        """Iterate while advancing the runner's progress bar (if any)."""
        hook = self.progress_hook
        ctx = hook(total, f"{self.card.name}: {description}") if hook else contextlib.nullcontext(None)
        with ctx as advance:
            for item in iterable:
                yield item
                if advance is not None:
                    advance()


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' if available else 'cpu'; refuse a device that is not there."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
        idx = device.partition(":")[2]
        if idx and int(idx) >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0")
        return device
    if device == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError("--device mps: MPS is not available here; use --device cpu or auto")
        return device
    if device != "cpu":
        raise UserError(f"--device {device}: unknown device; use auto, cpu, cuda or cuda:N")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; ask torch for deterministic kernels."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
