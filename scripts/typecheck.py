"""Type-check the package as it is installed: ``flag_bench`` and the folders mapped into it.

pyproject.toml maps ``flag_bench.datasets`` onto the top-level ``datasets/`` folder (and likewise
methods/, metrics/, leaderboard/). The editable install resolves that mapping with an import hook
that mypy cannot see, so run on the checkout mypy finds ``flag_bench`` without those sub-packages
(and would read ``datasets/`` as a top-level package). This script lays the installed layout out as
symlinks under mypy's cache folder (git-ignored by mypy itself), runs ``mypy -p flag_bench`` on it
with the settings of ``[tool.mypy]``, and reports the checkout's paths, not the links'.

    python scripts/typecheck.py [more mypy arguments]

The exit status is mypy's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "flag_bench"
# a stable place: mypy's incremental cache is keyed by each module's path
TREE = ROOT / ".mypy_cache" / "package-tree"


def package_dir() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]["package-dir"]


def _link(dest: Path, target: Path) -> None:
    if dest.is_symlink() and Path(os.readlink(dest)) == target:
        return
    if dest.is_symlink():
        dest.unlink()
    try:
        dest.symlink_to(target, target_is_directory=target.is_dir())
    except FileExistsError:  # another run made the same link just now
        pass


def build_tree(mapping: dict[str, str], tree: Path = TREE) -> dict[Path, Path]:
    """Mirror the installed layout under ``tree``; returns {folder in the tree: checkout folder}.

    A mapped package with a package mapped inside it becomes a real folder holding links to its
    folder's entries; any other becomes one link to its folder. The tree is brought up to date in
    place rather than rebuilt, so two runs at once do not pull it from under each other.
    """
    folders = {}
    for name in sorted(mapping, key=lambda n: n.count(".")):  # parents first
        src, dest = (ROOT / mapping[name]).resolve(), tree.joinpath(*name.split("."))
        folders[dest] = src
        children = {n.rpartition(".")[2] for n in mapping if n.rpartition(".")[0] == name}
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not children:
            _link(dest, src)
            continue
        if dest.is_symlink():
            dest.unlink()
        dest.mkdir(exist_ok=True)
        entries = {p.name: p for p in src.iterdir() if p.name != "__pycache__"}
        clash = children & entries.keys()
        if clash:
            raise SystemExit(f"{src}: {sorted(clash)} both exist there and are mapped onto {name}.*")
        for stale in dest.iterdir():  # files deleted or renamed in the checkout
            if stale.is_symlink() and stale.name not in entries and stale.name not in children:
                stale.unlink()
        for entry in entries.values():
            _link(dest / entry.name, entry)
    return folders


def _to_checkout(text: str, folders: dict[Path, Path]) -> str:
    """Rewrite the tree's paths in mypy's report to the checkout's (longest first: nested packages)."""
    for dest in sorted(folders, key=lambda p: len(str(p)), reverse=True):
        src = folders[dest]
        pairs = [(dest, src)]
        if dest.is_relative_to(ROOT):  # mypy names files relative to its working folder
            pairs.append((dest.relative_to(ROOT), src.relative_to(ROOT)))
        for a, b in pairs:
            text = text.replace(f"{a}{os.sep}", f"{b}{os.sep}")
    return text


def main(argv: list[str]) -> int:
    folders = build_tree(package_dir())
    try:  # mypy ignores its cache folder for git only once it has finished a run there
        (TREE.parent / ".gitignore").write_text("*\n")
    except OSError:
        pass
    env = {**os.environ, "MYPYPATH": str(TREE)}
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", PACKAGE, *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    sys.stdout.write(_to_checkout(proc.stdout, folders))
    sys.stderr.write(_to_checkout(proc.stderr, folders))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
