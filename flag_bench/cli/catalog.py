"""`flag-bench list`: what is registered (built-ins and plugins)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from flag_bench.cli import app
from flag_bench.cli.common import fail
from flag_bench.errors import UserError


@app.command("list")
def list_(
    kind: Optional[str] = typer.Argument(None, help="methods, datasets, metrics, encoders or panels (default all)."),
):
    """List registered methods, datasets, metrics, encoders and panel selectors (built-ins and plugins)."""
    from flag_bench.catalog import ALL

    try:
        kinds = [kind] if kind else list(ALL)
        for k in kinds:
            if k not in ALL:
                raise UserError(f"unknown kind '{k}'; use one of {', '.join(ALL)}")
        out = []
        for k in kinds:
            reg = ALL[k]
            out.append(f"{k}:")
            for name in reg.names():
                origin = reg.origin(name)
                out.append(f"  {name}" + ("" if origin == "built-in" else f"  [{origin}]"))
        sys.stdout.write("\n".join(out) + "\n")
    except UserError as exc:
        fail(str(exc))
