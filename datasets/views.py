"""What a method sees: TrainData (with targets) and TestData (no expression, by construction).

Targets for scoring stay with the fold (``FoldViews.truths``). Arrays handed to methods are
read-only so a method cannot change the harness's copies. Image access is a ``SlideImage``,
which holds a reader and geometry only: nothing reachable from a test slide's inputs leads back
to its counts (tests/test_method_contract.py walks every reference to check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flag_bench.datasets.image import SlideImage


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
    embeddings : (n_spots, D) float32 embeddings of the protocol patches by the run's encoder,
        or None when the method does not need them
    image : tiles at any patch spec, neighbourhood regions and embeddings by other encoders,
        or None when the dataset has no images
    """

    slide_id: str
    patient: str
    barcodes: np.ndarray
    coords_um: np.ndarray
    embeddings: np.ndarray | None
    image: SlideImage | None
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
