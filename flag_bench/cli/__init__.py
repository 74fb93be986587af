"""The `flag-bench` command line (typer), one module per group of commands.

Heavy imports (torch, MLflow, anndata) happen inside commands, so `--help`, `list` and `show`
stay fast. Help is click's plain text (no rich markup), so nothing in a help string is eaten as
markup and it wraps to the terminal's width instead of truncating words at 80 columns.
"""

from __future__ import annotations

import typer

from flag_bench.cli.common import fail
from flag_bench.errors import UserError

app = typer.Typer(
    name="flag-bench",
    help="Benchmark H&E -> spatial gene expression methods (FLAG, Stem, controls) on leakage-safe grids.",
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _version(value: bool) -> None:
    if value:
        from flag_bench import PROTOCOL_VERSION, __version__

        typer.echo(f"flag-bench {__version__} (protocol {PROTOCOL_VERSION})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and the protocol version, then exit."),
) -> None:
    """Benchmark H&E -> spatial gene expression methods (FLAG, Stem, controls) on leakage-safe grids."""


# imported in the order `--help` lists the commands: the first hour first
from flag_bench.cli import run, report, bundle, reproduce, predict, data, cache, catalog, cluster  # noqa: E402,F401,I001  (register the commands)


def main() -> None:
    # before any command imports torch or numpy: OpenMP and OpenBLAS read their wait settings once,
    # when they load (flag_bench/cluster/threads.py); and the first look at the machine's load
    from flag_bench.cluster import load, threads

    threads.apply_wait_policy()
    load.start_watching()
    try:
        app()
    except UserError as exc:  # pragma: no cover - commands catch their own
        fail(str(exc))
