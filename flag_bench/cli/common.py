"""Helpers shared by the commands: consoles, one-line errors, list options, RunConfig defaults."""

from __future__ import annotations

from typing import Optional

import typer

from flag_bench.errors import UserError


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def fail(msg: str, code: int = 2) -> None:
    # one line, no traceback: the user can act on it
    from rich.markup import escape

    from flag_bench.redact import redact_text

    # escaped: messages quote TOML tables like [methods.knn], which rich would eat as markup; a URI
    # quoted in a message never shows its password
    console(stderr=True).print(f"[bold red]error:[/bold red] {escape(redact_text(msg))}", soft_wrap=True)
    raise typer.Exit(code)


def csv_list(value: Optional[str], cast=str, what: str = "") -> Optional[tuple]:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UserError(f"{what}: empty list")
    try:
        return tuple(cast(v) for v in items)
    except ValueError:
        raise UserError(f"{what} {value}: expected comma-separated {cast.__name__}s, e.g. {what} 50,200") from None


def dataset_list(value: Optional[str]) -> Optional[tuple]:
    """Datasets are comma-separated and so are their parameters: a 'key=value' chunk without
    a ':' continues the previous dataset (synthetic:n_slides=3,n_genes=500,her2st-mini)."""
    if value is None:
        return None
    out: list[str] = []
    for chunk in filter(None, (c.strip() for c in value.split(","))):
        if "=" in chunk and ":" not in chunk and out:
            out[-1] += "," + chunk
        else:
            out.append(chunk)
    if not out:
        raise UserError("--datasets: empty list")
    return tuple(out)


def default_of(name: str) -> str:
    """A RunConfig default as text, for commands that share a run option (its one declaration)."""
    from flag_bench.config import RunConfig
    from flag_bench.options import default_value

    value = default_value(RunConfig, name)
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
