"""``--executor slurm``: cells as a submitit job array on SLURM; the driver collects the records.

One array task computes ``--slurm-batch`` cells (default 1) with the same ``run_cell`` as every
other engine and returns their records as JSON (submitit pickles it next to the job's logs
under ``<results>/slurm/jobs``, a shared filesystem). The driver, or ``flag-bench collect``
later, is the only writer of the store and MLflow.

Per submission ``<results>/slurm/submissions/<job>.json`` lists the cell ids of each array task;
``<job>.collected.json`` lists the tasks already written to the store, so collecting twice
writes nothing twice. A task that leaves squeue without a result (scancel, node failure, time
limit after the last requeue) becomes a failed record naming SLURM's state, and the next run of
the grid resubmits its cells. Timeouts and preemption requeue the task (``__submitit_checkpoint__``
protocol, at most ``--max-retries`` timeouts); a Python error inside a cell is already a failed
record and is not retried; no task ever cancels a sibling.

Trust boundary. Collecting (the attached driver, or ``flag-bench collect``) unpickles submitit's
result and submission files under ``<results>/slurm/jobs``: anyone who can write there can run
code as the user who collects. ``collect`` therefore refuses a results dir (or its ``slurm/``
folders, or a result file) that is group- or world-writable or owned by another user
(``untrusted``), unless ``--trust-results-dir`` says everyone who can write there is trusted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from flag_bench.cluster import Executor, NothingDetached, Submitted
from flag_bench.errors import UserError, one_line
from flag_bench.io import atomic_write_json
from flag_bench.record import CellRecord, ErrorInfo

SUBMISSIONS, JOBS = ("slurm", "submissions"), ("slurm", "jobs")
# a task gone from squeue without a result pickle gets this long for the file to appear before it
# is declared lost: NFS caches attributes (and "no such file") for 30-60 s. FLAG_BENCH_SLURM_GRACE_S
GRACE_S = float(os.environ.get("FLAG_BENCH_SLURM_GRACE_S") or 120.0)
# a result pickle whose task squeue still lists: wait this long for SLURM to end it (final accounting)
SETTLE_S = 30.0
ENDED_WITHOUT_RESULT = {"CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
                        "DEADLINE", "REVOKED", "SPECIAL_EXIT"}


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit: pip install 'flag-bench[slurm]'") from None
    return submitit


# -- worker side ------------------------------------------------------------------------------
class CellBatch:
    """The callable each array task runs. ``checkpoint`` makes submitit requeue it after a timeout
    or preemption (the batch restarts; cells are deterministic, so nothing is lost)."""

    def __call__(self, tasks: list) -> list[dict]:
        from flag_bench.cell import run_cell
        from flag_bench.cluster.threads import granted_cpus, limit_threads

        cpus = granted_cpus()
        limit_threads(cpus)
        out = []
        for task in tasks:
            t0 = time.monotonic()
            rec = run_cell(task, _no_events)
            info = scheduler_info(os.environ, cpus, time.monotonic() - t0)
            out.append(with_scheduler(rec, info).to_json())
        return out

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _no_events(kind: str, payload: dict) -> None:
    """Progress events have no terminal to reach from a batch job."""


def scheduler_info(env, cpus: int, cell_seconds: float) -> dict:
    """What SLURM says about the task computing a cell (from its environment)."""
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return {
        "engine": "slurm",
        "job_id": f"{array_job}_{array_task}" if array_job and array_task else env.get("SLURM_JOB_ID"),
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "array_task_id": int(array_task) if array_task else None,
        "node": env.get("SLURMD_NODENAME") or socket.gethostname(),
        "partition": env.get("SLURM_JOB_PARTITION"),
        "cpus": cpus,
        "restarts": int(env.get("SLURM_RESTART_COUNT") or 0),
        "cell_elapsed_s": round(cell_seconds, 3),
    }


def with_scheduler(rec: CellRecord, info: dict) -> CellRecord:
    """The record with ``provenance["scheduler"]`` updated (the schema keeps provenance free-form)."""
    prov = dict(rec.provenance)
    prov["scheduler"] = {**dict(prov.get("scheduler") or {}), **info}
    return dataclasses.replace(rec, provenance=prov)


# -- accounting without sacct -----------------------------------------------------------------
def _seconds(text: str) -> float | None:
    """SLURM's [D-]HH:MM:SS as seconds."""
    try:
        days, _, hms = text.rpartition("-")
        parts = [int(p) for p in hms.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        return (int(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    except ValueError:
        return None


def slurm_accounting(job_id: str) -> dict:
    """SLURM's own view of a task (``scontrol show job``, kept MinJobAge seconds after it ends):
    state, node, elapsed, exit code. Empty when SLURM no longer knows the job."""
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    fields = dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)
    acc: dict[str, str | float | None]
    acc = {"state": fields.get("JobState"), "nodes": fields.get("NodeList"), "exit_code": fields.get("ExitCode"),
           "reason": fields.get("Reason"), "restarts": fields.get("Restarts")}
    if fields.get("RunTime"):
        acc["elapsed_s"] = _seconds(fields["RunTime"])
    return {k: v for k, v in acc.items() if v is not None}


# -- squeue: the jobs SLURM still lists ---------------------------------------------------------
_SQUEUE: dict = {"at": -1e9, "jobs": {}}
_UNKNOWN: dict = {"at": -1e9, "error": None, "warned": False}


def slurm_jobs(max_age: float = 2.0) -> dict[str, str]:
    """This user's SLURM jobs as {"<array job>_<task>" or "<job>": state}, one ``squeue`` call
    cached for ``max_age`` seconds (a grid asks about hundreds of claims at once). A UserError
    when squeue cannot be run or fails (cached as long)."""
    now = time.monotonic()
    if now - _SQUEUE["at"] <= max_age:
        return _SQUEUE["jobs"]
    if _UNKNOWN["error"] and now - _UNKNOWN["at"] <= max_age:
        raise UserError(_UNKNOWN["error"])
    try:
        out = subprocess.run(["squeue", "--me", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _UNKNOWN.update(at=now, error=f"squeue cannot be run ({exc}); run flag-bench where the SLURM client "
                                      "commands work")
        raise UserError(_UNKNOWN["error"]) from None
    if out.returncode != 0:
        _UNKNOWN.update(at=now, error=f"squeue failed ({one_line(out.stderr)}); check that SLURM answers "
                                      "(`squeue --me`)")
        raise UserError(_UNKNOWN["error"])
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            jobs[parts[0]] = parts[1]
    _SQUEUE.update(at=now, jobs=jobs)
    _UNKNOWN.update(error=None)
    return jobs


def slurm_job_state(job_id: str) -> str | None:
    """SLURM's state of a job (PENDING, RUNNING, ...), None when squeue does not list it, or
    ``"UNKNOWN"`` when squeue cannot be asked (warned once per process)."""
    try:
        return slurm_jobs().get(job_id)
    except UserError as exc:
        if not _UNKNOWN["warned"]:
            _UNKNOWN["warned"] = True
            print(f"warning: {exc}; cells claimed by SLURM jobs are treated as still running (state unknown)",
                  file=sys.stderr)
        return "UNKNOWN"


# -- the claims of cells handed to array tasks (flag_bench.cluster.job_state asks) ------------------
def claim_fields(job_id: str) -> dict[str, str]:
    """What a cell's claim says once the array task ``job_id`` holds it (ResultsStore.hand_over)."""
    return {"slurm_job": job_id}


def claim_state(holder: dict) -> str:
    """The state of the array task holding a claim: "pending", "running", "gone" (squeue no longer
    lists it: the claim is stale) or "unknown" (squeue cannot be asked: warned once, live)."""
    state = slurm_job_state(str(holder["slurm_job"]))
    if state is None:
        return "gone"
    if state == "UNKNOWN":
        return "unknown"
    return "pending" if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD") else "running"


# -- submissions ------------------------------------------------------------------------------
class Submission:
    """One submitted job array and what of it has been collected into the store."""

    def __init__(self, path: Path):
        self.path = path
        data = json.loads(path.read_text())
        self.job_id: str = data["job_id"]
        self.folder = Path(data["folder"])
        self.tasks: list[list[str]] = data["tasks"]
        # submitit submits a single task as a plain job ("7"), several as an array ("7_0", "7_1")
        self.task_jobs: list[str] = data.get("task_jobs") or [f"{self.job_id}_{i}" for i in range(len(self.tasks))]
        self.parent_run_id: str | None = data.get("parent_run_id")
        self.suite: str | None = data.get("suite")
        self.tracking_uri: str | None = data.get("tracking_uri")
        self.collected_path = path.with_name(f"{self.job_id}.collected.json")
        self._seen_gone: dict[int, float] = {}
        self._result_seen: dict[int, float] = {}

    @classmethod
    def write(cls, root: Path, job_id: str, folder: Path, tasks: list[list[str]], task_jobs: list[str],
              parent_run_id: str | None, params: dict, suite: str, tracking_uri: str | None) -> "Submission":
        from flag_bench.redact import redact_uri

        path = root.joinpath(*SUBMISSIONS) / f"{job_id}.json"
        # redacted: `collect` reconnects through flag_bench.redact.connectable (the password from the environment)
        atomic_write_json(path, {"job_id": job_id, "folder": str(folder), "tasks": tasks, "task_jobs": task_jobs,
                                 "parent_run_id": parent_run_id,
                                 "suite": suite, "tracking_uri": redact_uri(tracking_uri),
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
                                 "sbatch": params})
        return cls(path)

    @contextlib.contextmanager
    def lock(self, timeout: float = -1):
        """Held by whoever collects this submission (an attached driver, or `collect`)."""
        from filelock import FileLock

        with FileLock(str(self.path.with_name(f"{self.job_id}.lock"))).acquire(timeout=timeout):
            yield

    def collected(self) -> set[int]:
        try:
            return set(json.loads(self.collected_path.read_text()))
        except FileNotFoundError:
            return set()
        except ValueError:
            return set()  # torn: collecting again is harmless (store and MLflow writes are idempotent)

    def mark_collected(self, index: int) -> None:
        done = self.collected() | {index}
        atomic_write_json(self.collected_path, sorted(done))

    def task_job(self, index: int) -> str:
        return self.task_jobs[index]

    def state(self, index: int, jobs: dict[str, str]) -> str:
        """"done" (result pickle present), "pending"/"running" (squeue), or "lost"."""
        from submitit.core.utils import JobPaths

        s = jobs.get(self.task_job(index))
        if JobPaths(self.folder, job_id=self.task_job(index), task_id=0).result_pickle.exists():
            # the pickle is written just before the task exits: wait (briefly) for SLURM to end it,
            # so the record carries SLURM's final accounting
            first = self._result_seen.setdefault(index, time.monotonic())
            return "done" if s is None or time.monotonic() - first >= SETTLE_S else "running"
        if s is not None:
            return "pending" if s in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED") else "running"
        state = slurm_accounting(self.task_job(index)).get("state")
        if state not in ENDED_WITHOUT_RESULT:
            # COMPLETED, still settling, or no longer known to scontrol, without a result pickle yet:
            # give a shared FS (attribute caching) GRACE_S to show it
            first = self._seen_gone.setdefault(index, time.monotonic())
            if time.monotonic() - first < GRACE_S:
                return "running"
        # one more look before declaring the task lost: listing the folder revalidates NFS's cache
        return "done" if self._result_appeared(index) else "lost"

    def _result_appeared(self, index: int) -> bool:
        from submitit.core.utils import JobPaths

        pickle = JobPaths(self.folder, job_id=self.task_job(index), task_id=0).result_pickle
        with contextlib.suppress(OSError):
            os.listdir(pickle.parent)
        return pickle.exists()

    def records(self, index: int) -> list[CellRecord]:
        """The records of a finished or lost array task (failed records when it left none)."""
        from submitit.core.utils import JobPaths, pickle_load

        paths = JobPaths(self.folder, job_id=self.task_job(index), task_id=0)
        acc = slurm_accounting(self.task_job(index))
        if paths.result_pickle.exists():
            outcome, result = pickle_load(paths.result_pickle)
            if outcome == "success":
                recs = [CellRecord.from_json(d, where=f"{paths.result_pickle}") for d in result]
                return [with_scheduler(r, {"slurm": acc}) if acc else r for r in recs]
            last = [ln for ln in str(result).strip().splitlines() if ln.strip()][-1:] or ["(no traceback)"]
            return self._failed(index, "SlurmTaskError", f"SLURM task {self.task_job(index)} raised {last[0]} "
                                                         f"(log {paths.stderr})", str(result), acc)
        state = acc.get("state") or "gone from squeue"
        reason = f", reason {acc['reason']}" if acc.get("reason") not in (None, "None") else ""
        return self._failed(index, "SlurmTaskLost", f"SLURM task {self.task_job(index)} ended {state}{reason} without a "
                                                    f"result; rerun the grid to resubmit it (log {paths.stderr})", "", acc)

    def _failed(self, index: int, kind: str, message: str, tb: str, acc: dict) -> list[CellRecord]:
        from submitit.core.utils import DelayedSubmission, JobPaths

        from flag_bench.cell import crashed_record

        submitted = JobPaths(self.folder, job_id=self.task_job(index), task_id=0).submitted_pickle
        delayed = DelayedSubmission.load(submitted)
        info = {"engine": "slurm", "job_id": self.task_job(index), "array_task_id": index}
        if acc:
            info["slurm"] = acc
        out = []
        for task in delayed.args[0]:
            rec = crashed_record(task, RuntimeError(message))
            rec = dataclasses.replace(rec, error=ErrorInfo("scheduler", kind, message, tb or message))
            out.append(with_scheduler(rec, info))
        return out


def submissions(root: Path) -> list[Submission]:
    folder = Path(root).joinpath(*SUBMISSIONS)
    if not folder.is_dir():
        return []
    return [Submission(p) for p in sorted(folder.glob("*.json")) if not p.name.endswith(".collected.json")]


def submit(cfg, store, tasks: list, parent_run_id: str | None) -> Submission:
    """Submit the tasks as one job array; hand each cell's claim to its array task."""
    submitit = require_submitit()
    root = Path(cfg.results_dir).resolve()
    folder = root.joinpath(*JOBS)
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=cfg.max_retries)
    params = sbatch_params(cfg, tasks)
    executor.update_parameters(**params)
    batches = [tasks[i:i + cfg.slurm_batch] for i in range(0, len(tasks), cfg.slurm_batch)]
    try:
        jobs = executor.map_array(CellBatch(), batches)
    except Exception as exc:  # sbatch refused the options: nothing was submitted
        raise UserError(f"sbatch refused the job array ({_first_line(exc)}); check the --slurm-* options") from None
    job_id = jobs[0].job_id.split("_")[0]
    sub = Submission.write(root, job_id, folder, [[t.cell.cell_id for t in b] for b in batches],
                           [j.job_id for j in jobs], parent_run_id,
                           {k: v for k, v in params.items() if k != "additional_parameters"} | dict(cfg.slurm_extra),
                           cfg.suite, cfg.tracking_uri)
    for i, batch in enumerate(batches):
        for t in batch:
            store.hand_over(t.cell.cell_id, claim_fields(sub.task_job(i)))
    return sub


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def sbatch_params(cfg, tasks: list) -> dict:
    gpus = cfg.slurm_gpus_per_task
    if gpus is None and any(t.device.startswith("cuda") for t in tasks):
        gpus = 1
    params = {"job_name": "flag-bench", "time": cfg.slurm_time, "cpus_per_task": cfg.slurm_cpus_per_task or 1}
    # an explicit cpus_per_task makes SLURM set SLURM_CPUS_PER_TASK, which sizes the task's threads
    optional = {"partition": cfg.slurm_partition, "gpus_per_task": gpus or None, "mem": cfg.slurm_mem,
                "array_parallelism": cfg.slurm_array_parallelism, "qos": cfg.slurm_qos, "account": cfg.slurm_account}
    params.update({k: v for k, v in optional.items() if v is not None})
    if cfg.slurm_extra:
        params["additional_parameters"] = dict(cfg.slurm_extra)
    return params


# -- collection (the driver, attached or through `flag-bench collect`) ----------------------------
def ready(sub: Submission, done: set[int]) -> Iterator[tuple[int, list[CellRecord]]]:
    """Each array task not collected yet that has finished or is lost, with its records."""
    try:
        jobs = slurm_jobs(max_age=0)
    except UserError:
        return  # squeue hiccup (a busy controller): nothing is decided this round
    for i in range(len(sub.tasks)):
        if i not in done and sub.state(i, jobs) in ("done", "lost"):
            yield i, sub.records(i)


def counts(sub: Submission) -> dict[str, int]:
    """Array tasks of a submission by state: collected, done (not collected), pending, running, lost."""
    done = sub.collected()
    # a fully collected submission needs no squeue (SLURM may be gone by the time one asks)
    jobs = slurm_jobs(max_age=0) if len(done) < len(sub.tasks) else {}
    out = {"collected": 0, "done": 0, "pending": 0, "running": 0, "lost": 0}
    for i in range(len(sub.tasks)):
        out["collected" if i in done else sub.state(i, jobs)] += 1
    return out


class SlurmExecutor(Executor):
    """Cells as one job array. The array tasks hold the cells' claims and outlive this process:
    ``--detach`` returns after submitting, and Ctrl-C leaves them running (``flag-bench collect``
    gathers them later)."""

    name = "slurm"
    runs_locally = False  # the array tasks run on the cluster's nodes, with their devices
    can_detach = True

    def __init__(self, cfg, store, poll_s: float = 2.0):
        require_submitit()
        self.cfg, self.store, self.poll_s = cfg, store, poll_s
        self.submission: Submission | None = None
        self._polled: list[int] = []  # array tasks poll() returned, marked collected on the next call

    @classmethod
    def from_run(cls, cfg, *, on_event=None, device: str = "cpu", store=None) -> "SlurmExecutor":
        return cls(cfg, store)

    def submit(self, tasks: Iterable, parent_run_id: str | None = None) -> Submitted | None:
        tasks = list(tasks)  # the whole array is submitted at once (claims taken as they are drawn)
        if not tasks:
            return None
        sub = self.submission = submit(self.cfg, self.store, tasks, parent_run_id)
        return Submitted(sub.job_id, f"submitted SLURM job array {sub.job_id} ({len(sub.tasks)} task(s)); logs in "
                                     f"{sub.folder}", detached=bool(self.cfg.detach))

    def _attached(self) -> Submission | None:
        return None if self.cfg.detach else self.submission

    def _mark_polled(self, sub: Submission) -> None:
        # the caller has written what the last poll returned: those tasks are collected now
        for i in self._polled:
            sub.mark_collected(i)
        self._polled = []

    def poll(self) -> list[CellRecord]:
        from filelock import Timeout

        sub = self._attached()
        if sub is None:
            return []
        out: list[CellRecord] = []
        try:
            with sub.lock(timeout=0):
                self._mark_polled(sub)
                for i, recs in ready(sub, sub.collected()):
                    out += recs
                    self._polled.append(i)
        except Timeout:
            return []  # `flag-bench collect` is collecting it right now
        return out

    def collect(self) -> Iterator[CellRecord]:
        sub = self._attached()
        if sub is None:
            return
        with sub.lock():
            self._mark_polled(sub)
            done = sub.collected()
            while len(done) < len(sub.tasks):
                progressed = False
                for i, recs in ready(sub, done):
                    yield from recs  # the driver writes each before the generator resumes
                    sub.mark_collected(i)
                    done.add(i)
                    progressed = True
                if not progressed:
                    time.sleep(self.poll_s)

    def cancel(self) -> list[CellRecord]:
        """Ctrl-C leaves the submitted tasks running: `flag-bench collect` gathers them later."""
        return []

    def shutdown(self) -> None:
        """Nothing is held here: the array tasks hold their cells' claims."""

    @classmethod
    def latest_detached(cls, results_dir: Path, trusted: bool) -> dict:
        """The latest submission's tracking URI and suite; the results dir checked first (see
        "Trust boundary") unless ``trusted``."""
        if not trusted:
            check_trusted(results_dir)
        require_submitit()
        subs = submissions(results_dir)
        if not subs:
            raise NothingDetached(f"--results-dir {results_dir}: no SLURM submissions under slurm/submissions; "
                                  "submit with `flag-bench run --executor slurm --detach`")
        return {"tracking_uri": subs[-1].tracking_uri, "suite": subs[-1].suite}

    @classmethod
    def collect_detached(cls, store, write: Callable[[CellRecord, str | None], None]) -> dict[str, int]:
        return collect(store, write)


TRUST_FLAG = "--trust-results-dir"


def untrusted(root: Path) -> str | None:
    """Why someone other than this user (or root) could change what collecting unpickles under
    ``root``, or None: the results dir, its ``slurm/`` folders, each submission's job folder or a
    ``.pkl`` file in one is group- or world-writable or owned by another user."""
    import stat

    root = Path(root)
    me = os.geteuid()
    paths = [root, root / SUBMISSIONS[0], root.joinpath(*SUBMISSIONS), root.joinpath(*JOBS)]
    folders = [root.joinpath(*JOBS)]
    with contextlib.suppress(OSError, ValueError, KeyError):
        folders += [s.folder for s in submissions(root)]
    for folder in dict.fromkeys(folders):
        paths.append(folder)
        with contextlib.suppress(OSError):
            paths += sorted(folder.glob("*.pkl"))
    for p in dict.fromkeys(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue  # not there (yet): nothing to unpickle from it
        if st.st_uid not in (me, 0):
            return f"{p} is owned by uid {st.st_uid}, not by you (uid {me})"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            who = "world" if st.st_mode & stat.S_IWOTH else "group"
            return f"{p} is {who}-writable (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def check_trusted(root: Path) -> None:
    """UserError (one line, naming the dir and the flag) when ``untrusted(root)``."""
    why = untrusted(root)
    if why:
        raise UserError(f"--results-dir {root}: {why}; collect unpickles the SLURM result files there, which runs "
                        f"code as you for anyone who can write them: chmod go-w it (own it yourself), or pass "
                        f"{TRUST_FLAG} if everyone who can write there is trusted")


def collect(store, write: Callable[[CellRecord, str | None], None]) -> dict[str, int]:
    """Write every finished, not yet collected array task of every submission through ``write``
    (the driver's store + MLflow writer). Submissions an attached driver is collecting are left to
    it. Returns counts: tasks collected now, records written, submissions skipped as busy.

    This unpickles submitit's files under ``<results>/slurm/jobs`` (see "Trust boundary" above):
    ``flag-bench collect`` calls ``check_trusted`` first unless given ``--trust-results-dir``."""
    from filelock import Timeout

    out = {"tasks": 0, "records": 0, "busy": 0}
    for sub in submissions(store.root):
        done = sub.collected()
        if len(done) >= len(sub.tasks):
            continue
        try:
            with sub.lock(timeout=0):
                done = sub.collected()
                for i, recs in ready(sub, done):
                    for rec in recs:
                        write(rec, sub.parent_run_id)
                        out["records"] += 1
                    sub.mark_collected(i)
                    out["tasks"] += 1
        except Timeout:
            out["busy"] += 1
    return out
