"""Renderers of the leaderboard model, in a registry keyed by ReportFormat.

Each renderer is ``(Leaderboard, RenderOptions) -> str``; an HTML renderer is one more entry in
RENDERERS. The terminal table (``terminal.py``) fits the width it is given; Markdown keeps the full
"mean ± std [CI]" cells and lists the legend and notes; CSV is for machines: full precision, the
table only; JSON is for machines too: the board rows and every statistical test per dataset x G x
metric (``RenderOptions.tests``, from ``stats.ranked_tests``), NaN written as null.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from flag_bench.errors import UserError
from flag_bench.leaderboard import fmt
from flag_bench.leaderboard.calibration import cal_name
from flag_bench.leaderboard.model import (CAL_LEGEND, LEGEND, TINY_WARNING, DatasetBoard, Leaderboard, Row, Stat,
                                          bound_values, calibration_note, contended_legend, contended_mark,
                                          hardware_legend, role_label,
                                          transform_tag, role_legend, short_name)
from flag_bench.leaderboard.validity import summary_line
from flag_bench.leaderboard.notes import text_lines
from flag_bench.leaderboard.terminal import TINY_MARK, arrow, direction_text, print_leaderboard
from flag_bench.spec import ReportFormat

DEFAULT_WIDTH = 160  # a table asked for without a width (the library API): no terminal to ask
MARKDOWN_WIDTH = 80  # where a Markdown note (a rerun command) breaks: the file must not depend on a terminal


@dataclass(frozen=True)
class RenderOptions:
    width: int | None = None  # the terminal table's width
    ci: bool | None = None  # the terminal's 95% CI: None when it fits, True always, False never
    tests: Sequence[Any] = ()  # JSON: the stats.MetricTests to write beside the rows (stats.ranked_tests)


# -- terminal (rich, no colour) -----------------------------------------------------------------
def to_table(lb: Leaderboard, opts: RenderOptions) -> str:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=opts.width or DEFAULT_WIDTH, color_system=None, force_terminal=False,
                      highlight=False, emoji=False)
    print_leaderboard(lb, console, ci=opts.ci)
    return buf.getvalue()


# -- markdown -----------------------------------------------------------------------------------
def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md_cell(lb: Leaderboard, r: Row, c: str) -> str:
    if c in lb.costs:
        return fmt.cost(c, r.stats[c], with_std=True) + contended_mark(lb, r, c)
    return fmt.full(r.stats[c])


def _md_board(lb: Leaderboard, board: DatasetBoard) -> list[str]:
    out = [f"## {board.dataset}\n\n{board.protocol}\n"]
    out += [f"**warning**: {f}\n" for f in board.flags]
    head = ["G", "method", "cells", *(lb.header(c, board) + " " + arrow(lb, c) for c in lb.shown)]
    out += [_md_row([h.strip() for h in head]), "|" + "---|" * len(head)]
    # the label says "(tiny)" already; a mark in it would break a reader's match on the label
    out += [_md_row([str(r.n_genes), role_label(r), str(r.cells),
                     *(_md_cell(lb, r, c) for c in lb.shown)]) for r in board.rows]
    out.append("")
    if any(r.tiny for r in board.rows):
        out += [f"**{TINY_MARK} rows labelled (tiny): {TINY_WARNING}**", ""]
    out += _md_calibration(lb, board)
    if board.curve:
        out.append(f"Gene-Dimension-Curse curve: {lb.header(lb.metric, board)} vs G, mean over test folds, "
                   "seeds averaged within each [95% bootstrap CI over folds]\n")
        out += [_md_row(["method", *(f"G={g}" for g in board.genes)]), "|---|" + "---|" * len(board.genes)]
        out += [_md_row([r.label, *(fmt.point(r.points[g]) if g in r.points else "" for g in board.genes)])
                for r in board.curve]
        out.append("")
    return out


def _md_calibration(lb: Leaderboard, board: DatasetBoard) -> list[str]:
    out = []
    if lb.calibrated:
        out.append("Calibrated scores (0 = best image-free null of the fold, 1 = noise ceiling):\n")
        head = ["G", "method", "cells", *(short_name(cal_name(m)) + " ↑" for m in lb.calibrated)]
        out += [_md_row(head), "|" + "---|" * len(head)]
        out += [_md_row([str(r.n_genes), role_label(r), str(r.cells),
                         *(fmt.full(r.stats[cal_name(m)]) for m in lb.calibrated)]) for r in board.rows]
        for g in board.genes:
            for what, attr in (("null (raw, best image-free control)", "null"), ("ceiling (raw, split-half)", "ceiling")):
                out.append(_md_row([str(g), f"*{what}*", "",
                                    *(fmt.num(v) for v in bound_values(board, g, lb.calibrated, attr))]))
        out.append("")
        note = calibration_note(board)
        out += [note, ""] if note else []
    out += [f"**{summary_line(board.verdicts, short_name)}**", ""]
    return out


def _md_legend(lb: Leaderboard) -> list[str]:
    out = [f"{LEGEND}. Columns:", "", "- **G**: panel size (genes); **cells**: finished cells (folds x seeds)"]
    for c in lb.shown:
        info = lb.info[c]
        head = f"**{lb.header(c)}** {arrow(lb, c)}".rstrip()
        out.append(f"- {head} (`{c}`, {direction_text(info)}): {info.description}")
    for info in lb.hidden:
        out.append(f"- ({info.header}) (`{info.name}`, not shown: `--columns {info.name}`): {info.description}")
    if lb.calibrated:
        out.append(f"- **<score> cal**: {CAL_LEGEND}")
    out += [f"- {mark}: {text}" for mark, text in (*role_legend(lb), *hardware_legend(lb))]
    # a bare * would open Markdown emphasis
    out += [f"- \\{mark}: {text}" for mark, text in contended_legend(lb)]
    return out


def to_markdown(lb: Leaderboard, opts: RenderOptions) -> str:
    out: list[str] = []
    for board in lb.datasets:
        out += _md_board(lb, board)
    out += _md_legend(lb)
    notes = text_lines(lb.notes, MARKDOWN_WIDTH)
    if notes:
        out += ["", "```text", *notes, "```"]
    return "\n".join(out) + "\n"


# -- csv ----------------------------------------------------------------------------------------
def _csv_num(v: float, integer: bool = False) -> str:
    if not math.isfinite(v):
        return ""
    return str(int(v)) if integer and float(v).is_integer() else repr(float(v))


def _csv_stat(s: Stat, integer: bool) -> list[str]:
    return [_csv_num(s.mean, integer), _csv_num(s.std), _csv_num(s.ci_low), _csv_num(s.ci_high), str(s.n)]


def _csv_row(board: DatasetBoard, r: Row, lb: Leaderboard) -> list[str]:
    cells = [board.dataset, str(r.n_genes), r.method, r.label, r.role, r.config_label, r.config_hash, str(r.cells)]
    for c in lb.shown:
        cells += _csv_stat(r.stats[c], integer=c in fmt.INT_COSTS)
    for m in lb.calibrated:
        b = board.bounds.get((r.n_genes, m))
        cells += [*_csv_stat(r.stats[cal_name(m)], False), _csv_num(b.null if b else math.nan),
                  _csv_num(b.ceiling if b else math.nan)]
    for m in VERDICT_COLUMNS:
        v = board.verdicts.get(m)
        cells.append("" if v is None or v.sensitive is None else ("yes" if v.sensitive else "no"))
    # the units of mse/mae, and the test slides whose scores chose the row's preset (its card)
    cells += [transform_tag(r.transforms), " ".join(r.tuned_on_test)]
    # with the costs: whether (and in how many cells) they were timed on a busy machine
    cells += ["yes" if r.contended else "no", str(r.contended)] if lb.costs else []
    # rows computed on other hardware than most of their board's cells (--from bundles only)
    hw = dict(lb.hardware)
    return cells + (["; ".join(hw[m] for m in r.hardware)] if lb.hardware else [])


# the location-sensitivity verdict of these scores, one CSV column each (empty: not assessed)
VERDICT_COLUMNS = ("pcc_mean", "mse", "gsc", "gsc_cpm", "ssc", "ssc_spot", "lee_l")


def to_csv(lb: Leaderboard, opts: RenderOptions) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["dataset", "n_genes", "method", "label", "role", "config_label", "config_hash", "cells"]
    for c in lb.shown:
        head += [c, f"{c}_std", f"{c}_ci_low", f"{c}_ci_high", f"{c}_n"]
    for m in lb.calibrated:
        c = cal_name(m)
        head += [c, f"{c}_std", f"{c}_ci_low", f"{c}_ci_high", f"{c}_n", f"{m}_null", f"{m}_ceiling"]
    head += [f"{m}_location_sensitive" for m in VERDICT_COLUMNS]
    head += ["target_transform", "tuned_on_test_slides"]
    head += ["contended", "contended_cells"] if lb.costs else []
    head += ["other_hardware"] if lb.hardware else []
    w.writerow(head)
    for board in lb.datasets:
        w.writerows(_csv_row(board, r, lb) for r in board.rows)
    return buf.getvalue()


# -- json ---------------------------------------------------------------------------------------
def json_safe(obj):
    """Plain data with NaN and inf as None (JSON has no NaN) and numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()  # numpy scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json_stat(s: Stat) -> dict:
    return {"mean": s.mean, "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n}


def _json_row(board: DatasetBoard, r: Row, lb: Leaderboard) -> dict:
    """What a CSV row holds, as nested data."""
    cal = {}
    for m in lb.calibrated:
        b = board.bounds.get((r.n_genes, m))
        cal[cal_name(m)] = {**_json_stat(r.stats[cal_name(m)]), "null": b.null if b else math.nan,
                            "ceiling": b.ceiling if b else math.nan}
    verdicts = {m: (None if v is None else v.sensitive) for m in VERDICT_COLUMNS for v in [board.verdicts.get(m)]}
    busy = {"contended": bool(r.contended), "contended_cells": r.contended} if lb.costs else {}
    return {"dataset": board.dataset, "n_genes": r.n_genes, "method": r.method, "label": r.label, "role": r.role,
            "config_label": r.config_label, "config_hash": r.config_hash, "cells": r.cells, "tiny": r.tiny,
            "scores": {c: _json_stat(r.stats[c]) for c in lb.shown}, "calibrated": cal,
            "location_sensitive": verdicts, "target_transform": transform_tag(r.transforms),
            "tuned_on_test_slides": list(r.tuned_on_test), **busy,
            **({"other_hardware": [dict(lb.hardware)[m] for m in r.hardware]} if lb.hardware else {})}


def to_json(lb: Leaderboard, opts: RenderOptions) -> str:
    from flag_bench.leaderboard.stats import tests_as_data

    doc = {"metric": lb.metric, "columns": list(lb.columns), "costs": list(lb.costs),
           "calibrated": list(lb.calibrated), "legend": LEGEND,
           **({"hardware_marks": dict(lb.hardware)} if lb.hardware else {}),
           "boards": [{"dataset": b.dataset, "protocol": b.protocol, "flags": list(b.flags),
                       "rows": [_json_row(b, r, lb) for r in b.rows]} for b in lb.datasets],
           "tests": [tests_as_data(t) for t in opts.tests]}
    return json.dumps(json_safe(doc), indent=1, allow_nan=False, ensure_ascii=False) + "\n"


Renderer = Callable[[Leaderboard, RenderOptions], str]
# formats drawn from the results, not only the leaderboard: content.build_content, then html.py
FIGURE_FORMATS = frozenset({ReportFormat.HTML, ReportFormat.PNG, ReportFormat.SVG})
RENDERERS: dict[ReportFormat, Renderer] = {
    ReportFormat.TABLE: to_table,
    ReportFormat.MARKDOWN: to_markdown,
    ReportFormat.CSV: to_csv,
    ReportFormat.JSON: to_json,
}


def render(lb: Leaderboard, fmt_: ReportFormat | str, *, width: int | None = None, ci: bool | None = None,
           tests: Sequence[Any] = ()) -> str:
    """The leaderboard as text in ``fmt_``; ``width`` and ``ci`` matter to the terminal table only,
    ``tests`` (``stats.ranked_tests`` of the results frame) to JSON only.

    html, png and svg draw from the results too (maps, per-gene views): ``content.build_content``
    then ``html.render_html``, as ``flag-bench report`` does.
    """
    f = ReportFormat.parse(fmt_, "--format")
    if f in FIGURE_FORMATS:
        raise UserError(f"--format {f}: needs the results, not only the leaderboard; use "
                        "flag_bench.leaderboard.content.build_content and html.render_html")
    return RENDERERS[f](lb, RenderOptions(width, ci, tuple(tests)))
