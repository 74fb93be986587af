"""Embedding cache: (slide content, encoder + version, patch spec[, device kind]) -> float32 (N, D).

Two levels: an in-process memo (bounded in bytes with the other memos, ``datasets/memo.py``), and
``.npy`` files under the cache folder (``cache_dir``, else ``$FLAG_BENCH_CACHE``, else
``~/.cache/flag-bench``) shared across processes and runs. Files go through the harness's one
atomic writer, so concurrent writers never leave a torn file; a file that cannot be read or has
the wrong shape is recomputed with a warning naming it.

A slide's key is its own content (``slide_content``: the tile reader's source identity, the
barcodes and coordinates that choose the patches), never the version of the dataset it was loaded
in, which changes with the other slides loaded beside it: ``hest:...,ids=A`` reads what
``hest:...,ids=A+B`` encoded. A reader that cannot fingerprint a slide falls back to the dataset
version (the older, conservative key).

The cache knows a slide only by a ``SlideRef`` and a tile-reading function, never by the Slide:
image access handed to methods goes through here without carrying the slide's counts.

``cache_info`` and ``prune`` (the ``flag-bench cache`` command) read and delete the files; the
file name carries the encoder (``<dataset>-<slide>~<encoder>~<patch>~<digest>.npy``).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from flag_bench.datasets.base import PatchSpec, Slide, SpatialDataset
from flag_bench.datasets.encoders import Encoder
from flag_bench.datasets.memo import ByteMemo
from flag_bench.io import atomic_write

_MEMO = ByteMemo("embeddings")

# bump when what ``slide_content`` hashes changes (every slide is then re-encoded once)
CONTENT_SCHEME = "slide-content-1"
_CONTENT_MEMO: "weakref.WeakKeyDictionary[Slide, str]" = weakref.WeakKeyDictionary()


def slide_content(slide: Slide) -> str:
    """Fingerprint of what a slide's patches depend on, "" when its reader cannot say.

    The reader's ``fingerprint(slide_id)`` (its source file's identity, the rows or image state
    it reads for that slide), the slide id, barcodes, spot coordinates and pixel size. Milliseconds
    for 20,000 spots, memoised per Slide object; no pixel is read.
    """
    if slide in _CONTENT_MEMO:
        return _CONTENT_MEMO[slide]
    fp = getattr(slide.tile_reader, "fingerprint", None)
    source = fp(slide.id) if callable(fp) else None
    if not source:
        out = ""
    else:
        h = hashlib.sha256()
        for part in (CONTENT_SCHEME, slide.id, str(source), repr(float(slide.pixel_size_um))):
            h.update(part.encode() + b"\0")
        h.update("\n".join(map(str, slide.barcodes)).encode() + b"\0")
        h.update(np.ascontiguousarray(slide.coords, dtype=np.float64).tobytes())
        out = h.hexdigest()[:24]
    _CONTENT_MEMO[slide] = out
    return out


@dataclass(frozen=True)
class SlideRef:
    """A slide's identity and size: what the cache key and the shape check need."""

    dataset: str
    version: str
    slide_id: str
    n_spots: int
    # ``slide_content`` of the slide; "" = unknown, the dataset version keys it instead
    content: str = ""

    @classmethod
    def of(cls, dataset: SpatialDataset, slide_id: str) -> "SlideRef":
        slide = dataset.slide(slide_id)
        return cls(dataset.name, dataset.version, slide_id, slide.n_spots, slide_content(slide))


def default_cache_dir() -> Path:
    env = os.environ.get("FLAG_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flag-bench"


def device_kind(device: str) -> str:
    return str(device).split(":")[0]


def cache_key(ref: SlideRef, encoder: Encoder, patch: PatchSpec, device: str = "cpu") -> str:
    """Readable prefix plus a hash of exactly the things that change the numbers: the slide's
    content (``SlideRef.content``, not the dataset version), the encoder's name and version
    (its weights' hash for a foundation model), the patch spec.

    The device kind (cpu / cuda) is part of the key for device-dependent encoders: CUDA runs
    under float16 autocast, and reusing those numbers on a CPU run would break "same seed and
    same device -> identical numbers".
    """
    slide = (f"content:{ref.content}" if ref.content
             else f"dataset:{ref.dataset}|{ref.version}|{ref.slide_id}")  # no fingerprint: the older key
    parts = [slide, encoder.name, encoder.version, patch.key()]
    if getattr(encoder, "device_dependent", True):
        parts.append(device_kind(device))
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return f"{_safe(f'{ref.dataset}-{ref.slide_id}')}~{_safe(encoder.name)}~{patch.key()}~{digest}"


def _safe(text: str) -> str:
    """A file-name part: letters, digits and ``-_.`` kept, anything else (``~`` included) -> ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


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
    hit = _MEMO.get(memo_key)
    if hit is not None:
        return hit
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
    return _MEMO.put(memo_key, arr)


def get_embeddings(dataset: SpatialDataset, slide_id: str, encoder: Encoder, patch: PatchSpec,
                   **options) -> np.ndarray:
    """float32 (n_spots, D) embeddings of ``slide_id``'s tiles at ``patch`` (read-only array);
    ``options`` (device, cache_dir, on_batch) as for ``embeddings_for``."""
    reader = dataset.slide(slide_id).tile_reader
    if reader is None:
        from flag_bench.errors import UserError

        raise UserError(f"dataset {dataset.name}: slide {slide_id} has no image or patches, so it cannot be "
                        "embedded; give the slide's image or patches in the dataset spec")
    return embeddings_for(SlideRef.of(dataset, slide_id), lambda p, spots: reader(slide_id, p, spots),
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


# ---------------------------------------------------------------------------------------------
# the disk cache as a whole: `flag-bench cache info | prune`
# ---------------------------------------------------------------------------------------------

_DIGEST = re.compile(r"[0-9a-f]{16}")
_PATCH = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?um-\d+px")


@dataclass(frozen=True)
class CacheEntry:
    """One embeddings file. ``encoder`` is its file-name form ("?" for an older-format file
    whose encoder is not among ``known``); ``legacy``: written under the older, dataset-version
    key, so never read again by this version."""

    path: Path
    encoder: str
    patch: str
    bytes: int
    mtime: float
    legacy: bool


def _entry(path: Path, known: Iterable[str]) -> CacheEntry:
    st = path.stat()
    parts = path.stem.split("~")  # no part holds a "~"
    if len(parts) == 4 and _DIGEST.fullmatch(parts[3]) and _PATCH.fullmatch(parts[2]):
        return CacheEntry(path, parts[1], parts[2], st.st_size, st.st_mtime, False)
    # older format: <dataset>-<slide>-<encoder>-<patch>-<digest>; the encoder only by its known names
    m = re.fullmatch(rf"(.*)-({_PATCH.pattern})-[0-9a-f]{{16}}", path.stem)
    encoder = "?"
    if m:
        for name in sorted({_safe(k) for k in known}, key=len, reverse=True):
            if m.group(1).endswith(f"-{name}"):
                encoder = name
                break
    return CacheEntry(path, encoder, m.group(2) if m else "?", st.st_size, st.st_mtime, True)


def cache_entries(cache_dir: str | os.PathLike | None = None, known: Iterable[str] = ()) -> list[CacheEntry]:
    """Every ``.npy`` file of the cache folder's ``embeddings/`` (temporary files excluded),
    oldest first. ``known``: encoder names, to name the encoder of older-format files."""
    folder = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / "embeddings"
    if not folder.is_dir():
        return []
    known = tuple(known)
    out = []
    for p in folder.glob("*.npy"):
        if p.name.startswith("."):  # an atomic writer's temporary file
            continue
        try:
            out.append(_entry(p, known))
        except OSError:  # deleted meanwhile
            continue
    return sorted(out, key=lambda e: (e.mtime, e.path.name))


def cache_info(cache_dir: str | os.PathLike | None = None, known: Iterable[str] = ()) -> dict:
    """Folder, totals and per-encoder entries/bytes/oldest/newest (mtimes, seconds since the epoch)."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entries = cache_entries(folder, known)
    per: dict[str, dict] = {}
    for e in entries:
        d = per.setdefault(e.encoder, {"entries": 0, "bytes": 0, "oldest": e.mtime, "newest": e.mtime, "legacy": 0})
        d["entries"] += 1
        d["bytes"] += e.bytes
        d["oldest"], d["newest"] = min(d["oldest"], e.mtime), max(d["newest"], e.mtime)
        d["legacy"] += e.legacy
    return {
        "path": str(folder / "embeddings"),
        "exists": (folder / "embeddings").is_dir(),
        "entries": len(entries),
        "bytes": sum(e.bytes for e in entries),
        "oldest": entries[0].mtime if entries else None,
        "newest": max(e.mtime for e in entries) if entries else None,
        "legacy": sum(e.legacy for e in entries),
        "encoders": dict(sorted(per.items())),
    }


def select_entries(entries: Iterable[CacheEntry], *, older_than_days: float | None = None,
                   encoder: str | None = None, stale: bool = False, now: float | None = None) -> list[CacheEntry]:
    """The entries last written more than ``older_than_days`` ago, of ``encoder`` (by name),
    in the older key format (``stale``): every filter given must hold; with none, every entry."""
    now = time.time() if now is None else now
    out = []
    for e in entries:
        if older_than_days is not None and now - e.mtime <= older_than_days * 86400.0:
            continue
        if encoder is not None and e.encoder != _safe(encoder):
            continue
        if stale and not e.legacy:
            continue
        out.append(e)
    return out


def prune(entries: Iterable[CacheEntry], *, dry_run: bool = False) -> tuple[int, int]:
    """Delete the entries' files (not when ``dry_run``) and forget them in this process;
    (files, bytes) freed (a file gone meanwhile counts as nothing)."""
    n = freed = 0
    for e in entries:
        if not dry_run:
            try:
                e.path.unlink()
            except FileNotFoundError:
                continue
            _MEMO.pop(str(e.path))
        n += 1
        freed += e.bytes
    return n, freed
