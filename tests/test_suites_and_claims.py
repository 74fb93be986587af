"""Suites are views over cells (the suite is not part of a cell id), and claims that stay correct
under races, half-written files, other hosts, a missing squeue and NFS attribute caching."""

from __future__ import annotations

import io
import json
import os
import socket
import time

from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.store import ResultsStore

SYN = "synthetic:n_slides=3,spots_per_slide=60,n_genes=80,seed=3"


def cfg(tmp_path, **kw):
    base = dict(datasets=(SYN,), methods=("mean",), genes=(10,), encoder="color-stats", preset="tiny",
                device="cpu", results_dir=str(tmp_path / "res"))
    base.update(kw)
    return RunConfig(**base)


def cell_ids(c) -> list[str]:
    from flag_bench.measure import provenance
    from flag_bench.plan import plan_grid

    return [t.cell.cell_id for t in plan_grid(c, device="cpu", provenance=provenance("cpu"),
                                              results_dir=c.results_dir).tasks]


def new_store(tmp_path) -> ResultsStore:
    store = ResultsStore(tmp_path / "res")
    store.ensure_writable()
    return store


# -- 4: a cell finished under one suite is reused and shown by another suite's leaderboard ---------
def test_a_suite_shows_the_cells_it_planned_that_another_suite_finished(tmp_path):
    from typer.testing import CliRunner

    from flag_bench.cli import app
    from flag_bench.leaderboard.results import load_results

    a = Driver(cfg(tmp_path, suite="A", folds=(0,))).run()
    b = Driver(cfg(tmp_path, suite="B", folds=(0, 1))).run()
    assert (a.ok, b.ok, b.skipped) == (1, 1, 1)  # suite B reused suite A's cell, computed fold 1
    rd = tmp_path / "res"
    frames = {(suite, src): load_results(rd, source=src, suite=suite).frame()
              for suite in ("A", "B") for src in ("store", "mlflow")}
    assert len(frames["B", "store"]) == 2 and len(frames["A", "store"]) == 1  # A never planned fold 1
    for suite in ("A", "B"):
        assert frames[suite, "store"].equals(frames[suite, "mlflow"]), suite
    texts = [CliRunner().invoke(app, ["report", "--results-dir", str(rd), "--source", s, "--suite", "B"])
             for s in ("store", "mlflow")]
    assert [t.exit_code for t in texts] == [0, 0], texts[0].output
    assert texts[0].stdout == texts[1].stdout
    assert "never finished" not in texts[0].stdout


# -- 5a: taking over a stale claim is atomic --------------------------------------------------------
def test_stale_claim_takeover_never_removes_a_claim_taken_over_in_between(tmp_path, monkeypatch):
    import flag_bench.store as store_mod

    store = new_store(tmp_path)
    path = store.claims / "c1.claim"
    path.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "time": 0}))  # dead
    other_run = {"pid": os.getppid(), "host": socket.gethostname(), "time": time.time(), "nonce": "theirs"}
    real, raced = store_mod._alive, []

    def alive_then_race(holder, *args):
        verdict = real(holder, *args)
        if not verdict and not raced:
            # between this run's check and its removal of the stale claim, another run takes the
            # stale claim over and now holds the cell
            raced.append(True)
            path.unlink()
            path.write_text(json.dumps(other_run))
        return verdict

    monkeypatch.setattr(store_mod, "_alive", alive_then_race)
    assert store.claim("c1") is False  # the claim of the run that took over first is left alone
    assert raced == [True] and json.loads(path.read_text()) == other_run
    assert [p.name for p in store.claims.iterdir()] == ["c1.claim"]  # nothing left aside


# -- 5b: a claim being written is not stale ---------------------------------------------------------
def test_a_claim_still_being_written_is_live_and_claims_are_written_whole(tmp_path, monkeypatch):
    store = new_store(tmp_path)
    path = store.claims / "c1.claim"
    path.write_text("")  # another run has created its claim and not written it yet
    assert store.claim("c1") is False and path.read_text() == ""
    old = time.time() - 60
    os.utime(path, (old, old))  # a torn claim of a writer that died a minute ago: stale
    assert store.claim("c1") is True
    assert json.loads(path.read_text())["pid"] == os.getpid()
    # a claim only ever appears complete: it is linked into place after it was written
    seen = []
    real_link = os.link

    def link(src, dst, *a, **k):
        seen.append(json.loads(open(src).read())["pid"])
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(os, "link", link)
    assert store.claim("c2") is True and seen == [os.getpid()]


# -- 5c: another host's claim expires unless its run refreshes it -----------------------------------
def test_another_hosts_claim_expires_unless_refreshed(tmp_path):
    import flag_bench.store as store_mod

    store = new_store(tmp_path)
    path = store.claims / "c1.claim"
    path.write_text(json.dumps({"pid": 4242, "host": "node-17", "time": time.time()}))
    assert store.claim("c1") is False  # a live run on node-17 (claim refreshed just now)
    old = time.time() - getattr(store_mod, "CLAIM_TTL_S", 600) - 5
    os.utime(path, (old, old))
    assert store.claim("c1") is True  # not refreshed for the TTL: its run is gone
    os.utime(path, (old, old))
    assert store.refresh_claims() == 1 and time.time() - path.stat().st_mtime < 5  # the heartbeat
    with store.heartbeat(every=0.01):
        os.utime(path, (old, old))
        deadline = time.monotonic() + 10
        while time.time() - path.stat().st_mtime > 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert time.time() - path.stat().st_mtime < 5
    store.release("c1")
    assert not path.exists() and store.refresh_claims() == 0


def test_cells_held_by_another_host_are_named_by_the_run(tmp_path):
    from rich.console import Console

    from flag_bench.cli.run import _print_summary

    c = cfg(tmp_path, folds=(0, 1))
    first = cell_ids(c)[0]
    store = new_store(tmp_path)
    (store.claims / f"{first}.claim").write_text(json.dumps({"pid": 4242, "host": "node-17", "time": time.time()}))
    s = Driver(c).run()
    assert (s.ok, s.elsewhere, getattr(s, "elsewhere_hosts", {})) == (1, 1, {"node-17": 1})
    out = io.StringIO()
    _print_summary(Console(file=out, width=400), s, c)
    assert ("done: 1 computed, 0 already finished, 0 failed, 1 being computed by another run (1 on host node-17: "
            "a run there holds them; they are taken over once its claims are not refreshed for 600 s)") in out.getvalue()


# -- 5d: no squeue: SLURM claims are "unknown", never a crash ---------------------------------------
def test_slurm_claims_without_squeue_are_unknown_not_a_crash(tmp_path, monkeypatch, capsys):
    from typer.testing import CliRunner

    import flag_bench.cluster.slurm as slurm_mod  # squeue (and its cache) moved here from flag_bench.store
    from flag_bench.cli import app
    from flag_bench.cluster.status import cell_states

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no squeue anywhere
    monkeypatch.setitem(slurm_mod._SQUEUE, "at", -1e9)
    if hasattr(slurm_mod, "_UNKNOWN"):
        monkeypatch.setattr(slurm_mod, "_UNKNOWN", {"at": -1e9, "error": None, "warned": False})
    store = new_store(tmp_path)
    store.write_plan({"suite": "default"}, [{"cell_id": "c1"}, {"cell_id": "c2"}])
    store.hand_over("c1", slurm_mod.claim_fields("77_0"))
    assert store.claim("c1") is False and store.busy("c1")  # unknown counts as running: no double work
    assert "cells claimed by SLURM jobs are treated as still running (state unknown)" in capsys.readouterr().err
    counts, notes = cell_states(tmp_path / "res")
    assert counts == {"finished": 0, "failed": 0, "running": 0, "pending": 0, "not_run": 1, "unknown": 1}
    assert notes == ["1 cell(s) claimed by SLURM jobs whose state is unknown: squeue cannot be run here; run "
                     "`flag-bench status` where the SLURM client commands work"]
    res = CliRunner().invoke(app, ["status", "--results-dir", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    assert "finished=0 failed=0 running=0 pending=0 not_run=1 unknown=1" in res.output


# -- 5e: NFS attribute caching does not turn a finished task into a lost one -----------------------
class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def __getattr__(self, name):  # the rest of the time module as it is
        return getattr(time, name)


def test_a_task_gone_from_squeue_gets_the_nfs_grace_and_one_more_look(tmp_path, monkeypatch):
    from services import require_module  # skips without submitit; under CI=true fails
    require_module("slurm", "submitit", "pip install 'flag-bench[slurm]'")
    import flag_bench.cluster.slurm as slurm
    from submitit.core.utils import JobPaths

    clock = Clock()
    monkeypatch.setattr(slurm, "time", clock)
    monkeypatch.setattr(slurm, "slurm_accounting", lambda job: {"state": "COMPLETED"})
    folder = tmp_path / "jobs"
    folder.mkdir()
    sub = slurm.Submission.write(tmp_path, "41", folder, [["c1"]], ["41"], None, {}, "default", None)
    sub = slurm.Submission(sub.path)
    assert sub.state(0, {}) == "running"
    clock.now += 60  # NFS may hide the result file this long
    assert sub.state(0, {}) == "running"
    assert slurm.GRACE_S >= 120
    result = JobPaths(folder, job_id="41", task_id=0).result_pickle
    real_listdir = os.listdir

    def listdir_revalidates(p="."):  # the file shows once the folder is listed again (NFS revalidation)
        result.write_bytes(b"")
        return real_listdir(p)

    clock.now += slurm.GRACE_S
    monkeypatch.setattr(os, "listdir", listdir_revalidates)
    assert sub.state(0, {}) == "done"
    monkeypatch.setattr(os, "listdir", real_listdir)
    result.unlink()
    assert sub.state(0, {}) == "lost"  # past the grace, and still no result: lost


def test_two_plans_of_one_process_in_one_second_are_both_kept(tmp_path, monkeypatch):
    import time as _time

    from flag_bench.store import ResultsStore

    store = ResultsStore(tmp_path)
    monkeypatch.setattr(_time, "time", lambda: 1_800_000_000.25)  # the same instant, to the microsecond
    first = store.write_plan({"methods": ["mean"]}, [{"cell_id": "a"}])
    second = store.write_plan({"methods": ["ridge"]}, [{"cell_id": "b"}])
    assert first != second
    assert [p["grid_spec"]["methods"] for p in store.plans()] == [["mean"], ["ridge"]]  # oldest first
