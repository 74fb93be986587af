"""`flag-bench list`, `show`, `check` and `--version` through the real command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flag_bench.catalog import METHODS, METRICS, in_default_run, method_card


def cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    full = {**os.environ, "COLUMNS": "80", **(env or {})}
    return subprocess.run([sys.executable, "-m", "flag_bench.cli", *args], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=300)


def n_checks() -> int:
    """How many contract checks `flag-bench check` runs, read from the contract, not written down."""
    from flag_bench.check import resolve
    from flag_bench.check_rules import Contract

    return len(Contract("mean", resolve("mean")).checks())



def test_list_and_show_controls_import_no_torch():
    """The 0.5 s budget: `list` (every kind) reads cards and metric outputs without torch."""
    code = ("import sys; from flag_bench.cli import app\n"
            "for args in (['list'], ['show', 'mean'], ['--version']):\n"
            "    try: app(args)\n"
            "    except SystemExit: pass\n"
            "heavy = sorted(m for m in ('torch', 'sklearn', 'mlflow', 'anndata') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_list_marks_default_run_and_describes_every_method():
    res = cli("list", "methods")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), "cut to the terminal's width"
    for name in METHODS.names():
        line = next(line for line in lines if line[2:].split(" ")[0] == name)
        assert line.startswith("* " if in_default_run(name) else "  "), line
        assert method_card(name).description[:20] in line


def test_list_metric_names_are_the_report_columns():
    res = cli("list", "metrics")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    for name, metric in METRICS.load_all().items():
        line = next(line for line in text.splitlines() if line.split() and line.split()[0] == name)
        for out in metric.outputs:
            assert out.name in text, out.name
        assert metric.outputs[0].name in line
    for column in ("pcc_mean", "mse", "gsc", "ssc", "ssc@32", "ari"):
        assert column in text


def test_show_prints_card_presets_and_typed_keys():
    res = cli("show", "flag")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    card = method_card("flag")
    for text in ("citation", "Si, Wang", card.code_url, "trained on", "patients A, D, E, F, G, H",
                 "in the default run", "[methods.flag]", "tiny", "small", "paper"):
        assert text in out, text
    cls = METHODS.get("flag")
    import dataclasses

    for f in dataclasses.fields(cls.Config):
        assert any(line.split() and line.split()[0] == f.name for line in out.splitlines()), f.name
    assert "int | None" in out and "'x_t' | 'cond'" in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_show_unknown_method_is_one_line_error():
    res = cli("show", "ridgee")
    assert res.returncode == 2
    assert "did you mean 'ridge'" in res.stderr and "Traceback" not in res.stderr


def test_version():
    from flag_bench import PROTOCOL_VERSION, __version__

    res = cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"flag-bench {__version__} (protocol {PROTOCOL_VERSION})"


@pytest.mark.slow
def test_check_passes_on_a_control_and_exit_codes():
    res = cli("check", "mean")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{n_checks()} passed, 0 failed, 0 skipped" in res.stdout
    assert "ignores test truth" in res.stdout
    bad = cli("check", "no-such-method")
    assert bad.returncode == 2 and "unknown method 'no-such-method'" in bad.stderr


@pytest.mark.parametrize("cls, check, reason", [
    ("NaNMethod", "finite values", "slide S01: 1 NaN and 0 infinite values"),
    ("PeekingMethod", "ignores test truth", "the method reads test expression"),
])
@pytest.mark.slow
def test_check_fails_a_broken_method_with_a_named_reason(cls, check, reason, tmp_path):
    """Through a real entry point: the test module's broken methods, installed as a plugin."""
    from tests.test_plugins_broken import write_dist

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    name = {"NaNMethod": "nan-method", "PeekingMethod": "peeking"}[cls]
    write_dist(tmp_path, "contract-breakers", {name: f"test_method_contract:{cls}"})
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), tests_dir, os.environ.get("PYTHONPATH", "")])}
    res = cli("check", name, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    failed = [line for line in res.stdout.splitlines() if line.strip().startswith("FAIL")]
    assert len(failed) == 1 and check in failed[0], res.stdout
    assert reason in " ".join(res.stdout.split()), res.stdout
    assert all(len(line) <= 80 for line in res.stdout.splitlines())


def test_every_check_name_fits_the_check_tables_name_column():
    from flag_bench.check_rules import Contract
    from flag_bench.cli.catalog import CHECK_NAME_WIDTH
    from flag_bench.methods.controls import MeanControl

    names = [name for name, _ in Contract("mean", MeanControl).checks()]
    assert max(map(len, names)) < CHECK_NAME_WIDTH, "a check name runs into its detail in `flag-bench check`"
