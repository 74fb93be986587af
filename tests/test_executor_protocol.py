"""One executor protocol (issue 24, item 4): every engine implements submit / poll / collect /
cancel / shutdown and the driver uses nothing else; whether a claim's holder is alive is the
engine's answer, never the store's; `run --dry-run` plans a cluster run's CUDA cells on a CPU
machine; and no module outside flag_bench/cluster/ names an engine."""

from __future__ import annotations

import ast
import re
import sys
import time
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flag_bench.cluster import ENGINES, Executor, Submitted, engine
from flag_bench.config import RunConfig
from flag_bench.executors import PoolExecutor, SerialExecutor, executor_class

SYN = "synthetic:n_slides=3,spots_per_slide=40,n_genes=40,seed=3"
GRID = dict(datasets=(SYN,), methods=("mean",), genes=(10,), encoder="color-stats", preset="tiny", device="cpu")
PACKAGE = Path(__file__).resolve().parent.parent / "flag_bench"
PROTOCOL = ("from_run", "submit", "poll", "collect", "cancel", "shutdown")


def _engines() -> list[type]:
    return [SerialExecutor, PoolExecutor, *(engine(name) for name in ENGINES)]


# -- the protocol --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", _engines(), ids=lambda c: c.__name__)
def test_every_engine_implements_the_whole_protocol(cls):
    missing = [m for m in PROTOCOL if m not in cls.__dict__]  # its own, not the protocol's stubs
    assert not missing, f"{cls.__name__} does not implement {missing}"
    assert Executor in cls.__mro__ and isinstance(cls.runs_locally, bool) and isinstance(cls.can_detach, bool)


def test_the_engine_table_selects_each_engine_by_its_name_without_starting_it():
    for name in ENGINES:
        cls = executor_class(RunConfig(**GRID, executor=name))
        assert cls.name == name and not cls.runs_locally  # cluster engines run cells elsewhere
    assert executor_class(RunConfig(**GRID)) is SerialExecutor
    assert executor_class(RunConfig(**GRID, workers=2)) is PoolExecutor


def _tasks(tmp_path):
    from flag_bench.plan import plan_grid

    cfg = RunConfig(**GRID, results_dir=str(tmp_path / "res"))
    return plan_grid(cfg, device="cpu", provenance={}, results_dir=cfg.results_dir).tasks


def test_serial_submits_then_computes_in_collect(tmp_path):
    tasks = _tasks(tmp_path)
    with SerialExecutor() as ex:
        assert isinstance(ex, Executor)
        assert ex.submit(iter(tasks)) is None
        assert ex.poll() == []  # a synchronous engine has nothing in flight between calls
        recs = list(ex.collect())
        assert ex.cancel() == [] and list(ex.collect()) == []  # collected once
    assert sorted(r.cell_id for r in recs) == sorted(t.cell.cell_id for t in tasks)
    assert all(r.ok for r in recs)


@pytest.mark.slow
def test_pool_poll_gives_every_record_once_with_the_serial_scores(tmp_path):
    tasks = _tasks(tmp_path)
    serial = {r.cell_id: dict(r.scores) for r in SerialExecutor().map(tasks)}
    got: dict = {}
    with PoolExecutor(2) as ex:
        ex.submit(iter(tasks))
        deadline = time.monotonic() + 300
        while len(got) < len(tasks) and time.monotonic() < deadline:
            for rec in ex.poll():
                assert rec.cell_id not in got
                got[rec.cell_id] = dict(rec.scores)
            time.sleep(0.1)
        assert ex.poll() == []
    assert got == serial


# -- the driver knows the protocol only: a fake engine under a real engine's name ---------------------
class FakeEngine(Executor):
    """Runs cells in this process, but says it runs them elsewhere and hands back a job, as a
    scheduler does; records what the driver asked of it."""

    name = "fake"
    runs_locally = False
    can_detach = True
    calls: list[str] = []

    def __init__(self, cfg):
        self.cfg, self.tasks = cfg, []

    @classmethod
    def from_run(cls, cfg, *, on_event, device, store):
        cls.calls.append(f"from_run:{device}")
        return cls(cfg)

    @classmethod
    def collect_detached(cls, store, write):
        cls.calls.append("collect_detached")
        return {"tasks": 0, "records": 0, "busy": 0}

    def submit(self, tasks, parent_run_id=None):
        self.tasks = list(tasks)
        self.calls.append(f"submit:{len(self.tasks)}:{bool(parent_run_id)}")
        return Submitted("fake-7", "submitted fake job fake-7", detached=bool(self.cfg.detach))

    def poll(self):
        return []

    def collect(self):
        from flag_bench.cell import run_cell

        self.calls.append("collect")
        if not self.cfg.detach:
            for task in self.tasks:
                yield run_cell(task, lambda kind, payload: None)

    def cancel(self):
        return []

    def shutdown(self):
        self.calls.append("shutdown")


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_the_driver_drives_any_engine_through_the_protocol(tmp_path, monkeypatch, name):
    from flag_bench.driver import Driver
    from flag_bench.store import ResultsStore

    monkeypatch.setitem(ENGINES, name, f"{__name__}:FakeEngine")
    monkeypatch.setattr(FakeEngine, "calls", [])
    s = Driver(RunConfig(**GRID, executor=name, results_dir=str(tmp_path / "res"))).run()
    n = s.planned
    assert (s.ok, s.failed, s.executor, s.job, s.detached) == (n, [], "fake", "fake-7", False)
    assert FakeEngine.calls == ["collect_detached", "from_run:cpu", f"submit:{n}:True", "collect", "shutdown"]
    assert len(list(ResultsStore(tmp_path / "res").records())) == n
    assert not list((tmp_path / "res" / "claims").glob("*.claim"))


# -- claims: the engine judges its jobs' claims ----------------------------------------------------
def test_a_claim_handed_to_a_job_lives_as_its_engine_says(tmp_path, monkeypatch):
    import subprocess

    import flag_bench.cluster as cluster
    from flag_bench.cluster.status import cell_states
    from flag_bench.store import ResultsStore

    state = {"job-1": "pending"}
    fake = types.ModuleType("fake_engine_claims")
    fake.claim_state = lambda holder: state.get(holder["fake_job"], "gone")
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(cluster, "_CLAIM_KEYS", {"fake_job": fake.__name__})

    def no_subprocess(*a, **k):  # the store asks the engine, never a scheduler's command itself
        raise AssertionError(f"the store ran {a}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    store = ResultsStore(tmp_path / "res")
    store.ensure_writable()
    store.write_plan({"suite": "default"}, [{"cell_id": "c1"}, {"cell_id": "c2"}])
    assert store.claim("c1")
    store.hand_over("c1", {"fake_job": "job-1"})
    assert store.holder("c1")["fake_job"] == "job-1" and store.busy("c1") and not store.claim("c1")
    assert cell_states(tmp_path / "res")[0]["pending"] == 1
    state["job-1"] = "unknown"  # the engine cannot be asked: live, never a crash
    assert store.busy("c1") and cell_states(tmp_path / "res")[0]["unknown"] == 1
    del state["job-1"]  # the job ended: its claim is stale and taken over
    assert not store.busy("c1") and store.claim("c1")


# -- the dry run plans where the cells will run ---------------------------------------------------
def _dry_run(*argv):
    from flag_bench.cli import app

    return CliRunner().invoke(app, ["run", "--dry-run", "--datasets", SYN, "--methods", "mean", "--genes", "10",
                                    "--encoder", "color-stats", "--preset", "tiny", "--no-progress", *argv],
                              env={"COLUMNS": "300"})


def _cpu_login_node(monkeypatch, tmp_path):
    """No CUDA here, no scheduler commands on PATH, no engine extras installed."""
    from services import hide_module

    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    for extra in ("submitit", "ray"):
        hide_module(monkeypatch, extra)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_dry_run_of_cuda_cells_for_a_cluster_plans_on_a_cpu_login_node(tmp_path, monkeypatch, name):
    _cpu_login_node(monkeypatch, tmp_path)
    rd = tmp_path / "results"
    res = _dry_run("--executor", name, "--device", "cuda", "--results-dir", str(rd))
    assert res.exit_code == 0, res.output
    assert "cells on cuda" in res.output and "0 of " in res.output
    assert not rd.exists()  # computed nothing, submitted nothing, wrote nothing
    # the same cells run here need a CUDA device here
    local = _dry_run("--executor", "local", "--device", "cuda", "--results-dir", str(rd))
    assert local.exit_code == 2 and "no CUDA device is available here" in local.output, local.output


# -- nothing outside flag_bench/cluster/ names an engine --------------------------------------------
ENGINE_WORDS = frozenset({"slurm", "squeue", "submitit", "ray", *ENGINES})
# where an engine may be named outside flag_bench/cluster/: path -> why
ALLOWED_FILES = {
    "config.py": "declares the run options (slurm_partition, ray_address, ...) and their help text",
}
# (path, enclosing function) -> why
ALLOWED_FUNCTIONS = {
}


def _words(text: str) -> set[str]:
    """Lower-case words of an identifier or a string: snake_case, CamelCase and prose alike."""
    return set(re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower()))


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def engine_names(source: str, path: str = "<snippet>") -> list[str]:
    """Each identifier or string (docstrings, comments and CLI help= text aside) that names an
    engine, as "path:line: word (where)"."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    for node in ast.walk(tree):  # help text of a CLI option
        if isinstance(node, ast.keyword) and node.arg == "help":
            skip.update(id(n) for n in ast.walk(node.value))
    found = []

    def visit(node: ast.AST, func: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name  # a method counts by its own name (RunSummary.slurm_job: "slurm_job")
        texts: list[str] = []
        if isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            texts = [node.name]
        elif isinstance(node, ast.arg):
            texts = [node.arg]
        elif isinstance(node, ast.keyword) and node.arg:
            texts = [node.arg]
        elif isinstance(node, ast.alias):
            texts = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom):
            texts = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            texts = [node.value]
        hits = sorted(set().union(*(_words(t) for t in texts)) & ENGINE_WORDS) if texts else []
        if hits and (path, func) not in ALLOWED_FUNCTIONS:
            found.append(f"{path}:{getattr(node, 'lineno', '?')}: {', '.join(hits)} ({texts[0][:60]!r})")
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, None)
    return found


def test_the_scan_finds_an_engine_named_in_code_and_not_in_prose():
    code = 'def run(cfg):\n    """Runs on SLURM."""\n    if cfg.executor == "slurm":\n        import submitit\n'
    assert [f.split(": ", 1)[1].split(" (")[0] for f in engine_names(code)] == ["slurm", "submitit"]
    assert engine_names('x = f"on {cfg.ray_address}"\nhelp_ = typer.Option(1, help="Ray: CPUs")\n') == \
        ["<snippet>:1: ray ('ray_address')"]
    assert engine_names("def f(a):\n    return a.array + 1  # slurm in a comment\n") == []


def test_no_module_outside_cluster_names_an_engine():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cluster/") or rel in ALLOWED_FILES:
            continue
        found += engine_names(path.read_text(), rel)
    assert not found, "engines named outside flag_bench/cluster/ (ask the executor instead):\n" + "\n".join(found)
