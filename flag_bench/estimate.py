"""How long cells will take, from the records of earlier cells in the same results dir.

A cell's estimate is the mean ``total_seconds`` of finished cells of the same method
configuration, dataset and panel size; failing that, of the same method and preset at any G;
otherwise unknown. Used by ``run --dry-run`` and by the grid bar's time-left line.

Cells timed on a busy machine (``costs.contended``: other processes used their cores, see
flag_bench/cluster/load.py) are left out of the time model while a cell timed on a quiet machine
can answer; a task estimated from contended cells only is counted (:meth:`Estimator.busy`) and the
dry run says so.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

from flag_bench.plan import CellTask
from flag_bench.record import CellRecord


class Estimator:
    def __init__(self, records: Iterable[CellRecord]):
        # [quiet, contended] tables, each exact (config, dataset, G) and loose (method, preset)
        self._tables: tuple[tuple[dict, dict], ...] = tuple((defaultdict(list), defaultdict(list)) for _ in range(2))
        for rec in records:
            t = rec.costs.get("total_seconds")
            if rec.ok and t is not None:
                self.add(rec.cell, float(t), contended=bool(rec.costs.get("contended")))

    def add(self, cell, seconds: float, contended: bool = False) -> None:
        exact, loose = self._tables[1 if contended else 0]
        exact[(cell.method, cell.config_hash, cell.dataset, cell.n_genes)].append(seconds)
        loose[(cell.method, cell.preset)].append(seconds)

    def _lookup(self, task: CellTask) -> tuple[float | None, bool]:
        """(estimate, whether only contended cells gave it)."""
        c = task.cell
        for busy, (exact, loose) in enumerate(self._tables):
            for table, key in ((exact, (c.method, c.config_hash, c.dataset, c.n_genes)), (loose, (c.method, c.preset))):
                if table.get(key):
                    return sum(table[key]) / len(table[key]), bool(busy)
        return None, False

    def seconds(self, task: CellTask) -> float | None:
        return self._lookup(task)[0]

    def busy(self, tasks: Sequence[CellTask]) -> int:
        """How many of the tasks are estimated from cells timed on a busy machine only."""
        return sum(self._lookup(t)[1] for t in tasks)

    def total(self, tasks: Sequence[CellTask]) -> tuple[float, int]:
        """(estimated seconds of the tasks with an estimate, number of tasks without one)."""
        known = [self.seconds(t) for t in tasks]
        return sum(s for s in known if s is not None), sum(s is None for s in known)


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
