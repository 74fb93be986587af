"""`flag-bench list`, `show` and `check`: what is registered, what one method is, and whether
it keeps the contract.

`list` and `show` read cards and presets without importing torch (built-ins that import it have
torch-free cards and config homes, see flag_bench/catalog.py) and stay under 0.5 s; `check` fits
the method. Output is plain text cut to the terminal's width (80 columns in a pipe), so it reads the
same in a terminal, a log and an issue.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from typing import Optional

import typer

from flag_bench.cli import app
from flag_bench.cli.common import fail
from flag_bench.errors import UserError
from flag_bench.spec import PRESETS as PRESET_ORDER


# the `check` table's name column: the longest check name and a space (tests/test_cli_catalog.py)
CHECK_NAME_WIDTH = 32


def _width() -> int:
    return max(60, shutil.get_terminal_size((80, 24)).columns)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


@app.command("list")
def list_(
    kind: Optional[str] = typer.Argument(None, help="methods, datasets, metrics, encoders, panels or gene_sets (default all)."),
):
    """List registered methods, datasets, metrics, encoders, panel selectors and gene sets (built-ins and plugins)."""
    from flag_bench.catalog import ALL

    try:
        kinds = [kind] if kind else list(ALL)
        for k in kinds:
            if k not in ALL:
                raise UserError(f"unknown kind '{k}'; use one of {', '.join(ALL)}")
        out: list[str] = []
        for k in kinds:
            makers = {"methods": _method_lines, "metrics": _metric_lines}
            out += makers[k]() if k in makers else _name_lines(k)
        sys.stdout.write("\n".join(out) + "\n")
    except UserError as exc:
        fail(str(exc))


def _method_lines() -> list[str]:
    from flag_bench.catalog import METHODS, in_default_run, method_card

    width, names = _width(), METHODS.names()
    pad = max(len(n) for n in names) + 2
    out = ["methods (* = in the default run; `flag-bench show NAME` for details):"]
    for name in names:
        origin = METHODS.origin(name)
        plugin = origin != "built-in"
        why = METHODS.broken(name) if plugin else None
        if why:
            out.append(f"! {name:<{pad}}BROKEN plugin {origin.removeprefix('plugin ')}: {why}")
            continue
        mark = "*" if in_default_run(name) else " "
        text = ("[plugin] " if plugin else "") + method_card(name).description
        out.append(f"{mark} {name:<{pad}}" + _cut(text, width - pad - 3))
    listed = [n for n in names if METHODS.origin(n) == "built-in" or not METHODS.broken(n)]
    tuned = [f"{name} {t.preset}: {_slides(t.test_slides)}" for name in listed
             for t in _tunings(method_card(name)) if t.test_slides]
    if tuned:  # their scores on those slides are optimistic: said here, on every leaderboard and in `show`
        out += textwrap.wrap("presets chosen by their scores on benchmark test slides (flag-bench show):", width)
        out += ["    " + _cut(line, width - 4) for line in tuned]
    return out


def _tunings(card) -> list:
    """The card's Tuning entries in preset order (tiny, small, paper, then any other)."""
    entries = list(getattr(card, "tuned_on", ()) or ())
    order = {p: i for i, p in enumerate(PRESET_ORDER)}
    return sorted(entries, key=lambda t: order.get(t.preset, len(order)))


def _slides(names) -> str:
    """('her2st-mini:C2', 'her2st-mini:C3') -> 'her2st-mini C2, C3'."""
    by: dict[str, list[str]] = {}
    for n in names:
        ds, _, slide = n.partition(":")
        by.setdefault(ds, []).append(slide)
    return "; ".join(f"{ds} {', '.join(slides)}" for ds, slides in by.items())


def _metric_lines() -> list[str]:
    from flag_bench.catalog import METRICS

    width = _width()
    loaded = METRICS.load_all()
    pad = max(len(n) for n in loaded) + 2
    out = ["metrics (score columns of the report and `load_results`, by metric):"]
    for name, metric in loaded.items():
        cols = ", ".join(o.name for o in metric.outputs)
        wrapped = textwrap.wrap(cols, width - pad - 3) or [""]
        out.append(f"  {name:<{pad}}{wrapped[0]}")
        out += [" " * (pad + 2) + line for line in wrapped[1:]]
    for name in METRICS.names():
        if name not in loaded:
            out.append(f"! {name:<{pad}}BROKEN plugin: {METRICS.broken(name)}")
    return out


def _name_lines(kind: str) -> list[str]:
    from flag_bench.catalog import ALL

    reg = ALL[kind]
    names = [n + ("" if reg.origin(n) == "built-in" else f" [{reg.origin(n)}]") for n in reg.names()]
    return [f"{kind}:"] + ["  " + line for line in textwrap.wrap(", ".join(names), _width() - 2)]


@app.command()
def show(method: str = typer.Argument(..., help="A registered method (see flag-bench list methods).")):
    """Show a method's card, its presets with every config value, and the keys one may override."""
    from flag_bench import resolve
    from flag_bench.catalog import METHODS, in_default_run

    try:
        cls = resolve.method(method, light=True)  # a built-in's card and presets without torch
        lines = _card_lines(method, cls.card, METHODS.origin(method), in_default_run(method))
        lines += [""] + _preset_lines(method, cls)
    except UserError as exc:
        fail(str(exc))
        return
    sys.stdout.write("\n".join(lines) + "\n")


def _field(label: str, text: str, width: int) -> list[str]:
    body = textwrap.wrap(" ".join(str(text).split()) or "-", width - 16) or ["-"]
    return [f"  {label:<14}{body[0]}"] + [" " * 16 + line for line in body[1:]]


def _card_lines(name: str, card, origin: str, default: bool) -> list[str]:
    width = _width()
    run = "in the default run" if default else "runs when named in --methods"
    out = [f"{name} ({origin}; {run})"]
    out += ["  " + line for line in textwrap.wrap(card.description, width - 2)]
    out += _field("citation", card.citation or "-", width)
    out += _field("code", card.code_url or "-", width)
    out += _field("needs", ", ".join(sorted(card.needs)) or "nothing", width)
    out += _field("generative", "yes" if card.generative else "no", width)
    out += _field("validation", "carves a validation slide from the training slides" if card.uses_validation
                  else "no validation slide", width)
    out += _field("licence", card.licence or "-", width)
    if not card.pretrained:
        out += _field("pretrained", "none (the run's image encoder is recorded with the run)", width)
    for p in card.pretrained:
        out += _field("pretrained", p.name, width)
        out += _field("  trained on", p.trained_on, width)
        out += _field("  source", p.source or "-", width)
        out += _field("  licence", p.licence or "-", width)
    for key, value in dict(card.extra).items():
        out += _field(str(key), value, width)
    tunings = _tunings(card)
    if not tunings:
        out += _field("tuned on", "not stated by the card", width)
    for t in tunings:
        out += _field(f"{t.preset} tuned", t.on, width)
        out += _field("  compared", t.metric, width)
        if t.test_slides:
            out += _field("  test slides", f"{_slides(t.test_slides)}: their scores chose it, so its scores "
                                           "there are optimistic", width)
        if t.note:
            out += _field("  note", t.note, width)
    return out


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v) if isinstance(v, str) else str(v)


def _preset_lines(name: str, cls) -> list[str]:
    import dataclasses

    from flag_bench.methods.config_types import field_types, type_name

    presets = [p for p in PRESET_ORDER if p in cls.presets] + [p for p in cls.presets if p not in PRESET_ORDER]
    configs = {p: dataclasses.asdict(cls.make_config(p)) for p in presets}
    types = field_types(cls.Config)
    rows = [(k, type_name(types[k]), *(_value(configs[p][k]) for p in presets)) for k in types]
    head = ("key", "type", *presets)
    text = (f"presets (--preset {'/'.join(presets)}); any key below may be overridden, with a value of its "
            f"type, in [methods.{name}] of a --config file:")
    out = textwrap.wrap(text, _width())
    if not rows:
        return [f"presets {'/'.join(presets)}: no config keys, nothing to override"]
    return out + _table(head, rows, _width())


def _table(head: tuple, rows: list[tuple], width: int) -> list[str]:
    """Columns sized to their content; the value columns share what is left and wrap. A value
    the same in every preset is printed once, across the value columns."""
    key_w = max(len(r[0]) for r in [head, *rows]) + 2
    type_w = min(max(len(r[1]) for r in [head, *rows]), 22) + 2
    n_val = len(head) - 2
    val_w = max(8, (width - 2 - key_w - type_w) // max(1, n_val))
    out = []
    for row in [head, *rows]:
        same = row is not head and len(set(row[2:])) == 1 and n_val > 1
        values, widths = (row[2:3], [val_w * n_val]) if same else (row[2:], [val_w] * n_val)
        cells = [_wrap(row[1], type_w - 2)] + [_wrap(v, w - 2) for v, w in zip(values, widths)]
        if same:
            cells[1][-1] += "  (all presets)" if len(cells[1][-1]) + 15 <= widths[0] - 2 else ""
        for i in range(max(len(c) for c in cells)):
            parts = [f"{c[i] if i < len(c) else '':<{w}}" for c, w in zip(cells, [type_w, *widths])]
            out.append(("  " + f"{row[0] if i == 0 else '':<{key_w}}" + "".join(parts)).rstrip())
    return out


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, max(4, width), break_on_hyphens=False) or [""]


@app.command()
def check(method: str = typer.Argument(..., help="A registered method (built-in or plugin).")):
    """Run the method contract on a small synthetic fold (tiny preset) and print a pass/fail table.

    Exit 0 when every check passes, 1 when one fails, 2 for an unknown or broken method.
    """
    from flag_bench.check import FIXTURE, resolve, run_checks

    try:
        cls = resolve(method)
    except UserError as exc:
        fail(str(exc))
        return
    width = _width()
    sys.stdout.write("\n".join(textwrap.wrap(f"flag-bench check {method}: {FIXTURE}", width)) + "\n")
    name_w = CHECK_NAME_WIDTH

    def row(r) -> None:
        detail = textwrap.wrap(r.detail, width - name_w - 8) or [""]
        lines = [f"  {r.status:<6}{r.name:<{name_w}}{detail[0]}".rstrip()]
        lines += [" " * (name_w + 8) + d for d in detail[1:]]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    results = run_checks(method, cls, on_result=row)
    n_fail = sum(r.status == "FAIL" for r in results)
    n_skip = sum(r.status == "skip" for r in results)
    sys.stdout.write(f"{len(results) - n_fail - n_skip} passed, {n_fail} failed, {n_skip} skipped\n")
    raise typer.Exit(1 if n_fail or n_skip else 0)
