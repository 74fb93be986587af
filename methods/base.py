"""The Method contract every built-in and plugin method implements.

A method declares a frozen dataclass ``Config`` and named ``presets`` (``tiny`` for tests,
``small`` for CPU demos/CI, ``paper`` for the published hyper-parameters; every built-in method
has all three, see tests/test_methods_config.py). The card's ``tuned_on`` says what each preset was
chosen on (one ``Tuning`` per preset, tests/test_tuned_on.py); a preset chosen by its scores on a
benchmark's test slides names them, and every leaderboard of that dataset flags its rows. The
runner builds the config from a preset plus user overrides (unknown keys and values of the wrong
type are one-line errors), seeds everything, then calls ``fit(train, val)`` and ``predict(test)``.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, ContextManager, Iterable, Iterator, Mapping, TypeVar, cast

import numpy as np

from flag_bench.errors import UserError
from flag_bench.hashing import short_hash
from flag_bench.methods.config_types import Mismatch, conform, describe_value, field_types, type_name
from flag_bench.roles import Role, parse_role
from flag_bench.spec import PRESETS  # defined once, by spec.Preset

if TYPE_CHECKING:
    from flag_bench.methods.common.state import MethodState

# What a method may ask the harness for. "region": an image region around a spot, larger than
# its patch (neighbourhood context, TRIPLEX-style).
NEEDS = frozenset({"embeddings", "tiles", "region", "coords", "slide_context", "counts"})


@dataclass(frozen=True)
class PretrainedWeights:
    """Weights a method itself loads (not the run's image encoder, which the run records), and
    what they were trained on, so a leaderboard can flag possible overlap with test data."""

    name: str
    trained_on: str
    source: str = ""  # URL or package the weights come from
    licence: str = ""


@dataclass(frozen=True)
class Tuning:
    """What one preset's values were chosen on, so a leaderboard can flag scores on the same data.

    ``on``: the slides or data looked at (free text); ``metric``: what was compared;
    ``test_slides``: the benchmark test slides whose scores informed the choice, each as
    "dataset:slide" (e.g. "her2st-mini:C2"): a board of that dataset flags the preset's rows as
    optimistic. Empty when no benchmark test score was looked at (or it is not known to have been)."""

    preset: str
    on: str
    metric: str
    test_slides: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.test_slides, str):
            raise ValueError(f"tuning of preset '{self.preset}': test_slides must be a tuple of 'dataset:slide' "
                             f"names, got the string {self.test_slides!r}")
        slides = tuple(self.test_slides)
        bad = [s for s in slides if not isinstance(s, str) or not all(s.partition(":")[::2])]
        if bad:
            raise ValueError(f"tuning of preset '{self.preset}': test slides must read 'dataset:slide', got "
                             f"{', '.join(map(repr, bad))}")
        object.__setattr__(self, "test_slides", slides)

    def slides_of(self, dataset: str) -> tuple[str, ...]:
        """The test slides of ``dataset`` (a dataset name, e.g. "her2st-mini") that informed the
        choice, without the dataset prefix."""
        prefix = f"{dataset}:"
        return tuple(s[len(prefix):] for s in self.test_slides if s.startswith(prefix))


def same_tuning(on: str, metric: str, note: str = "", presets: Iterable[str] = PRESETS) -> tuple[Tuning, ...]:
    """One identical Tuning per preset: for methods whose presets choose nothing (controls, oracles)."""
    return tuple(Tuning(p, on, metric, (), note) for p in presets)


# the tiny preset of every built-in: sized for tests, nothing compared
TINY_TUNING = Tuning("tiny", "not tuned: a test-speed preset",
                     "none (sized for test speed; its scores are not meaningful)")


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
    pretrained: tuple[PretrainedWeights, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # JSON-able values
    tuned_on: tuple[Tuning, ...] = ()  # what each preset was chosen on, one entry per preset
    # what the method is on a board (flag_bench/roles.py); recorded with every result. Declaring
    # oracle or truth_null gets a plugin no test truth: the registry grants that to built-ins only
    role: Role = Role.METHOD

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", parse_role(self.role, f"method card '{self.name}'"))
        if isinstance(self.extra, Mapping) and "role" in self.extra:
            raise ValueError(f"method card '{self.name}': declare the role in the card's role field "
                             f"(role={self.extra['role']!r}), not in extra['role']")
        if isinstance(self.needs, str):
            raise ValueError(f"method card '{self.name}': needs must be a set of names, got the string "
                             f"{self.needs!r}")
        needs = frozenset(self.needs)
        unknown = sorted(needs - NEEDS)
        if unknown:
            raise ValueError(f"method card '{self.name}': unknown needs {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(sorted(NEEDS))})")
        pretrained = tuple(self.pretrained)
        if not all(isinstance(p, PretrainedWeights) for p in pretrained):
            raise ValueError(f"method card '{self.name}': pretrained must hold PretrainedWeights entries")
        tuned_on = tuple(self.tuned_on)
        if not all(isinstance(t, Tuning) for t in tuned_on):
            raise ValueError(f"method card '{self.name}': tuned_on must hold Tuning entries")
        presets = [t.preset for t in tuned_on]
        twice = sorted({p for p in presets if presets.count(p) > 1})
        if twice:
            raise ValueError(f"method card '{self.name}': tuned_on has more than one entry for preset "
                             f"{', '.join(map(repr, twice))}")
        object.__setattr__(self, "needs", needs)
        object.__setattr__(self, "pretrained", pretrained)
        object.__setattr__(self, "tuned_on", tuned_on)

    def tuning(self, preset: str) -> Tuning | None:
        """The Tuning entry of ``preset``, None when the card does not say."""
        return next((t for t in self.tuned_on if t.preset == preset), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy (needs sorted), recorded with every result of the method."""
        return {
            "name": self.name, "description": self.description, "citation": self.citation,
            "code_url": self.code_url, "needs": sorted(self.needs), "generative": self.generative,
            "licence": self.licence, "uses_validation": self.uses_validation, "default_run": self.default_run,
            "role": self.role.value,
            "pretrained": [dataclasses.asdict(p) for p in self.pretrained], "extra": dict(self.extra),
            "tuned_on": [{**dataclasses.asdict(t), "test_slides": list(t.test_slides)} for t in self.tuned_on],
        }


# hook(total, description) -> context manager yielding advance(n=1)
ProgressHook = Callable[[int, str], ContextManager[Callable[..., None]]]

Self = TypeVar("Self", bound="Method")


class Method(abc.ABC):
    card: ClassVar[MethodCard]
    Config: ClassVar[type]
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {p: {} for p in PRESETS}

    def __init__(self, config: Any, *, seed: int, device: str = "cpu"):
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.config: Any = config  # a self.Config; Any, not the `object` the isinstance check narrows to
        self.seed = int(seed)
        self.device = device
        self.progress_hook: ProgressHook | None = None
        # What the runner records next to the scores: epochs run, final loss, early-stop epoch,
        # which gene-embedding provider was used, ... A method that did not train says so here.
        self.summary: dict[str, Any] = {}

    # -- config ------------------------------------------------------------------------------
    @classmethod
    def make_config(cls, preset: str = "small", overrides: Mapping[str, Any] | None = None,
                    source: str | None = None) -> Any:
        """Config of ``preset`` with ``overrides`` applied, every value checked against the Config's
        field types. ``source`` says where the overrides came from (for the error message)."""
        name = cls.card.name
        if preset not in cls.presets:
            raise UserError(f"method '{name}' has no preset '{preset}' (presets: {', '.join(cls.presets)})")
        types = field_types(cls.Config)
        for key in overrides or {}:
            if key not in types:
                raise UserError(f"method '{name}' has no config key '{key}' (keys: {', '.join(sorted(types))})")
        values = {}
        for key, value in cls.presets[preset].items():
            values[key] = _checked(name, key, types, value, f"preset '{preset}'")
        for key, value in (overrides or {}).items():
            values[key] = _checked(name, key, types, value, source or f"[methods.{name}] in the config file")
        try:
            return cls.Config(**values)
        except (TypeError, ValueError) as exc:
            raise UserError(f"method '{name}' config is invalid: {exc}") from None

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

    def predict_samples(self, test) -> list[np.ndarray] | None:
        """Generative methods: one float32 (n_samples, n_spots, n_genes) array per test slide, the
        draws (each clipped as configured) whose mean over axis 0 is what ``predict`` returns.

        The harness calls this instead of ``predict`` when it returns arrays, takes their mean as
        the prediction and also scores every draw, so a board can show a single sample's scores
        beside the mean's (averaging draws smooths; one draw is what the model generates).
        None (the default): the method has no separate draws."""
        return None

    @classmethod  # noqa: B027  (an optional hook, a no-op unless a method names files)
    def check_resources(cls, config: Any) -> None:
        """Raise a one-line UserError when ``config`` names files (weights, tables) that are not
        there. Called when the grid is planned, so a missing file refuses the run before any cell."""

    # -- saved models (flag_bench/models.py, `run --save-models`, `flag-bench predict`) -------------
    def save_state(self) -> MethodState:
        """The fitted state, for ``from_state`` to rebuild a method that predicts the same numbers.

        The default (methods/common/state.py) serves every built-in: the attributes set by
        ``fit`` are pickled as a skeleton whose tensors and numeric arrays travel in a safetensors
        file, and are read back by a restricted unpickler that resolves flag-bench and torch.nn
        classes only. A plugin's classes are outside what that loader resolves, so a plugin
        implements both hooks (e.g. ``MethodState(tensors=dict(net.state_dict()), meta={...})``
        and a ``from_state`` that builds the net from ``config`` and loads them), or
        ``--save-models`` refuses it."""
        from flag_bench.methods.common.state import capture, require_savable

        require_savable(type(self))
        return capture(self)

    @classmethod
    def from_state(cls: type[Self], state: MethodState, config: Any, *, seed: int, device: str) -> Self:
        """A fitted method rebuilt from ``save_state``'s output, with ``config`` (checked like
        ``make_config``'s), ``seed`` and its tensors on ``device``."""
        from flag_bench.methods.common.state import require_savable, restore

        require_savable(cls)
        return cast(Self, restore(cls, state, config, seed=seed, device=device))

    def n_parameters(self) -> int | None:
        """Trainable parameter count, or None for non-parametric methods."""
        return None

    def seed_streams(self, n: int) -> list[int]:
        """``n`` independent seeds for the method's own random streams (initialisation, training
        batches, validation, sampling, ...), spawned from the cell seed. Stream i is the same
        whatever n, so a method can add a stream without moving the others."""
        children = np.random.SeedSequence(self.seed).spawn(n)
        return [int(c.generate_state(1, dtype=np.uint64)[0]) for c in children]

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


def _checked(method: str, key: str, types: Mapping[str, Any], value: Any, source: str) -> Any:
    if key not in types:
        raise UserError(f"method '{method}': {source} sets unknown config key '{key}'")
    try:
        return conform(types[key], value)
    except Mismatch:
        raise UserError(f"method '{method}': config key '{key}' expects {type_name(types[key])}, "
                        f"got {describe_value(value)} ({source})") from None


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
