"""H&E thumbnails for the report's spatial maps, composed from a dataset's tiles.

The leaderboard never loads datasets (the layer contract in pyproject.toml): the CLI hands
``thumbnail`` to ``leaderboard.content.build_content``, which calls it per mapped slide.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flag_bench import resolve
from flag_bench.catalog import DATASETS
from flag_bench.errors import UserError
from flag_bench.spec import DatasetSpec

THUMB_PX = 384


def thumbnail(dataset_spec: str, slide: str, coords: np.ndarray) -> tuple[Any, Any, str]:
    """(H&E image, extent (x0, x1, y1, y0) um, "") composed from the dataset's tiles, or
    (None, None, why not)."""
    spec = DatasetSpec.parse(dataset_spec)
    if spec.name not in DATASETS.names():
        return None, None, f"dataset {spec.name} is not registered here"
    ds = _load(spec)
    if isinstance(ds, str):
        return None, None, ds
    if "tiles" not in ds.capabilities:
        return None, None, f"dataset {spec.key} has no images"
    if slide not in ds.slide_ids:
        return None, None, f"slide {slide} is not in dataset {spec.key} as loaded now"
    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.embed_cache import SlideRef
    from flag_bench.datasets.image import EncoderSource, SlideImage

    s = ds.slide(slide)
    img = SlideImage(SlideRef.of(ds, slide), s.tile_reader, s.coords_um, PatchSpec(), EncoderSource())
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    size = float((hi - lo).max()) * 1.1 + 200.0
    center = (lo + hi) / 2
    region = img.region((float(center[0]), float(center[1])), size, THUMB_PX)
    half = size / 2
    return region, (center[0] - half, center[0] + half, center[1] + half, center[1] - half), ""


def _load(spec: DatasetSpec):
    """The dataset through the run's resolver (its bounded memo), or why it did not load."""
    try:
        return resolve.dataset(spec)
    except UserError as exc:  # a dataset whose file moved: the maps still draw, the caption says why
        return f"dataset {spec.key} did not load ({exc})"
