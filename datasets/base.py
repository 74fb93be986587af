"""The data model: a Slide, a SpatialDataset and the patch spec used to cut tiles.

Every slide of a dataset shares one gene list (the dataset's candidate pool), so panels are
column selections and slides can be stacked without re-indexing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np
import scipy.sparse as sp

# What a dataset can serve to a method (the vocabulary of MethodCard.needs). The planner refuses
# a method whose needs a dataset lacks, so a dataset without images fails before any cell runs.
CAPABILITIES = frozenset({"embeddings", "tiles", "coords", "slide_context", "counts", "region"})


def median_spacing(coords: np.ndarray, *, drop_coincident: bool = False) -> float | None:
    """Median distance from each of (n >= 2, 2) spot centres to its nearest other spot, in the
    coordinates' unit (the lattice pitch on a regular array); ``drop_coincident`` ignores zero
    distances (duplicated centres). None when no distance is left."""
    from scipy.spatial import cKDTree

    c = np.asarray(coords, dtype=np.float64)
    d = cKDTree(c).query(c, k=2)[0][:, 1]
    if drop_coincident:
        d = d[d > 0]
    return float(np.median(d)) if len(d) else None


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


class TileReader(Protocol):
    """Reads a slide's spot patches by slide id, so an image reader never needs the slide's counts.

    ``spots`` (sorted indices) restricts the read to those spots, in that order; a spot's patch
    must not depend on which other spots are read. A reader may also define
    ``max_field_um: float | None`` (the widest patch it can cut; None = any) and a native
    ``region(slide_id, center_um, size_um, px)`` when it holds the whole image.

    A reader whose source file also holds expression (her2st-mini's one HDF5 file) defines
    ``image_only(slide_id)``: a reader of that slide's images that carries no path to the file.
    The fold builder hands methods that one (docs/threat-model.md).
    """

    def __call__(self, slide_id: str, patch: PatchSpec, spots: np.ndarray | None = None) -> np.ndarray:
        """uint8 (n_spots or len(spots), size_px, size_px, 3)."""


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
        return self.tile_reader(self.id, patch)


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
    # loaded for prediction only (`flag-bench predict`): counts neither read nor served, every
    # slide's counts an empty (n_spots, 0) matrix and no gene pool; a fold refuses to train on it
    image_only: bool = False

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

    @property
    def capabilities(self) -> frozenset[str]:
        """What this dataset can serve, from ``CAPABILITIES``.

        Coordinates, training counts and whole-slide context come with every slide (counts not
        when the dataset was loaded image-only); image inputs (tiles, embeddings, regions composed
        from tiles) only when every slide has a reader, since a fold may test on any slide.
        """
        caps = {"coords", "slide_context"} | (set() if self.image_only else {"counts"})
        if self.slides and all(s.tile_reader is not None for s in self.slides):
            caps |= {"tiles", "embeddings", "region"}
        return frozenset(caps)

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


def no_counts(n_spots: int) -> sp.csr_matrix:
    """The count matrix of an image-only slide: int32 CSR (n_spots, 0), so ``n_spots`` holds."""
    return sp.csr_matrix((int(n_spots), 0), dtype=np.int32)


def drop_counts(ds: SpatialDataset) -> SpatialDataset:
    """``ds`` as an image-only dataset: the same slides, images and coordinates, no counts and no
    gene pool (for a loader that can only read its counts, then drop them). The version changes
    with the mode (a content hash of what is served)."""
    import dataclasses

    if ds.image_only:
        return ds
    slides = tuple(dataclasses.replace(s, counts=no_counts(s.n_spots)) for s in ds.slides)
    return dataclasses.replace(ds, slides=slides, genes=(), gene_ids=(), version=image_only_version(ds.version),
                               image_only=True, meta={**ds.meta, "image_only": True})


def image_only_version(version: str) -> str:
    """The version of a dataset's image-only form: another dataset (it serves other things), derived
    from the full one's content version."""
    import hashlib

    return hashlib.sha256(f"{version}|image-only".encode()).hexdigest()[:12]
