"""``her2st-mini``: the embedded real dataset (six her2st sections with H&E, ~1.2k spots).

Everything comes from the package data file ``data/her2st_mini.h5`` (built by
``scripts/build_her2st_mini.py``); nothing is downloaded and no other folder is read. Counts,
coordinates and metadata are read eagerly (small); patches are stored as one JPEG per spot
covering a fixed field and are decoded lazily, per request, by ``Slide.tile_reader``.

Image-only mode (``load(image_only=True)``, for ``flag-bench predict``): the same file, its
counts and gene list left unread (every slide an empty (n_spots, 0) count matrix).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from flag_bench.datasets.base import PatchSpec, Slide, SpatialDataset, image_only_version, no_counts
from flag_bench.errors import UserError
from flag_bench.hashing import file_sha256

DATA_FILE = Path(__file__).resolve().parent / "data" / "her2st_mini.h5"
NAME = "her2st-mini"

# (path, size, mtime_ns) -> version; hashing 12 MB costs ~30 ms, so pay it once per process
_VERSION_MEMO: dict[tuple[str, int, int], str] = {}


def file_version(path: Path) -> str:
    """First 12 hex digits of the file's sha256 (memoised on path, size and mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERSION_MEMO:
        _VERSION_MEMO[key] = file_sha256(path)[:12]
    return _VERSION_MEMO[key]


def _str_array(ds) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]], dtype=object).astype(str)


def _decode(blobs, stored_um: float, patch: PatchSpec) -> np.ndarray:
    """Stored JPEG patches (bytes-like) -> uint8 (len(blobs), size_px, size_px, 3)."""
    from PIL import Image

    from flag_bench.datasets.readers.images import resample

    out = np.empty((len(blobs), patch.size_px, patch.size_px, 3), dtype=np.uint8)
    for i, b in enumerate(blobs):
        raw = b if isinstance(b, bytes) else b.tobytes()
        out[i] = resample(np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")), stored_um, patch)
    return out


class JpegTiles:
    """One slide's stored JPEG patches, held in memory: the reader a method is handed
    (``JpegTileReader.image_only``). The data file also holds every slide's counts, so this
    reader carries no path to it, only the slide's JPEG bytes (~2 MB a slide); picklable."""

    def __init__(self, slide_id: str, blobs: tuple[bytes, ...], stored_um: float):
        self.slide_id = str(slide_id)
        self.blobs = tuple(blobs)
        self.stored_um = float(stored_um)

    @property
    def max_field_um(self) -> float:
        return self.stored_um

    def __call__(self, slide_id: str, patch: PatchSpec, spots: np.ndarray | None = None) -> np.ndarray:
        """The same tiles as ``JpegTileReader`` (the same bytes, decoded the same way)."""
        from flag_bench.datasets.readers.images import check_patch

        if slide_id != self.slide_id:
            raise UserError(f"this image access serves slide {self.slide_id}, not {slide_id}")
        check_patch(patch, self.stored_um, "her2st-mini")
        blobs = self.blobs if spots is None else [self.blobs[int(i)] for i in np.asarray(spots, dtype=np.int64)]
        return _decode(blobs, self.stored_um, patch)


class JpegTileReader:
    """Serves ``PatchSpec(size_um, size_px)`` tiles from the stored per-spot JPEGs.

    The stored patch covers ``stored_um`` of tissue at ``stored_px`` pixels, centred on the spot;
    a request crops the central ``size_um`` and resamples it to ``size_px``. Picklable (holds only
    the path), so slides can cross process boundaries. The path names the file that also holds
    the counts, so methods are handed ``image_only(slide_id)`` instead (datasets/fold.py).
    """

    def __init__(self, path: Path, stored_um: float, stored_px: int):
        self.path = Path(path)
        self.stored_um = float(stored_um)
        self.stored_px = int(stored_px)

    @property
    def max_field_um(self) -> float:
        return self.stored_um

    def fingerprint(self, slide_id: str) -> str:
        """The embedding cache's identity of a slide's patch source: the data file's content hash
        (not its path or mtime: a reinstall reads the same cache) and the stored field."""
        return f"her2st-mini-jpeg|{file_version(self.path)}|{slide_id}|{self.stored_um!r}|{self.stored_px}"

    def image_only(self, slide_id: str) -> JpegTiles:
        """Slide ``slide_id``'s patches in memory, with no path to the file (which holds counts)."""
        with h5py.File(self.path, "r") as f:
            blobs = tuple(b.tobytes() for b in f["slides"][slide_id]["tiles"][()])
        return JpegTiles(slide_id, blobs, self.stored_um)

    def __call__(self, slide_id: str, patch: PatchSpec, spots: np.ndarray | None = None) -> np.ndarray:
        """uint8 (n_spots or len(spots), size_px, size_px, 3); ``spots`` are sorted indices."""
        from flag_bench.datasets.readers.images import check_patch

        check_patch(patch, self.stored_um, "her2st-mini")
        with h5py.File(self.path, "r") as f:
            stored = f["slides"][slide_id]["tiles"]
            if spots is None:
                blobs = stored[()]
            else:  # h5py reads a point selection only for increasing indices, and not an empty one
                spots = np.asarray(spots, dtype=np.int64)
                blobs = stored[spots] if len(spots) else []
        return _decode(blobs, self.stored_um, patch)


def _read_slide(g: h5py.Group, sid: str, reader: JpegTileReader, image_only: bool = False) -> Slide:
    barcodes = _str_array(g["barcodes"])
    if image_only:
        counts = no_counts(len(barcodes))
    else:
        c = g["counts"]
        counts = sp.csr_matrix(
            (c["data"][()], c["indices"][()], c["indptr"][()]), shape=tuple(int(v) for v in c.attrs["shape"])
        )
    ga = g.attrs
    return Slide(
        id=sid,
        patient=str(ga["patient"]),
        counts=counts,
        barcodes=barcodes,
        coords=g["coords"][()].astype(np.float64),
        pixel_size_um=float(ga["pixel_size_um"]),
        spot_diameter_um=float(ga["spot_diameter_um"]),
        tile_reader=reader,
        meta={
            "annotations": g["annotations"][()].astype(np.int64),
            "annotations_source": "authors' expression-based clusters (res/ST-cluster/lbl), -1 = none",
            "array_xy": g["array_xy"][()],
            "image_file": str(ga["image_file"]),
            "image_size": (int(ga["image_w"]), int(ga["image_h"])),
        },
    )


def load(path: str | os.PathLike | None = None, *, image_only: bool = False) -> SpatialDataset:
    """Load her2st-mini: 6 slides (B4; C2-C6), 2 patients, one pool of >= 2,000 genes.

    ``path`` overrides the package data file (tests, rebuilt files); ``image_only`` leaves the
    counts and genes unread (module docstring).
    """
    p = Path(path) if path is not None else DATA_FILE
    given = f"--datasets her2st-mini:path={path}" if path is not None else str(p)
    if not p.is_file():
        fix = ("give an existing file built by scripts/build_her2st_mini.py, or drop path= to use the "
               "embedded one") if path is not None else "reinstall flag-bench or rebuild it with scripts/build_her2st_mini.py"
        raise UserError(f"{given}: her2st-mini data file {p} does not exist; {fix}")
    try:
        return _load_file(p, image_only)
    except (OSError, KeyError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{given}: {p} is not an her2st-mini HDF5 file ({first}); give the file "
                        "scripts/build_her2st_mini.py writes, or drop path= to use the embedded one") from None


def _load_file(p: Path, image_only: bool = False) -> SpatialDataset:
    version = file_version(p)
    genes: tuple[str, ...] = ()
    gene_ids: tuple[str, ...] = ()
    with h5py.File(p, "r") as f:
        a = dict(f.attrs)
        if image_only:  # another version: a dataset that serves other things is another dataset
            version = image_only_version(version)
        else:
            genes = tuple(str(g) for g in _str_array(f["genes"]))
            gene_ids = tuple(str(g) for g in _str_array(f["gene_ids"]))
        reader = JpegTileReader(p, float(a["patch_um"]), int(a["patch_px"]))
        slides = [_read_slide(f["slides"][sid], str(sid), reader, image_only) for sid in f["slides"]]
    order = {"B4": 0, "C2": 1, "C3": 2, "C4": 3, "C5": 4, "C6": 5}
    slides.sort(key=lambda s: (order.get(s.id, len(order)), s.id))
    return SpatialDataset(
        name=NAME,
        version=version,
        slides=tuple(slides),
        genes=genes,
        gene_ids=gene_ids,
        organism="human",
        platform="ST",
        licence=str(a["licence"]),
        citation=str(a["citation"]),
        default_split="slide",
        # leave-one-section-out inside patient C; the patient protocol is C -> B4
        default_test_slides=("C2", "C3", "C4", "C5", "C6"),
        meta={
            "within_patient_slide_protocol": True,
            "patient_protocol_test_patients": ("B",),
            "source": f"{a['source_repo']}@{a['source_commit']}",
            "pool_rule": str(a["pool_rule"]),
            "patch_um": float(a["patch_um"]),
            "patch_px": int(a["patch_px"]),
            "data_file": str(p),
            # public corpora these sections belong to (HEST-1k redistributes the her2st sections)
            "corpora": ("HER2ST", "HEST-1k"),
            **({"image_only": True} if image_only else {}),
        },
        image_only=image_only,
    )
