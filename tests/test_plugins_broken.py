"""A plugin whose import fails, installed for real (a dist-info on sys.path): `list` marks it
with the reason, naming it in a run is one error before anything runs, other runs go on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SYN = "synthetic:n_slides=4,spots_per_slide=40,n_genes=30,seed=5"


def write_dist(where: Path, dist: str, methods: dict[str, str]) -> None:
    """A minimal installed distribution declaring ``methods`` (name -> "module:attr")."""
    info = where / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in methods.items())
    (info / "entry_points.txt").write_text(f"[flag_bench.methods]\n{lines}")


@pytest.fixture
def broken_env(tmp_path):
    site = tmp_path / "site"
    (site / "broken_plugin_pkg").mkdir(parents=True)
    (site / "broken_plugin_pkg" / "__init__.py").write_text("import flag_bench_missing_dependency\n")
    write_dist(site, "broken-plugin", {"broken": "broken_plugin_pkg:Broken"})
    env = {**os.environ, "COLUMNS": "80",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return env, tmp_path


def cli(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "flag_bench.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_list_marks_the_broken_plugin_with_its_reason(broken_env):
    env, _ = broken_env
    res = cli(env, "list", "methods")
    assert res.returncode == 0, res.stderr
    line = next(line for line in res.stdout.splitlines() if " broken " in line)
    assert line.startswith("! broken")
    assert "BROKEN plugin (broken_plugin_pkg:Broken)" in line
    assert "ModuleNotFoundError: No module named 'flag_bench_missing_dependency'" in line
    assert "mean" in res.stdout and res.stderr == ""


def test_naming_it_in_a_run_is_one_error_before_anything_runs(broken_env):
    env, tmp = broken_env
    results = tmp / "results"
    res = cli(env, "run", "--methods", "broken,mean", "--datasets", SYN, "--genes", "10", "--preset", "tiny",
              "--encoder", "color-stats", "--results-dir", str(results), "--no-progress", cwd=tmp)
    assert res.returncode == 2, res.stdout + res.stderr
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: method plugin 'broken'"), res.stderr
    assert "No module named 'flag_bench_missing_dependency'" in err[0]
    assert "skipped" not in res.stderr and "Warning" not in res.stderr
    assert not (results / "cells").exists() or not any((results / "cells").iterdir())


@pytest.mark.slow
def test_runs_that_do_not_name_it_are_unaffected(broken_env):
    env, tmp = broken_env
    res = cli(env, "run", "--methods", "mean", "--datasets", SYN, "--genes", "10", "--preset", "tiny",
              "--encoder", "color-stats", "--folds", "0", "--results-dir", str(tmp / "results"), "--no-progress",
              cwd=tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 computed" in res.stdout
    assert "broken" not in res.stderr
