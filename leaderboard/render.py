"""Renderers of the leaderboard model, in a registry keyed by ReportFormat.

Each renderer is ``(Leaderboard, width) -> str``; an HTML renderer is one more entry in RENDERERS.
``print_leaderboard`` draws the same rich tables as ``render(lb, ReportFormat.TABLE)``, in colour,
on a live console.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Callable

from flag_bench.leaderboard.model import LEGEND, DatasetBoard, Leaderboard, Row, Stat
from flag_bench.spec import ReportFormat

DEFAULT_WIDTH = 160  # a table written to a file or a pipe: no terminal to ask


def _num(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3f}"


def _stat(s: Stat, sep: str = " ") -> str:
    if not math.isfinite(s.mean):
        return "n/a"
    txt = f"{s.mean:.3f}" + (f" ± {s.std:.3f}" if math.isfinite(s.std) else "")
    if math.isfinite(s.ci_low):
        txt += f"{sep}[{s.ci_low:.3f}, {s.ci_high:.3f}]"
    return txt


def _head(lb: Leaderboard, c: str) -> str:
    arrow = {True: " ↑", False: " ↓"}.get(lb.higher_is_better.get(c), "")
    return c + arrow


def _curve_cells(board: DatasetBoard) -> list[tuple[str, list[str]]]:
    return [(r.label, [_num(r.points[g].mean) if g in r.points else "" for g in board.genes]) for r in board.curve]


def _curve_title(lb: Leaderboard) -> str:
    return f"Gene-Dimension-Curse curve: {lb.metric} vs G, mean over folds and seeds"


# -- terminal (rich) ----------------------------------------------------------------------------
def _rich_tables(lb: Leaderboard) -> list:
    """Renderables in print order: tables, and the curve headings as plain strings."""
    from rich.table import Table

    out = []
    for board in lb.datasets:
        t = Table(title=f"{board.dataset}: sorted by {_head(lb, lb.metric)}", caption=board.protocol,
                  caption_justify="left")
        for h in ["G", "method", "cells", *(_head(lb, c) for c in lb.columns)]:
            t.add_column(h, justify="left" if h == "method" else "right")
        for r in board.rows:
            t.add_row(str(r.n_genes), r.label, str(r.cells), *(_stat(r.stats[c], "\n") for c in lb.columns))
        out.append(t)
        if board.curve:
            out.append(f"{board.dataset}: {_curve_title(lb)}")  # a title would wrap to the narrow table
            ct = Table()
            ct.add_column("method")
            for g in board.genes:
                ct.add_column(f"G={g}", justify="right")
            for label, cells in _curve_cells(board):
                ct.add_row(label, *cells)
            out.append(ct)
    return out


def print_leaderboard(lb: Leaderboard, console) -> None:
    # markup off: a label like "flag (small dims=[a])" is text, not a rich style tag
    for t in _rich_tables(lb):
        console.print(t, markup=False, highlight=False)
    console.print(LEGEND, markup=False, highlight=False)


def to_table(lb: Leaderboard, width: int | None = None) -> str:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width or DEFAULT_WIDTH, color_system=None, force_terminal=False,
                      highlight=False, emoji=False)
    print_leaderboard(lb, console)
    return buf.getvalue()


# -- markdown -----------------------------------------------------------------------------------
def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def to_markdown(lb: Leaderboard, width: int | None = None) -> str:
    out = []
    for board in lb.datasets:
        out.append(f"## {board.dataset}\n\n{board.protocol}\n")
        head = ["G", "method", "cells", *(_head(lb, c) for c in lb.columns)]
        out += [_md_row(head), "|" + "---|" * len(head)]
        out += [_md_row([str(r.n_genes), r.label, str(r.cells), *(_stat(r.stats[c]) for c in lb.columns)])
                for r in board.rows]
        out.append("")
        if board.curve:
            out.append(f"{_curve_title(lb)}\n")
            out += [_md_row(["method", *(f"G={g}" for g in board.genes)]), "|---|" + "---|" * len(board.genes)]
            out += [_md_row([label, *cells]) for label, cells in _curve_cells(board)]
            out.append("")
    out.append(LEGEND)
    return "\n".join(out) + "\n"


# -- csv ----------------------------------------------------------------------------------------
def _csv_num(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else ""


def _csv_row(board: DatasetBoard, r: Row, lb: Leaderboard) -> list[str]:
    cells = [board.dataset, str(r.n_genes), r.method, r.label, r.config_label, r.config_hash, str(r.cells)]
    for c in lb.columns:
        s = r.stats[c]
        cells += [_csv_num(s.mean), _csv_num(s.std), _csv_num(s.ci_low), _csv_num(s.ci_high), str(s.n)]
    return cells


def to_csv(lb: Leaderboard, width: int | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["dataset", "n_genes", "method", "label", "config_label", "config_hash", "cells"]
    for c in lb.columns:
        head += [c, f"{c}_std", f"{c}_ci_low", f"{c}_ci_high", f"{c}_n"]
    w.writerow(head)
    for board in lb.datasets:
        w.writerows(_csv_row(board, r, lb) for r in board.rows)
    return buf.getvalue()


Renderer = Callable[[Leaderboard, "int | None"], str]
RENDERERS: dict[ReportFormat, Renderer] = {
    ReportFormat.TABLE: to_table,
    ReportFormat.MARKDOWN: to_markdown,
    ReportFormat.CSV: to_csv,
}


def render(lb: Leaderboard, fmt: ReportFormat | str, *, width: int | None = None) -> str:
    """The leaderboard as text in ``fmt``; ``width`` matters to the terminal table only."""
    return RENDERERS[ReportFormat.parse(fmt, "--format")](lb, width)
