"""The leaderboard on a terminal (rich), laid out for the console's width.

Nothing is cut and no row wraps: every cell is measured first, and score columns that do not fit
beside the G / method / n columns go to a second block of the same rows (as R and pandas print a
wide frame). The 95% CI is shown when every table still fits in one block with it, or on demand
(``ci=True``); ``ci=False`` never shows it. Under the tables: the tiny-preset warning, a legend
of every column shown, and the failed and planned-but-missing cells.
"""

from __future__ import annotations

import math
from typing import Sequence

from rich.cells import cell_len

from flag_bench.leaderboard import fmt
from flag_bench.leaderboard.calibration import cal_name
from flag_bench.leaderboard.model import (CAL_LEGEND, TINY_WARNING, DatasetBoard, Leaderboard, Row, bound_values,
                                          calibration_note, contended_legend, contended_mark, hardware_legend,
                                          role_label, role_legend, short_name, transform_tag)
from flag_bench.leaderboard.validity import summary_line
from flag_bench.leaderboard.notes import text_lines

SEP = 3  # what box.SIMPLE_HEAD without edges puts between two columns
TINY_MARK = "†"
KEY = ("G", "method", "n")


def arrow(lb: Leaderboard, column: str) -> str:
    arrows: dict[bool | None, str] = {True: "↑", False: "↓"}
    return arrows.get(lb.higher_is_better.get(column), "")


def common_label(board: DatasetBoard) -> str:
    """The config label every row shares ("tiny"): said once in the heading, not on every row."""
    labels = {r.config_label for r in board.rows}
    return next(iter(labels)) if len(labels) == 1 else ""


def row_label(r: Row, common: str) -> str:
    label = r.label.replace(f" ({common})", "", 1) if common else r.label
    return role_label(r, label + (TINY_MARK if r.tiny else ""))


def _value(lb: Leaderboard, r: Row, column: str, detail: str) -> str:
    if column in lb.costs:
        return fmt.cost(column, r.stats[column]) + contended_mark(lb, r, column)
    return fmt.compact(r.stats[column], detail)


def grid(lb: Leaderboard, board: DatasetBoard, detail: str) -> tuple[list[str], list[list[str]]]:
    """Headers and cell texts: the key columns, then every score and cost column."""
    common = common_label(board)
    heads = [*KEY, *(lb.header(c, board) + arrow(lb, c) for c in lb.shown)]
    body = [[str(r.n_genes), row_label(r, common), str(r.cells), *(_value(lb, r, c, detail) for c in lb.shown)]
            for r in board.rows]
    return heads, body


def widths(heads: Sequence[str], body: Sequence[Sequence[str]]) -> list[int]:
    return [max(cell_len(x) for x in [h, *(row[i] for row in body)]) for i, h in enumerate(heads)]


def pack(key: Sequence[int], values: Sequence[int], width: int) -> list[list[int]]:
    """Value column indices in blocks that each fit ``width`` beside the key columns, as even as fits."""
    # rich pads every column by one on each side and puts one space between columns: n columns
    # take their widths plus 3n - 1
    base = sum(key) + SEP * len(key) - 1

    def fits(block: Sequence[int]) -> bool:
        return base + sum(values[i] + SEP for i in block) <= width

    blocks: list[list[int]] = [[]]
    for i in range(len(values)):
        if blocks[-1] and not fits([*blocks[-1], i]):
            blocks.append([])
        blocks[-1].append(i)  # a column wider than the console on its own still gets its own block
    per = math.ceil(len(values) / len(blocks))
    even = [list(range(s, min(s + per, len(values)))) for s in range(0, len(values), per)]
    return even if len(even) == len(blocks) and all(fits(b) for b in even) else blocks


def detail_for(lb: Leaderboard, width: int, ci: bool | None) -> str:
    """'ci' when asked for, or when every table fits in one block with it; else 'std'."""
    if ci is not None:
        return "ci" if ci else "std"
    for board in lb.datasets:
        w = widths(*grid(lb, board, "ci"))
        if len(pack(w[:len(KEY)], w[len(KEY):], width)) > 1:
            return "std"
    return "ci"


def _table(heads: Sequence[str], body: Sequence[Sequence[str]], cols: Sequence[int], tiny: Sequence[bool]):
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1), header_style="bold")
    for i in cols:
        t.add_column(heads[i], justify="left" if heads[i] == "method" else "right", no_wrap=True, overflow="fold")
    for row, is_tiny in zip(body, tiny):
        t.add_row(*(row[i] for i in cols), style="yellow" if is_tiny else None)
    return t


def board_renderables(lb: Leaderboard, board: DatasetBoard, width: int, detail: str) -> list:
    from rich.text import Text

    heads, body = grid(lb, board, detail)
    w = widths(heads, body)
    nk = len(KEY)
    blocks = pack(w[:nk], w[nk:], width)
    common = common_label(board)
    title = f"{board.dataset}: sorted by {lb.header(lb.metric, board)}{arrow(lb, lb.metric)}"
    if common:  # "small", or "small k=50" when every row has the same overrides
        title += f", {'preset' if ' ' not in common else 'config'} {common}"
    title += f"; target {transform_tag(board.transforms)}" if board.transforms else ""
    out: list = []
    tiny = [r.tiny for r in board.rows]
    for i, block in enumerate(blocks):
        head = title if i == 0 else f"{board.dataset} (continued, {i + 1}/{len(blocks)})"
        out += [Text("")] if i else []
        out += [Text(head, style="bold"), _table(heads, body, [*range(nk), *(nk + j for j in block)], tiny)]
    if any(tiny):
        out.append(Text(f"{TINY_MARK} {TINY_WARNING}", style="bold yellow"))
    if board.protocol:
        out.append(Text(board.protocol, style="dim"))
    out += [Text(f"warning: {f}", style="bold yellow") for f in board.flags]
    out += calibration_renderables(lb, board, width, detail)
    if board.curve:
        out += curve_renderables(lb, board, width)
    return out


def calibration_grid(lb: Leaderboard, board: DatasetBoard, detail: str) -> tuple[list[str], list[list[str]], list[bool]]:
    """The calibrated table: each row's calibrated scores, then per G the null and the ceiling (raw)."""
    common = common_label(board)
    heads = [*KEY, *(short_name(cal_name(m)) + "↑" for m in lb.calibrated)]
    body = [[str(r.n_genes), row_label(r, common), str(r.cells),
             *(fmt.compact(r.stats[cal_name(m)], detail) for m in lb.calibrated)] for r in board.rows]
    tiny = [r.tiny for r in board.rows]
    for g in board.genes:
        for what, attr in (("null (raw)", "null"), ("ceiling (raw)", "ceiling")):
            body.append([str(g), what, "", *(fmt.num(v) for v in bound_values(board, g, lb.calibrated, attr))])
            tiny.append(False)
    return heads, body, tiny


def calibration_renderables(lb: Leaderboard, board: DatasetBoard, width: int, detail: str) -> list:
    from rich.text import Text

    out: list = []
    if lb.calibrated:
        heads, body, tiny = calibration_grid(lb, board, detail)
        w = widths(heads, body)
        title = f"{board.dataset}: calibrated scores (0 = best image-free null, 1 = noise ceiling)"
        for i, block in enumerate(pack(w[:len(KEY)], w[len(KEY):], width)):
            out += [Text(""), Text(title if i == 0 else f"{title} (continued)", style="bold"),
                    _table(heads, body, [*range(len(KEY)), *(len(KEY) + j for j in block)], tiny)]
    note = calibration_note(board) if lb.calibrated else ""
    out += [Text(note, style="dim")] if note else []
    out.append(Text(summary_line(board.verdicts, short_name), style="bold" if board.verdicts else "dim"))
    return out


def curve_renderables(lb: Leaderboard, board: DatasetBoard, width: int) -> list:
    from rich.text import Text

    common = common_label(board)
    heads = ["method", *(f"G={g}" for g in board.genes)]
    body = [[r.label.replace(f" ({common})", "", 1) if common else r.label,
             *(fmt.point(r.points[g]) if g in r.points else "" for g in board.genes)] for r in board.curve]
    w = widths(heads, body)
    out: list = [Text(""), Text(f"{board.dataset}: {lb.header(lb.metric, board)} vs G (Gene-Dimension-Curse curve), "
                      "mean over test folds, seeds averaged within each [95% bootstrap CI over folds]", style="bold")]
    for block in pack(w[:1], w[1:], width):
        out.append(_table(heads, body, [0, *(1 + j for j in block)], [False] * len(body)))
    return out


def direction_text(info) -> str:
    way = {True: "higher is better", False: "lower is better"}.get(info.higher_is_better)
    return way or ("not ranked" if info.cost else "diagnostic, not ranked")


def legend(lb: Leaderboard, detail: str) -> list:
    """One line per column shown, from the metrics' registered descriptions and directions."""
    from rich.table import Table
    from rich.text import Text

    t = Table.grid(padding=(0, 2))
    t.add_column(no_wrap=True)
    t.add_column(overflow="fold")
    t.add_row("G", "panel size (genes)")
    t.add_row("n", "finished cells (folds x seeds)")
    for c in lb.shown:
        info = lb.info[c]
        t.add_row(lb.header(c) + arrow(lb, c), f"{c}, {direction_text(info)}: {info.description}")
    for info in lb.hidden:
        t.add_row(f"({info.header})", f"{info.name}, not shown (--columns {info.name}): {info.description}")
    if lb.calibrated:
        t.add_row("<score> cal", CAL_LEGEND)
    for mark, text in (*role_legend(lb), *hardware_legend(lb), *contended_legend(lb)):
        t.add_row(mark, text)
    ci = " [95% bootstrap CI of the mean]" if detail == "ci" else "; --ci adds the 95% bootstrap CI"
    what = "values: mean±std over test folds, seeds averaged within each fold"
    return [Text(f"{what}{ci}; costs: mean" if lb.costs else f"{what}{ci}"), t]


def renderables(lb: Leaderboard, width: int, ci: bool | None = None) -> list:
    """Everything the terminal report prints, in order."""
    from rich.text import Text

    detail = detail_for(lb, width, ci)
    out: list = []
    for i, board in enumerate(lb.datasets):
        out += ([Text("")] if i else []) + board_renderables(lb, board, width, detail)
    out += [Text(""), *legend(lb, detail)]
    notes = text_lines(lb.notes, width)
    out += [Text(""), *(Text(line) for line in notes)] if notes else []
    return out


def print_leaderboard(lb: Leaderboard, console, ci: bool | None = None) -> None:
    # markup off: a label like "flag (small dims=[a])" is text, not a rich style tag
    for item in renderables(lb, console.width, ci):
        console.print(item, markup=False, highlight=False)
