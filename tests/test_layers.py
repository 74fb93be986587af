"""The layer contract of docs/design.md §1, kept by import-linter (``[tool.importlinter]`` in
pyproject.toml, run by scripts/lint_layers.py on the installed layout): an import that points up
a layer, or along an arrow the design says never (the leaderboard or the tracker importing
methods, the leaderboard loading datasets, ...), fails here, at a module's top or in a function."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEVER = ("leaderboard -> methods", "leaderboard -> datasets", "tracking -> methods", "datasets -> catalog",
         "metrics -> ")


def _lint_layers():
    spec = importlib.util.spec_from_file_location("lint_layers", ROOT / "scripts" / "lint_layers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        mod.lint_imports_exe()
    except SystemExit:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    return mod


def test_the_layer_contract_and_the_never_arrows_are_written_down():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert [c["type"] for c in contracts].count("layers") == 1
    forbidden = [c["name"] for c in contracts if c["type"] == "forbidden"]
    for arrow in NEVER:
        assert any(f"never: {arrow}" in n for n in forbidden), (arrow, forbidden)


def test_every_import_keeps_the_layer_contract():
    proc = _lint_layers().lint(capture=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_the_installed_layout_holds_every_subpackage(tmp_path):
    """lint-imports in the checkout would see flag_bench/ only: the copy maps all five folders."""
    mod = _lint_layers()
    mod.installed_layout(tmp_path)
    for pkg in ("datasets", "methods", "metrics", "leaderboard"):
        assert (tmp_path / "flag_bench" / pkg / "__init__.py").is_file(), pkg
    assert (tmp_path / "flag_bench" / "leaderboard" / "stats.py").is_file()


def test_a_broken_arrow_fails(tmp_path):
    """The same graph with an arrow the code has (the leaderboard's statistics use metrics)
    forbidden: lint-imports fails, so the contracts above do not pass vacuously."""
    cfg = tmp_path / "contract.toml"
    cfg.write_text('[tool.importlinter]\nroot_package = "flag_bench"\n\n[[tool.importlinter.contracts]]\n'
                   'name = "test: leaderboard -> metrics"\ntype = "forbidden"\n'
                   'source_modules = ["flag_bench.leaderboard"]\nforbidden_modules = ["flag_bench.metrics"]\n')
    proc = _lint_layers().lint(cfg, capture=True)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout[-3000:]
