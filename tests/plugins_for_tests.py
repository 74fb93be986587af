"""A slow test method and a script entry, for tests that run flag-bench in real subprocesses.

Worker processes of the pool executor import this module by name (sys.path travels with
multiprocessing's spawn), so the method class is importable there too.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from flag_bench.methods.base import MethodCard
from flag_bench.methods.controls import MeanControl

SYN = "synthetic:n_slides=4,spots_per_slide=40,n_genes=30,seed=5"


@dataclass(frozen=True)
class SleepyConfig:
    sleep: float = 0.5


class SleepyMean(MeanControl):
    """The mean control, slowed down, writing its pid where the test can find it."""

    card = MethodCard(name="sleepy", description="test: slow mean control", needs=frozenset(), default_run=False)
    Config = SleepyConfig
    presets = {"tiny": {}, "small": {}, "paper": {}}

    def fit(self, train, val=None):
        pids = Path(os.environ["FLAG_BENCH_TEST_PIDS"])
        pids.mkdir(parents=True, exist_ok=True)
        (pids / str(os.getpid())).touch()
        time.sleep(self.config.sleep)
        return super().fit(train, val)


def main(results_dir: str, workers: int, seeds: str) -> int:
    from flag_bench.catalog import METHODS
    from flag_bench.config import RunConfig
    from flag_bench.driver import Driver

    METHODS.register("sleepy", SleepyMean)
    cfg = RunConfig(datasets=(SYN,), methods=("sleepy",), genes=(10,), encoder="color-stats", preset="tiny",
                    device="cpu", results_dir=results_dir, workers=workers,
                    seeds=tuple(int(s) for s in seeds.split(",")))
    s = Driver(cfg).run()
    print(f"computed={s.ok} skipped={s.skipped} elsewhere={s.elsewhere} failed={len(s.failed)}", flush=True)
    return s.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
