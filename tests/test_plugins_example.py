"""The example plugin under examples/ installs with pip (editable, no network), passes
`flag-bench check`, and runs in a grid through the command line next to a built-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flag-bench-example-plugin"
DIST = "flag-bench-example-plugin"
SYN = "synthetic:n_slides=4,spots_per_slide=40,n_genes=30,seed=5"


def _pip(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed():
    """Installed into this interpreter's environment; uninstalled after unless it was there before."""
    was_there = _pip("show", DIST).returncode == 0
    res = _pip("install", "--no-deps", "--no-build-isolation", "-e", str(EXAMPLE))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    yield
    if not was_there:
        _pip("uninstall", "-y", DIST)


def cli(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "flag_bench.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)

def n_checks() -> int:
    """How many contract checks `flag-bench check` runs, read from the contract, not written down."""
    from flag_bench.check import resolve
    from flag_bench.check_rules import Contract

    return len(Contract("mean", resolve("mean")).checks())



@pytest.mark.slow
def test_example_plugin_is_listed_checked_and_runs(installed, tmp_path):
    listed = cli("list", "methods")
    line = next(line for line in listed.stdout.splitlines() if "example-smoother" in line)
    assert line.startswith("  example-smoother") and "[plugin]" in line, line  # not in the default run

    checked = cli("check", "example-smoother")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{n_checks()} passed, 0 failed, 0 skipped" in checked.stdout

    shown = cli("show", "example-smoother")
    assert shown.returncode == 0 and "max_train_spots" in shown.stdout and "int | None" in shown.stdout

    results = tmp_path / "results"
    ran = cli("run", "--methods", "example-smoother,mean", "--datasets", SYN, "--genes", "10", "--preset", "tiny",
              "--encoder", "color-stats", "--folds", "0", "--results-dir", str(results), "--no-progress",
              cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2 computed" in ran.stdout
    records = [json.loads(p.read_text()) for p in (results / "cells").glob("*.json")]
    mine = [r for r in records if "example-smoother" in json.dumps(r.get("cell", r))]
    assert mine, "the plugin's cell was recorded"
    assert "n_train_spots" in json.dumps(mine[0])  # its summary travels with the record
