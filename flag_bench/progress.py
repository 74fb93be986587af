"""Terminal progress from cell events: one grid bar, one bar per method loop, an encoding bar."""

from __future__ import annotations

import contextlib
import threading
from typing import Any


class ProgressUI:
    """Turns ``run_cell`` events into rich bars; a no-op without a console."""

    def __init__(self, console=None, enabled: bool = True):
        self.console = console if enabled else None
        self._prog = None
        self._tasks: dict[str, Any] = {}
        self._grid = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def session(self):
        if self.console is None:
            yield self
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=self.console, transient=False) as prog:
            self._prog = prog
            try:
                yield self
            finally:
                self._prog = None

    def print(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg, highlight=False)

    def grid(self, total: int) -> None:
        if self._prog is not None:
            self._grid = self._prog.add_task("grid", total=total)

    def grid_describe(self, text: str) -> None:
        self._cell_text = text
        self._refresh_grid()

    def grid_eta(self, text: str) -> None:
        self._eta_text = text
        self._refresh_grid()

    def _refresh_grid(self) -> None:
        if self._prog is not None and self._grid is not None:
            parts = [getattr(self, "_cell_text", "grid"), getattr(self, "_eta_text", "")]
            self._prog.update(self._grid, description=" | ".join(p for p in parts if p))

    def grid_advance(self) -> None:
        if self._prog is not None and self._grid is not None:
            self._prog.advance(self._grid)

    def encoding(self, encoder: str):
        """-> callable(spots done, spots to encode) for datasets.fold.prepare_embeddings: a bar
        with spots/s and ETA, so the minutes of a first encoding pass are visibly moving."""
        if self._prog is None:
            return None
        state: dict[str, Any] = {"tid": None, "t0": None}

        def update(done: int, total: int) -> None:
            import time

            if total == 0:
                return
            if state["tid"] is None:
                state["tid"] = self._prog.add_task(f"  encoding patches ({encoder})", total=total)
                state["t0"] = time.perf_counter()
            rate = done / max(time.perf_counter() - state["t0"], 1e-9)
            self._prog.update(state["tid"], completed=done, total=total,
                              description=f"  encoding patches ({encoder}, {rate:.0f} spots/s)")

        return update

    def on_event(self, kind: str, payload: dict) -> None:
        if self._prog is None:
            return
        with self._lock:
            if kind == "task_start":
                self._tasks[payload["key"]] = self._prog.add_task(f"  {payload['description']}",
                                                                  total=payload["total"])
            elif kind == "advance" and payload["key"] in self._tasks:
                self._prog.advance(self._tasks[payload["key"]], payload["n"])
            elif kind == "task_end" and payload["key"] in self._tasks:
                self._prog.remove_task(self._tasks.pop(payload["key"]))
