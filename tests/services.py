"""Real engines for tests, started by the tests themselves (nothing is installed here).

- ``slurm_cluster``: munged, slurmctld and slurmd as background processes with a generated
  single-node ``slurm.conf`` (loopback, cgroup-free) in a temporary folder.
- ``mlflow_server``: a PostgreSQL cluster (``initdb`` as the ``postgres`` user) and an
  ``mlflow server`` on loopback ports, restartable mid-test.

A daemon that cannot start skips the test with its log's tail (never a pass); under CI (``CI=true``)
it fails the test instead (``missing_engine``: a broken install step must not leave CI green; Ray
and Chromium go through it too). Which engines ran
is printed in pytest's terminal summary and appended to ``$FLAG_BENCH_ENGINES_FILE`` when that is
set, so ``.ci/run`` can show it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

_ENGINES: dict[str, str] = {}


def note_engine(name: str, outcome: str) -> None:
    _ENGINES[name] = outcome
    target = os.environ.get("FLAG_BENCH_ENGINES_FILE")
    if not target:
        return
    path = Path(target)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(f"{name}: {outcome}\n")


def pytest_terminal_summary(terminalreporter):
    if _ENGINES:
        terminalreporter.section("engines exercised")
        for name, outcome in _ENGINES.items():
            terminalreporter.write_line(f"{name}: {outcome}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"(no log at {path})"


def _wait(check, timeout: float, step: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(step)
    return False


def _stop(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def in_ci() -> bool:
    """True where the environment variable CI is "true" (GitHub Actions and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_engine(engine: str, why: str) -> NoReturn:
    """An engine a test needs is missing or did not start: skip, saying why; under CI fail instead,
    so a broken install step turns CI red rather than leaving it green with the test unrun. Every
    engine test (SLURM, PostgreSQL, the MLflow server, Ray, Chromium) ends up here."""
    first = why.splitlines()[0][:200] if why else ""
    if in_ci():
        note_engine(engine, f"FAILED ({first})")
        pytest.fail(f"{engine} is missing under CI=true (CI installs every engine: scripts/ci-services.sh, "
                    f"the test extra): {why}", pytrace=False)
    note_engine(engine, f"SKIPPED ({first})")
    pytest.skip(f"{engine} could not start: {why}")


_skip = missing_engine  # the name the daemons below use


def require_module(engine: str, module: str, hint: str):
    """``import module`` for an engine test, or ``missing_engine`` with ``hint`` (how to install it)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing_engine(engine, f"{module} not importable ({exc}): {hint}")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# -- SLURM ------------------------------------------------------------------------------------
SLURM_CONF = """\
ClusterName=flagbench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    dir: Path
    conf: Path
    env: dict[str, str]
    procs: list = field(default_factory=list)

    def run(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)


def _slurm_start(base: Path) -> SlurmCluster:
    for exe in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol"):
        if not (shutil.which(exe) or Path(f"/usr/sbin/{exe}").exists()):
            _skip("slurm", f"{exe} not installed (scripts/ci-services.sh installs slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        _skip("slurm", "the test cluster runs its daemons as root (SlurmUser=root); run the tests as root")
    base.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool", "munge"):
        (base / d).mkdir(exist_ok=True)
    key = base / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = base / "munge" / "munge.socket"
    host = socket.gethostname().split(".")[0]
    conf = base / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, ctld_port=free_port(), d_port=free_port(), dir=base,
                                      munge_socket=sock, cpus=os.cpu_count() or 1))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(base, conf, env)
    munged = shutil.which("munged") or "/usr/sbin/munged"
    mlog = base / "munge" / "munged.log"
    # --force: the key sits under /tmp, whose sticky world-writable parent munged otherwise refuses
    rc = subprocess.run([munged, "--force", f"--key-file={key}", f"--socket={sock}", f"--log-file={mlog}",
                         f"--pid-file={base / 'munge' / 'munged.pid'}", f"--seed-file={base / 'munge' / 'seed'}"],
                        capture_output=True, text=True, timeout=20)
    if rc.returncode != 0 or not _wait(sock.exists, 10):
        _skip("slurm", f"munged: {rc.stderr.strip()} {_tail(mlog)}")
    for exe, log in (("slurmctld", "slurmctld.log"), ("slurmd", "slurmd.log")):
        path = shutil.which(exe) or f"/usr/sbin/{exe}"
        cluster.procs.append(subprocess.Popen([path, "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                              stderr=open(base / f"{exe}.stderr", "w")))
        if exe == "slurmctld" and not _wait(lambda: cluster.run("scontrol", "ping", timeout=5).returncode == 0, 30, 0.5):
            slurm_stop(cluster)
            _skip("slurm", f"slurmctld did not answer: {_tail(base / log)} {_tail(base / 'slurmctld.stderr')}")

    def node_idle() -> bool:
        out = cluster.run("sinfo", "-h", "-o", "%T", timeout=5).stdout.strip().lower()
        return out.startswith("idle") or out.startswith("mix")

    if not _wait(node_idle, 40, 0.5):
        state = cluster.run("sinfo", "-h", "-o", "%T %E", timeout=5).stdout
        slurm_stop(cluster)
        _skip("slurm", f"node not idle ({state.strip()}): {_tail(base / 'slurmd.log')} {_tail(base / 'slurmd.stderr')}")
    return cluster


def slurm_stop(cluster: SlurmCluster) -> None:
    with contextlib.suppress(Exception):
        cluster.run("scancel", "--user", "root", timeout=10)
    for proc in reversed(cluster.procs):
        _stop(proc)
    pid = cluster.dir / "munge" / "munged.pid"
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid.read_text().strip()), signal.SIGTERM)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    # a short base path: munge's socket path must fit in sun_path (108 bytes)
    base = Path(tmp_path_factory.mktemp("slurm", numbered=True))
    cluster = _slurm_start(base)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)  # submitit's sbatch/squeue calls inherit it
    note_engine("slurm", "ran (single-node slurmctld + slurmd + munged)")
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        slurm_stop(cluster)


# -- PostgreSQL + mlflow server --------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class MlflowServer:
    uri: str
    port: int
    backend: str
    artifacts: Path
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend, "--host", "127.0.0.1",
             "--port", str(self.port), "--artifacts-destination", str(self.artifacts), "--workers", "1"],
            stdout=open(self.log, "a"), stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            if self.proc.poll() is not None:
                return True
            import urllib.request

            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        if not _wait(up, timeout, 0.5) or self.proc.poll() is not None:
            self.stop()
            _skip("mlflow-server", f"mlflow server did not answer on {self.uri}: {_tail(self.log)}")

    def stop(self) -> None:
        """Kill the server and its gunicorn/uvicorn workers (its own process group)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    bin_dir = _pg_bin()
    if bin_dir is None:
        _skip("postgresql", "initdb not found (scripts/ci-services.sh installs postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _skip("postgresql", "psycopg2 missing: pip install 'flag-bench[server]'")
    import tempfile

    # not under pytest's basetemp: that is private to root, and postgres runs as its own user
    base = Path(tempfile.mkdtemp(prefix="flagbench-pg-"))
    data = base / "data"
    user = "postgres"
    runas: list[str] = []
    if os.geteuid() == 0:
        # initdb and postgres refuse to run as root
        shutil.chown(base, user)
        runas = ["runuser", "-u", user, "--"]
    port = free_port()
    log = base / "pg.log"
    init = subprocess.run([*runas, str(bin_dir / "initdb"), "-D", str(data), "-U", "flagbench", "--auth=trust",
                           "-E", "UTF8"], capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        _skip("postgresql", f"initdb failed: {init.stderr[-1500:]}")
    start = subprocess.run([*runas, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                            "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"],
                           capture_output=True, text=True, timeout=90)
    if start.returncode != 0:
        _skip("postgresql", f"pg_ctl start failed: {start.stderr[-500:]} {_tail(log)}")
    try:
        made = subprocess.run([*runas, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                               "flagbench", "mlflow"], capture_output=True, text=True, timeout=60)
        if made.returncode != 0:
            _skip("postgresql", f"createdb failed: {made.stderr[-500:]}")
        note_engine("postgresql", f"ran (initdb + pg_ctl on 127.0.0.1:{port})")
        yield f"postgresql+psycopg2://flagbench@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*runas, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"],
                       capture_output=True, text=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mlflow_server(postgres_url, tmp_path):
    port = free_port()
    server = MlflowServer(f"http://127.0.0.1:{port}", port, postgres_url, tmp_path / "mlartifacts",
                          tmp_path / "mlflow-server.log")
    server.artifacts.mkdir()
    server.start()
    note_engine("mlflow-server", f"ran (mlflow server, PostgreSQL backend, {server.uri})")
    try:
        yield server
    finally:
        server.stop()


def hide_module(monkeypatch, name: str) -> None:
    """Make ``import name`` (and its submodules) fail, as on a machine without that extra."""
    import builtins

    real = builtins.__import__

    def fake(mod, *a, **k):
        if mod == name or mod.startswith(name + "."):
            raise ImportError(mod)
        return real(mod, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)


# the small grid every engine test runs and compares with the serial engine's scores
ENGINE_GRID = dict(datasets=("synthetic:n_slides=3,spots_per_slide=60,n_genes=80,seed=3",), methods=("mean", "ridge"),
                   genes=(10,), encoder="color-stats", preset="tiny", device="cpu")


def store_scores(results_dir) -> dict:
    """{cell_id: scores} of the finished records in a results dir."""
    from flag_bench.store import ResultsStore

    return {r.cell_id: dict(r.scores) for r in ResultsStore(results_dir).records()}
