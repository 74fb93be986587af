"""Image access handed to methods: tiles, neighbourhood regions and cached embeddings of a slide.

A ``SlideImage`` carries an image reader, the slide's geometry and the run's encoder settings,
never the ``Slide``: a test slide's counts and metadata must not be reachable from ``TestData``
(the contract test walks every reference). Everything image-shaped goes through here, so the
embedding cache and its determinism guarantees hold for method-chosen patches and encoders too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from flag_bench.datasets.base import PatchSpec, TileReader, median_spacing
from flag_bench.datasets.embed_cache import SlideRef, embeddings_for
from flag_bench.datasets.encoders import Encoder
from flag_bench.errors import UserError

# composed regions show this where no spot's patch reaches (white, like bare glass)
BACKGROUND = 255


@dataclass(frozen=True)
class EncoderSource:
    """Resolves an encoder name for ``SlideImage.embeddings``: the caller's resolver (the run's:
    ``flag_bench.resolve.encoder_resolver()``, the ENCODERS registry), else only the run's own
    encoder. Holds no dataset or builder state; datasets/ never imports the catalog itself."""

    default: Encoder | None = None
    resolver: Callable[[str], Encoder] | None = None

    def __reduce__(self):
        # with a resolver the default is never used: an isolated cell's process resolves encoders
        # by name instead of receiving the run encoder's weights
        return (EncoderSource, (self.default if self.resolver is None else None, self.resolver))

    def __call__(self, name: str) -> Encoder:
        if self.resolver is not None:
            return self.resolver(name)
        if self.default is not None and self.default.name == name:
            return self.default
        run = self.default.name if self.default is not None else "none"
        raise UserError(f"encoder '{name}' is not available to methods in this run (the run's encoder: {run})")


@dataclass(frozen=True, eq=False)
class SlideImage:
    """One slide's images. ``coords_um`` (n_spots, 2) are spot centres in µm (x, y)."""

    ref: SlideRef
    reader: TileReader
    coords_um: np.ndarray
    patch: PatchSpec  # the run's protocol patch: the default of tiles() and embeddings()
    encoders: EncoderSource
    device: str = "cpu"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        coords = np.array(self.coords_um, dtype=np.float64)
        coords.setflags(write=False)
        object.__setattr__(self, "coords_um", coords)

    @property
    def n_spots(self) -> int:
        return self.ref.n_spots

    def tiles(self, patch: PatchSpec | None = None) -> np.ndarray:
        """uint8 (n_spots, size_px, size_px, 3) patches centred on the spots."""
        return self.reader(self.ref.slide_id, patch or self.patch)

    def embeddings(self, encoder_name: str, patch: PatchSpec | None = None) -> np.ndarray:
        """float32 (n_spots, D) read-only embeddings through the embedding cache."""
        encoder = self.encoders(encoder_name)
        return embeddings_for(self.ref, self.read, encoder, patch or self.patch,
                              device=self.device, cache_dir=self.cache_dir)

    def read(self, patch: PatchSpec, spots: np.ndarray | None = None) -> np.ndarray:
        """uint8 tiles of the sorted spot indices ``spots`` (all spots when None) at ``patch``."""
        return self.reader(self.ref.slide_id, patch, spots)

    def region(self, where: int | Sequence[float], size_um: float, px: int) -> np.ndarray:
        """uint8 (px, px, 3): ``size_um`` of tissue around spot ``where`` (an index) or around a
        centre ``where = (x_um, y_um)``, resampled to ``px`` pixels (rows follow y).

        A reader holding the whole image answers natively. Otherwise the region is composed
        from the spots' own patches placed at their true positions, each output pixel taken
        from its nearest spot's patch; pixels that no patch covers (the gaps between stored
        patches, outside the tissue) are ``BACKGROUND``.
        """
        if size_um <= 0 or px < 1:
            raise UserError(f"region {size_um:g} um at {px} px: both must be positive")
        center = self._center(where)
        native = getattr(self.reader, "region", None)
        if native is not None:
            return native(self.ref.slide_id, center, float(size_um), int(px))
        return self._compose(center, float(size_um), int(px))

    def _center(self, where: int | Sequence[float]) -> np.ndarray:
        if isinstance(where, (int, np.integer)):
            if not 0 <= where < self.n_spots:
                raise UserError(f"region around spot {where}: slide {self.ref.slide_id} has spots 0..{self.n_spots - 1}")
            return self.coords_um[int(where)]
        center = np.asarray(where, dtype=np.float64)
        if center.shape != (2,) or not np.isfinite(center).all():
            raise UserError(f"region centre {where!r}: give a spot index or (x_um, y_um)")
        return center

    def _field_um(self) -> float:
        """Side of the per-spot patch used to compose regions: the widest the reader stores, or
        twice the median spot spacing (enough to cover each spot's nearest-pixel cell)."""
        stored = getattr(self.reader, "max_field_um", None)
        if stored is not None:
            return float(stored)
        if self.n_spots < 2:
            return float(self.patch.size_um)
        spacing = median_spacing(self.coords_um)
        assert spacing is not None  # two or more spots always leave a distance
        return 2.0 * spacing

    def _compose(self, center: np.ndarray, size_um: float, px: int) -> np.ndarray:
        um_per_px = size_um / px
        field = self._field_um()
        tile_px = max(1, int(round(field / um_per_px)))
        near = np.flatnonzero(np.abs(self.coords_um - center).max(axis=1) <= (size_um + field) / 2)
        out = np.full((px, px, 3), BACKGROUND, dtype=np.uint8)
        if len(near) == 0:
            return out
        tiles = self.reader(self.ref.slide_id, PatchSpec(field, tile_px), near)
        offsets = (np.arange(px) + 0.5 - px / 2) * um_per_px
        gx, gy = np.meshgrid(center[0] + offsets, center[1] + offsets)  # (px, px): rows are y
        pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
        from scipy.spatial import cKDTree

        _, k = cKDTree(self.coords_um[near]).query(pts)
        # position inside the nearest spot's patch, in that patch's pixels
        local = (pts - self.coords_um[near][k]) / (field / tile_px) + tile_px / 2
        col, row = np.floor(local).astype(np.int64).T
        inside = (col >= 0) & (col < tile_px) & (row >= 0) & (row < tile_px)
        flat = out.reshape(-1, 3)
        flat[inside] = tiles[k[inside], row[inside], col[inside]]
        return out
