"""The local results store: one JSON CellRecord per finished cell, the source of truth for resume.

Layout under the results dir:

    cells/<cell_id>.json                 the finished record (status "ok")
    cells/<cell_id>.failed-<time>.json   each failed attempt, kept (never overwritten)
    cells/<cell_id>.mlflow               marker: the MLflow run id this record was logged as, per
                                         tracking URI (redacted: flag_bench.redact)
    artifacts/<cell_id>/...              per-gene metrics, predictions (h5ad), config, gene list
    claims/<cell_id>.claim               a run computing this cell right now (pid, host, time), or
                                         the cluster job it was handed to (see "Claims" below)
    <engine>/                            a cluster engine's job folders and submissions
                                         (flag_bench/cluster/)
    plans/<time>.<us>-<pid>.json         the cells each invocation planned (so a report can name
                                         planned cells that never finished)
    .flag-bench.lock                     held while the store and the MLflow database are created

Every file is written atomically (flag_bench.io), so Ctrl-C, kill -9 or a full disk leaves either
the previous state or the complete new file; a write that fails (disk full, quota, read-only) is
a one-line UserError naming the file. Nothing here deletes results; a ``--force`` rerun replaces
a cell's record (and its stale ``.mlflow`` marker) with the recomputed one. Only the driver writes
records; workers write artifacts under ``artifacts/<cell_id>/``.

Claims. A claim is written complete under a temporary name and linked into place (``os.link``
fails when the claim exists), so no reader ever sees a half-written claim; an unreadable claim
(written by an older flag-bench, or torn) counts as live for ``CLAIM_WRITING_S`` seconds after
its mtime. Whether a claim is live:

* a cluster job's claim (``hand_over``): while the job's engine says the job is there
  (``flag_bench.cluster.job_state``; the store names no engine). Where the engine cannot be asked
  the state is unknown and the claim counts as live (its cells are not computed twice).
* a process on this host: while the process exists (a claim of another boot is stale).
* a process on another host (or container): while its claim file is refreshed. The run holding a
  claim touches it every ``CLAIM_HEARTBEAT_S`` seconds (``ResultsStore.refresh_claims``, called by
  the driver); a claim of another host not refreshed for ``CLAIM_TTL_S`` seconds (default 600,
  ``FLAG_BENCH_CLAIM_TTL_S``) is stale and taken over.

Taking over a stale claim is atomic: the stale claim is renamed to a unique name, and only when
the renamed file is the very claim judged stale (byte for byte; every claim carries a nonce) does
the taker race for the cell again through the exclusive link. A taker that renamed a newer claim
instead (another run took the cell over in between) links it back without replacing anything.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Mapping

from flag_bench.errors import UserError
from flag_bench.io import atomic_write_json, user_error_on_oserror
from flag_bench.record import CellRecord

# a claim of another host is stale once its file has not been refreshed for this long
CLAIM_TTL_S = float(os.environ.get("FLAG_BENCH_CLAIM_TTL_S") or 600.0)
# how often a run refreshes the claims it holds (well inside the TTL, NFS attribute caching included)
CLAIM_HEARTBEAT_S = min(60.0, CLAIM_TTL_S / 5)
# an unreadable claim this young may still be being written (by a flag-bench without atomic claims)
CLAIM_WRITING_S = 10.0


def _write_probe(root: Path) -> None:
    """Create and remove a file in ``root``: OSError when the dir cannot be written. The file is
    created new (O_EXCL), never through a symlink (O_NOFOLLOW), owner-only: a link planted at its
    name is left alone and never truncates its target; that name taken, a unique one is tried."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
    for name in (f".write-probe-{os.getpid()}", f".write-probe-{os.getpid()}-{uuid.uuid4().hex}"):
        probe = root / name
        try:
            fd = os.open(probe, flags, 0o600)
        except FileExistsError:
            continue  # something (a stale probe, a planted link) holds the name: not ours to touch
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            probe.unlink()
        return
    raise FileExistsError(errno.EEXIST, "cannot create a probe file", str(root))


class ResultsStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.cells = self.root / "cells"
        self.artifacts = self.root / "artifacts"
        self.claims = self.root / "claims"
        self._mine: dict[str, str] = {}  # cell_id -> the nonce of the claim this process wrote
        self._mine_lock = threading.Lock()

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
            _write_probe(self.root)
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
        # microseconds in the name: two plans of one process in one second (two Driver runs from
        # Python) were one file, the second replacing the first; names still sort oldest first
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}-{os.getpid()}"
        path = self.root / "plans" / f"{stamp}.json"
        n = 1
        while path.exists():  # the same microsecond
            path, n = self.root / "plans" / f"{stamp}~{n}.json", n + 1
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
    def claim_path(self, cell_id: str) -> Path:
        return self.claims / f"{cell_id}.claim"

    def claim(self, cell_id: str) -> bool:
        """True if this process now owns the cell; False while a live process computes it.

        A claim whose process is gone (killed, crashed, another boot, another host's claim not
        refreshed for ``CLAIM_TTL_S``) is stale and taken over, atomically (module docstring).
        """
        path = self.claim_path(cell_id)
        nonce = uuid.uuid4().hex
        me = {"pid": os.getpid(), "host": socket.gethostname(), "boot": _boot_id(), "time": time.time(),
              "nonce": nonce}
        for _ in range(5):
            if _create_claim(path, me):
                with self._mine_lock:
                    self._mine[cell_id] = nonce
                return True
            seen = _read_claim_text(path)
            if seen is None:
                continue  # released meanwhile: race for it again
            text, holder = seen
            if _alive(holder):
                if holder.get("pid") == os.getpid() and holder.get("host") == me["host"]:
                    with self._mine_lock:  # this process claimed it already (through another store object)
                        self._mine.setdefault(cell_id, str(holder.get("nonce")))
                    return True
                return False
            _take_over(path, text)
        return False

    def hand_over(self, cell_id: str, job: Mapping[str, str]) -> None:
        """This process's claim now belongs to a cluster job, named by ``job`` (the fields its
        engine writes and later judges: ``flag_bench.cluster.job_state``): it outlives this process
        and stays live while the engine says the job is there (a cancelled or ended job's is stale)."""
        path = self.claim_path(cell_id)
        _write_json(path, {"pid": None, "host": socket.gethostname(), "boot": _boot_id(), "time": time.time(),
                           **job, "nonce": uuid.uuid4().hex})
        with self._mine_lock:
            self._mine.pop(cell_id, None)

    def refresh_claims(self) -> int:
        """Touch every claim this process holds (the heartbeat that keeps a claim of this host live
        for runs on other hosts); returns how many were refreshed."""
        with self._mine_lock:
            mine = dict(self._mine)
        n = 0
        for cell_id, nonce in mine.items():
            path = self.claim_path(cell_id)
            holder = _read_claim(path)
            if holder is None or holder.get("nonce") != nonce:
                continue  # released, or no longer ours
            with contextlib.suppress(OSError):
                os.utime(path)
                n += 1
        return n

    @contextlib.contextmanager
    def heartbeat(self, every: float | None = None):
        """Refresh this process's claims every ``every`` seconds (``CLAIM_HEARTBEAT_S``) while inside."""
        stop = threading.Event()
        period = CLAIM_HEARTBEAT_S if every is None else every

        def beat() -> None:
            while not stop.wait(period):
                with contextlib.suppress(Exception):
                    self.refresh_claims()

        thread = threading.Thread(target=beat, name="flag-bench-claim-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def holder(self, cell_id: str) -> dict | None:
        """The claim on a cell if a live process or cluster job holds it, else None."""
        holder = _read_claim(self.claim_path(cell_id))
        return holder if holder is not None and _alive(holder) else None

    def busy(self, cell_id: str) -> bool:
        """A live process holds this cell (it will write and log the record itself)."""
        holder = _read_claim(self.claim_path(cell_id))
        return holder is not None and _alive(holder)

    def release(self, cell_id: str, force: bool = False) -> None:
        """Drop this process's claim (``force``: whoever holds it; the caller wrote the record)."""
        path = self.claim_path(cell_id)
        holder = _read_claim(path)
        with self._mine_lock:
            nonce = self._mine.get(cell_id)
        mine = holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()
        if mine and nonce is not None and holder is not None and holder.get("nonce") not in (None, nonce):
            mine = False  # another claim of this process (a second store object): not this one's
        if holder is not None and (mine or force):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if holder is None or mine or force:
            with self._mine_lock:
                self._mine.pop(cell_id, None)

    # -- MLflow sync markers -----------------------------------------------------------------
    def mlflow_marker(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.mlflow"

    def logged_run_id(self, cell_id: str, tracking_uri: str) -> str | None:
        from flag_bench.redact import redact_uri

        path = self.mlflow_marker(cell_id)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except ValueError:
            return None  # a torn marker only means "log again"
        # keyed by the redacted URI (no password in the file); an older marker by the URI as given
        return data.get(redact_uri(tracking_uri)) or data.get(tracking_uri)

    def mark_logged(self, cell_id: str, tracking_uri: str, run_id: str) -> None:
        from flag_bench.redact import redact_uri

        path = self.mlflow_marker(cell_id)
        data = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                data = {}
        key = redact_uri(tracking_uri)
        # an older marker's key for this server with its password in clear goes
        data = {k: v for k, v in data.items() if k == key or redact_uri(k) != key}
        data[key] = run_id
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


def _create_claim(path: Path, data: dict) -> bool:
    """Write ``data`` as the claim at ``path`` unless a claim is there; True if it is now ours.

    The claim is written complete under a temporary name and then hard-linked into place (a link
    never replaces an existing file), so no reader sees it half-written. A filesystem without hard
    links falls back to an exclusive create."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{data['nonce']}.tmp")
    try:
        with user_error_on_oserror(tmp):
            with open(tmp, "w") as fh:
                json.dump(data, fh)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some FUSE/SMB mounts): an exclusive create
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _take_over(path: Path, judged: str) -> bool:
    """Remove the stale claim at ``path`` whose text was ``judged``, and nothing else: True if it
    was removed. The claim is renamed to a unique name first; a renamed file that is not the
    judged claim (another run replaced it in between) is linked back, never over a newer claim."""
    aside = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    except OSError:
        return False
    try:
        try:
            got = aside.read_text()
        except OSError:
            got = None
        if got == judged:
            return True
        with contextlib.suppress(FileExistsError, OSError):
            os.link(aside, path)
        return False
    finally:
        with contextlib.suppress(OSError):
            aside.unlink()


def _read_claim_text(path: Path) -> tuple[str, dict] | None:
    """(the claim's text, its fields plus ``_mtime``) or None when there is no claim. An
    unreadable or torn claim is ``{"_torn": True, "_mtime": ...}``."""
    try:
        st = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return "", {"_torn": True, "_mtime": time.time()}
    try:
        data = json.loads(text)
        data = dict(data) if isinstance(data, dict) else {"_torn": True}
    except ValueError:
        data = {"_torn": True}
    data["_mtime"] = st.st_mtime
    return text, data


def _read_claim(path: Path) -> dict | None:
    seen = _read_claim_text(path)
    return None if seen is None else seen[1]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _alive(holder: dict) -> bool:
    """Whether the claiming process (or cluster job) still runs (module docstring: "Claims")."""
    from flag_bench.cluster import job_state

    state = job_state(holder)
    if state is not None:  # a cluster job holds it: its engine judges
        return state != "gone"
    mtime = holder.get("_mtime")
    age = time.time() - mtime if isinstance(mtime, (int, float)) else None
    pid = holder.get("pid")
    if holder.get("_torn") or not isinstance(pid, int):
        # being written right now (an older flag-bench creates, then fills it), or torn long ago
        return age is not None and age < CLAIM_WRITING_S
    if holder.get("host") != socket.gethostname():
        # another host's process: live while its run refreshes the claim
        return age is not None and age < CLAIM_TTL_S
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
