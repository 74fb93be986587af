"""The leaderboard as typed data: what every renderer (terminal, markdown, csv, later HTML) draws.

A row is ONE method configuration (dataset x G x method x config hash) summarised over its folds
and seeds: mean ± std with a bootstrap 95% CI of the mean (``flag_bench.metrics.stats``). Two
configurations of one method are two rows, never one mean shown as if it were fold spread, and
each gets a readable label: the method plus the preset and overridden keys ("knn (small k=50)"),
plus the short config hash where two configurations still share that text. The metric-vs-G curve
is per configuration too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from flag_bench.errors import UserError
from flag_bench.leaderboard.notes import Notes
from flag_bench.leaderboard.results import check_metric, curves, joined_labels

DEFAULT_COLUMNS = ("pcc_mean", "mse", "gsc", "ssc", "ssc@32", "ari")
LEGEND = "one row per method configuration; mean ± std over folds and seeds [95% bootstrap CI of the mean]"
TINY_WARNING = "tiny preset: for tests, scores are not meaningful"
# costs are the harness's own measurements, not registered metrics: their legend lives here
COSTS = {"fit_seconds": ("fit s", "wall seconds in fit"), "predict_seconds": ("predict s", "wall seconds in predict"),
         "peak_rss_mb": ("peak MB", "peak resident memory of the cell, MB"),
         "peak_gpu_mb": ("GPU MB", "peak GPU memory of the cell, MB"),
         "n_parameters": ("params", "trainable parameters of the fitted model")}
INT_COSTS = frozenset({"n_parameters"})


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class Row:
    label: str
    method: str
    config_hash: str
    config_label: str
    n_genes: int
    cells: int
    stats: Mapping[str, Stat]  # every score column, and every cost column when costs are asked for
    tiny: bool = False  # a cell of this row ran the tiny preset


@dataclass(frozen=True)
class ColumnInfo:
    """What a column is: its short header and legend line, from the metric's registered Output."""

    name: str  # the frame column (pcc_mean, fit_seconds)
    header: str  # what a table shows (PCC, fit s)
    higher_is_better: bool | None
    description: str
    cost: bool = False


@dataclass(frozen=True)
class CurvePoint:
    mean: float
    std: float
    n: int
    ci_low: float = math.nan  # 95% bootstrap CI of the mean, as the table's
    ci_high: float = math.nan


@dataclass(frozen=True)
class CurveRow:
    label: str
    method: str
    config_hash: str
    points: Mapping[int, CurvePoint]  # G -> the sort metric over folds and seeds


@dataclass(frozen=True)
class DatasetBoard:
    dataset: str
    protocol: str  # one line per distinct protocol, joined
    rows: tuple[Row, ...]
    genes: tuple[int, ...]
    curve: tuple[CurveRow, ...]  # empty when only one G was run
    flags: tuple[str, ...] = ()  # warnings beside the scores (leaderboard/flags.py)


@dataclass(frozen=True)
class Leaderboard:
    metric: str  # the sort key
    columns: tuple[str, ...]
    higher_is_better: Mapping[str, bool | None]
    datasets: tuple[DatasetBoard, ...]
    costs: tuple[str, ...] = ()  # cost columns, after the scores, when asked for
    info: Mapping[str, ColumnInfo] = field(default_factory=dict)  # every column shown
    notes: Notes = field(default_factory=Notes)

    @property
    def shown(self) -> tuple[str, ...]:
        return (*self.columns, *self.costs)

    def header(self, column: str) -> str:
        info = self.info.get(column)
        return info.header if info else short_name(column)


def short_name(score: str) -> str:
    """The column header of a score: PCC for pcc_mean (the headline PCC), "PCC pooled" for HEST's
    pooled aggregation, else the name in capitals."""
    return {"pcc_mean": "PCC", "pcc_pooled": "PCC pooled", "moran_abs_err": "Moran |ΔI|"}.get(score, score.upper())


def metric_outputs() -> dict:
    """Score name -> its registered metrics.base.Output (direction, range, description)."""
    from flag_bench.catalog import METRICS

    return {o.name: o for m in METRICS.load_all().values() for o in m.outputs}


def metric_direction() -> dict[str, bool | None]:
    """Score name -> higher_is_better, from the registered metrics' outputs."""
    return {name: o.higher_is_better for name, o in metric_outputs().items()}


def column_info(columns: Sequence[str], costs: Sequence[str] = ()) -> dict[str, ColumnInfo]:
    outputs = metric_outputs()
    info = {}
    for c in columns:
        o = outputs.get(c)
        # a plugin score without a registered Output still gets a header; its legend says so
        info[c] = ColumnInfo(c, short_name(c), o.higher_is_better if o else None,
                             (o.description if o else "") or "no description registered")
    for c in costs:
        header, text = COSTS.get(c, (c, c))
        info[c] = ColumnInfo(c, header, None, text, cost=True)
    return info


def config_labels(frame) -> dict[tuple[str, str], str]:
    """(method, config_hash) -> a row label unique within these results."""
    base = {}
    for (method, config_hash), g in frame.groupby(["method", "config_hash"], sort=True):
        extra = joined_labels(g["config_label"])
        base[(method, config_hash)] = f"{method} ({extra})" if extra else method
    counts: dict[str, int] = {}
    for text in base.values():
        counts[text] = counts.get(text, 0) + 1
    return {k: text if counts[text] == 1 else f"{text} #{k[1][:8]}" for k, text in base.items()}


def protocol_line(protocol_json: str) -> str:
    p = json.loads(protocol_json or "{}")
    if not p:
        return ""
    overlap = " (test patient also in train)" if p.get("patient_overlap") else ""
    return (f"protocol {p.get('protocol_version')}: target {p.get('target_transform')} | split "
            f"{p.get('split_description', p.get('split'))}{overlap} | panel {p.get('panel_selector')} | "
            f"encoder {p.get('encoder')} | patch {p.get('patch')} | PCC {p.get('pcc_aggregation')}")


def resolve(frame, name: str) -> str:
    """A score named as the frame does (pcc_mean) or as a header does (PCC, ssc@32 in any case)."""
    if name in frame.columns:
        return name
    from flag_bench.record import COST_COLUMNS, ROW_COLUMNS

    scores = [c for c in frame.columns if c not in ROW_COLUMNS and c not in COST_COLUMNS]
    hits = [c for c in scores if name.lower() in (c.lower(), short_name(c).lower())]
    return hits[0] if len(hits) == 1 else name


def _columns(frame, metric: str, columns: Sequence[str] | None) -> tuple[str, ...]:
    if columns:
        columns = [resolve(frame, c) for c in columns]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise UserError(f"--columns: {', '.join(missing)} not in these results")
    cols = [c for c in (columns or DEFAULT_COLUMNS) if c in frame.columns]
    return tuple(cols if metric in cols else [metric, *cols])


def _cost_columns(frame) -> tuple[str, ...]:
    # a cost no cell measured (peak GPU MB on a CPU run) would be a column of n/a
    return tuple(c for c in COSTS if c in frame.columns and frame[c].notna().any())


def _row(g, cols: Sequence[str], label: str, key) -> Row:
    from flag_bench.metrics.stats import summarize

    stats = {}
    for c in cols:
        s = summarize(g[c].to_numpy(dtype=float), level=0.95, seed=0)
        stats[c] = Stat(s.mean, s.std, s.ci_low, s.ci_high, s.n)
    g_, method, config_hash = key
    return Row(label, method, config_hash, joined_labels(g["config_label"]), int(g_), len(g), stats,
               tiny=bool((g["preset"] == "tiny").any()))


def _rows(frame, cols: tuple[str, ...], labels, metric: str, higher: bool) -> tuple[Row, ...]:
    rows = [_row(g, cols, labels[(key[1], key[2])], key)
            for key, g in frame.groupby(["n_genes", "method", "config_hash"], sort=True)]

    def key(r: Row):  # by G, then best first, NaN last, then label for ties
        m = r.stats[metric].mean
        if math.isnan(m):
            return (r.n_genes, 1, 0.0, r.label)
        return (r.n_genes, 0, -m if higher else m, r.label)

    return tuple(sorted(rows, key=key))


def _curve(frame, metric: str, labels) -> tuple[tuple[int, ...], tuple[CurveRow, ...]]:
    genes = tuple(sorted(int(g) for g in frame["n_genes"].unique()))
    if len(genes) < 2:
        return genes, ()
    from flag_bench.metrics.stats import bootstrap_ci

    pts: dict[tuple[str, str], dict[int, CurvePoint]] = {}
    values = {key: g[metric].to_numpy(dtype=float) for key, g in frame.groupby(["method", "config_hash", "n_genes"])}
    for r in curves(frame, metric).itertuples(index=False):
        low, high = bootstrap_ci(values[(r.method, r.config_hash, r.n_genes)], level=0.95, seed=0)
        pts.setdefault((r.method, r.config_hash), {})[int(r.n_genes)] = CurvePoint(r.mean, r.std, int(r.n), low, high)
    rows = [CurveRow(labels[k], k[0], k[1], p) for k, p in pts.items()]
    return genes, tuple(sorted(rows, key=lambda r: r.label))


def build(frame, metric: str = "pcc_mean", columns: Sequence[str] | None = None, *, costs: bool = False,
          notes: Notes | None = None, flags: Mapping[str, Sequence[str]] | None = None) -> Leaderboard:
    """The results frame (``Results.frame()``) -> the leaderboard sorted by ``metric``.

    ``costs`` adds the cost columns (fit s, predict s, peak MB, params); ``notes`` (failed and
    planned-but-missing cells, from ``notes.gather``) are carried for the renderers to print, and
    ``flags`` (dataset -> warnings, from ``flags.all_flags``) printed under each board.
    """
    if frame.empty:
        raise UserError("no finished cells to report; run `flag-bench run` first")
    metric = resolve(frame, metric)
    check_metric(frame, metric)
    cols = _columns(frame, metric, columns)
    cost_cols = _cost_columns(frame) if costs else ()
    direction = metric_direction()
    higher = direction.get(metric) is not False  # diagnostics and unknown plugin scores: higher first
    labels = config_labels(frame)
    boards = []
    for ds, g in frame.groupby("dataset", sort=True):
        lines = sorted({protocol_line(p) for p in g["protocol"]} - {""})
        genes, curve = _curve(g, metric, labels)
        rows = _rows(g, (*cols, *cost_cols), labels, metric, higher)
        boards.append(DatasetBoard(str(ds), " / ".join(lines), rows, genes, curve, tuple((flags or {}).get(str(ds), ()))))
    return Leaderboard(metric, cols, {c: direction.get(c) for c in cols}, tuple(boards), cost_cols,
                       column_info(cols, cost_cols), notes or Notes())
