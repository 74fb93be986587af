"""Every command's --help, rendered at 80 columns, shows each option's full help text."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from flag_bench.cli import app

COMMAND = typer.main.get_command(app)


def _commands():
    yield (), COMMAND
    for name, cmd in sorted(COMMAND.commands.items()):
        yield (name,), cmd


def _flat(text: str) -> str:
    # click wraps at spaces and after hyphens ("built-" / "in"): undo both
    return re.sub(r"-\s+", "-", re.sub(r"\s+", " ", text)).strip()


@pytest.mark.parametrize("path,cmd", list(_commands()), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_help_at_80_columns_keeps_every_option_text(path, cmd):
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0, res.output
    assert all(len(line) <= 80 for line in res.output.splitlines()), res.output
    assert "…" not in res.output
    flat = _flat(res.output)
    for param in cmd.params:
        for opt in getattr(param, "opts", []):
            assert opt in res.output, (opt, res.output)
        help_text = getattr(param, "help", None)
        if help_text:
            assert _flat(help_text) in flat, (help_text, res.output)
    if cmd.help:
        assert _flat(cmd.help.split("\n\n")[0]) in flat


def test_config_help_names_the_toml_tables():
    res = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert "TOML" in res.output and "methods.NAME" in _flat(res.output)
