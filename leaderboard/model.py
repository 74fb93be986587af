"""The leaderboard as typed data: what every renderer (terminal, markdown, csv, later HTML) draws.

A row is ONE method configuration (dataset x G x method x config hash) summarised over its test
folds, the unit of replication (a test slide or a held-out patient): seeds are averaged within each
fold first, then mean ± std over the folds with a bootstrap 95% CI of the mean that resamples
folds, never seeds (``flag_bench.metrics.stats``; the seed spread is the statistics' variance
split). Two
configurations of one method are two rows, never one mean shown as if it were fold spread, and
each gets a readable label: the method plus the preset and overridden keys ("knn (small k=50)"),
plus the short config hash where two configurations still share that text. The metric-vs-G curve
is per configuration too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from flag_bench.errors import UserError
from flag_bench.leaderboard.calibration import (CALIBRATED, Bound, add_calibration, bounds, cal_name,
                                                calibrated_scores)
from flag_bench.leaderboard.notes import Notes
from flag_bench.leaderboard.validity import Verdict, board_verdicts
from flag_bench.leaderboard.results import check_metric, curves, joined_labels
from flag_bench.leaderboard.stats import reference_roles

# structure scores the default legend describes, shown or not (--columns shows them)
LEGEND_ALWAYS = ("gsc_frobenius", "gsc_cpm", "ssc@32")
# ssc@32 (top-32 genes: noise on slides of a few hundred spots) is one --columns away; a column
# shows only where the results have it (pathway_pcc: cells run with --gene-sets), so boards without
# it are unchanged
DEFAULT_COLUMNS = ("pcc_mean", "mse", "gsc", "ssc", "ssc_spot", "lee_l", "ari", "pathway_pcc")
LEGEND = ("one row per method configuration; mean ± std over test folds, seeds averaged within each fold "
          "[95% bootstrap CI of the mean over folds]")
TINY_WARNING = "tiny preset: for tests, scores are not meaningful"
# costs are the harness's own measurements, not registered metrics: their legend lives here
COSTS = {"fit_seconds": ("fit s", "wall seconds in fit"), "predict_seconds": ("predict s", "wall seconds in predict"),
         "peak_rss_mb": ("peak MB", "peak resident memory of the cell, MB"),
         "peak_gpu_mb": ("GPU MB", "peak GPU memory of the cell, MB"),
         "n_parameters": ("params", "trainable parameters of the fitted model")}
INT_COSTS = frozenset({"n_parameters"})
# time costs of a row with a contended cell (timed while other processes used its cores, see
# flag_bench/cluster/load.py) carry this mark, and a legend line says so
TIME_COSTS = frozenset({"fit_seconds", "predict_seconds"})
CONTENDED_MARK = "*"
CONTENDED_LEGEND = ("time measured on a busy machine: other processes used the cores of at least one of the "
                    "row's cells (or it ran on fewer threads for that), so its times are not those of a quiet run")
# scores in the target transform's units (an MSE on ln(1 + count) is not one on log2(1 + count)):
# their headers and legend lines name the transform; scale-free scores have it in the captions
TRANSFORM_UNITS = frozenset({"mse", "mae"})
TRANSFORM_TEXT = {"log1p": "ln(1 + count)", "log2p1": "log2(1 + count)",
                  "log1p_cpm": "ln(1 + counts per million of the spot's total)"}


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
    stats: Mapping[str, Stat]  # every score column (calibrated ones too), every cost column when asked for
    tiny: bool = False  # a cell of this row ran the tiny preset
    role: str = ""  # "null" or "oracle": a reference row, shown below the methods and never ranked
    transforms: tuple[str, ...] = ()  # the target transforms of its cells (one, unless pooled)
    tuned_on_test: tuple[str, ...] = ()  # test slides of this dataset whose scores chose its preset (card)
    contended: int = 0  # cells of this row timed on a busy machine (record costs.contended)
    # marks of the hardware its cells ran on other than its board's most common (--from bundles)
    hardware: tuple[str, ...] = ()


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
    points: Mapping[int, CurvePoint]  # G -> the sort metric over test folds (seeds averaged within each)


@dataclass(frozen=True)
class DatasetBoard:
    dataset: str
    protocol: str  # one line per distinct protocol, joined
    rows: tuple[Row, ...]
    genes: tuple[int, ...]
    curve: tuple[CurveRow, ...]  # empty when only one G was run
    flags: tuple[str, ...] = ()  # warnings beside the scores (leaderboard/flags.py)
    bounds: Mapping[tuple[int, str], Bound] = field(default_factory=dict)  # (G, score) -> null and ceiling
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)  # score -> location-sensitivity verdict
    transforms: tuple[str, ...] = ()  # the target transforms of its cells: the units of MSE and MAE


@dataclass(frozen=True)
class Leaderboard:
    metric: str  # the sort key
    columns: tuple[str, ...]
    higher_is_better: Mapping[str, bool | None]
    datasets: tuple[DatasetBoard, ...]
    costs: tuple[str, ...] = ()  # cost columns, after the scores, when asked for
    info: Mapping[str, ColumnInfo] = field(default_factory=dict)  # every column shown
    notes: Notes = field(default_factory=Notes)
    calibrated: tuple[str, ...] = ()  # scores with a calibrated column (Row.stats[cal_name(score)])
    hidden: tuple[ColumnInfo, ...] = ()  # structure scores the results hold but the table does not show
    hardware: tuple[tuple[str, str], ...] = ()  # (mark, hardware) of the marks rows carry (flags.hardware_marks)

    @property
    def shown(self) -> tuple[str, ...]:
        return (*self.columns, *self.costs)

    @property
    def transforms(self) -> tuple[str, ...]:
        """The target transforms of every board's cells."""
        return tuple(sorted({t for b in self.datasets for t in b.transforms}))

    def header(self, column: str, board: "DatasetBoard | None" = None) -> str:
        """A column's header, with the target transform where the score is in its units ("MSE
        (log1p)"): ``board``'s transforms in its table, every board's in a legend."""
        info = self.info.get(column)
        text = info.header if info else short_name(column)
        return unit_header(column, text, self.transforms if board is None else board.transforms)


def transform_tag(transforms: Sequence[str]) -> str:
    """'log1p'; 'mixed: log1p, log2p1' where cells of several transforms are pooled; '' if none recorded."""
    names = sorted({str(t) for t in transforms if t})
    return "" if not names else names[0] if len(names) == 1 else "mixed: " + ", ".join(names)


def unit_header(column: str, header: str, transforms: Sequence[str]) -> str:
    """``header`` with the transform of ``transforms`` when ``column`` is in its units: "MSE (log1p)"."""
    tag = transform_tag(transforms)
    return f"{header} ({tag})" if tag and column in TRANSFORM_UNITS else header


def units_text(transforms: Sequence[str]) -> str:
    """The legend's words for the units: 'on log1p targets, ln(1 + count)' ('' if none recorded)."""
    names = sorted({str(t) for t in transforms if t})
    if not names:
        return ""
    what = ", ".join(f"{t} = {TRANSFORM_TEXT[t]}" if t in TRANSFORM_TEXT else t for t in names)
    if len(names) == 1:
        return f"in target units ({what})"
    return f"in target units, mixed here ({what}): values of different transforms are not comparable"


def short_name(score: str) -> str:
    """The column header of a score: PCC for pcc_mean (the headline PCC), "PCC pooled" for HEST's
    pooled aggregation, else the name in capitals."""
    if score.endswith("_cal") and score[:-4] in SHORT:
        return SHORT[score[:-4]] + " cal"
    return SHORT.get(score, score.upper())


SHORT = {"pcc_mean": "PCC", "pcc_pooled": "PCC pooled", "moran_abs_err": "Moran |ΔI|", "ssc_spot": "SSC spot",
         "lee_l": "Lee L", "gsc_cpm": "GSC cpm", "gsc_frobenius": "GSC frob", "gsc_spearman": "GSC rho",
         "gsc": "GSC", "ssc": "SSC", "pathway_pcc": "PathPCC"}
CAL_LEGEND = ("calibrated: (score - null) / (ceiling - null) per fold; null = the best image-free null control of "
              "the fold (random-spot, gene-prior), ceiling = the slide's split-half noise ceiling; 0 = no better "
              "than ignoring the image, 1 = as good as the counting noise allows")
ROLE_MARK = {"null": "[null]", "oracle": "[oracle]"}
ROLE_LEGEND = {"null": "a null control (ignores the image or misplaces expression)",
               "oracle": "computed from the test truth"}
REFERENCE_NOTE = "reference rows, listed below the methods, never ranked"


def bound_values(board: "DatasetBoard", g: int, scores: Sequence[str], which: str) -> list[float]:
    """The raw null or ceiling (``which``) of each score on ``board`` at G (NaN where it has none)."""
    return [getattr(board.bounds[(g, m)], which) if (g, m) in board.bounds else math.nan for m in scores]


def calibration_note(board: "DatasetBoard") -> str:
    """Why a board's calibrated columns are empty ('' when they are not)."""
    if board.bounds and all(math.isnan(b.null) for b in board.bounds.values()):
        return ("no calibrated values: these results hold no image-free null control of the same folds; "
                "add random-spot,gene-prior to --methods (both are in the default run)")
    if board.bounds and all(math.isnan(b.ceiling) for b in board.bounds.values()):
        return "no calibrated values: these cells record no noise ceiling (computed before ceilings existed)"
    return ""


def contended_mark(lb: "Leaderboard", r: Row, column: str) -> str:
    """CONTENDED_MARK after a time cost of a row with a contended cell ('' otherwise)."""
    return CONTENDED_MARK if r.contended and column in TIME_COSTS and column in lb.costs else ""


def contended_legend(lb: "Leaderboard") -> list[tuple[str, str]]:
    """(mark, text) when a time cost shown carries the contended mark: one legend line, every format."""
    if any(r.contended for b in lb.datasets for r in b.rows) and TIME_COSTS & set(lb.costs):
        return [(CONTENDED_MARK, CONTENDED_LEGEND)]
    return []


def role_legend(lb: "Leaderboard") -> list[tuple[str, str]]:
    """(mark, text) for each role among the rows shown: one legend line each, in every format."""
    roles = {r.role for b in lb.datasets for r in b.rows}
    return [(ROLE_MARK[k], f"{ROLE_LEGEND[k]}; {REFERENCE_NOTE}") for k in ROLE_MARK if k in roles]


def role_label(r: Row, label: str | None = None) -> str:
    """A row's label with its reference mark ("random-spot [null]") and its hardware marks ("[hw2]")."""
    text = r.label if label is None else label
    text = f"{text} {ROLE_MARK[r.role]}" if r.role in ROLE_MARK else text
    return " ".join((text, *r.hardware))


def hardware_legend(lb: "Leaderboard") -> list[tuple[str, str]]:
    """(mark, text) for each hardware mark rows carry: one legend line each, in every format."""
    return [(mark, f"computed on {hw}, not the hardware of most of its board's cells: times differ, and scores "
                   "may differ in the last digits (other BLAS or GPU kernels)") for mark, hw in lb.hardware]


def metric_outputs() -> dict:
    """Score name -> its registered metrics.base.Output (direction, range, description), and the
    pathway score's (metrics/pathways.py: built per run from its --gene-sets, not registered)."""
    from flag_bench.catalog import METRICS
    from flag_bench.metrics.pathways import OUTPUTS as PATHWAY_OUTPUTS

    return {**{o.name: o for o in PATHWAY_OUTPUTS}, **{o.name: o for m in METRICS.load_all().values() for o in m.outputs}}


def metric_direction() -> dict[str, bool | None]:
    """Score name -> higher_is_better, from the registered metrics' outputs (calibrated: higher)."""
    out = {name: o.higher_is_better for name, o in metric_outputs().items()}
    return {**out, **{cal_name(m): True for m in CALIBRATED if m in out}}


def column_info(columns: Sequence[str], costs: Sequence[str] = (),
                transforms: Sequence[str] = ()) -> dict[str, ColumnInfo]:
    """What each column is; ``transforms`` (the results' target transforms) give the units of MSE and MAE."""
    outputs = metric_outputs()
    units = units_text(transforms)
    info = {}
    for c in columns:
        if c.endswith("_cal") and c[:-4] in outputs:
            info[c] = ColumnInfo(c, short_name(c), True, CAL_LEGEND)
            continue
        o = outputs.get(c)
        # a plugin score without a registered Output still gets a header; its legend says so
        text = (o.description if o else "") or "no description registered"
        info[c] = ColumnInfo(c, short_name(c), o.higher_is_better if o else None,
                             f"{text}, {units}" if units and c in TRANSFORM_UNITS else text)
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


def gene_sets_text(protocol: Mapping[str, Any]) -> str:
    """The gene sets a protocol card scored as pathways ("NAME@sha12 (N sets, >= 5 panel genes)"),
    "" where it scored none."""
    sets = protocol.get("gene_sets") or {}
    if not isinstance(sets, Mapping) or not sets:
        return ""
    return (f"{sets.get('name')}@{str(sets.get('sha256', ''))[:12]} ({sets.get('n_sets')} sets, "
            f">= {sets.get('min_genes')} panel genes)")


def protocol_line(protocol_json: str) -> str:
    p = json.loads(protocol_json or "{}")
    if not p:
        return ""
    overlap = " (test patient also in train)" if p.get("patient_overlap") else ""
    # only where the cells scored gene sets, so the line of every other board is unchanged
    sets = gene_sets_text(p)
    pathways = f" | pathways {sets}" if sets else ""
    return (f"protocol {p.get('protocol_version')}: target {p.get('target_transform')} | split "
            f"{p.get('split_description', p.get('split'))}{overlap} | panel {p.get('panel_selector')} | "
            f"encoder {p.get('encoder')} | patch {p.get('patch')} | PCC {p.get('pcc_aggregation')}{pathways}")


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


def _row(g, cols: Sequence[str], label: str, key, roles: Mapping[str, str]) -> Row:
    from flag_bench.leaderboard.flags import tuned_on_test
    from flag_bench.metrics.stats import summarize

    stats = {}
    units = unit_means(g, cols)
    for c in cols:
        s = summarize(units[c].to_numpy(dtype=float), level=0.95, seed=0)
        stats[c] = Stat(s.mean, s.std, s.ci_low, s.ci_high, s.n)
    g_, method, config_hash = key
    return Row(label, method, config_hash, joined_labels(g["config_label"]), int(g_), len(g), stats,
               tiny=bool((g["preset"] == "tiny").any()), role=roles.get(method, ""),
               transforms=_transforms(g), tuned_on_test=tuned_on_test(method, sorted(set(g["preset"])),
                                                                      str(g["dataset"].iloc[0])),
               contended=int((g["contended"] > 0).sum()) if "contended" in g.columns else 0)


def unit_means(g, cols: Sequence[str]):
    """Cells of one configuration -> one row per test fold (the unit of replication), each score
    the mean over that fold's seeds (NaN seeds left out): seeds are never independent units."""
    return g.groupby(["dataset", "fold"], sort=True)[list(cols)].mean()


def _transforms(g) -> tuple[str, ...]:
    return tuple(sorted({str(t) for t in g["target_transform"] if t})) if "target_transform" in g.columns else ()


def _rows(frame, cols: tuple[str, ...], labels, metric: str, higher: bool) -> tuple[Row, ...]:
    roles = reference_roles(frame)
    rows = [_row(g, cols, labels[(key[1], key[2])], key, roles)
            for key, g in frame.groupby(["n_genes", "method", "config_hash"], sort=True)]

    def key(r: Row):  # by G, methods before reference rows, then best first, NaN last, then label for ties
        m = r.stats[metric].mean
        ref = 1 if r.role else 0
        if math.isnan(m):
            return (r.n_genes, ref, 1, 0.0, r.label)
        return (r.n_genes, ref, 0, -m if higher else m, r.label)

    return tuple(sorted(rows, key=key))


def _curve(frame, metric: str, labels) -> tuple[tuple[int, ...], tuple[CurveRow, ...]]:
    genes = tuple(sorted(int(g) for g in frame["n_genes"].unique()))
    if len(genes) < 2:
        return genes, ()
    from flag_bench.metrics.stats import bootstrap_ci

    pts: dict[tuple[str, str], dict[int, CurvePoint]] = {}
    values = {key: unit_means(g, [metric])[metric].to_numpy(dtype=float)
              for key, g in frame.groupby(["method", "config_hash", "n_genes"])}
    for r in curves(frame, metric).itertuples(index=False):
        low, high = bootstrap_ci(values[(r.method, r.config_hash, r.n_genes)], level=0.95, seed=0)
        pts.setdefault((r.method, r.config_hash), {})[int(r.n_genes)] = CurvePoint(r.mean, r.std, int(r.n), low, high)
    rows = [CurveRow(labels[k], k[0], k[1], p) for k, p in pts.items()]
    return genes, tuple(sorted(rows, key=lambda r: r.label))


def build(frame, metric: str = "pcc_mean", columns: Sequence[str] | None = None, *, costs: bool = False,
          notes: Notes | None = None, flags: Mapping[str, Sequence[str]] | None = None,
          hardware: Mapping[str, str] | None = None) -> Leaderboard:
    """The results frame (``Results.frame()``) -> the leaderboard sorted by ``metric``.

    ``costs`` adds the cost columns (fit s, predict s, peak MB, params); ``notes`` (failed and
    planned-but-missing cells, from ``notes.gather``) are carried for the renderers to print, and
    ``flags`` (dataset -> warnings, from ``flags.all_flags``) printed under each board;
    ``hardware`` (cell_id -> where it ran, ``Results.hardware``) marks rows computed elsewhere than
    most of their board's cells.
    """
    from flag_bench.leaderboard.flags import hardware_marks

    if frame.empty:
        raise UserError("no finished cells to report; run `flag-bench run` first")
    calibrated = calibrated_scores(frame)
    frame = add_calibration(frame)  # <score>_cal columns: sortable and showable like any score
    metric = resolve(frame, metric)
    check_metric(frame, metric)
    cols = _columns(frame, metric, columns)
    cost_cols = _cost_columns(frame) if costs else ()
    direction = metric_direction()
    higher = direction.get(metric) is not False  # diagnostics and unknown plugin scores: higher first
    labels = config_labels(frame)
    calibrated = tuple(m for m in calibrated if m in cols)  # the calibrated columns of the scores shown
    cal_cols = tuple(cal_name(m) for m in calibrated)
    marks = hardware_marks(frame, hardware or {})
    boards = []
    for ds, g in frame.groupby("dataset", sort=True):
        lines = sorted({protocol_line(p) for p in g["protocol"]} - {""})
        genes, curve = _curve(g, metric, labels)
        rows = _rows(g, (*cols, *cal_cols, *cost_cols), labels, metric, higher)
        if marks.rows:
            rows = tuple(dataclasses.replace(r, hardware=marks.rows.get((str(ds), r.n_genes, r.method, r.config_hash),
                                                                        ())) for r in rows)
        boards.append(DatasetBoard(str(ds), " / ".join(lines), rows, genes, curve,
                                   tuple((flags or {}).get(str(ds), ())), bounds(g, calibrated),
                                   board_verdicts(g, direction), _transforms(g)))
    # the default table's legend also describes the structure scores it leaves out; a --columns choice is the user's
    hidden = () if columns else tuple(column_info([c for c in LEGEND_ALWAYS if c in frame.columns and c not in cols]).values())
    return Leaderboard(metric, cols, {c: direction.get(c) for c in cols}, tuple(boards), cost_cols,
                       column_info(cols, cost_cols, _transforms(frame)), notes or Notes(), calibrated, hidden,
                       marks.legend)
