"""--executor slurm on a real single-node SLURM (munged, slurmctld, slurmd started by
tests/services.py): serial scores, scancel -> failed then resubmitted, --detach + collect, and
SLURM's accounting of each task in the record."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.store import ResultsStore
from services import ENGINE_GRID, store_scores

# the daemons' fixtures (tests/services.py), found whether or not tests/ is a package
pytest_plugins = [__name__.rpartition(".")[0] + ".services" if "." in __name__ else "services"]
pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent
BASE = ENGINE_GRID
_scores = store_scores


@pytest.fixture(scope="module")
def serial_scores(tmp_path_factory):
    rd = tmp_path_factory.mktemp("serial")
    s = Driver(RunConfig(**BASE, results_dir=str(rd))).run()
    assert s.ok == 6 and not s.failed
    return _scores(rd)


def _cli(*argv):
    from flag_bench.cli import app

    return CliRunner().invoke(app, list(argv))


def test_slurm_array_gives_the_serial_scores_and_records_slurm_accounting(slurm_cluster, serial_scores, tmp_path):
    rd = tmp_path / "slurm"
    s = Driver(RunConfig(**BASE, results_dir=str(rd), executor="slurm", slurm_batch=2,
                         slurm_array_parallelism=2)).run()
    assert (s.ok, s.failed, s.executor) == (6, [], "slurm") and s.job
    assert _scores(rd) == serial_scores
    for rec in ResultsStore(rd).records():
        sched = rec.provenance["scheduler"]
        assert sched["engine"] == "slurm" and sched["job_id"].startswith(f"{s.job}_")
        assert sched["node"] == slurm_cluster.conf.read_text().split("NodeName=")[1].split()[0]
        assert sched["cpus"] == 1  # SLURM_CPUS_PER_TASK, not the node's cores
        assert sched["cell_elapsed_s"] > 0
        assert sched["slurm"]["state"] == "COMPLETED" and sched["slurm"]["elapsed_s"] >= 0
    assert not list((rd / "claims").glob("*.claim"))
    # a rerun of the same grid submits nothing
    again = Driver(RunConfig(**BASE, results_dir=str(rd), executor="slurm")).run()
    assert again.skipped == 6 and again.job is None


def _wait(check, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_detach_collect_scancel_and_resubmit(slurm_cluster, serial_scores, tmp_path, monkeypatch):
    """--detach returns at once; collect (repeatable) gathers finished tasks; a scancelled task
    becomes a failed record naming SLURM's state; the rerun resubmits only that cell."""
    import sys

    from flag_bench.catalog import METHODS

    monkeypatch.setattr(sys, "path", [str(TESTS), *sys.path])
    from plugins_for_tests import SleepyMean  # by this name, as the SLURM task imports it

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FLAG_BENCH_TEST_PIDS", str(tmp_path / "pids"))
    if "sleepy" not in METHODS.names():
        METHODS.register("sleepy", SleepyMean)
    rd = tmp_path / "res"
    cfg = RunConfig(**{**BASE, "methods": ("mean", "ridge", "sleepy")}, results_dir=str(rd), executor="slurm",
                    detach=True, method_overrides={"sleepy": {"sleep": 6.0}}, seeds=(0,), folds=(0,))
    s = Driver(cfg).run()
    assert s.detached and s.ok == 0 and s.job
    store = ResultsStore(rd)
    assert len(list((rd / "claims").glob("*.claim"))) == 3  # held by the array tasks, not by this process
    sub = (rd / "slurm" / "submissions" / f"{s.job}.json")
    assert sub.exists()
    import json

    tasks = json.loads(sub.read_text())["tasks"]
    sleepy = [c for c in store.plans()[-1]["cells"] if c["method"] == "sleepy"][0]["cell_id"]
    index = [i for i, ids in enumerate(tasks) if sleepy in ids][0]
    job = f"{s.job}_{index}"
    _wait(lambda: (tmp_path / "pids").is_dir() and any((tmp_path / "pids").iterdir()), 60, "the sleepy cell to start")
    # a second run now leaves the live tasks' cells alone
    busy = Driver(cfg.replace(detach=False, executor="slurm")).run()
    assert busy.elsewhere + busy.skipped + busy.collected >= 3 and busy.job is None
    assert slurm_cluster.run("scancel", job).returncode == 0
    ok_ids = set(serial_scores) | {sleepy}

    def collected_all() -> bool:
        r = _cli("collect", "--results-dir", str(rd))
        assert r.exit_code == 0, r.output
        return len(json.loads((rd / "slurm" / "submissions" / f"{s.job}.collected.json").read_text())) == 3 \
            if (rd / "slurm" / "submissions" / f"{s.job}.collected.json").exists() else False

    _wait(collected_all, 90, "collect to gather every array task")
    fails = list(store.failures())
    assert [r.cell_id for _, r in fails] == [sleepy]
    err = fails[0][1].error
    assert err.stage == "scheduler" and "CANCELLED" in err.message and job in err.message
    ok = _scores(rd)
    assert {k: v for k, v in ok.items() if k in serial_scores} == {k: serial_scores[k] for k in ok if k in serial_scores}
    assert sleepy not in ok and len(ok) == 2
    # collect again: nothing new is written
    before = sorted(p.name for p in (rd / "cells").iterdir())
    r = _cli("collect", "--results-dir", str(rd))
    assert r.exit_code == 0 and "collected 0 record(s)" in r.output
    assert sorted(p.name for p in (rd / "cells").iterdir()) == before
    st = _cli("status", "--results-dir", str(rd))
    assert "finished=2 failed=1" in st.output, st.output
    # the rerun resubmits the cancelled cell only
    again = Driver(cfg.replace(detach=False)).run()
    assert (again.ok, again.skipped, again.failed) == (1, 2, []), again
    assert sleepy in _scores(rd) and ok_ids >= set(_scores(rd)) - set(serial_scores)
    import sqlite3

    db = sqlite3.connect(rd / "mlflow.db")
    per_cell = db.execute("select t.value, count(*) from tags t join runs r on r.run_uuid = t.run_uuid "
                          "where t.key='flag_bench.cell_id' and r.status='FINISHED' group by t.value").fetchall()
    assert len(per_cell) == 3 and all(n == 1 for _, n in per_cell)


def test_missing_extra_is_one_line(monkeypatch, tmp_path):
    from services import hide_module

    hide_module(monkeypatch, "submitit")
    from flag_bench.cluster.slurm import require_submitit
    from flag_bench.errors import UserError

    with pytest.raises(UserError, match=r"pip install 'flag-bench\[slurm\]'"):
        require_submitit()


def test_slurm_options_from_toml_and_command_line(tmp_path):
    """sbatch options come from [run] in the config file, the command line wins; none of them
    changes a cell's identity."""
    from flag_bench.cluster.slurm import sbatch_params
    from flag_bench.config import build_config, grid_spec
    from flag_bench.errors import UserError

    toml = tmp_path / "grid.toml"
    toml.write_text('[run]\nexecutor = "slurm"\nslurm_partition = "gpu"\nslurm_time = 90\nslurm_mem = "16G"\n'
                    'slurm_array_parallelism = 4\nslurm_account = "lab"\n[run.slurm_extra]\nconstraint = "a100"\n')
    cfg = build_config(toml, {"slurm_time": 30, "slurm_extra": ("exclude=node7",), "slurm_cpus_per_task": 4})
    p = sbatch_params(cfg, [])
    assert p == {"job_name": "flag-bench", "time": 30, "cpus_per_task": 4, "partition": "gpu", "mem": "16G",
                 "array_parallelism": 4, "account": "lab", "additional_parameters": {"exclude": "node7"}}
    assert grid_spec(cfg) == grid_spec(build_config(None, {}))
    with pytest.raises(UserError, match="--detach: only --executor slurm"):
        build_config(None, {"detach": True})
    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\nslurm_time = "1h"\n')
    with pytest.raises(UserError, match=r"bad.toml: \[run\] slurm_time"):
        build_config(bad, {})


def test_counts_of_a_fully_collected_submission_need_no_squeue(tmp_path, monkeypatch):
    """`flag-bench status` on a finished SLURM grid works after the cluster is gone: a submission
    whose tasks were all collected is not looked up in squeue (one that is not still is)."""
    import json as _json

    import flag_bench.cluster.slurm as slurm_mod  # squeue moved here from flag_bench.store
    from flag_bench.cluster.slurm import Submission, counts
    from flag_bench.errors import UserError

    def no_squeue(max_age: float = 2.0):
        raise UserError("squeue failed")

    monkeypatch.setattr(slurm_mod, "slurm_jobs", no_squeue)
    sub = Submission.write(tmp_path, "41", tmp_path / "jobs", [["c1"], ["c2"]], ["41_0", "41_1"], None, {},
                           "default", None)
    sub.collected_path.write_text(_json.dumps([0, 1]))
    assert counts(Submission(sub.path)) == {"collected": 2, "done": 0, "pending": 0, "running": 0, "lost": 0}
    sub.collected_path.write_text(_json.dumps([0]))
    with pytest.raises(UserError, match="squeue"):
        counts(Submission(sub.path))
