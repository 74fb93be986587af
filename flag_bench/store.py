"""The local results store: one JSON record per finished cell, the source of truth for resume.

Layout under the results dir:

    cells/<cell_id>.json                 the finished record (status "ok")
    cells/<cell_id>.failed-<time>.json   each failed attempt, kept (never overwritten)
    artifacts/<cell_id>/...              per-gene metrics, predictions (h5ad), config, gene list
    cells/<cell_id>.mlflow               marker: the MLflow run id this record was logged as

Every file is written to a temporary name, fsync'd and renamed, so Ctrl-C or kill -9 leaves
either the previous state or the complete new file. Nothing here deletes results.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from flag_bench.errors import UserError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


class ResultsStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.cells = self.root / "cells"
        self.artifacts = self.root / "artifacts"

    # -- setup -------------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        try:
            self.cells.mkdir(parents=True, exist_ok=True)
            self.artifacts.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise UserError(
                f"--results-dir {self.root}: not writable ({exc.strerror}); choose a directory you can write to"
            ) from None

    # -- records -----------------------------------------------------------------------------
    def record_path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.json"

    def artifact_dir(self, cell_id: str) -> Path:
        return self.artifacts / cell_id

    def _read(self, path: Path) -> dict:
        try:
            rec = json.loads(path.read_text())
            if not isinstance(rec, dict) or "cell_id" not in rec or "status" not in rec:
                raise ValueError("missing cell_id/status")
            return rec
        except (OSError, ValueError) as exc:
            raise UserError(
                f"results store record {path} is corrupt ({exc}); move it aside to recompute that cell "
                "(nothing was deleted)"
            ) from None

    def finished(self, cell_id: str) -> dict | None:
        path = self.record_path(cell_id)
        if not path.exists():
            return None
        rec = self._read(path)
        return rec if rec["status"] == "ok" else None

    def write_ok(self, record: dict) -> Path:
        path = self.record_path(record["cell_id"])
        atomic_write_json(path, record)
        return path

    def write_failed(self, record: dict) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        path = self.cells / f"{record['cell_id']}.failed-{stamp}.json"
        atomic_write_json(path, record)
        return path

    def records(self, include_failed: bool = False) -> Iterator[dict]:
        if not self.cells.is_dir():
            return
        for path in sorted(self.cells.glob("*.json")):
            if path.name.startswith("."):
                continue
            if ".failed-" in path.name and not include_failed:
                continue
            yield self._read(path)

    # -- MLflow sync markers -----------------------------------------------------------------
    def mlflow_marker(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.mlflow"

    def logged_run_id(self, cell_id: str, tracking_uri: str) -> str | None:
        path = self.mlflow_marker(cell_id)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except ValueError:
            return None  # a torn marker only means "log again"
        return data.get(tracking_uri)

    def mark_logged(self, cell_id: str, tracking_uri: str, run_id: str) -> None:
        path = self.mlflow_marker(cell_id)
        data = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                data = {}
        data[tracking_uri] = run_id
        atomic_write_json(path, data)
