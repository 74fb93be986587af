"""Embedding cache: (dataset version, encoder + version, patch spec, slide) -> float32 (N, D).

Two levels: an in-process memo, and ``.npy`` files under the cache folder (``cache_dir``, else
``$FLAG_BENCH_CACHE``, else ``~/.cache/flag-bench``) shared across processes and runs. Files go
through the harness's one atomic writer, so concurrent writers never leave a torn file; a file
that cannot be read or has the wrong shape is recomputed with a warning naming it.

The cache knows a slide only by a ``SlideRef`` and a tile-reading function, never by the Slide:
image access handed to methods goes through here without carrying the slide's counts.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from flag_bench.datasets.base import PatchSpec, SpatialDataset
from flag_bench.datasets.encoders import Encoder
from flag_bench.io import atomic_write

_MEMO: dict[str, np.ndarray] = {}


@dataclass(frozen=True)
class SlideRef:
    """A slide's identity and size: what the cache key and the shape check need."""

    dataset: str
    version: str
    slide_id: str
    n_spots: int

    @classmethod
    def of(cls, dataset: SpatialDataset, slide_id: str) -> "SlideRef":
        return cls(dataset.name, dataset.version, slide_id, dataset.slide(slide_id).n_spots)


def default_cache_dir() -> Path:
    env = os.environ.get("FLAG_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flag-bench"


def device_kind(device: str) -> str:
    return str(device).split(":")[0]


def cache_key(ref: SlideRef, encoder: Encoder, patch: PatchSpec, device: str = "cpu") -> str:
    """Readable prefix plus a hash of exactly the things that change the numbers.

    The device kind (cpu / cuda) is part of the key for device-dependent encoders: CUDA runs
    under float16 autocast, and reusing those numbers on a CPU run would break "same seed and
    same device -> identical numbers".
    """
    parts = [ref.dataset, ref.version, encoder.name, encoder.version, patch.key(), ref.slide_id]
    if getattr(encoder, "device_dependent", True):
        parts.append(device_kind(device))
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{ref.dataset}-{ref.slide_id}")
    return f"{safe}-{encoder.name}-{patch.key()}-{digest}"


def cache_path(ref: SlideRef, encoder: Encoder, patch: PatchSpec, *, device: str = "cpu",
               cache_dir: str | os.PathLike | None = None) -> Path:
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / "embeddings" / f"{cache_key(ref, encoder, patch, device)}.npy"


def is_cached(ref: SlideRef, encoder: Encoder, patch: PatchSpec, *, device: str = "cpu",
              cache_dir: str | os.PathLike | None = None) -> bool:
    """True when the memo or a file of the right shape holds these embeddings (header only:
    a file with bad values is still found and recomputed, with a warning, when read)."""
    path = cache_path(ref, encoder, patch, device=device, cache_dir=cache_dir)
    if str(path) in _MEMO:
        return True
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        return arr.dtype == np.float32 and arr.shape == (ref.n_spots, encoder.dim)
    except Exception:  # missing or unreadable: not cached
        return False


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


# tiles read and encoded at once on a cache miss: whole batches of the encoder, so the numbers are
# those of encoding the slide in one call, and memory stays bounded on a 20,000-spot slide (whose
# tiles at 224 px would be 3 GB at once)
CHUNK_BATCHES = 8


def embeddings_for(
    ref: SlideRef,
    read_tiles: Callable[[PatchSpec, np.ndarray], np.ndarray],
    encoder: Encoder,
    patch: PatchSpec,
    *,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """float32 (n_spots, D) embeddings of the slide's tiles at ``patch`` (read-only array).
    On a miss, ``read_tiles(patch, spots)`` (uint8 tiles of the sorted spot indices ``spots``)
    is called a chunk of spots at a time; ``on_batch(n)`` reports encoded tiles."""
    path = cache_path(ref, encoder, patch, device=device, cache_dir=cache_dir)
    memo_key = str(path)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    arr = _read(path, ref.n_spots, encoder.dim)
    if arr is None:
        # a plugin encoder may override encode() without the progress hook
        hook = on_batch is not None and _takes(encoder.encode, "on_batch")
        arr = np.empty((ref.n_spots, encoder.dim), dtype=np.float32)
        step = max(1, int(encoder.batch_size)) * CHUNK_BATCHES
        for lo in range(0, ref.n_spots, step):
            spots = np.arange(lo, min(lo + step, ref.n_spots))
            part = encoder.encode(read_tiles(patch, spots), device=device, **({"on_batch": on_batch} if hook else {}))
            if part.shape != (len(spots), encoder.dim):
                raise RuntimeError(f"encoder {encoder.name} returned {part.shape} for {len(spots)} tiles of slide "
                                   f"{ref.slide_id} (dim {encoder.dim})")
            arr[spots] = part
            if on_batch is not None and not hook:
                on_batch(len(spots))
        if not np.isfinite(arr).all():
            raise RuntimeError(f"encoder {encoder.name} returned non-finite embeddings for slide {ref.slide_id}")
        atomic_write(path, lambda tmp: np.save(tmp, arr, allow_pickle=False))
    arr.setflags(write=False)
    _MEMO[memo_key] = arr
    return arr


def get_embeddings(dataset: SpatialDataset, slide_id: str, encoder: Encoder, patch: PatchSpec,
                   **options) -> np.ndarray:
    """float32 (n_spots, D) embeddings of ``slide_id``'s tiles at ``patch`` (read-only array);
    ``options`` (device, cache_dir, on_batch) as for ``embeddings_for``."""
    slide = dataset.slide(slide_id)
    if slide.tile_reader is None:
        from flag_bench.errors import UserError

        raise UserError(f"dataset {dataset.name}: slide {slide_id} has no image or patches, so it cannot be "
                        "embedded; give the slide's image or patches in the dataset spec")
    return embeddings_for(SlideRef.of(dataset, slide_id), lambda p, spots: slide.tile_reader(slide_id, p, spots),
                          encoder, patch, **options)


def _takes(fn: Callable, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def clear_memo() -> None:
    """Forget the in-process memo (tests; files on disk stay)."""
    _MEMO.clear()
