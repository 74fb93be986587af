"""What a method sees: TrainData (with targets) and TestData (no expression, by construction).

Targets for scoring stay with the runner. Arrays handed to methods are read-only so a method
cannot change the runner's copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def _ro(a: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return None
    a = np.asarray(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class SlideInput:
    """Inputs for one slide, available at train and test time.

    coords_um : (n_spots, 2) float32, spot centres in micrometres (x, y)
    embeddings : (n_spots, D) float32 image-encoder embeddings of the protocol patches, or None
    tiles : callable returning uint8 (n_spots, H, W, 3) patches at the protocol patch spec
    """

    slide_id: str
    patient: str
    barcodes: np.ndarray
    coords_um: np.ndarray
    embeddings: np.ndarray | None
    tiles: Callable[[], np.ndarray] | None
    spot_diameter_um: float

    @property
    def n_spots(self) -> int:
        return len(self.barcodes)

    def __post_init__(self) -> None:
        for name in ("barcodes", "coords_um", "embeddings"):
            object.__setattr__(self, name, _ro(getattr(self, name)))


@dataclass(frozen=True, eq=False)
class TrainSlide(SlideInput):
    """A training slide: inputs plus expression.

    targets : (n_spots, G) float32 panel expression in target space (e.g. log1p counts)
    counts : (n_spots, G) int32 raw counts of the panel genes (for rank-based gene tokenisers)
    """

    targets: np.ndarray = None  # type: ignore[assignment]
    counts: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.targets is None or self.counts is None:
            raise ValueError("TrainSlide needs targets and counts")
        object.__setattr__(self, "targets", _ro(self.targets))
        object.__setattr__(self, "counts", _ro(self.counts))


@dataclass(frozen=True, eq=False)
class _Data:
    genes: tuple[str, ...]  # panel gene symbols, in output column order
    gene_ids: tuple[str, ...]  # Ensembl ids where known, "" otherwise
    target_transform: str  # e.g. "log1p"
    dataset: str

    @property
    def n_genes(self) -> int:
        return len(self.genes)


@dataclass(frozen=True, eq=False)
class TrainData(_Data):
    slides: tuple[TrainSlide, ...] = ()


@dataclass(frozen=True, eq=False)
class TestData(_Data):
    """Test inputs. Carries no expression: there is no field for it."""

    slides: tuple[SlideInput, ...] = ()
