"""The run configuration: typed and frozen; defaults < config file < command line.

A config file is TOML:

    [run]
    datasets = ["her2st-mini"]
    methods = ["mean", "ridge"]
    genes = [50, 200]

    [methods.knn]        # per-method overrides of the preset's config fields
    k = 20

Unknown keys and values of the wrong type are errors naming the file and the key. Strings from
the command line or the file become typed specs (flag_bench.spec) here, once.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from flag_bench.errors import UserError
from flag_bench.spec import DatasetSpec, PanelSpec, Preset, SplitSpec, TargetTransform

DEFAULT_RESULTS_DIR = "flag-bench-results"


@dataclass(frozen=True)
class RunConfig:
    datasets: tuple[DatasetSpec, ...] = (DatasetSpec("her2st-mini"),)
    methods: tuple[str, ...] | None = None  # None = every built-in method with card.default_run
    genes: tuple[int, ...] = (50,)
    panel: PanelSpec = PanelSpec("hmhvg")
    split: SplitSpec = SplitSpec("default")  # each dataset's own (SpatialDataset.default_split)
    folds: tuple[int, ...] | None = None  # None = all folds of the split
    seeds: tuple[int, ...] = (0,)
    preset: Preset = Preset.SMALL
    device: str = "auto"
    encoder: str = "efficientnet-lite0"
    patch_um: float = 112.0
    patch_px: int = 224
    target_transform: TargetTransform = TargetTransform.LOG1P
    allow_patient_overlap: bool | None = None
    results_dir: str = DEFAULT_RESULTS_DIR
    tracking_uri: str | None = None
    suite: str = "default"
    workers: int = 1
    force: bool = False
    fail_fast: bool = False
    # where cells run (never part of a cell's identity): local (serial or --workers pool), slurm, ray
    executor: str = "local"
    max_retries: int = 1
    detach: bool = False
    slurm_partition: str | None = None
    slurm_time: int = 60  # minutes per array task (the wall-clock limit of its cells)
    slurm_gpus_per_task: int | None = None
    slurm_cpus_per_task: int | None = None
    slurm_mem: str | None = None
    slurm_array_parallelism: int | None = None
    slurm_qos: str | None = None
    slurm_account: str | None = None
    slurm_extra: Mapping[str, str] = field(default_factory=dict)
    slurm_batch: int = 1
    ray_address: str | None = None
    ray_cpus_per_cell: int = 1
    # each cell's fit/predict in a fresh spawned process that receives only the method's inputs
    # (flag_bench/isolate.py, docs/threat-model.md); same numbers, never part of a cell's identity
    isolate: bool = False
    method_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        for name, convert in _CONVERT.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, convert(value))
        for g in self.genes:
            if g <= 0:
                raise UserError(f"--genes {g}: panel sizes must be positive integers")
        if not self.seeds:
            raise UserError("--seeds needs at least one seed")
        if self.workers < 1:
            raise UserError(f"--workers {self.workers}: use 1 or more")
        if self.executor not in EXECUTORS:
            raise UserError(f"--executor {self.executor}: use one of {', '.join(EXECUTORS)}")
        if self.max_retries < 0:
            raise UserError(f"--max-retries {self.max_retries}: use 0 or more")
        for name in ("slurm_time", "slurm_batch", "ray_cpus_per_cell", "slurm_cpus_per_task", "slurm_array_parallelism"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} {value}: use 1 or more")
        if self.slurm_gpus_per_task is not None and self.slurm_gpus_per_task < 0:
            raise UserError(f"--slurm-gpus-per-task {self.slurm_gpus_per_task}: use 0 or more")
        if self.detach and self.executor != "slurm":
            raise UserError("--detach: only --executor slurm can detach (its jobs outlive this process)")
        if self.patch_um <= 0 or self.patch_px <= 0:
            raise UserError(f"patch {self.patch_um} um / {self.patch_px} px: both must be positive")

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


EXECUTORS = ("local", "slurm", "ray")


def _extra(value: Any) -> dict[str, str]:
    """--slurm-extra key=value (repeatable) or a TOML table: free sbatch options."""
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        items = []
        for kv in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(kv, str) or "=" not in kv or not kv.split("=", 1)[0].strip():
                raise UserError(f"--slurm-extra {kv!r}: expected key=value, e.g. --slurm-extra constraint=a100")
            k, v = kv.split("=", 1)
            items.append((k.strip(), v.strip()))
    out = {}
    for k, v in items:
        if not isinstance(k, str) or isinstance(v, (dict, list)):
            raise UserError(f"slurm_extra {k!r}: expected key = \"value\" pairs")
        out[k] = str(v)
    return out


def _ints(what: str) -> Callable[[Any], tuple[int, ...]]:
    def convert(value: Any) -> tuple[int, ...]:
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise UserError(f"{what} {list(items)}: expected a list of integers, e.g. {what} 50,200")
        return tuple(items)

    return convert


def _strs(what: str) -> Callable[[Any], tuple[str, ...]]:
    def convert(value: Any) -> tuple[str, ...]:
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(not isinstance(v, str) for v in items):
            raise UserError(f"{what} {list(items)}: expected a list of names")
        return tuple(items)

    return convert


def _typed(kind: type, what: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise UserError(f"{what} {value!r}: expected {kind.__name__}")
        return value

    return convert


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "datasets": lambda v: tuple(DatasetSpec.parse(d) for d in (v if isinstance(v, (list, tuple)) else [v])),
    "methods": _strs("--methods"),
    "genes": _ints("--genes"),
    "panel": PanelSpec.parse,
    "split": SplitSpec.parse,
    "folds": _ints("--folds"),
    "seeds": _ints("--seeds"),
    "preset": lambda v: Preset.parse(v, "--preset"),
    "device": _typed(str, "--device"),
    "encoder": _typed(str, "--encoder"),
    "patch_um": _typed(float, "patch_um"),
    "patch_px": _typed(int, "patch_px"),
    "target_transform": lambda v: TargetTransform.parse(v, "--target-transform"),
    "allow_patient_overlap": _typed(bool, "--allow-patient-overlap"),
    "results_dir": lambda v: str(v),
    "tracking_uri": _typed(str, "--tracking-uri"),
    "suite": _typed(str, "--suite"),
    "workers": _typed(int, "--workers"),
    "force": _typed(bool, "--force"),
    "fail_fast": _typed(bool, "--fail-fast"),
    "executor": _typed(str, "--executor"),
    "max_retries": _typed(int, "--max-retries"),
    "detach": _typed(bool, "--detach"),
    "slurm_partition": _typed(str, "--slurm-partition"),
    "slurm_time": _typed(int, "--slurm-time"),
    "slurm_gpus_per_task": _typed(int, "--slurm-gpus-per-task"),
    "slurm_cpus_per_task": _typed(int, "--slurm-cpus-per-task"),
    "slurm_mem": _typed(str, "--slurm-mem"),
    "slurm_array_parallelism": _typed(int, "--slurm-array-parallelism"),
    "slurm_qos": _typed(str, "--slurm-qos"),
    "slurm_account": _typed(str, "--slurm-account"),
    "slurm_extra": _extra,
    "slurm_batch": _typed(int, "--slurm-batch"),
    "ray_address": _typed(str, "--ray-address"),
    "ray_cpus_per_cell": _typed(int, "--ray-cpus-per-cell"),
    "isolate": _typed(bool, "--isolate"),
}

# keys that describe where and how a grid runs, not what it computes
NOT_GRID_KEYS = ("results_dir", "tracking_uri", "force", "fail_fast", "device", "workers", "executor", "max_retries",
                 "detach", "slurm_partition", "slurm_time", "slurm_gpus_per_task", "slurm_cpus_per_task", "slurm_mem",
                 "slurm_array_parallelism", "slurm_qos", "slurm_account", "slurm_extra", "slurm_batch", "ray_address",
                 "ray_cpus_per_cell", "isolate")


def plain_value(v: Any) -> Any:
    """A config value as JSON keeps it in a grid spec: specs and enums as their text."""
    if isinstance(v, (list, tuple)):
        return [plain_value(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): plain_value(x) for k, x in v.items()}
    return v if isinstance(v, (int, float, bool, type(None))) else str(v)


def grid_spec(cfg: "RunConfig") -> dict[str, Any]:
    """What a run computes, as plain JSON (the parent MLflow run and each plan file hold it)."""
    return {f.name: plain_value(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in NOT_GRID_KEYS}


def load_config_file(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Return (run fields, method overrides) from a TOML file; unknown keys are UserErrors."""
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML ({exc}); fix the syntax") from None
    unknown = set(data) - {"run", "methods"}
    if unknown:
        raise UserError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; use [run] and [methods.NAME]")
    run = dict(data.get("run", {}))
    names = {f.name for f in dataclasses.fields(RunConfig)} - {"method_overrides"}
    for key in run:
        if key not in names:
            raise UserError(f"{path}: unknown key '{key}' in [run] (keys: {', '.join(sorted(names))})")
        try:
            _CONVERT[key](run[key])
        except UserError as exc:
            raise UserError(f"{path}: [run] {key}: {exc}") from None
    methods = data.get("methods", {})
    if not isinstance(methods, dict) or any(not isinstance(v, dict) for v in methods.values()):
        raise UserError(f"{path}: [methods] must hold tables like [methods.knn]")
    return run, {k: dict(v) for k, v in methods.items()}


def build_config(file: Path | None, cli: Mapping[str, Any]) -> RunConfig:
    """defaults < file < CLI (CLI values of None mean 'not given')."""
    values: dict[str, Any] = {}
    overrides: dict[str, dict[str, Any]] = {}
    if file is not None:
        values, overrides = load_config_file(file)
    values.update({k: v for k, v in cli.items() if v is not None})
    values["method_overrides"] = overrides
    return RunConfig(**values)
