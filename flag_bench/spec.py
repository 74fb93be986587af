"""Typed specs parsed once at the edge (CLI, TOML): datasets, panels, splits and the enums.

Everything below the CLI works with these objects, never with the strings they came from, so a
spec has one canonical form: ``synthetic:n_genes=500,n_slides=3`` and
``synthetic:n_slides=3,n_genes=500`` are the same dataset and the same cells.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Self

from flag_bench.errors import UserError


class StrEnum(str, Enum):
    """An Enum whose members are their strings (typer lists them as choices)."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Any, what: str) -> Self:
        try:
            return cls(str(value.value if isinstance(value, Enum) else value))
        except ValueError:
            raise UserError(f"{what} {value}: unknown; use one of {', '.join(m.value for m in cls)}") from None


class Preset(StrEnum):
    TINY = "tiny"  # seconds on a CPU: tests only, scores are not meaningful
    SMALL = "small"  # minutes on a CPU: the default run
    PAPER = "paper"  # the published hyper-parameters, for a GPU


# the preset names in their canonical order (tiny, small, paper): every method has all three
PRESETS: tuple[str, ...] = tuple(p.value for p in Preset)


class TargetTransform(StrEnum):
    LOG1P = "log1p"
    LOG1P_CPM = "log1p_cpm"
    LOG2P1 = "log2p1"


class ReportFormat(StrEnum):
    TABLE = "table"
    MARKDOWN = "markdown"
    CSV = "csv"
    JSON = "json"  # the board rows and every statistical test
    HTML = "html"  # one self-contained file (--output FILE)
    PNG = "png"  # the report's figures as files (--output DIR)
    SVG = "svg"


class ResultSource(StrEnum):
    AUTO = "auto"
    MLFLOW = "mlflow"
    STORE = "store"


_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true'/'false' -> bool, anything else stays a string ('nan' too)."""
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return {"true": True, "false": False}.get(text.lower(), text)


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset name plus loader keyword arguments, sorted by key."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: "str | DatasetSpec") -> "DatasetSpec":
        if isinstance(text, DatasetSpec):
            return text
        name, _, rest = str(text).strip().partition(":")
        if not name:
            raise UserError(f"--datasets {text}: empty dataset name; use NAME or NAME:key=value,...")
        params: dict[str, Any] = {}
        for item in filter(None, (i.strip() for i in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise UserError(f"--datasets {text}: parameter '{item}' must be key=value")
            if key.strip() in params:
                raise UserError(f"--datasets {text}: parameter '{key.strip()}' is given twice")
            params[key.strip()] = parse_value(value.strip())
        return cls(name.strip(), tuple(sorted(params.items())))

    @property
    def key(self) -> str:
        """Canonical text: part of the cell id."""
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_render(v)}" for k, v in self.params)

    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class _KindSpec:
    """``kind`` or ``file:PATH``."""

    kind: str
    path: str | None = None

    KINDS: ClassVar[tuple[str, ...]] = ()
    WHAT: ClassVar[str] = ""

    @classmethod
    def parse(cls, text: "str | _KindSpec"):
        if isinstance(text, cls):
            return text
        text = str(text).strip()
        kind, sep, arg = text.partition(":")
        if kind == "file":
            if not arg:
                raise UserError(f"{cls.WHAT} {text}: give the file as file:PATH")
            return cls("file", arg)
        if sep or kind not in cls.KINDS:
            raise UserError(f"{cls.WHAT} {text}: unknown; use {', '.join(cls.KINDS)} or file:PATH")
        return cls(kind)

    @property
    def text(self) -> str:
        return f"file:{self.path}" if self.kind == "file" else self.kind

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class PanelSpec(_KindSpec):
    """A gene-panel selector: hmhvg, hvg, or file:PATH (one gene symbol per line)."""

    KINDS: ClassVar[tuple[str, ...]] = ("hmhvg", "hvg")
    WHAT: ClassVar[str] = "--panel"

    @classmethod
    def parse(cls, text):
        # other registered selectors (plugins) are checked against the registry by the planner
        if isinstance(text, PanelSpec):
            return text
        t = str(text).strip()
        if not t.startswith("file") and ":" not in t and t:
            return cls(t)
        return super().parse(t)


@dataclass(frozen=True)
class SplitSpec(_KindSpec):
    """A split scheme: default (each dataset's own: ``SpatialDataset.default_split``), slide
    (leave-one-slide-out), patient (leave-one-patient-out), hest (a HEST-Benchmark task's own
    folds), file:PATH."""

    KINDS: ClassVar[tuple[str, ...]] = ("default", "slide", "patient", "hest")
    WHAT: ClassVar[str] = "--split"
