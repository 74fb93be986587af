"""`run --dry-run` prints the plan, what is finished and an estimate, and writes nothing;
patch options and bad dataset files fail before any cell."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from flag_bench.cli import app

SYN = "synthetic:n_slides=3,spots_per_slide=40,n_genes=40,seed=3"
BASE = ["run", "--datasets", SYN, "--encoder", "color-stats", "--preset", "tiny", "--device", "cpu",
        "--no-progress", "--methods", "mean,ridge", "--genes", "5,10"]


def _files(root) -> set[str]:
    out = set()
    for dirpath, _, names in os.walk(root):
        out.update(os.path.join(dirpath, n) for n in names)
    return out


def test_dry_run_on_the_default_grid_writes_nothing(tmp_path):
    cache = os.environ["FLAG_BENCH_CACHE"]
    before = _files(cache) if os.path.isdir(cache) else set()
    rd = tmp_path / "results"
    from flag_bench.plan import default_methods

    methods = default_methods()
    n = 5 * len(methods)  # her2st-mini: five leave-one-slide-out folds at G = 50
    res = CliRunner().invoke(app, ["run", "--dry-run", "--results-dir", str(rd)])
    assert res.exit_code == 0, res.output
    assert f"= {n} cells" in res.output and "her2st-mini" in res.output
    for m in methods:
        assert m in res.output
    assert f"0 of {n} cells already finished" in res.output and "encode" in res.output
    assert not rd.exists()
    after = _files(cache) if os.path.isdir(cache) else set()
    assert after == before


@pytest.mark.slow
def test_dry_run_counts_finished_cells_and_estimates_from_records(tmp_path):
    rd = str(tmp_path / "r")
    assert CliRunner().invoke(app, [*BASE, "--results-dir", rd, "--folds", "0"]).exit_code == 0
    snapshot = _files(rd)
    res = CliRunner().invoke(app, [*BASE, "--results-dir", rd, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "4 of 12 cells already finished" in res.output and "8 to run" in res.output
    assert "by earlier records" in res.output
    assert _files(rd) == snapshot


def test_patch_options_are_checked_against_the_dataset_before_any_cell(tmp_path):
    res = CliRunner().invoke(app, ["run", "--methods", "ridge", "--patch-um", "300", "--dry-run",
                                   "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--patch-um 300" in res.output and "112" in res.output
    res = CliRunner().invoke(app, ["run", "--methods", "ridge", "--patch-um", "56", "--patch-px", "112",
                                   "--dry-run", "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output


def test_a_dataset_file_that_is_not_her2st_mini_is_one_line(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    res = CliRunner().invoke(app, ["run", "--methods", "ridge", "--dry-run", "--datasets",
                                   f"her2st-mini:path={bad}", "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert str(bad) in res.output and "not an her2st-mini HDF5 file" in res.output


@pytest.mark.slow
def test_encoding_is_timed_apart_from_the_cells(tmp_path):
    from flag_bench.config import RunConfig
    from flag_bench.driver import Driver

    s = Driver(RunConfig(datasets=(SYN,), methods=("ridge",), genes=(5,), encoder="color-stats", preset="tiny",
                         device="cpu", folds=(0,), results_dir=str(tmp_path / "r")),
               cache_dir=str(tmp_path / "cache")).run()
    assert s.ok == 1 and s.encoding_seconds > 0
    s2 = Driver(RunConfig(datasets=(SYN,), methods=("ridge",), genes=(5,), encoder="color-stats", preset="tiny",
                          device="cpu", folds=(1,), results_dir=str(tmp_path / "r")),
                cache_dir=str(tmp_path / "cache")).run()
    assert s2.ok == 1 and s2.encoding_seconds == 0.0  # cached: nothing encoded again
