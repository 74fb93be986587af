"""What a registered metric looks like to the runner and the report.

A metric module exposes pure functions (shapes in the docstrings) and one or more ``Metric``
objects that wrap them. The runner calls ``Metric.compute`` once per test slide (``scope='slide'``)
or once on all test spots of a cell stacked together (``scope='pooled'``), then averages slide
values over the test slides of the cell. Adding a metric = one module + one line in
``flag_bench.catalog.METRICS`` (or a ``flag_bench.metrics`` entry point).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np


@dataclass(frozen=True)
class Output:
    """One scalar a metric produces."""

    name: str
    higher_is_better: bool | None  # None: a diagnostic, not ranked
    range: tuple[float, float]
    description: str = ""


@dataclass
class Scores:
    """values: scalar name -> float (NaN allowed, with a reason in ``notes``).
    per_gene: column name -> (G,) float64 vector in panel gene order (goes to the per-gene CSV).
    notes: counts and reasons (n_valid genes, excluded constants, ...), logged as cell notes.
    """

    values: dict[str, float] = field(default_factory=dict)
    per_gene: dict[str, np.ndarray] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SlideContext:
    """Per-slide information a metric may need besides the two matrices."""

    slide_id: str
    coords_um: np.ndarray | None  # (N, 2)
    genes: tuple[str, ...]
    seed: int = 0
    annotations: np.ndarray | None = None  # (N,) external domain labels, when a dataset has them
    target_transform: str = "log1p"  # how the run's targets were made from counts (datasets.fold TARGET_TRANSFORMS)


# compute(y_true (N, G) float64, y_pred (N, G) float64, ctx) -> Scores
ComputeFn = Callable[[np.ndarray, np.ndarray, SlideContext], Scores]


@dataclass(frozen=True)
class Metric:
    name: str
    compute: ComputeFn
    outputs: tuple[Output, ...]
    scope: Literal["slide", "pooled"] = "slide"
    needs_coords: bool = False
    references: str = ""

    def output(self, name: str) -> Output:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)
