"""Check the layer contract (``[tool.importlinter]`` in pyproject.toml) with import-linter.

    python scripts/lint_layers.py [lint-imports options, e.g. --show-timings]

import-linter finds a package's modules by walking its folder, but ``flag_bench`` is spread over
five folders (pyproject's ``package-dir``: flag_bench/, datasets/, methods/, metrics/,
leaderboard/), so ``lint-imports`` run in the checkout sees none of ``flag_bench.datasets`` and
the rest. This copies the ``.py`` files into the installed layout in a temporary folder and runs
``lint-imports`` there, with this checkout's contracts. The exit status is lint-imports'.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def package_dirs() -> dict[str, Path]:
    """package -> its folder in the checkout, as pyproject's [tool.setuptools] package-dir maps it."""
    mapping = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    return {pkg: ROOT / folder for pkg, folder in mapping.items()}


def installed_layout(dst: Path) -> Path:
    """Copy every package's .py files to where an install puts them, under ``dst``."""
    for pkg, src in sorted(package_dirs().items()):
        target = dst.joinpath(*pkg.split("."))
        for path in src.rglob("*.py"):
            rel = path.relative_to(src)
            if "__pycache__" in rel.parts:
                continue
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / rel)
    return dst


def lint_imports_exe() -> str:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        raise SystemExit("lint-imports not found: pip install import-linter (the test extra has it)")
    return exe


def lint(config: Path = PYPROJECT, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    """lint-imports with ``config``'s contracts on the installed layout of this checkout."""
    exe = lint_imports_exe()
    with tempfile.TemporaryDirectory(prefix="flag-bench-layers-") as tmp:
        installed_layout(Path(tmp))
        # lint-imports puts its working folder first on sys.path: the copy, not the editable install
        return subprocess.run([exe, str(config), "--no-cache", *args], cwd=tmp, capture_output=capture, text=True)


if __name__ == "__main__":
    sys.exit(lint(PYPROJECT, *sys.argv[1:]).returncode)
