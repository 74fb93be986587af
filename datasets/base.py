"""The data model: a Slide, a SpatialDataset and the patch spec used to cut tiles.

Every slide of a dataset shares one gene list (the dataset's candidate pool), so panels are
column selections and slides can be stacked without re-indexing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class PatchSpec:
    """A square patch: ``size_um`` of tissue resampled to ``size_px`` pixels.

    The default is the HEST-Benchmark convention: 224 px at 0.5 um/px = 112 um.
    """

    size_um: float = 112.0
    size_px: int = 224

    @property
    def um_per_px(self) -> float:
        return self.size_um / self.size_px

    def key(self) -> str:
        return f"{self.size_um:g}um-{self.size_px}px"


# (slide, patch spec) -> uint8 array (n_spots, size_px, size_px, 3)
TileReader = Callable[["Slide", PatchSpec], np.ndarray]


@dataclass(frozen=True, eq=False)
class Slide:
    """One tissue section.

    Attributes
    ----------
    counts : scipy.sparse.csr_matrix, (n_spots, n_genes), int32 raw UMI counts
    coords : (n_spots, 2) float64, spot centres in full-resolution image pixels, x then y
    barcodes : (n_spots,) str
    """

    id: str
    patient: str
    counts: sp.csr_matrix
    barcodes: np.ndarray
    coords: np.ndarray
    pixel_size_um: float
    spot_diameter_um: float
    tile_reader: TileReader | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_spots(self) -> int:
        return self.counts.shape[0]

    @property
    def coords_um(self) -> np.ndarray:
        """(n_spots, 2) float64 spot centres in micrometres."""
        return self.coords * self.pixel_size_um

    def tiles(self, patch: PatchSpec = PatchSpec()) -> np.ndarray:
        """uint8 (n_spots, size_px, size_px, 3) RGB patches centred on the spots."""
        if self.tile_reader is None:
            raise ValueError(f"slide {self.id} has no image tiles")
        return self.tile_reader(self, patch)


@dataclass(frozen=True, eq=False)
class SpatialDataset:
    name: str
    version: str  # content hash: changes whenever counts, coordinates or tiles change
    slides: tuple[Slide, ...]
    genes: tuple[str, ...]  # symbols, shared by all slides (the candidate pool)
    gene_ids: tuple[str, ...]  # Ensembl ids where known, "" otherwise
    organism: str = "human"
    platform: str = "ST"
    licence: str = ""
    citation: str = ""
    default_split: str = "slide"
    # slide ids the default leave-one-slide-out protocol tests on (None = all slides)
    default_test_slides: tuple[str, ...] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def slide(self, slide_id: str) -> Slide:
        for s in self.slides:
            if s.id == slide_id:
                return s
        raise KeyError(slide_id)

    @property
    def slide_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.slides)

    @property
    def patients(self) -> dict[str, str]:
        return {s.id: s.patient for s in self.slides}

    def to_anndata(self, slide_id: str):
        """AnnData view of one slide (``obsm['spatial']`` in full-res pixels, ``uns`` metadata)."""
        import anndata as ad
        import pandas as pd

        s = self.slide(slide_id)
        adata = ad.AnnData(
            X=s.counts.copy(),
            obs=pd.DataFrame({"patient": s.patient}, index=pd.Index(s.barcodes, name="barcode")),
            var=pd.DataFrame({"gene_ids": list(self.gene_ids)}, index=pd.Index(self.genes, name="gene")),
        )
        adata.obsm["spatial"] = np.asarray(s.coords, dtype=np.float64)
        adata.uns["flag_bench"] = {
            "dataset": self.name,
            "version": self.version,
            "slide": s.id,
            "pixel_size_um": s.pixel_size_um,
            "spot_diameter_um": s.spot_diameter_um,
        }
        return adata
