"""Executors and concurrency, with real processes: the pool gives the serial numbers, two runs
share a grid without computing a cell twice, Ctrl-C and kill -9 lose no finished cell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.store import ResultsStore

TESTS = Path(__file__).parent
SYN = "synthetic:n_slides=3,spots_per_slide=60,n_genes=80,seed=3"

pytestmark = pytest.mark.slow


def _scores(results_dir):
    return {r.cell_id: dict(r.scores) for r in ResultsStore(results_dir).records()}


def test_pool_gives_the_serial_scores(tmp_path):
    base = dict(datasets=(SYN,), methods=("mean", "ridge", "knn", "stem"), genes=(10,), encoder="color-stats",
                preset="tiny", device="cpu")
    one = Driver(RunConfig(**base, results_dir=str(tmp_path / "one"), workers=1)).run()
    two = Driver(RunConfig(**base, results_dir=str(tmp_path / "two"), workers=2)).run()
    assert one.ok == two.ok == 12 and not one.failed and not two.failed
    assert _scores(tmp_path / "one") == _scores(tmp_path / "two")


def _script(results_dir: Path, workers: int, seeds: str, pids: Path) -> subprocess.Popen:
    env = {**os.environ, "FLAG_BENCH_TEST_PIDS": str(pids), "PYTHONPATH": str(TESTS)}
    return subprocess.Popen([sys.executable, str(TESTS / "plugins_for_tests.py"), str(results_dir), str(workers),
                             seeds], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _counts(out: str) -> dict[str, int]:
    line = [ln for ln in out.splitlines() if ln.startswith("computed=")][-1]
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split())}


def _wait_for_records(results_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        cells = results_dir / "cells"
        if cells.is_dir() and len([p for p in cells.glob("*.json") if ".failed-" not in p.name]) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError("no records appeared")


def test_two_runs_started_at_once_share_the_grid(tmp_path):
    rd = tmp_path / "res"
    procs = [_script(rd, 1, "0,1", tmp_path / "pids") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    counts = [_counts(o) for o, _ in outs]
    assert sum(c["computed"] for c in counts) == 8  # 4 folds x 2 seeds, each computed once
    assert len(list(ResultsStore(rd).records())) == 8
    import sqlite3

    db = sqlite3.connect(rd / "mlflow.db")
    per_cell = db.execute("select value, count(*) from tags where key='flag_bench.cell_id' group by value").fetchall()
    assert len(per_cell) == 8 and all(n == 1 for _, n in per_cell)


def _pids_gone(pids: Path, timeout: float = 10) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        alive = []
        for p in pids.iterdir():
            try:
                os.kill(int(p.name), 0)
                alive.append(p.name)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupt_or_kill_with_two_workers_loses_no_finished_cell(tmp_path, sig):
    rd, pids = tmp_path / "res", tmp_path / "pids"
    proc = _script(rd, 2, "0,1,2", pids)
    _wait_for_records(rd, 2, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else -9), err[-2000:]
    kept = list(ResultsStore(rd).records())  # every record on disk parses
    assert len(kept) >= 2
    for path in (rd / "cells").glob("*.json"):
        json.loads(path.read_text())
    assert _pids_gone(pids), "worker processes outlived the driver"
    rerun = _script(rd, 2, "0,1,2", tmp_path / "pids2")
    out2, err2 = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err2[-2000:]
    c = _counts(out2)
    assert c["skipped"] == len(kept) and c["computed"] == 12 - len(kept)
