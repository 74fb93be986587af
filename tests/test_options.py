"""Run options are declared once (flag_bench/options.py): the `run` command, the TOML [run] table,
the help's defaults and the grid key all come from RunConfig's declarations. These tests fail when
the command line and the config disagree, and show that a new option is one declaration."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

import pytest
import typer
from typer.main import get_command

from flag_bench.cli import app
from flag_bench.cli.run import COMMAND_ONLY, parse_options, with_options
from flag_bench.config import RunConfig, build_config, grid_spec
from flag_bench.errors import UserError
from flag_bench.options import CSV, CSV_INT, DATASETS, PATH, REPEAT, SWITCH, default_text, flag, option, options

RUN = get_command(app).commands["run"]

# values tried, in order, until one builds a RunConfig that differs from the default
CANDIDATES = {
    SWITCH: [["{f}"], ["--no-{n}"]],
    CSV: [["{f}", "mean,knn"]],
    CSV_INT: [["{f}", "3,4"]],
    DATASETS: [["{f}", "synthetic:n_slides=3,n_genes=40,her2st-mini"]],
    REPEAT: [["{f}", "constraint=a100", "{f}", "exclude=node7"]],
    PATH: [["{f}", "elsewhere/results"]],
}
# options valid only beside another (RunConfig.__post_init__'s cross-field rules)
CONTEXT = {"detach": ["--executor", "slurm"]}
SCALARS = {int: ["3", "7"], float: ["2.5", "56"], str: ["slurm", "hvg", "slide", "cpu", "other-value"]}


def cli_config(args: list[str], cls: type = RunConfig, command=RUN):
    """What the command line gives for ``args``: the run command's parser, then build_config."""
    ctx = command.make_context("run", list(args))
    values = {k: v for k, v in ctx.params.items() if k not in COMMAND_ONLY}
    return build_config(None, parse_options(values, cls)) if cls is RunConfig else cls(
        **{k: v for k, v in parse_options(values, cls).items() if v is not None})


def non_default(name: str, opt, cls: type = RunConfig, command=RUN):
    """(args, config) for the first candidate value of ``name`` that is valid and not the default."""
    if opt.cli in CANDIDATES:
        tries = CANDIDATES[opt.cli]
    elif isinstance(opt.cli_type, type) and issubclass(opt.cli_type, enum.Enum):
        tries = [["{f}", m.value] for m in opt.cli_type]
    else:
        tries = [["{f}", v] for v in SCALARS[opt.cli_type]]
    default = getattr(cls(), name)
    for t in tries:
        args = [a.format(f=flag(name), n=flag(name)[2:]) for a in t] + CONTEXT.get(name, [])
        try:
            cfg = cli_config(args, cls, command)
        except (UserError, typer.BadParameter, Exception):  # noqa: BLE001 - an invalid candidate: try the next
            continue
        if getattr(cfg, name) != default:
            return args, cfg
    raise AssertionError(f"no candidate value for {flag(name)} builds a non-default config")


def test_every_config_field_is_a_run_option_and_nothing_else_is():
    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"method_overrides"}  # [methods.NAME] only
    assert set(options(RunConfig)) == fields
    params = {p.name for p in RUN.params}
    assert params == fields | set(COMMAND_ONLY), params ^ (fields | set(COMMAND_ONLY))


@pytest.mark.parametrize("name", sorted(options(RunConfig)))
def test_the_command_line_and_a_toml_file_set_the_same_field(name, tmp_path):
    opt = options(RunConfig)[name]
    args, from_cli = non_default(name, opt)
    value = getattr(from_cli, name)
    # the same value through the config file's [run] table
    plain = grid_spec_value(value)
    toml = tmp_path / "run.toml"
    context = {k: getattr(from_cli, k) for k in options(RunConfig) if f"--{k}" in CONTEXT.get(name, [])}
    toml.write_text("[run]\n" + "".join(f"{k} = {toml_literal(grid_spec_value(v))}\n"
                                        for k, v in {name: value, **context}.items()))
    from_file = build_config(toml, {})
    assert getattr(from_file, name) == value, (args, plain)
    # every other field stays at its default: the flag sets exactly its own field
    base = RunConfig()
    changed = {f.name for f in dataclasses.fields(RunConfig) if getattr(from_cli, f.name) != getattr(base, f.name)}
    assert changed == {name, *context}, (args, changed)
    # in the grid spec exactly when declared so
    assert (name in grid_spec(from_cli)) == opt.grid


@pytest.mark.parametrize("name", sorted(options(RunConfig)))
def test_help_shows_each_option_with_its_declared_default(name):
    param = next(p for p in RUN.params if p.name == name)
    opt = options(RunConfig)[name]
    assert flag(name) in param.opts
    if opt.show_default:
        assert param.help.endswith(f"(default {default_text(RunConfig, name)}).")
    assert "(default" not in opt.help, "the default is written by options.help_text, not by hand"


def test_config_help_names_the_toml_tables_literally():
    param = next(p for p in RUN.params if p.name == "config")
    assert "[run]" in param.help and "[methods.NAME]" in param.help


def test_a_new_option_is_one_declaration():
    """The example in issue 24's note: one field declared with option() is a flag with its help and
    default, a TOML key, a checked type and a grid key; nothing else is written."""

    @dataclass(frozen=True)
    class WithNote(RunConfig):
        note: str | None = option(None, help="A free-text note kept with the run", default_text="none")

    cmd_app = typer.Typer()
    cmd_app.command("run")(with_options(lambda **kw: None, WithNote))
    cmd_app.command("other")(lambda: None)  # a group, so the command keeps its name
    command = get_command(cmd_app).commands["run"]
    param = next(p for p in command.params if p.name == "note")
    assert param.opts == ["--note"] and param.help == "A free-text note kept with the run (default none)."
    args, cfg = non_default("note", options(WithNote)["note"], WithNote, command)
    assert cfg.note == "slurm" and grid_spec(cfg)["note"] == "slurm"
    with pytest.raises(UserError, match="--note 3: expected str"):
        WithNote(note=3)


def test_wrong_types_from_a_file_name_the_key(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text('[run]\nworkers = "two"\n')
    with pytest.raises(UserError, match=r"bad.toml: \[run\] workers: --workers 'two': expected int"):
        build_config(toml, {})


def grid_spec_value(value):
    from flag_bench.config import plain_value

    return plain_value(value)


def toml_literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_literal(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))

