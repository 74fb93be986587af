"""ruff and mypy pass on the package, run the way ``.ci/run`` runs them, so their settings cannot rot.

Each failure carries the tool's own report. Passing is not enough: each tool must also have looked
at every module of the folders pyproject.toml maps onto ``flag_bench.*`` (a mistyped ``include``
or a lost mapping would otherwise pass by checking less). mypy goes through scripts/typecheck.py,
because the editable install maps those folders with an import hook mypy cannot follow.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _package_dir() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]["package-dir"]


def _modules() -> set[Path]:
    """Every .py file of the mapped folders, relative to the checkout."""
    return {
        p.relative_to(ROOT)
        for folder in set(_package_dir().values())
        for p in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    }


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _typecheck_script():
    spec = importlib.util.spec_from_file_location("typecheck", ROOT / "scripts" / "typecheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ruff_looks_at_every_module_of_the_package():
    proc = _run("-m", "ruff", "check", "--show-files", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = {Path(line.strip()).resolve().relative_to(ROOT) for line in proc.stdout.splitlines() if line.strip()}
    missing = sorted(_modules() - seen)
    assert not missing, f"ruff's include leaves out {len(missing)} module(s) of the package: {missing[:20]}"


def test_ruff_finds_nothing():
    proc = _run("-m", "ruff", "check", "--output-format", "concise", timeout=300)
    assert proc.returncode == 0, f"ruff check found problems:\n{proc.stdout}\n{proc.stderr}"


def test_the_typecheck_tree_is_the_installed_layout(tmp_path):
    tc = _typecheck_script()
    folders = tc.build_tree(_package_dir(), tmp_path)
    for name, folder in _package_dir().items():
        here = tmp_path.joinpath(*name.split("."))
        assert here.is_dir() and folders[here] == (ROOT / folder).resolve()
        for module in (ROOT / folder).glob("*.py"):
            assert (here / module.name).resolve() == module.resolve()
    # paths in mypy's report name the checkout's files
    some = next((ROOT / _package_dir()["flag_bench.metrics"]).glob("*.py"))
    inside = tmp_path / "flag_bench" / "metrics" / some.name
    assert tc._to_checkout(f"{inside}:1: error", folders) == f"{some.resolve()}:1: error"


@pytest.mark.slow
def test_mypy_finds_nothing_in_every_module():
    proc = _run(str(ROOT / "scripts" / "typecheck.py"), timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mypy found problems:\n{out}"
    checked = re.search(r"in (\d+) source files?", out)
    assert checked, out
    assert int(checked.group(1)) == len(_modules()), f"mypy checked {checked.group(1)} files, not {len(_modules())}:\n{out}"
