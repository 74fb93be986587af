"""The typed result of one grid cell: what the store writes, MLflow logs and the report reads.

``CellRecord`` is frozen and schema-versioned. ``to_json``/``from_json`` round-trip it exactly;
``to_row`` flattens it into the one row shape every results source returns (see ROW_COLUMNS).
A record from a newer schema is refused with a message instead of being misread.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from flag_bench.errors import UserError
from flag_bench.grid import Cell
from flag_bench.roles import Role, recorded_role

SCHEMA_VERSION = 1

# identity columns of a results row, in order; scores and costs follow. ``role``: the method card's
# role (flag_bench/roles.py), what the leaderboard ranks or shows as a reference
ROW_COLUMNS = ("dataset", "dataset_spec", "n_genes", "method", "role", "preset", "config_hash", "config_label",
               "fold", "seed", "panel_selector", "panel_id", "split", "target_transform", "encoder",
               "patch", "protocol_version", "cell_id", "protocol")
INT_COLUMNS = frozenset({"n_genes", "seed", "n_parameters", "cores", "contended"})
# cpu_seconds .. contended: fit + predict's CPU and wall time, the 1-minute load average at its start
# and end, the cores other processes used on its CPUs, the cores it was granted, and 1 when its
# times were taken on a busy machine (flag_bench/cluster/load.py); absent from older records
COST_COLUMNS = ("fit_seconds", "predict_seconds", "score_seconds", "data_seconds", "total_seconds",
                "peak_rss_mb", "peak_gpu_mb", "n_parameters", "cpu_seconds", "wall_seconds", "load_start",
                "load_end", "others_cpu", "cores", "contended")


@dataclass(frozen=True)
class PanelInfo:
    panel_id: str
    genes: tuple[str, ...]
    selector: str
    train_slides: tuple[str, ...]
    stats: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodInfo:
    """The method as run: resolved config, the user's overrides, its card and what it reported."""

    name: str
    preset: str
    config: Mapping[str, Any]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    card: Mapping[str, Any] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)

    @property
    def role(self) -> Role:
        """The card's role as recorded (a record written before the card had one reads as then)."""
        try:
            return recorded_role(self.card, self.name)
        except ValueError as exc:  # a role a newer flag-bench knows
            raise UserError(f"{exc}; use the flag-bench version that wrote this record") from None

    @property
    def label(self) -> str:
        """Readable configuration label: the preset plus every overridden key."""
        extra = " ".join(f"{k}={_short(v)}" for k, v in sorted(self.overrides.items()))
        return f"{self.preset} {extra}".strip()


@dataclass(frozen=True)
class ErrorInfo:
    stage: str
    type: str
    message: str
    traceback: str = ""


@dataclass(frozen=True)
class CellRecord:
    cell: Cell
    status: Literal["ok", "failed"]
    method: MethodInfo
    protocol: Mapping[str, Any]
    provenance: Mapping[str, Any]
    device: str
    started: str
    finished: str
    scores: Mapping[str, float] = field(default_factory=dict)
    scores_per_slide: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    notes: Mapping[str, Any] = field(default_factory=dict)
    costs: Mapping[str, float | int | None] = field(default_factory=dict)
    panel: PanelInfo | None = None
    artifacts: tuple[str, ...] = ()
    error: ErrorInfo | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = jsonable(dataclasses.asdict(self))
        d["cell_id"] = self.cell_id
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "record") -> "CellRecord":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{where}: record schema version {version!r}, this flag-bench reads {SCHEMA_VERSION}; "
                "use the flag-bench version that wrote it, or rerun the grid into a new --results-dir"
            )
        try:
            cell = Cell(**{k: _tuples(v) for k, v in d["cell"].items()})
            panel = d.get("panel")
            error = d.get("error")
            rec = cls(
                cell=cell, status=d["status"], method=MethodInfo(**d["method"]),
                protocol=d["protocol"], provenance=d["provenance"], device=d["device"],
                started=d["started"], finished=d["finished"], scores=d.get("scores", {}),
                scores_per_slide=d.get("scores_per_slide", {}), notes=d.get("notes", {}),
                costs=d.get("costs", {}),
                panel=PanelInfo(**{k: _tuples(v) if k != "stats" else v for k, v in panel.items()}) if panel else None,
                artifacts=tuple(d.get("artifacts", ())), error=ErrorInfo(**error) if error else None,
            )
        except (KeyError, TypeError) as exc:
            raise UserError(f"{where}: not a valid cell record ({type(exc).__name__}: {exc}); move it aside") from None
        if d.get("cell_id", rec.cell_id) != rec.cell_id:
            raise UserError(f"{where}: cell_id {d.get('cell_id')} does not match its cell ({rec.cell_id}); move it aside")
        return rec

    @classmethod
    def loads(cls, text: str, where: str = "record") -> "CellRecord":
        try:
            return cls.from_json(json.loads(text), where)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not JSON ({exc}); move it aside to recompute that cell") from None

    # -- the results row ------------------------------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        """One flat row: ROW_COLUMNS, then every score, then the costs (COST_COLUMNS present)."""
        c = self.cell
        row: dict[str, Any] = {
            "dataset": c.dataset, "dataset_spec": c.dataset_spec, "n_genes": int(c.n_genes),
            "method": c.method, "role": self.method.role.value, "preset": c.preset, "config_hash": c.config_hash,
            "config_label": self.method.label, "fold": c.fold, "seed": int(c.seed),
            "panel_selector": c.panel.split(":")[0], "panel_id": self.panel.panel_id if self.panel else "",
            "split": c.split, "target_transform": c.target_transform, "encoder": c.encoder, "patch": c.patch,
            "protocol_version": c.protocol_version, "cell_id": self.cell_id,
            "protocol": json.dumps(jsonable(self.protocol), sort_keys=True),
        }
        row.update({k: float(v) for k, v in self.scores.items()})
        for k in COST_COLUMNS:
            v = self.costs.get(k)
            if v is not None:
                row[k] = int(v) if k in INT_COLUMNS else float(v)
        return row


def code_version(provenance: Mapping[str, Any]) -> str | None:
    """The code a record was computed with, as one label: the flag-bench version, the git commit
    (where the package runs from a checkout) and a digest of uncommitted changes; None when the
    record names no version."""
    version = provenance.get("flag_bench") if isinstance(provenance, Mapping) else None
    if not version:
        return None
    label = str(version)
    commit = provenance.get("git_commit")
    if commit:
        label += f" @ {str(commit)[:12]}"
        if provenance.get("git_dirty"):
            digest = provenance.get("git_diff_sha256")
            label += f"+changes {str(digest)[:8]}" if digest else "+changes"
    return label


def _tuples(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v


def _short(v: Any) -> str:
    s = json.dumps(jsonable(v)) if not isinstance(v, str) else v
    return s if len(s) <= 24 else s[:21] + "..."


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars -> Python, tuples -> lists, anything else -> str."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
