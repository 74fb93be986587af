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
from typing import Any, Mapping

from flag_bench.cluster import ENGINES, engine
from flag_bench.errors import UserError
from flag_bench.options import (CSV, CSV_INT, DATASETS, PATH, REPEAT, SWITCH, converters, ints, key_values,
                                not_grid_keys, option, strs)
from flag_bench.spec import DatasetSpec, PanelSpec, Preset, SplitSpec, TargetTransform

DEFAULT_RESULTS_DIR = "flag-bench-results"


def _datasets(value: Any) -> tuple[DatasetSpec, ...]:
    return tuple(DatasetSpec.parse(d) for d in (value if isinstance(value, (list, tuple)) else [value]))


@dataclass(frozen=True)
class RunConfig:
    # Each field is one run option, declared once (flag_bench/options.py): the `run` command's flag,
    # its help and default, the TOML [run] key and its check, and the grid key all come from here.
    datasets: tuple[DatasetSpec, ...] = option(
        (DatasetSpec("her2st-mini"),), cli=DATASETS, short="-d", convert=_datasets,
        help="Comma-separated datasets; parameters as name:key=value")
    methods: tuple[str, ...] | None = option(
        None, cli=CSV, short="-m", convert=strs("--methods"),
        default_text="every built-in method marked for the default run", help="Comma-separated methods")
    genes: tuple[int, ...] = option((50,), cli=CSV_INT, short="-g", convert=ints("--genes"),
                                    help="Comma-separated panel sizes G")
    panel: PanelSpec = option(
        PanelSpec("hmhvg"), convert=PanelSpec.parse,
        help="Panel selector: hmhvg, hvg or file:PATH, fitted once per fold on its non-test slides")
    split: SplitSpec = option(  # each dataset's own (SpatialDataset.default_split)
        SplitSpec("default"), convert=SplitSpec.parse,
        help="default (each dataset's own: patient where patients are known, a HEST-Benchmark task's folds, "
             "her2st-mini's leave-one-slide-out), slide, patient, hest, or file:PATH")
    folds: tuple[int, ...] | None = option(None, cli=CSV_INT, convert=ints("--folds"), default_text="all",
                                           help="Comma-separated fold indices to run")
    seeds: tuple[int, ...] = option((0,), cli=CSV_INT, convert=ints("--seeds"), help="Comma-separated seeds")
    preset: Preset = option(Preset.SMALL, convert=lambda v: Preset.parse(v, "--preset"),
                            help="Method preset; tiny is for tests only")
    device: str = option("auto", grid=False, help="auto, cpu, cuda, cuda:N")
    encoder: str = option("efficientnet-lite0", help="Image encoder")
    patch_um: float = option(112.0, help="Patch side in micrometres of tissue")
    patch_px: int = option(224, help="Patch side in pixels after resampling")
    target_transform: TargetTransform = option(
        TargetTransform.LOG1P, convert=lambda v: TargetTransform.parse(v, "--target-transform"),
        help="Target transform")
    allow_patient_overlap: bool | None = option(
        None, cli=SWITCH, cli_type=bool, default_text="only where the dataset documents it",
        help="Allow folds whose test patient is also in train")
    results_dir: str = option(DEFAULT_RESULTS_DIR, cli=PATH, grid=False, convert=str,
                              default_text=f"./{DEFAULT_RESULTS_DIR}",
                              help="Where results, artifacts and mlflow.db go")
    tracking_uri: str | None = option(None, grid=False, default_text="sqlite:///<results-dir>/mlflow.db",
                                      help="MLflow tracking URI")
    suite: str = option("default", help="Suite name: one MLflow experiment per suite")
    workers: int = option(1, grid=False, short="-w", default_text="1: in this process",
                          help="Worker processes; each gets an equal share of the CPUs, or one GPU each")
    force: bool = option(False, cli=SWITCH, grid=False, help="Recompute finished cells")
    fail_fast: bool = option(False, cli=SWITCH, grid=False, help="Stop at the first failed cell")
    # where cells run (never part of a cell's identity): local (serial or --workers pool), slurm, ray
    executor: str = option("local", grid=False,
                           help="Where cells run: local (this machine; --workers for a pool), slurm (a submitit "
                                "job array) or ray")
    max_retries: int = option(1, grid=False, help="SLURM: requeues of a timed-out or preempted task; "
                                                  "Python errors are never retried")
    detach: bool = option(False, cli=SWITCH, grid=False, show_default=False,
                          help="SLURM: submit and return; `flag-bench collect` gathers the results later.")
    slurm_partition: str | None = option(None, grid=False, show_default=False, help="SLURM partition.")
    slurm_time: int = option(60, grid=False, help="Wall-clock limit per array task, in minutes")
    slurm_gpus_per_task: int | None = option(None, cli_type=int, grid=False,
                                             default_text="1 when --device is cuda, else none",
                                             help="GPUs per array task")
    slurm_cpus_per_task: int | None = option(None, cli_type=int, grid=False, default_text="1",
                                             help="CPUs per array task; torch/OpenMP/BLAS threads follow it")
    slurm_mem: str | None = option(None, grid=False, show_default=False, help="Memory per array task, e.g. 16G.")
    slurm_array_parallelism: int | None = option(None, cli_type=int, grid=False, show_default=False,
                                                 help="Array tasks running at once (SLURM's %N).")
    slurm_qos: str | None = option(None, grid=False, show_default=False, help="SLURM QOS.")
    slurm_account: str | None = option(None, grid=False, show_default=False, help="SLURM account.")
    slurm_extra: Mapping[str, str] = option(
        cli=REPEAT, grid=False, show_default=False, factory=dict,
        convert=key_values("slurm_extra", "constraint=a100"),
        help="Any other sbatch option as key=value (repeatable), e.g. constraint=a100.")
    slurm_batch: int = option(1, grid=False, help="Cells per array task")
    ray_address: str | None = option(None, grid=False,
                                     default_text="a local Ray cluster sized to this process's CPUs",
                                     help="Ray cluster to join (e.g. auto or ray://host:10001)")
    ray_cpus_per_cell: int = option(1, grid=False, help="Ray: CPUs reserved per cell; its threads follow it")
    # each cell's fit/predict in a fresh spawned process that receives only the method's inputs
    # (flag_bench/isolate.py, docs/threat-model.md); same numbers, never part of a cell's identity
    isolate: bool = option(False, cli=SWITCH, grid=False,
                           help="Fit and predict each cell in a fresh process that receives only the method's "
                                "inputs (no dataset, no test truth, no caller frames); scoring stays here. Same "
                                "numbers; a few seconds more per cell: a fresh Python importing torch")
    # each cell's fitted method kept under artifacts/<cell_id>/model/ (flag_bench/models.py), for
    # `flag-bench predict`; what is computed is the same, so never part of a cell's identity
    save_models: bool = option(False, cli=SWITCH, grid=False,
                               help="Keep each cell's fitted model (safetensors weights, config and card) for "
                                    "`flag-bench predict --model CELL_ID`")
    # pathway scores (flag_bench/gene_sets.py, metrics/pathways.py): part of what a cell scores
    gene_sets: str | None = option(None, default_text="none",
                                   help="Gene sets scored as pathways (pathway_pcc): file:SETS.gmt or a registered "
                                        "set's name")
    # per-method overrides of the preset's config fields: only from a config file's [methods.NAME]
    method_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        for name, convert in converters(type(self)).items():
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
        if self.detach and not getattr(engine(self.executor), "can_detach", False):
            names = ", ".join(cls_name for cls_name, cls in ((n, engine(n)) for n in ENGINES) if cls and cls.can_detach)
            raise UserError(f"--detach: only --executor {names} can detach (its jobs outlive this process)")
        if self.patch_um <= 0 or self.patch_px <= 0:
            raise UserError(f"patch {self.patch_um} um / {self.patch_px} px: both must be positive")

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


EXECUTORS = ("local", *ENGINES)  # local: this machine (serial or a --workers pool); the rest: flag_bench/cluster


# keys that describe where and how a grid runs, not what it computes
NOT_GRID_KEYS = not_grid_keys(RunConfig)


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
            converters(RunConfig)[key](run[key])  # cached: one table per class
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
