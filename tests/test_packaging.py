"""The wheel holds every file of the folders that ``pyproject.toml`` maps onto ``flag_bench.*``.

An editable install resolves sub-packages through the mapped parent folder, so a sub-package
that the build leaves out still imports in development and only breaks for users of the wheel.
The expectation is generated from the filesystem, never from the pyproject's own package list;
the wheel's folders must then import as packages from the wheel itself (a ``flag.py`` left
beside a ``flag/`` folder shadows the folder, and its modules become unreachable).

The build runs on a copy of the tree: an in-tree build leaves ``build/`` behind, and stale files
there can both leak into the wheel and race with another build in the same checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BUILD_FILES = ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in", "LICENSE")
# the same exclusions as _shipped_files, so the copy and the expectation agree
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def _package_dir() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]["package-dir"]


def _shipped_files(folder: Path) -> list[Path]:
    """Every file a user of the package needs: sources and data, not caches or dot-entries."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
        out += [Path(dirpath, f) for f in filenames if not f.startswith(".") and not f.endswith(".pyc")]
    return out


def _expected_members() -> set[str]:
    expected = set()
    for package, folder in _package_dir().items():
        base = ROOT / folder
        prefix = package.replace(".", "/")
        expected |= {f"{prefix}/{path.relative_to(base).as_posix()}" for path in _shipped_files(base)}
    return expected


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in _BUILD_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for folder in set(_package_dir().values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=_JUNK)
    # no isolation and no index: the backend comes from the test extra, and CI may be offline
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index"]
    cmd += ["-q", "-w", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"wheel build failed:\n{proc.stdout}\n{proc.stderr}"
    (whl,) = out.glob("flag_bench-*.whl")
    return whl


def test_wheel_holds_every_file_of_the_mapped_folders(wheel):
    members = set(zipfile.ZipFile(wheel).namelist())
    expected = _expected_members()
    assert any(m.endswith("metrics/kernels.py") for m in expected)  # the walk found the tree
    missing = sorted(expected - members)
    assert not missing, (
        f"{len(missing)} file(s) of the mapped folders are not in the wheel (a folder setuptools did not "
        f"discover, or a data file no package-data pattern matches): {missing[:20]}"
    )


def test_wheel_imports_its_own_sub_packages(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # every folder with a module, namespace folders (no __init__.py) included
    members = zipfile.ZipFile(wheel).namelist()
    packages = sorted({m.rsplit("/", 1)[0].replace("/", ".") for m in members if m.endswith(".py") and "/" in m})
    assert "flag_bench.metrics" in packages
    # PYTHONPATH precedes the editable finder (appended to sys.meta_path) and cwd is not the
    # checkout, so these imports can only come from the wheel
    code = (
        "import importlib.util\n"
        f"root = {str(site)!r}\n"
        f"for name in {packages!r}:\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    where = spec.submodule_search_locations\n"
        "    assert where is not None, f'{name} is shadowed by the module {spec.origin}'\n"
        "    assert all(p.startswith(root) for p in where), (name, list(where))\n"
        "import flag_bench.metrics.kernels as k\n"
        "assert k.__file__.startswith(root), k.__file__\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = dict(capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    proc = subprocess.run([sys.executable, "-c", code], **run)
    assert proc.returncode == 0, proc.stderr


def test_wheel_marks_the_package_typed(wheel):
    # PEP 561: without the marker, type checkers ignore the package's annotations for its users
    members = set(zipfile.ZipFile(wheel).namelist())
    assert "flag_bench/py.typed" in members, "the wheel has no flag_bench/py.typed (package-data)"
