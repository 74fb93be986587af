"""One declaration per run option: its name, type, default, help and whether it enters the grid.

A ``RunConfig`` field declared with :func:`option` carries an :class:`Option` in its metadata, and
everything else is derived from the field: the command-line flag (``--name-with-dashes``), the
value type the command line parses, the "(default ...)" in the help, the TOML ``[run]`` key and the
converter that checks its value, and whether the key is part of the grid spec (what a run
computes) or only of how it runs. ``flag_bench/cli/run.py`` builds the ``run`` command from these
declarations; ``tests/test_options.py`` fails when the command line and the config disagree.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from flag_bench.errors import UserError

# how the command line spells a value; the config converter turns it into the field's type
CSV = "csv"  # comma-separated names: a tuple of str
CSV_INT = "csv-int"  # comma-separated integers
DATASETS = "datasets"  # comma-separated datasets whose parameters are comma-separated too
REPEAT = "repeat"  # a repeatable option: a tuple of str
SWITCH = "switch"  # --name/--no-name
PATH = "path"
SCALAR = "scalar"  # one str, int, float or enum value, by the field's type


@dataclass(frozen=True)
class Option:
    help: str
    # a command-line or TOML value -> the field's type, UserError if wrong (None: a scalar of cli_type)
    convert: Callable[[Any], Any] | None = None
    cli: str = SCALAR
    cli_type: Any = str  # what the command line parses before ``convert`` (str, int, float, an Enum)
    short: str | None = None  # e.g. "-d"
    grid: bool = True  # part of what a run computes (the grid spec), not of where or how it runs
    default_text: str | None = None  # shown as "(default ...)" instead of the field's default value
    show_default: bool = True


def option(default: Any = None, *, help: str, convert: Callable[[Any], Any] | None = None, cli: str = SCALAR,
           cli_type: Any = None, short: str | None = None, grid: bool = True, default_text: str | None = None,
           show_default: bool = True, factory: Callable[[], Any] | None = None) -> Any:
    """A RunConfig field that is also a run option (see the module docstring)."""
    if cli_type is None:
        cli_type = type(default) if isinstance(default, (bool, int, float, str, enum.Enum)) else str
    meta = {"option": Option(help=help, convert=convert, cli=cli, cli_type=cli_type,
                             short=short, grid=grid, default_text=default_text, show_default=show_default)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def options(cls: type) -> dict[str, Option]:
    """Field name -> Option, in declaration order, for every option of a config dataclass."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(cls) if "option" in f.metadata}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def default_value(cls: type, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def default_text(cls: type, name: str) -> str:
    """The default as help shows it: the declared text, else the value (lists comma-separated)."""
    opt = options(cls)[name]
    if opt.default_text is not None:
        return opt.default_text
    value = default_value(cls, name)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def help_text(cls: type, name: str) -> str:
    opt = options(cls)[name]
    if not opt.show_default:
        return opt.help
    return f"{opt.help.rstrip('.')} (default {default_text(cls, name)})."


@functools.cache
def converters(cls: type) -> dict[str, Callable[[Any], Any]]:
    return {name: opt.convert or typed(opt.cli_type, flag(name)) for name, opt in options(cls).items()}


def not_grid_keys(cls: type) -> tuple[str, ...]:
    return tuple(name for name, opt in options(cls).items() if not opt.grid)


# -- converters: a value from the command line or a TOML file -> the field's type ----------------
def typed(kind: type, what: str | None = None) -> Callable[[Any], Any]:
    """A scalar of ``kind`` (an int is accepted for a float; a bool is never an int)."""
    def convert(value: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            raise UserError(f"{what} {value!r}: expected {kind.__name__}")
        return value

    return convert


def ints(what: str) -> Callable[[Any], tuple[int, ...]]:
    def convert(value: Any) -> tuple[int, ...]:
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise UserError(f"{what} {list(items)}: expected a list of integers, e.g. {what} 50,200")
        return tuple(items)

    return convert


def strs(what: str) -> Callable[[Any], tuple[str, ...]]:
    def convert(value: Any) -> tuple[str, ...]:
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(not isinstance(v, str) for v in items):
            raise UserError(f"{what} {list(items)}: expected a list of names")
        return tuple(items)

    return convert


def key_values(what: str, example: str) -> Callable[[Any], dict[str, str]]:
    """key=value strings (a repeatable option) or a TOML table of strings."""

    def convert(value: Any) -> dict[str, str]:
        if isinstance(value, Mapping):
            items = list(value.items())
        else:
            items = []
            for kv in value if isinstance(value, (list, tuple)) else [value]:
                if not isinstance(kv, str) or "=" not in kv or not kv.split("=", 1)[0].strip():
                    raise UserError(f"{flag(what)} {kv!r}: expected key=value, e.g. {flag(what)} {example}")
                k, v = kv.split("=", 1)
                items.append((k.strip(), v.strip()))
        out = {}
        for k, v in items:
            if not isinstance(k, str) or isinstance(v, (dict, list)):
                raise UserError(f"{what} {k!r}: expected key = \"value\" pairs")
            out[k] = str(v)
        return out

    return convert
