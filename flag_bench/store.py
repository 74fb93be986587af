"""The local results store: one JSON CellRecord per finished cell, the source of truth for resume.

Layout under the results dir:

    cells/<cell_id>.json                 the finished record (status "ok")
    cells/<cell_id>.failed-<time>.json   each failed attempt, kept (never overwritten)
    cells/<cell_id>.mlflow               marker: the MLflow run id this record was logged as
    artifacts/<cell_id>/...              per-gene metrics, predictions (h5ad), config, gene list
    claims/<cell_id>.claim               a run computing this cell right now (pid, host, time), or
                                         the SLURM array task computing it (slurm_job): alive
                                         while squeue lists that job
    slurm/                               submitit's job folder and one file per SLURM submission
    plans/<time>-<pid>.json              the cells each invocation planned (so a report can name
                                         planned cells that never finished)
    .flag-bench.lock                     held while the store and the MLflow database are created

Every file is written atomically (flag_bench.io), so Ctrl-C, kill -9 or a full disk leaves either
the previous state or the complete new file; a write that fails (disk full, quota, read-only) is
a one-line UserError naming the file. Nothing here deletes results; a ``--force`` rerun replaces
a cell's record (and its stale ``.mlflow`` marker) with the recomputed one. Only the driver writes
records; workers write artifacts under ``artifacts/<cell_id>/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from flag_bench.errors import UserError, one_line
from flag_bench.io import atomic_write_json, user_error_on_oserror
from flag_bench.record import CellRecord


class ResultsStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.cells = self.root / "cells"
        self.artifacts = self.root / "artifacts"
        self.claims = self.root / "claims"

    # -- setup -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def creation_lock(self, timeout: float = 300.0):
        """Serialise the creation of the store and its MLflow database between processes.

        Two runs started at once on a new results dir would otherwise both run MLflow's schema
        migration, and the loser fails on a database that is in fact fine.
        """
        from filelock import FileLock, Timeout

        self.ensure_writable()
        lock = FileLock(str(self.root / ".flag-bench.lock"))
        try:
            with lock.acquire(timeout=timeout):
                yield
        except Timeout:
            raise UserError(
                f"--results-dir {self.root}: another flag-bench process has held {lock.lock_file} for "
                f"{timeout:.0f} s; wait for it, or delete that file if no flag-bench process is running"
            ) from None

    def ensure_writable(self) -> None:
        try:
            for d in (self.cells, self.artifacts, self.claims):
                d.mkdir(parents=True, exist_ok=True)
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

    def _read(self, path: Path) -> CellRecord:
        try:
            text = path.read_text()
        except OSError as exc:
            raise UserError(f"results store record {path} cannot be read ({exc.strerror})") from None
        return CellRecord.loads(text, where=f"results store record {path}")

    def finished(self, cell_id: str) -> CellRecord | None:
        path = self.record_path(cell_id)
        if not path.exists():
            return None
        rec = self._read(path)
        return rec if rec.ok else None

    def write(self, record: CellRecord) -> Path:
        """A finished record replaces nothing but an older record of its cell (a ``--force``
        rerun); a failure is kept apart."""
        if record.ok:
            path = self.record_path(record.cell_id)
        else:
            stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-{time.monotonic_ns() % 10**6}"
            path = self.cells / f"{record.cell_id}.failed-{stamp}.json"
        _write_json(path, record.to_json())
        return path

    def records(self, include_failed: bool = False) -> Iterator[CellRecord]:
        for path in self._record_paths():
            if ".failed-" in path.name and not include_failed:
                continue
            yield self._read(path)

    def failures(self) -> Iterator[tuple[Path, CellRecord]]:
        """Each failed attempt with its file (where the user finds the traceback)."""
        for path in self._record_paths():
            if ".failed-" in path.name:
                yield path, self._read(path)

    def _record_paths(self) -> list[Path]:
        if not self.cells.is_dir():
            return []
        return [p for p in sorted(self.cells.glob("*.json")) if not p.name.startswith(".")]

    # -- plans -------------------------------------------------------------------------------
    def write_plan(self, grid_spec: dict, cells: list[dict]) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        path = self.root / "plans" / f"{stamp}.json"
        _write_json(path, {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "grid_spec": grid_spec,
                           "cells": cells})
        return path

    def plans(self) -> list[dict]:
        """Every plan written into this results dir, oldest first (unreadable ones skipped)."""
        out = []
        for path in sorted((self.root / "plans").glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    # -- claims: two runs of one grid never compute the same cell ---------------------------------
    def claim(self, cell_id: str) -> bool:
        """True if this process now owns the cell; False while a live process computes it.

        A claim whose process is gone (killed, crashed, another boot) is stale and taken over.
        """
        path = self.claims / f"{cell_id}.claim"
        me = {"pid": os.getpid(), "host": socket.gethostname(), "boot": _boot_id(), "time": time.time()}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_claim(path)
                if holder is not None and _alive(holder):
                    return holder.get("pid") == os.getpid() and holder.get("host") == me["host"]
                # stale: remove it and race for it again through O_EXCL
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            return True
        return False

    def hand_over(self, cell_id: str, slurm_job: str) -> None:
        """This process's claim now belongs to a SLURM array task: it outlives this process and
        stays live while squeue lists the job (a scancelled or finished job's claim is stale)."""
        path = self.claims / f"{cell_id}.claim"
        _write_json(path, {"pid": None, "host": socket.gethostname(), "boot": _boot_id(), "time": time.time(),
                           "slurm_job": slurm_job})

    def holder(self, cell_id: str) -> dict | None:
        """The claim on a cell if a live process or SLURM job holds it, else None."""
        holder = _read_claim(self.claims / f"{cell_id}.claim")
        return holder if holder is not None and _alive(holder) else None

    def busy(self, cell_id: str) -> bool:
        """A live process holds this cell (it will write and log the record itself)."""
        holder = _read_claim(self.claims / f"{cell_id}.claim")
        return holder is not None and _alive(holder)

    def release(self, cell_id: str, force: bool = False) -> None:
        """Drop this process's claim (``force``: whoever holds it; the caller wrote the record)."""
        path = self.claims / f"{cell_id}.claim"
        holder = _read_claim(path)
        mine = holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()
        if holder is not None and (mine or force):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

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
        _write_json(path, data)

    def forget_logged(self, cell_id: str) -> None:
        """The cell's record is about to be replaced: its MLflow runs (for every tracking URI) log
        the old one, so the next sync logs it again (and marks the old runs superseded)."""
        with contextlib.suppress(FileNotFoundError):
            self.mlflow_marker(cell_id).unlink()


def _write_json(path: Path, obj) -> None:
    """An atomic write into the store; a full disk (or any OSError) is a one-line UserError."""
    with user_error_on_oserror(path):
        atomic_write_json(path, obj)


def _read_claim(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # torn (its writer died mid-write): stale


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _alive(holder: dict) -> bool:
    """Whether the claiming process (or SLURM job) still runs. Another host's process claim is
    trusted (shared FS)."""
    if holder.get("slurm_job"):
        return slurm_job_alive(str(holder["slurm_job"]))
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    if holder.get("boot") and holder.get("boot") != _boot_id():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # not Linux, or it just exited: os.kill said it exists
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


_SQUEUE: dict = {"at": -1e9, "jobs": {}}


def slurm_jobs(max_age: float = 2.0) -> dict[str, str]:
    """This user's SLURM jobs as {"<array job>_<task>" or "<job>": state}, one ``squeue`` call
    cached for ``max_age`` seconds (a grid asks about hundreds of claims at once)."""
    import subprocess

    now = time.monotonic()
    if now - _SQUEUE["at"] <= max_age:
        return _SQUEUE["jobs"]
    try:
        out = subprocess.run(["squeue", "--me", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"squeue cannot be run ({exc}); run flag-bench where the SLURM client commands work") from None
    if out.returncode != 0:
        raise UserError(f"squeue failed ({one_line(out.stderr)}); check that SLURM answers (`squeue --me`)")
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            jobs[parts[0]] = parts[1]
    _SQUEUE.update(at=now, jobs=jobs)
    return jobs


def slurm_job_alive(job_id: str) -> bool:
    return job_id in slurm_jobs()
