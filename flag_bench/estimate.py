"""How long cells will take, from the records of earlier cells in the same results dir.

A cell's estimate is the mean ``total_seconds`` of finished cells of the same method
configuration, dataset and panel size; failing that, of the same method and preset at any G;
otherwise unknown. Used by ``run --dry-run`` and by the grid bar's time-left line.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

from flag_bench.plan import CellTask
from flag_bench.record import CellRecord


class Estimator:
    def __init__(self, records: Iterable[CellRecord]):
        self._exact: dict[tuple, list[float]] = defaultdict(list)
        self._loose: dict[tuple, list[float]] = defaultdict(list)
        for rec in records:
            t = rec.costs.get("total_seconds")
            if rec.ok and t is not None:
                self.add(rec.cell, float(t))

    def add(self, cell, seconds: float) -> None:
        self._exact[(cell.method, cell.config_hash, cell.dataset, cell.n_genes)].append(seconds)
        self._loose[(cell.method, cell.preset)].append(seconds)

    def seconds(self, task: CellTask) -> float | None:
        c = task.cell
        for table, key in ((self._exact, (c.method, c.config_hash, c.dataset, c.n_genes)),
                           (self._loose, (c.method, c.preset))):
            if table.get(key):
                return sum(table[key]) / len(table[key])
        return None

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
