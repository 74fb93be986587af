"""The command line as a user meets it: help, list, one-line errors with exit code 2, report,
and a kill -9 in the middle of a grid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from flag_bench.cli import app

SYN = "synthetic:n_slides=3,spots_per_slide=60,n_genes=80,seed=3"
BASE = ["run", "--datasets", SYN, "--encoder", "color-stats", "--preset", "tiny", "--device", "cpu", "--no-progress"]
runner = CliRunner()


def _one_line_error(res, *fragments):
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert "Traceback" not in text
    assert text.startswith("error:"), text
    for f in fragments:
        assert f in text, text


def test_help_and_list():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "run" in res.output and "report" in res.output
    res = runner.invoke(app, ["list", "methods"])
    assert res.exit_code == 0 and "ridge" in res.output and "flag" in res.output


@pytest.mark.parametrize("args,fragments", [
    (["--methods", "ridgee"], ["did you mean 'ridge'"]),
    (["--genes", "0"], ["--genes 0"]),
    (["--genes", "500"], ["only 80 candidate genes"]),
    (["--genes", "abc"], ["--genes abc"]),
    (["--panel", "hmvg"], ["did you mean 'hmhvg'"]),
    (["--device", "cuda"], ["no CUDA device"]),
    (["--split", "random"], ["--split random: unknown"]),
    (["--datasets", "synthetic:n_slidez=3"], ["n_slidez"]),
])
def test_bad_run_input_is_one_line_exit_2(tmp_path, args, fragments):
    res = runner.invoke(app, [*BASE, "--results-dir", str(tmp_path / "r"), *args])
    _one_line_error(res, *fragments)


def test_unwritable_results_dir(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    res = runner.invoke(app, [*BASE, "--results-dir", str(f / "x")])
    _one_line_error(res, "not writable")


def test_config_file_unknown_key_and_cli_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\nmethods = ["mean"]\ngenez = [5]\n')
    res = runner.invoke(app, [*BASE, "--results-dir", str(tmp_path / "r"), "--config", str(cfg)])
    _one_line_error(res, "genez", "c.toml")
    cfg.write_text('[run]\nmethods = ["knn"]\ngenes = [5]\nfolds = [0]\n[methods.knn]\nk = 3\n')
    res = runner.invoke(app, [*BASE, "--results-dir", str(tmp_path / "r"), "--config", str(cfg), "--methods", "mean"])
    assert res.exit_code == 0, res.output
    assert "1 computed" in res.output  # the CLI's --methods won over the file


def test_a_failed_cells_message_keeps_its_toml_table(tmp_path):
    """The fix a failure names ("set [methods.histogene] n_pos = ...") is printed whole, not eaten
    as console markup."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[methods.histogene]\nn_pos = 1\n")
    res = runner.invoke(app, [*BASE, "--results-dir", str(tmp_path / "r"), "--config", str(cfg),
                              "--methods", "histogene", "--genes", "5", "--folds", "0"])
    assert res.exit_code == 1 and "1 failed" in res.output, res.output
    assert "set [methods.histogene] n_pos = " in " ".join(res.output.split()), res.output


@pytest.mark.slow
def test_run_then_report_formats(tmp_path):
    rd = str(tmp_path / "r")
    res = runner.invoke(app, [*BASE, "--results-dir", rd, "--methods", "mean,ridge", "--genes", "5,10"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["report", "--results-dir", rd, "--format", "markdown"])
    assert res.exit_code == 0, res.output
    assert "| 5 | ridge (tiny) |" in res.stdout and "Gene-Dimension-Curse" in res.stdout
    assert "protocol p2: target log1p" in res.stdout
    res = runner.invoke(app, ["report", "--results-dir", rd, "--format", "csv", "--source", "store"])
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("dataset,n_genes,method") and len(lines) == 5
    res = runner.invoke(app, ["report", "--results-dir", rd])
    assert res.exit_code == 0 and "ridge" in res.output
    res = runner.invoke(app, ["report", "--results-dir", rd, "--metric", "nope"])
    _one_line_error(res, "--metric nope")
    res = runner.invoke(app, ["report", "--results-dir", str(tmp_path / "empty")])
    _one_line_error(res, "no results")


@pytest.mark.slow
def test_kill_9_mid_grid_loses_no_finished_cell(tmp_path):
    rd = tmp_path / "r"
    cmd = [sys.executable, "-m", "flag_bench.cli", *BASE, "--results-dir", str(rd),
           "--methods", "mean,ridge,knn", "--genes", "5,10,20"]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    cells = rd / "cells"
    deadline = time.time() + 120
    while time.time() < deadline:
        if cells.exists() and len(list(cells.glob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.stem for p in cells.glob("*.json")}
    assert len(done) >= 3
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(done)} already finished" in res.stdout
    assert len(list(cells.glob("*.json"))) == 27
