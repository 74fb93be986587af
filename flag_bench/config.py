"""The run configuration: typed and frozen; defaults < config file < command line.

A config file is TOML:

    [run]
    datasets = ["her2st-mini"]
    methods = ["mean", "ridge"]
    genes = [50, 200]

    [methods.knn]        # per-method overrides of the preset's config fields
    k = 20

Unknown keys are errors naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from flag_bench.errors import UserError

DEFAULT_RESULTS_DIR = "flag-bench-results"


@dataclass(frozen=True)
class RunConfig:
    datasets: tuple[str, ...] = ("her2st-mini",)
    methods: tuple[str, ...] | None = None  # None = every built-in method with card.default_run
    genes: tuple[int, ...] = (50,)
    panel: str = "hmhvg"
    split: str = "slide"
    folds: tuple[int, ...] | None = None  # None = all folds of the split
    seeds: tuple[int, ...] = (0,)
    preset: str = "small"
    device: str = "auto"
    encoder: str = "efficientnet-lite0"
    patch_um: float = 112.0
    patch_px: int = 224
    target_transform: str = "log1p"
    allow_patient_overlap: bool | None = None
    results_dir: str = DEFAULT_RESULTS_DIR
    tracking_uri: str | None = None
    suite: str = "default"
    force: bool = False
    fail_fast: bool = False
    method_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        if self.target_transform not in TARGET_TRANSFORMS:
            raise UserError(
                f"target_transform '{self.target_transform}' is unknown; use one of {', '.join(TARGET_TRANSFORMS)}"
            )
        for g in self.genes:
            if int(g) <= 0:
                raise UserError(f"--genes {g}: panel sizes must be positive integers")
        if not self.seeds:
            raise UserError("--seeds needs at least one seed")

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


TARGET_TRANSFORMS = ("log1p", "log1p_cpm", "log2p1")

_TUPLE_FIELDS = {"datasets", "methods", "genes", "folds", "seeds"}


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
    for key in _TUPLE_FIELDS & set(run):
        if run[key] is not None:
            if not isinstance(run[key], list):
                raise UserError(f"{path}: [run] {key} must be a list")
            run[key] = tuple(run[key])
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
