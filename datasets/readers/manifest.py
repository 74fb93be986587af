"""Small manifests that gather several samples into one dataset: CSV (a header row) or TOML
(``[[sample]]`` tables). Relative paths are resolved against the manifest's folder."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from flag_bench.errors import UserError


def read_manifest(path: Path, spec: str, required: Sequence[str], optional: Sequence[str],
                  paths: Sequence[str]) -> list[dict[str, str]]:
    """Rows as dicts of strings; ``paths`` columns are made absolute. Unknown or missing columns
    -> UserError naming the manifest and the column."""
    if not path.is_file():
        raise UserError(f"{spec}: manifest {path} does not exist; give a CSV or TOML file with columns "
                        f"{', '.join(required)}")
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{spec}: manifest {path} is not valid TOML ({exc}); fix the file") from None
        rows = data.get("sample")
        if not isinstance(rows, list) or not rows:
            raise UserError(f"{spec}: manifest {path} needs [[sample]] tables with {', '.join(required)}")
        rows = [{k: str(v) for k, v in r.items()} for r in rows]
    else:
        with path.open(newline="") as fh:
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(fh)]
        if not rows:
            raise UserError(f"{spec}: manifest {path} has no rows; add one row per sample ({', '.join(required)})")
    allowed = set(required) | set(optional)
    for i, r in enumerate(rows, start=1):
        unknown = sorted(set(r) - allowed)
        if unknown:
            raise UserError(f"{spec}: manifest {path} row {i}: unknown column(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(allowed))}")
        missing = [c for c in required if not r.get(c)]
        if missing:
            raise UserError(f"{spec}: manifest {path} row {i}: column {missing[0]} is empty or missing; fill it in")
        for c in paths:
            if r.get(c):
                p = Path(r[c]).expanduser()
                r[c] = str(p if p.is_absolute() else (path.parent / p))
    ids = [r[required[0]] for r in rows]
    if len(set(ids)) != len(ids):
        raise UserError(f"{spec}: manifest {path}: {required[0]} values repeat; give each sample a unique id")
    return rows
