"""Tile readers for users' data: patches stored in HDF5 (HEST ``patches/*.h5``), and regions cut
from a full-resolution image (tifffile / Pillow, or OpenSlide for pyramidal TIFF and SVS).

Both readers are picklable (paths and small arrays only) and open files per call, so slides can
cross process boundaries and a 20,000-spot slide is never decoded at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import warnings
from pathlib import Path
from typing import cast

import numpy as np

from flag_bench.datasets.base import PatchSpec
from flag_bench.errors import UserError

BACKGROUND = 255  # white outside the image: what a slide scanner shows off tissue


def resample(tile: np.ndarray, stored_um: float, patch: PatchSpec) -> np.ndarray:
    """uint8 (px, px, 3): the central ``patch.size_um`` of a square ``tile`` covering
    ``stored_um``, resampled to ``patch.size_px`` (one call for every stored-patch reader,
    her2st-mini's included, so the same stored pixels give the same patch in any loader)."""
    from PIL import Image

    stored_px = tile.shape[0]
    # a request up to the reader's tolerance wider than the stored field (HEST rounds each
    # patch's source width to whole pixels) reads the whole stored patch
    side = min(patch.size_um / stored_um * stored_px, float(stored_px))
    whole = abs(side - stored_px) < 1e-6
    if whole and patch.size_px == stored_px:
        return tile
    lo = (stored_px - side) / 2.0
    img = Image.fromarray(tile)
    # resize with a sub-pixel box: bicubic up, and PIL's antialiasing filter when shrinking
    return np.asarray(img.resize((patch.size_px, patch.size_px), Image.Resampling.BICUBIC,
                                 box=None if whole else (lo, lo, lo + side, lo + side)))


def check_patch(patch: PatchSpec, limit_um: float | None, what: str, tolerance_um: float = 0.0) -> None:
    """A positive pixel size, and no wider than ``limit_um`` (what ``what`` stores; None: any)
    plus ``tolerance_um`` (HEST patches: one source pixel, see ``field_limit``)."""
    if patch.size_px < 1:
        raise UserError(f"patch size {patch.size_px} px: must be a positive number of pixels")
    if limit_um is not None and patch.size_um > limit_um + tolerance_um + 1e-6:
        raise UserError(f"patch size {patch.size_um:g} um: {what} stores {limit_um:g}-um patches only; "
                        f"use --patch-um <= {limit_um:g}")


def field_limit(readers) -> tuple[float | None, float]:
    """(widest field every reader can serve, um, or None for any; tolerance, um) over the tile
    readers of a dataset: the smallest ``max_field_um``, and how much wider than it every reader
    still serves (``max_field_um + field_tolerance_um``, the smallest over the readers). A run's ``--patch-um`` may exceed the limit by the
    tolerance: HEST cuts each patch from round(112 um / source um-per-px) source pixels, so its
    stored field is 112 um +- half a source pixel, and one source pixel of slack accepts it."""
    limited = [(float(f), float(getattr(r, "field_tolerance_um", 0.0) or 0.0))
               for r in readers if r is not None and (f := getattr(r, "max_field_um", None)) is not None]
    if not limited:
        return None, 0.0
    limit = min(f for f, _ in limited)
    return limit, max(0.0, min(f + t for f, t in limited) - limit)


class H5PatchReader:
    """One slide's patches from a HEST-style ``patches/<id>.h5`` (``img`` (N, H, W, 3) uint8).

    ``rows[i]`` is the h5 row of the slide's spot ``i`` (patches are matched by barcode, so the
    file's order does not matter). Each stored patch covers ``stored_um`` of tissue; requests
    crop and resample like her2st-mini's reader.
    """

    def __init__(self, path: Path, rows: np.ndarray, stored_um: float, dataset: str = "img",
                 tolerance_um: float = 0.0):
        self.path = Path(path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.stored_um = float(stored_um)
        self.dataset = dataset
        # how much wider than ``stored_um`` a request may be (then the whole patch is read):
        # one source pixel for HEST's whole-pixel cuts, 0 for a field given by the user
        self.field_tolerance_um = float(tolerance_um)

    @property
    def max_field_um(self) -> float:
        return self.stored_um

    def fingerprint(self, slide_id: str) -> str:
        """The embedding cache's identity of the slide's patches: the patch file (resolved path,
        size, mtime: the pixels are not read), the rows matched to the spots and the stored field."""
        rows = hashlib.sha256(np.ascontiguousarray(self.rows, dtype=np.int64).tobytes()).hexdigest()
        return f"h5-patches|{_file_identity(self.path)}|{self.dataset}|{rows}|{self.stored_um!r}"

    def __call__(self, slide_id: str, patch: PatchSpec, spots: np.ndarray | None = None) -> np.ndarray:
        """uint8 (n_spots or len(spots), size_px, size_px, 3)."""
        import h5py

        check_patch(patch, self.stored_um, str(self.path), getattr(self, "field_tolerance_um", 0.0))
        rows = self.rows if spots is None else self.rows[np.asarray(spots, dtype=np.int64)]
        out = np.empty((len(rows), patch.size_px, patch.size_px, 3), dtype=np.uint8)
        if len(rows) == 0:
            return out
        # h5py reads a point selection only for strictly increasing rows: read sorted, put back
        order = np.argsort(rows, kind="stable")
        uniq, inverse = np.unique(rows[order], return_inverse=True)
        with h5py.File(self.path, "r") as f:
            ds = f[self.dataset]
            lo, hi = int(uniq[0]), int(uniq[-1]) + 1
            if len(uniq) * 2 >= hi - lo:  # dense request: one slab read is far faster than points
                block = ds[lo:hi][uniq - lo]
            else:
                block = ds[uniq]
        for k, i in enumerate(order):
            out[i] = resample(block[inverse[k]], self.stored_um, patch)
        return out


def _file_identity(path: Path) -> str:
    """resolved path, size and mtime (ns): a rewritten file changes size or mtime."""
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


_FIX_IMAGE = "convert it to an 8-bit RGB image (e.g. the level-0 H&E as RGB TIFF, PNG or JPEG)"


def _plane_axes(path: Path, shape: tuple, axes: str) -> str:
    """The axes of a single image plane (size-1 axes dropped): 'YX', 'YXS' or 'SYX'; anything
    else (a stack, time series, multiplex channels) -> UserError."""
    kept = "".join(a for a, n in zip(axes, shape) if n > 1 or a in "YX").replace("C", "S")
    sizes = {a: n for a, n in zip(axes.replace("C", "S"), shape)}
    if kept not in ("YX", "YXS", "SYX") or sizes.get("S", 3) > 4:
        raise UserError(f"{path} is a {'x'.join(map(str, shape))} ({axes}) image, not one RGB or grayscale plane; "
                        f"{_FIX_IMAGE}")
    return kept


def _check_dtype(path: Path, dtype) -> None:
    dtype = np.dtype(dtype)
    if dtype != np.uint8 and not (np.issubdtype(dtype, np.unsignedinteger) and dtype.itemsize <= 4):
        raise UserError(f"{path} has {dtype} pixels (only 8- or 16-bit unsigned integers are read); {_FIX_IMAGE}")


def to_rgb8(arr: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """uint8 (H, W, 3) from one plane with ``axes`` 'YX', 'YXS' or 'SYX' (``_plane_axes``): a
    planar (3, H, W) axis moved last, grayscale repeated, alpha dropped, 16-bit (or 32-bit
    unsigned) scaled to 8-bit by the dtype's range, never a wrapping cast."""
    _check_dtype(path, arr.dtype)
    if axes == "SYX":
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
    if arr.dtype != np.uint8:
        top = float(np.iinfo(arr.dtype).max)
        out = np.empty(arr.shape, dtype=np.uint8)
        for r in range(0, arr.shape[0], 1024):  # row blocks: no full-size float copy of a large slide
            out[r:r + 1024] = np.rint(arr[r:r + 1024].astype(np.float64) * (255.0 / top)).astype(np.uint8)
        arr = out
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def open_image_size(path: Path) -> tuple[int, int]:
    """(width, height) of level 0, without decoding pixels where the format allows. A layout
    the tile reader cannot turn into 8-bit RGB (a stack, float or signed pixels, > 4 channels,
    32-bit PIL modes) -> UserError now, not inside the first cell."""
    if _use_openslide(path):
        import openslide

        with openslide.OpenSlide(str(path)) as s:
            w, h = s.dimensions
            return int(w), int(h)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as t:
            level = t.series[0].levels[0]
            shape, axes = tuple(level.shape), level.axes
            _plane_axes(path, shape, axes)
            _check_dtype(path, level.dtype)
            return int(shape[axes.index("X")]), int(shape[axes.index("Y")])
    from PIL import Image

    # the header only (no pixels are decoded here): the size is bounded when the slide is read
    with pil_pixel_limit(None), Image.open(path) as im:
        if im.mode in ("I", "F"):
            raise UserError(f"{path} is a 32-bit ({im.mode}) image; {_FIX_IMAGE}")
        return im.size


def embedded_pixel_size(path: Path) -> float | None:
    """um/px recorded in the image file (OpenSlide mpp, or TIFF resolution in cm/inch), else None."""
    try:
        if _use_openslide(path):
            import openslide

            with openslide.OpenSlide(str(path)) as s:
                v = s.properties.get(openslide.PROPERTY_NAME_MPP_X)
                return float(v) if v else None
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as t:
                page = cast("tifffile.TiffPage", t.pages[0])  # a file's first page is never a frame
                unit = page.tags.get("ResolutionUnit")
                xres = page.tags.get("XResolution")
                if unit is None or xres is None:
                    return None
                num, den = xres.value
                per_unit = num / den if den else 0
                um = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
                return um / per_unit if um and per_unit > 0 else None
    except Exception:  # an unreadable tag means "not embedded", never a crash
        return None
    return None  # PNG/JPEG dpi are screen hints, not scanner resolution


# PIL's own default (about 89 Mpx): a slide image below it is never refused
PIL_DEFAULT_MAX_PIXELS = 89_478_485
# how much larger (in area) than its spots' extent plus a border an image may be: 4x each way
SLIDE_AREA_MARGIN = 16.0
# the border around the spots' extent, um: tissue and slide beyond the outermost spots
SLIDE_BORDER_UM = 2000.0
_PIL_LIMIT_LOCK = threading.RLock()


def slide_pixel_limit(coords: np.ndarray, um_per_px: float) -> int:
    """The most pixels an image whose spot centres are ``coords`` (its pixels, x then y) at
    ``um_per_px`` is expected to have: the spots' extent from the image origin plus a 2 mm border
    each way, times 16 in area, and never below PIL's default limit."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    coords = coords[np.isfinite(coords).all(axis=1)]
    far = np.maximum(coords.max(axis=0), 0.0) if len(coords) else np.zeros(2)
    border = SLIDE_BORDER_UM / um_per_px if um_per_px > 0 and np.isfinite(um_per_px) else 0.0
    expected = float(far[0] + border) * float(far[1] + border)
    return int(max(PIL_DEFAULT_MAX_PIXELS, SLIDE_AREA_MARGIN * expected))


@contextlib.contextmanager
def pil_pixel_limit(limit: int | None):
    """``PIL.Image.MAX_IMAGE_PIXELS`` set to ``limit`` inside the block, the previous value back
    after it (never switched off for the whole process). Threads take turns (the limit is global)."""
    from PIL import Image

    with _PIL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def open_bounded(path: Path, limit: int):
    """``PIL.Image.open(path)`` for an image of at most ``limit`` pixels; a larger one (a
    decompression bomb, or not the image of these spots) -> UserError naming it, before any pixel
    is decoded."""
    from PIL import Image

    fix = (f"at most {limit:,} px are read for this slide (its spots' extent, with margin); check that the image "
           "belongs to these spot coordinates and pixel size, or crop it to the capture area")
    try:
        with warnings.catch_warnings():  # between the limit and twice it PIL only warns: refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise UserError(f"{path}: the image is larger than expected; {fix}") from None
    w, h = im.size
    if w * h > limit:
        im.close()
        raise UserError(f"{path}: the image is {w} x {h} = {w * h:,} px; {fix}")
    return im


def _use_openslide(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".bif"):
        return True
    if suffix in (".tif", ".tiff"):
        try:
            import tifffile

            with tifffile.TiffFile(path) as t:
                return len(t.series[0].levels) > 1
        except Exception:
            return False
    return False


_IMAGE_MEMO: dict[tuple[str, int, int], np.ndarray] = {}


class ImageTileReader:
    """Cuts spot patches from one full-resolution image.

    ``coords`` (n_spots, 2) are spot centres in the pixels of the image as read, x then y, and
    ``um_per_px`` the image's pixel size. Pyramidal files are read region by region through
    OpenSlide; a flat TIFF/PNG/JPEG is decoded once per process (memoised by path, size, mtime).
    """

    max_field_um = None

    def __init__(self, path: Path, coords: np.ndarray, um_per_px: float):
        self.path = Path(path)
        self.coords = np.asarray(coords, dtype=np.float64)
        self.um_per_px = float(um_per_px)

    def fingerprint(self, slide_id: str) -> str:
        """The embedding cache's identity of the slide's patches: the image file (resolved path,
        size, mtime), the spot centres in its pixels and its pixel size."""
        coords = hashlib.sha256(np.ascontiguousarray(self.coords, dtype=np.float64).tobytes()).hexdigest()
        return f"image|{_file_identity(self.path)}|{coords}|{self.um_per_px!r}"

    def __call__(self, slide_id: str, patch: PatchSpec, spots: np.ndarray | None = None) -> np.ndarray:
        check_patch(patch, None, str(self.path))
        idx = np.arange(len(self.coords)) if spots is None else np.asarray(spots, dtype=np.int64)
        out = np.empty((len(idx), patch.size_px, patch.size_px, 3), dtype=np.uint8)
        if len(idx) == 0:
            return out
        side = patch.size_um / self.um_per_px  # source pixels
        if _use_openslide(self.path):
            import openslide

            with openslide.OpenSlide(str(self.path)) as s:
                for k, i in enumerate(idx):
                    out[k] = self._cut(lambda x0, y0, n: np.asarray(
                        s.read_region((x0, y0), 0, (n, n)).convert("RGB")), self.coords[i], side, patch)
            return out
        img = self._whole()
        h, w = img.shape[:2]

        def window(x0: int, y0: int, n: int) -> np.ndarray:
            win = np.full((n, n, 3), BACKGROUND, dtype=np.uint8)
            xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + n, w), min(y0 + n, h)
            if xb > xa and yb > ya:
                win[ya - y0:yb - y0, xa - x0:xb - x0] = img[ya:yb, xa:xb]
            return win

        for k, i in enumerate(idx):
            out[k] = self._cut(window, self.coords[i], side, patch)
        return out

    @staticmethod
    def _cut(read, center: np.ndarray, side: float, patch: PatchSpec) -> np.ndarray:
        from PIL import Image

        # an integer window with a margin, then a sub-pixel box: the patch is centred exactly
        n = int(np.ceil(side)) + 2
        x0, y0 = int(np.floor(center[0] - n / 2)), int(np.floor(center[1] - n / 2))
        win = read(x0, y0, n)
        bx, by = center[0] - side / 2 - x0, center[1] - side / 2 - y0
        return np.asarray(Image.fromarray(np.ascontiguousarray(win)).resize(
            (patch.size_px, patch.size_px), Image.Resampling.BICUBIC, box=(bx, by, bx + side, by + side)))

    def _whole(self) -> np.ndarray:
        st = self.path.stat()
        key = (str(self.path), st.st_size, st.st_mtime_ns)
        if key not in _IMAGE_MEMO:
            if self.path.suffix.lower() in (".tif", ".tiff"):
                import tifffile

                with tifffile.TiffFile(self.path) as t:
                    level = t.series[0].levels[0]
                    axes = _plane_axes(self.path, tuple(level.shape), level.axes)
                    arr = level.asarray().reshape([n for a, n in zip(level.axes, level.shape) if n > 1 or a in "YX"])
                arr = to_rgb8(arr, axes, self.path)
            else:
                # whole-slide images are legitimately huge, but not without bound: PIL's
                # decompression-bomb guard is raised to this slide's expected size, for this read only
                limit = slide_pixel_limit(self.coords, self.um_per_px)
                with pil_pixel_limit(limit), open_bounded(self.path, limit) as im:
                    if im.mode.startswith("I;16"):  # 16-bit grayscale PNG: scale, never clip or wrap
                        arr = to_rgb8(np.asarray(im).astype(np.uint16), "YX", self.path)
                    elif im.mode in ("I", "F"):
                        raise UserError(f"{self.path} is a 32-bit ({im.mode}) image; {_FIX_IMAGE}")
                    else:
                        arr = np.asarray(im.convert("RGB"))
            _IMAGE_MEMO.clear()  # one image at a time: slides are encoded one after another
            _IMAGE_MEMO[key] = np.ascontiguousarray(arr)
        return _IMAGE_MEMO[key]
