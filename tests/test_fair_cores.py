"""Fair sharing of CPU cores (issue 23): thread sizing from affinity, SLURM and the cgroup quota; the
wait policy and when it is set; threads sized to the load; the per-cell CPU/load costs and the
contended mark in the records, the report and the estimate. Decision logic only, no timings."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from flag_bench.cluster import load, threads
from flag_bench.cluster.load import Sample, is_contended, others_cores, parse_proc_stat, threads_for_load
from flag_bench.cluster.threads import WAIT_DEFAULTS, apply_wait_policy, cgroup_cpu_limit, granted_cpus, wait_policy


# -- 1. thread sizing: the smallest of affinity, SLURM and the cgroup quota ----------------------
def _v2(tmp_path, files: dict[str, str]):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    return tmp_path


def test_cgroup_v2_quota_is_the_smallest_on_the_path_to_the_root(tmp_path):
    root = _v2(tmp_path, {"cpu.max": "400000 100000\n", "user.slice/cpu.max": "250000 100000\n",
                          "user.slice/job/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, "0::/user.slice/job\n") == 2.5
    assert cgroup_cpu_limit(root, "0::/\n") == 4.0
    # a path seen from the host, absent in the container's namespace: the mount's own file
    assert cgroup_cpu_limit(root, "0::/docker/abc123\n") == 4.0


def test_cgroup_v2_without_a_quota(tmp_path):
    root = _v2(tmp_path, {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, "0::/\n") is None
    assert cgroup_cpu_limit(tmp_path / "nothing-here", "") is None  # no cgroup fs: no limit
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert cgroup_cpu_limit(root, "0::/\n") is None


@pytest.mark.parametrize("mount", ["cpu,cpuacct", "cpu"])
def test_cgroup_v1_cfs_quota(tmp_path, mount):
    m = tmp_path / mount
    (m / "job").mkdir(parents=True)
    (tmp_path / "cpuacct").mkdir()  # another controller's mount is not read
    (tmp_path / "cpuacct" / "cpu.cfs_quota_us").write_text("10000\n")
    (m / "cpu.cfs_quota_us").write_text("-1\n")
    (m / "cpu.cfs_period_us").write_text("100000\n")
    (m / "job" / "cpu.cfs_quota_us").write_text("150000\n")
    (m / "job" / "cpu.cfs_period_us").write_text("100000\n")
    text = f"4:memory:/job\n3:{mount}:/job\n0::/\n"
    assert cgroup_cpu_limit(tmp_path, text) == 1.5
    assert cgroup_cpu_limit(tmp_path, f"3:{mount}:/\n") is None  # -1: no limit


def test_granted_cpus_takes_the_smallest(tmp_path):
    root = _v2(tmp_path, {"cpu.max": "250000 100000\n"})
    many = set(range(16))
    assert granted_cpus(env={}, affinity=many, cgroup_root=root, self_cgroup="0::/\n") == 2  # quota 2.5, rounded down
    assert granted_cpus(env={"SLURM_CPUS_PER_TASK": "1"}, affinity=many, cgroup_root=root, self_cgroup="0::/") == 1
    assert granted_cpus(env={}, affinity={3}, cgroup_root=root, self_cgroup="0::/") == 1
    assert granted_cpus(2, env={}, affinity=many, cgroup_root=root, self_cgroup="0::/") == 1
    # SLURM says 8 but this process may run on 3 CPUs only (taskset inside an allocation)
    assert granted_cpus(env={"SLURM_CPUS_PER_TASK": "8"}, affinity={0, 1, 2}, cgroup_root=tmp_path / "none",
                        self_cgroup="") == 3
    (root / "cpu.max").write_text("50000 100000\n")  # half a core still runs one thread
    assert granted_cpus(env={}, affinity=many, cgroup_root=root, self_cgroup="0::/") == 1


# -- 2. the wait policy -------------------------------------------------------------------------
def test_wait_policy_is_a_bounded_spin_unless_the_user_chose():
    assert wait_policy({}) == WAIT_DEFAULTS
    assert set(WAIT_DEFAULTS) == {"GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OPENBLAS_THREAD_TIMEOUT"}
    assert int(WAIT_DEFAULTS["GOMP_SPINCOUNT"]) < 300000  # shorter than libgomp's default spin
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OPENBLAS_THREAD_TIMEOUT"):
        assert wait_policy({var: "PASSIVE"}) == {}, var  # the user's policy stays whole
    assert wait_policy({"OMP_WAIT_POLICY": " "}) == WAIT_DEFAULTS  # blank is unset
    env = {"PATH": "/bin"}
    assert apply_wait_policy(env) == WAIT_DEFAULTS and env["GOMP_SPINCOUNT"] == WAIT_DEFAULTS["GOMP_SPINCOUNT"]
    assert apply_wait_policy(env) == {}  # already set: nothing more


PROBE_MAIN = """
import json, os, sys
import flag_bench.cli as cli
seen = {}
def fake_app():
    seen["env"] = {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OPENBLAS_THREAD_TIMEOUT",
                                                   "OMP_WAIT_POLICY")}
    seen["loaded"] = [m for m in ("torch", "numpy") if m in sys.modules]
cli.app = fake_app
cli.main()
print(json.dumps(seen))
"""


@pytest.mark.parametrize("user", [{}, {"OMP_WAIT_POLICY": "PASSIVE"}])
def test_cli_entry_point_sets_waits_before_torch_or_numpy_load(user):
    env = {k: v for k, v in os.environ.items() if k not in threads.WAIT_ENV}
    out = subprocess.run([sys.executable, "-c", PROBE_MAIN], env={**env, **user}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["loaded"] == []  # OpenMP and OpenBLAS read the variables when they load
    if user:
        assert seen["env"] == {"GOMP_SPINCOUNT": None, "KMP_BLOCKTIME": None, "OPENBLAS_THREAD_TIMEOUT": None,
                               "OMP_WAIT_POLICY": "PASSIVE"}
    else:
        assert seen["env"] == {**WAIT_DEFAULTS, "OMP_WAIT_POLICY": None}


# -- threads sized to the load ------------------------------------------------------------------
@pytest.mark.parametrize("granted, cpus, others, expected", [
    (2, 2, None, 2),  # not measured: the grant
    (2, 2, 0.0, 2), (2, 2, 0.4, 2),  # background noise
    (2, 2, 0.6, 1), (2, 2, 1.0, 1), (2, 2, 2.0, 1),  # another run, a 2-thread numpy loop: one thread, never 0
    (1, 2, 1.0, 1),  # a pool worker: its sibling on the other core takes nothing from it
    (4, 8, 6.0, 2),  # 4 granted of 8; others use 6 = the 4 not granted + 2 of ours
    (16, 16, 0.6, 16), (16, 16, 2.0, 15),  # large grants tolerate a tenth
])
def test_threads_for_load(granted, cpus, others, expected):
    assert threads_for_load(granted, cpus, others) == expected


def _sample(wall, own, busy, total, cpus=2, load1=None):
    return Sample(wall, own, busy, total, cpus, load1)


def test_others_cores_subtracts_this_process():
    a = _sample(0.0, 0.0, 0, 0)
    # 2 CPUs over 1 s = 200 ticks, 150 busy = 1.5 cores busy, this process used 1.0 of them
    assert others_cores(a, _sample(1.0, 1.0, 150, 200)) == pytest.approx(0.5)
    assert others_cores(a, _sample(1.0, 2.0, 150, 200)) == 0.0  # never negative (tick rounding)
    assert others_cores(a, _sample(0.1, 0.0, 20, 20)) is None  # too short a window to tell
    assert others_cores(_sample(0.0, 0.0, None, None), _sample(1.0, 0.0, None, None)) is None  # not Linux


def test_parse_proc_stat_counts_the_affinity_cpus():
    text = ("cpu  300 0 100 600 0 0 0 0 0 0\n"
            "cpu0 100 0 50 50 0 0 0 0 0 0\n"  # 150 busy of 200
            "cpu1 200 0 50 500 50 0 0 50 20 0\n"  # iowait idle, steal busy, guest inside user: 300 of 850
            "intr 1 2 3\n\nctxt 5\n")
    assert parse_proc_stat(text) == (450, 1050, 2)
    assert parse_proc_stat(text, {1}) == (300, 850, 1)
    assert parse_proc_stat(text, {7}) is None


def test_contended_rule():
    assert not is_contended(2, 2, 0.3)
    assert is_contended(2, 2, 0.8)
    assert not is_contended(1, 2, 1.0)  # a pool worker beside its sibling
    assert is_contended(1, 2, 1.7)
    assert is_contended(2, 2, 0.0, threads=1)  # sized down for load: not a quiet machine's time
    # not measured: the load average, which counts this process's own threads too
    assert is_contended(2, 2, None, 3.5, 3.7, machine_cpus=2)
    assert not is_contended(2, 2, None, 2.0, 2.1, machine_cpus=2)
    assert not is_contended(2, 2, None)


def test_adapt_threads_sizes_to_others(monkeypatch):
    applied = []
    monkeypatch.setattr(threads, "_STATE", {"granted": 2, "threads": 2})
    monkeypatch.setattr(threads, "_set_threads", lambda n: (applied.append(n), threads._STATE.update(threads=n)))
    monkeypatch.setattr(load, "sampled_cpus", lambda: 2)
    looks = iter([1.0, None, 0.1])
    monkeypatch.setattr(load, "others_since_last_look", lambda: next(looks))
    monkeypatch.delenv(threads.ADAPT_ENV, raising=False)
    assert threads.adapt_threads() == (1, 1.0)
    assert threads.adapt_threads() == (1, None)  # nothing measured: the last decision stands
    assert threads.adapt_threads() == (2, 0.1)  # quiet again
    assert applied == [1, 2]
    monkeypatch.setenv(threads.ADAPT_ENV, "0")
    monkeypatch.setattr(load, "others_since_last_look", lambda: 2.0)
    assert threads.adapt_threads() == (2, 2.0)  # opted out: the grant whatever the load
    threads._STATE.update(threads=1)  # sized down by an earlier cell, before the user opted out
    monkeypatch.setattr(load, "others_since_last_look", lambda: None)
    assert threads.adapt_threads() == (2, None)  # opted out, nothing measured: still the grant
    monkeypatch.setattr(load, "others_since_last_look", lambda: 2.0)
    monkeypatch.setattr(threads, "_STATE", {})
    assert threads.adapt_threads() == (None, 2.0)  # never limited: nothing to size


# -- 3. the record, the report and the estimate -------------------------------------------------
SYN = "synthetic:n_slides=3,spots_per_slide=40,n_genes=30,seed=3"
COSTS = ("cpu_seconds", "wall_seconds", "load_start", "load_end", "others_cpu", "cores", "contended")


@pytest.mark.slow
def test_records_carry_cpu_load_and_contended(tmp_path):
    from flag_bench.config import RunConfig
    from flag_bench.driver import Driver
    from flag_bench.leaderboard.results import load_results
    from flag_bench.store import ResultsStore

    cfg = RunConfig(datasets=(SYN,), methods=("mean",), genes=(10,), encoder="color-stats", preset="tiny",
                    device="cpu", results_dir=str(tmp_path / "res"), folds=(0,))
    Driver(cfg, progress=False).run()
    (rec,) = list(ResultsStore(tmp_path / "res").records())
    assert set(COSTS) <= set(rec.costs)
    c = rec.costs
    assert c["cpu_seconds"] >= 0 and c["wall_seconds"] > 0 and c["cores"] == granted_cpus()
    assert c["contended"] in (0, 1) and c["load_start"] is not None
    frame = load_results(tmp_path / "res", source="store").frame()
    assert {"cpu_seconds", "cores", "contended"} <= set(frame.columns)


def _busy_store(tmp_path):
    from report_demo import write_demo_store
    from flag_bench.store import ResultsStore

    rd = tmp_path / "res"
    write_demo_store(rd, methods=("mean", "ridge"), genes=(20,), folds=3, side=6, artifacts=False)
    store = ResultsStore(rd)
    for rec in list(store.records()):
        busy = rec.cell.method == "ridge" and rec.cell.fold_test == ("S01",)
        store.write(dataclasses.replace(rec, costs={**rec.costs, "contended": int(busy), "cores": 2}))
    return rd


def test_report_marks_contended_time_costs(tmp_path):
    from typer.testing import CliRunner

    from flag_bench.cli import app
    from flag_bench.leaderboard.model import CONTENDED_LEGEND

    rd = _busy_store(tmp_path)
    runner = CliRunner()

    def report(*args):
        res = runner.invoke(app, ["report", "--results-dir", str(rd), "--source", "store", *args],
                            env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        return res.stdout

    table = report("--costs")
    ridge = [ln for ln in table.splitlines() if " ridge" in ln and "±" in ln]
    mean = [ln for ln in table.splitlines() if " mean" in ln and "±" in ln]
    assert ridge and all(ln.count("*") == 2 for ln in ridge)  # fit s and predict s
    assert mean and all("*" not in ln for ln in mean)
    assert CONTENDED_LEGEND[:40] in " ".join(table.split())
    assert "*" not in report()  # no costs shown: no mark, no legend

    md = report("--costs", "--format", "markdown")
    assert any("| ridge" in ln and "*" in ln for ln in md.splitlines())
    assert f"- \\*: {CONTENDED_LEGEND}" in md

    head, *rows = report("--costs", "--format", "csv").splitlines()
    cols = head.split(",")
    by_method = {r.split(",")[cols.index("method")]: r.split(",") for r in rows}
    ridge = by_method["ridge"]
    assert ridge[cols.index("contended")] == "yes" and ridge[cols.index("contended_cells")] == "1"
    assert by_method["mean"][cols.index("contended")] == "no"
    assert "contended" not in report("--format", "csv").splitlines()[0]

    doc = json.loads(report("--costs", "--format", "json"))
    rows = {r["method"]: r for r in doc["boards"][0]["rows"]}
    assert rows["ridge"]["contended"] is True and rows["ridge"]["contended_cells"] == 1
    assert rows["mean"]["contended"] is False


def test_html_marks_contended_time_costs(tmp_path):
    import html
    from types import SimpleNamespace

    from flag_bench.leaderboard.html import leaderboard_section
    from flag_bench.leaderboard.model import CONTENDED_LEGEND, build
    from flag_bench.leaderboard.results import load_results

    frame = load_results(_busy_store(tmp_path), source="store").frame()
    text = "\n".join(leaderboard_section(SimpleNamespace(lb=build(frame, costs=True))))
    assert 'class="contended"' in text and html.escape(CONTENDED_LEGEND) in text
    plain = "\n".join(leaderboard_section(SimpleNamespace(lb=build(frame))))
    assert "contended" not in plain


def test_estimate_leaves_contended_cells_out(tmp_path):
    from flag_bench.estimate import Estimator
    from flag_bench.store import ResultsStore

    recs = list(ResultsStore(_busy_store(tmp_path)).records())
    slow = [dataclasses.replace(r, costs={**r.costs, "total_seconds": 100.0 if r.costs.get("contended") else 1.0})
            for r in recs]
    task = lambda rec: SimpleTask(rec.cell)  # noqa: E731
    ridge = [r for r in slow if r.cell.method == "ridge"]
    est = Estimator(slow)
    assert est.seconds(task(ridge[0])) == 1.0 and est.busy([task(r) for r in ridge]) == 0
    only_busy = Estimator([r for r in slow if r.costs.get("contended")])
    assert only_busy.seconds(task(ridge[0])) == 100.0 and only_busy.busy([task(ridge[0])]) == 1


@dataclasses.dataclass
class SimpleTask:
    cell: object
