"""Checks shared by the readers: one-line ``UserError`` messages that name the file and the fix,
and the pixel-size rule (given > embedded/metadata > estimated from spot spacing > error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from flag_bench.datasets.base import median_spacing
from flag_bench.errors import UserError

# centre-to-centre spot pitch by platform, micrometres; the estimate divides it by the median
# nearest-neighbour distance in image pixels
PITCH_UM = {"visium": 100.0, "st": 200.0}

SOURCES = ("embedded", "estimated from spot spacing", "given")


def need_file(path: Path, spec: str, what: str, fix: str) -> Path:
    if not Path(path).is_file():
        raise UserError(f"{spec}: {what} {path} does not exist; {fix}")
    return Path(path)


def need_dir(path: Path, spec: str, what: str, fix: str) -> Path:
    if not Path(path).is_dir():
        raise UserError(f"{spec}: {what} {path} is not a folder; {fix}")
    return Path(path)


def read_json(path: Path, spec: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{spec}: {path} is not valid JSON ({type(exc).__name__}); fix or replace the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{spec}: {path} must hold a JSON object; fix or replace the file")
    return data


def positive_float(value: Any) -> float | None:
    """``value`` as a finite positive float, else None (metadata fields may be null, '' or NaN)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def nn_spacing_px(coords: np.ndarray) -> float | None:
    """Median nearest-neighbour distance of (n, 2) spot centres, pixels; None under 3 spots."""
    if len(coords) < 3:
        return None
    return median_spacing(coords, drop_coincident=True)


def estimate_pixel_size(coords: np.ndarray, pitch_um: float) -> float | None:
    """um/px from the spot lattice: ``pitch_um`` / median nearest-neighbour distance in px."""
    nn = nn_spacing_px(coords)
    return pitch_um / nn if nn else None


def resolve_pixel_size(*, given: Any, embedded: float | None, coords: np.ndarray, pitch_um: float | None,
                       spec: str, where: str, detail_embedded: str = "") -> tuple[float, str, str]:
    """(um/px, source, detail) with source in ``SOURCES``; no size and no estimate -> UserError."""
    if given is not None:
        v = positive_float(given)
        if v is None:
            raise UserError(f"{spec}: pixel_size={given!r} must be a positive number of micrometres per pixel")
        return v, "given", "pixel_size= in the dataset spec"
    if embedded is not None:
        return float(embedded), "embedded", detail_embedded or "from the image file"
    if pitch_um is not None:
        est = estimate_pixel_size(coords, pitch_um)
        if est is not None:
            return est, "estimated from spot spacing", f"{pitch_um:g} um pitch / median nearest-neighbour distance"
    raise UserError(f"{spec}: {where} gives no pixel size and it cannot be estimated from the spot spacing; "
                    "add pixel_size=UM_PER_PX to the dataset spec")


def check_coords_inside(coords: np.ndarray, size_wh: tuple[int, int], spec: str, where: str, image: str) -> None:
    """Spot centres (x, y) must lie inside the image (w, h); else the coordinates or the image are wrong."""
    w, h = size_wh
    bad = ~((coords[:, 0] >= 0) & (coords[:, 0] < w) & (coords[:, 1] >= 0) & (coords[:, 1] < h))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{spec}: {int(bad.sum())} spot(s) in {where} lie outside the {w}x{h} image {image} (first at "
            f"x={coords[i, 0]:.0f}, y={coords[i, 1]:.0f}); give the full-resolution image these coordinates refer to"
        )


def list_param(value: Any) -> tuple[str, ...] | None:
    """A list inside one spec key: items joined by '+' (',' separates keys), e.g. ids=TENX95+TENX99."""
    if value is None:
        return None
    return tuple(v.strip() for v in str(value).split("+") if v.strip())
