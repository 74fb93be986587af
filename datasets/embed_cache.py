"""Embedding cache: (dataset version, encoder + version, patch spec, slide) -> float32 (N, D).

Two levels: an in-process memo, and ``.npy`` files under the cache folder (``cache_dir``, else
``$FLAG_BENCH_CACHE``, else ``~/.cache/flag-bench``) shared across processes and runs. Files are
written to a temporary name and renamed into place, so concurrent writers never leave a torn
file; a file that cannot be read or has the wrong shape is recomputed with a warning naming it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from flag_bench.datasets.base import PatchSpec, SpatialDataset

_MEMO: dict[str, np.ndarray] = {}


def default_cache_dir() -> Path:
    env = os.environ.get("FLAG_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flag-bench"


def device_kind(device: str) -> str:
    return str(device).split(":")[0]


def cache_key(dataset: SpatialDataset, slide_id: str, encoder, patch: PatchSpec, device: str = "cpu") -> str:
    """Readable prefix plus a hash of exactly the things that change the numbers.

    The device kind (cpu / cuda) is part of the key for device-dependent encoders: CUDA runs
    under float16 autocast, and reusing those numbers on a CPU run would break "same seed and
    same device -> identical numbers".
    """
    parts = [dataset.name, dataset.version, encoder.name, encoder.version, patch.key(), slide_id]
    if getattr(encoder, "device_dependent", True):
        parts.append(device_kind(device))
    raw = "|".join(parts)
    digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{dataset.name}-{slide_id}")
    return f"{safe}-{encoder.name}-{patch.key()}-{digest}"


def _encoder(name: str):
    from flag_bench.catalog import ENCODERS

    return ENCODERS.get(ENCODERS.check(name))()


def _read(path: Path, n_spots: int, dim: int) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
        if arr.dtype != np.float32 or arr.shape != (n_spots, dim):
            raise ValueError(f"shape/dtype {arr.shape} {arr.dtype}, expected ({n_spots}, {dim}) float32")
        if not np.isfinite(arr).all():
            raise ValueError("non-finite values")
        return arr
    except Exception as exc:  # any unreadable file is a cache miss, never a crash
        warnings.warn(f"embedding cache file {path} is unreadable ({exc}); recomputing it", stacklevel=3)
        return None


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def get_embeddings(
    dataset: SpatialDataset,
    slide_id: str,
    encoder_name: str,
    patch: PatchSpec,
    *,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """float32 (n_spots, D) embeddings of ``slide_id``'s tiles at ``patch`` (read-only array)."""
    encoder = _encoder(encoder_name)
    slide = dataset.slide(slide_id)
    key = cache_key(dataset, slide_id, encoder, patch, device)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / "embeddings" / f"{key}.npy"
    memo_key = f"{path}"
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    arr = _read(path, slide.n_spots, encoder.dim)
    if arr is None:
        arr = encoder.encode(slide.tiles(patch), device=device)
        if arr.shape != (slide.n_spots, encoder.dim):
            raise RuntimeError(f"encoder {encoder_name} returned {arr.shape} for slide {slide_id} "
                               f"({slide.n_spots} spots, dim {encoder.dim})")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        _write(path, arr)
    arr.setflags(write=False)
    _MEMO[memo_key] = arr
    return arr


def clear_memo() -> None:
    """Forget the in-process memo (tests; files on disk stay)."""
    _MEMO.clear()
