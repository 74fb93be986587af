"""One sample = an AnnData file + its patches (HEST ``patches/<id>.h5``) or a full-resolution
image. Shared by the ``hest:``, ``hest-bench:`` and ``h5ad:`` loaders.

Image-only mode (``build_part(image_only=True)``, for ``flag-bench predict``): the AnnData file
gives the spots (obs names and ``obsm['spatial']``, read without ``X``, which may be empty), or,
without one, the patch file does (its ``barcode`` and ``coords`` + half the patch width)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from flag_bench.datasets.base import no_counts
from flag_bench.datasets.readers.build import (SlidePart, as_count_matrix, check_spots, file_key,
                                               resolve_duplicate_genes)
from flag_bench.datasets.readers.images import (H5PatchReader, ImageTileReader, embedded_pixel_size,
                                                open_image_size)
from flag_bench.datasets.readers.validate import check_coords_inside, resolve_pixel_size
from flag_bench.errors import UserError


def _counts_source(adata, path: Path, spec: str, source: Any):
    """(matrix, var DataFrame, where, fix) of the counts the spec asks for: ``X`` (default),
    ``raw`` (``adata.raw.X``) or a layer name (``layers[NAME]``)."""
    layers = list(adata.layers.keys())
    alts = []
    if "counts" in layers:
        alts.append("counts=counts to read layers['counts']")
    if adata.raw is not None:
        alts.append("counts=raw to read .raw.X")
    alts += [f"counts={k} to read layers['{k}']" for k in layers if k != "counts"][:2]
    fix = ("give raw counts in X" + (f", or add {' or '.join(alts)} (present in this file)" if alts else
                                     " or layers['counts'] (and counts=counts in the spec)"))
    src = "X" if source in (None, "") else str(source)
    if src == "X":
        return adata.X, adata.var, f"{path} X", fix
    if src == "raw":
        if adata.raw is None:
            raise UserError(f"{spec}: counts=raw but {path} has no .raw; {fix}")
        return adata.raw.X, adata.raw.var, f"{path} raw.X", "give raw counts in .raw.X or another counts= source"
    if src not in adata.layers:
        raise UserError(f"{spec}: counts={src} but {path} has no layers['{src}'] (layers: {', '.join(layers) or 'none'}); "
                        "give counts=X, counts=raw or an existing layer name")
    return adata.layers[src], adata.var, f"{path} layers['{src}']", f"give raw counts in layers['{src}'] or another counts= source"


def read_adata(path: Path, spec: str, *, counts_source: Any = None, duplicate_genes: Any = None):
    """(anndata, counts CSR int32, barcodes, genes, gene_ids, coords (n, 2) px).

    ``counts_source``: ``X`` (default), ``raw`` or a layer name. Repeated gene names are made
    unique the AnnData way (or summed: ``duplicate_genes=sum``), with a warning."""
    adata = _open_adata(path, spec)
    coords = _coords(adata, path, spec)
    x, var, where, fix = _counts_source(adata, path, spec, counts_source)
    counts = as_count_matrix(x, spec, where, fix)
    barcodes = _barcodes(adata, path, spec)
    genes = tuple(str(g) for g in var.index)
    ids_col = next((c for c in ("gene_ids", "gene_id", "ensembl_id") if c in var.columns), None)
    gene_ids = tuple(str(v) for v in var[ids_col]) if ids_col else ("",) * len(genes)
    counts, genes, gene_ids = resolve_duplicate_genes(counts, genes, gene_ids, duplicate_genes, spec, f"{path} var_names")
    return adata, counts, barcodes, genes, gene_ids, coords


def read_spots(path: Path, spec: str) -> tuple[np.ndarray, np.ndarray]:
    """(barcodes, coords (n, 2) px) of an AnnData file, its ``X`` never read (image-only mode:
    it may be empty or absent)."""
    adata = _open_adata(path, spec, backed=True)
    try:
        return _barcodes(adata, path, spec), _coords(adata, path, spec)
    finally:
        adata.file.close()


def _open_adata(path: Path, spec: str, backed: bool = False):
    """The AnnData of ``path`` (``backed``: obs, var and obsm in memory, ``X`` left on disk)."""
    import anndata as ad

    try:
        with warnings.catch_warnings():  # repeated names: our own one-line warning says what was done
            warnings.filterwarnings("ignore", message=r".*names are not unique")
            return ad.read_h5ad(path, backed="r") if backed else ad.read_h5ad(path)
    except UnicodeDecodeError as exc:
        raise UserError(f"{spec}: {path} holds names that are not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "rewrite its obs/var names as UTF-8") from None
    except Exception as exc:  # a truncated or foreign file: say which and what to do
        raise UserError(f"{spec}: cannot read {path} as AnnData ({type(exc).__name__}); re-download or rewrite it") from None


def _coords(adata, path: Path, spec: str) -> np.ndarray:
    if "spatial" not in adata.obsm:
        raise UserError(f"{spec}: {path} has no obsm['spatial'] (spot centres in image pixels); add them or use the "
                        "loader of the original format")
    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise UserError(f"{spec}: {path} obsm['spatial'] has shape {coords.shape}; give (n_spots, 2) x, y pixels")
    coords = coords[:, :2]
    if not np.isfinite(coords).all():
        raise UserError(f"{spec}: {path} obsm['spatial'] has missing or infinite values; drop those spots")
    return coords


def _barcodes(adata, path: Path, spec: str) -> np.ndarray:
    barcodes = np.asarray(adata.obs_names).astype(str)
    if len(set(barcodes)) != len(barcodes):
        dup = next(b for b, c in zip(*np.unique(barcodes, return_counts=True)) if c > 1)
        raise UserError(f"{spec}: {path} has {len(barcodes) - len(set(barcodes))} duplicate obs names (barcodes, "
                        f"e.g. {dup}); make them unique (one row per spot)")
    return barcodes


def _h5_str(a, what: str, spec: str) -> np.ndarray:
    a = np.asarray(a).reshape(len(a), -1)[:, 0]
    out = []
    for i, v in enumerate(a):
        if isinstance(v, bytes):
            try:
                v = v.decode()
            except UnicodeDecodeError:
                raise UserError(f"{spec}: {what} row {i} ({bytes(v)!r}) is not UTF-8 text; rewrite the names as UTF-8") from None
        out.append(str(v))
    return np.array(out, dtype=object).astype(str)


def match_patches(h5: Path, barcodes: np.ndarray, spec: str, st_path: Path,
                  coords: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(keep: indices of spots with a patch, rows: their h5 rows, img attrs) by barcode.

    With ``coords`` (the spots' centres, pixels) and a ``coords`` dataset in the patch file
    (hestcore: top-left level-0 pixels), every matched patch must lie on its spot: a patch more
    than one patch width away means the two files use different pixel frames -> UserError."""
    import h5py

    try:
        with h5py.File(h5, "r") as f:
            if "img" not in f or "barcode" not in f:
                raise UserError(f"{spec}: {h5} lacks the 'img' or 'barcode' dataset of a HEST patch file; "
                                "re-download it or give the image with image=")
            img = f["img"]
            if img.ndim != 4 or img.shape[-1] != 3 or img.dtype != np.uint8 or img.shape[1] != img.shape[2]:
                raise UserError(f"{spec}: {h5} img is {img.dtype} {img.shape}, expected uint8 (N, S, S, 3) square RGB patches")
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in img.attrs.items()}
            attrs["stored_px"] = int(img.shape[1])
            patch_bc = _h5_str(f["barcode"][()], f"{h5} barcode", spec)
            if len(patch_bc) != img.shape[0]:
                raise UserError(f"{spec}: {h5} has {img.shape[0]} patches but {len(patch_bc)} barcodes; "
                                "re-write the patch file with one barcode per patch")
            pcoords = np.asarray(f["coords"][()], dtype=np.float64) if "coords" in f else None
    except OSError as exc:
        raise UserError(f"{spec}: cannot open {h5} as HDF5 ({exc}); re-download it") from None
    if len(set(patch_bc)) != len(patch_bc):
        raise UserError(f"{spec}: {h5} has duplicate barcodes; re-write the patch file with one patch per spot")
    pos = {b: i for i, b in enumerate(patch_bc)}
    spots = set(barcodes)
    unknown = [b for b in patch_bc if b not in spots]
    if unknown:
        raise UserError(
            f"{spec}: {len(unknown)} of {len(patch_bc)} patch barcodes in {h5} are not spots of {st_path} "
            f"(e.g. {unknown[0]}); the files belong to different samples: give the matching patches/<id>.h5"
        )
    keep = np.array([i for i, b in enumerate(barcodes) if b in pos], dtype=np.int64)
    rows = np.array([pos[barcodes[i]] for i in keep], dtype=np.int64)
    src = attrs.get("patch_size_src")
    if src is None and attrs.get("downsample") is not None:
        src = float(attrs["downsample"]) * attrs["stored_px"]
    if (coords is not None and pcoords is not None and src is not None and float(src) > 0 and len(keep)
            and pcoords.ndim == 2 and pcoords.shape == (len(patch_bc), 2)):
        centre = pcoords[rows] + float(src) / 2.0
        off = np.abs(centre - coords[keep]).max(axis=1)
        bad = ~(off <= float(src))  # NaN counts as bad
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(
                f"{spec}: {int(bad.sum())} of {len(keep)} patches in {h5} lie more than a patch width "
                f"({float(src):.0f} px) from their spot in {st_path} obsm['spatial'] (e.g. {barcodes[keep[i]]}: patch "
                f"centre {centre[i, 0]:.0f},{centre[i, 1]:.0f} vs spot {coords[keep[i], 0]:.0f},{coords[keep[i], 1]:.0f}); "
                "the coordinates and the patches use different images: give the matching files")
    return keep, rows, attrs


def spots_from_patches(h5: Path, spec: str, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """(barcodes, centres (n, 2) level-0 px) of a HEST patch file: ``coords`` are the patches'
    top-left corners, so a centre is ``coords + patch_size_src / 2`` (hestcore rounds the corner
    to a whole pixel: the centre is exact to half a pixel). For image-only mode without the
    sample's AnnData; a file without ``coords`` or a patch width -> UserError ending in ``fix``."""
    import h5py

    try:
        with h5py.File(h5, "r") as f:
            if "img" not in f or "barcode" not in f or "coords" not in f:
                raise UserError(f"{spec}: {h5} lacks the 'img', 'barcode' or 'coords' dataset of a HEST patch file, "
                                f"so its spots' positions are unknown; {fix}")
            img = f["img"]
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in img.attrs.items()}
            stored_px = int(img.shape[1]) if img.ndim == 4 else 0
            barcodes = _h5_str(f["barcode"][()], f"{h5} barcode", spec)
            corners = np.asarray(f["coords"][()], dtype=np.float64)
    except OSError as exc:
        raise UserError(f"{spec}: cannot open {h5} as HDF5 ({exc}); re-download it") from None
    src = attrs.get("patch_size_src")
    if src is None and attrs.get("downsample") is not None:
        src = float(attrs["downsample"]) * stored_px
    if src is None or not float(src) > 0:
        raise UserError(f"{spec}: {h5} img has no patch_size_src or downsample attribute, so the patch centres are "
                        f"unknown; {fix}")
    if corners.shape != (len(barcodes), 2) or not np.isfinite(corners).all():
        raise UserError(f"{spec}: {h5} coords has shape {corners.shape} for {len(barcodes)} barcodes (or missing "
                        f"values); {fix}")
    if len(set(barcodes)) != len(barcodes):
        raise UserError(f"{spec}: {h5} has duplicate barcodes; re-write the patch file with one patch per spot")
    return barcodes, corners + float(src) / 2.0


def stored_field_um(attrs: dict, pixel_size_um: float, given: Any, spec: str, h5: Path) -> tuple[float, str]:
    """Tissue width of one stored patch, micrometres, and how it was found.

    HEST cuts ``patch_size_src`` level-0 pixels around each spot and resamples them to
    ``patch_size_target``; level-0 pixels are the slide's pixel size, so the field is
    ``patch_size_src * pixel_size_um`` (or ``downsample * stored px`` source pixels).
    """
    if given is not None:
        v = float(given)
        if not np.isfinite(v) or v <= 0:
            raise UserError(f"{spec}: patch_um={given!r} must be a positive width in micrometres")
        return v, "given (patch_um=)"
    src = attrs.get("patch_size_src")
    if src is None and attrs.get("downsample") is not None:
        src = float(attrs["downsample"]) * attrs["stored_px"]
    if src is None or not float(src) > 0:
        raise UserError(f"{spec}: {h5} img has no patch_size_src or downsample attribute, so the patch width is "
                        "unknown; add patch_um=WIDTH_UM to the dataset spec")
    return float(src) * pixel_size_um, "patch_size_src x pixel size"


def build_part(*, sid: str, patient: str, st_path: Path | None, patches: Path | None, image: Path | None,
               spec: str, pixel_size: Any, embedded: float | None, embedded_detail: str, pitch_um: float | None,
               spot_diameter_um: float, patch_um: Any, meta: dict,
               recorded: tuple[float, str, str] | None = None, counts_source: Any = None,
               duplicate_genes: Any = None, image_only: bool = False) -> SlidePart:
    """A SlidePart from one AnnData file and its patch file or image. ``recorded`` = (um/px,
    source, detail) from the sample's metadata, used unless ``pixel_size`` is given.

    ``image_only``: no counts (``counts_source`` and ``duplicate_genes`` unused); the spots come
    from ``st_path`` without its ``X``, or, when ``st_path`` is None, from ``patches``."""
    genes: tuple[str, ...]
    gene_ids: tuple[str, ...]
    if image_only:
        if st_path is not None:
            barcodes, coords = read_spots(st_path, spec)
        elif patches is not None:
            barcodes, coords = spots_from_patches(patches, spec, f"give sample {sid}'s AnnData file (its obsm['spatial'])")
        else:
            raise UserError(f"{spec}: sample {sid} has neither an AnnData file nor a patch file, so its spots are "
                            "unknown; give one of them")
        counts, genes, gene_ids = no_counts(len(barcodes)), (), ()
    else:
        assert st_path is not None, "a sample with counts is read from its AnnData file"
        _, counts, barcodes, genes, gene_ids, coords = read_adata(st_path, spec, counts_source=counts_source,
                                                                  duplicate_genes=duplicate_genes)
    source = st_path if st_path is not None else patches
    assert source is not None  # image-only mode without either file was refused above
    check_spots(len(barcodes), spec, str(source), f"drop sample {sid} from the dataset or give its spots")
    dropped = 0
    if patches is not None:
        keep, rows, attrs = match_patches(patches, barcodes, spec, source, coords)
        if len(keep) == 0:
            raise UserError(f"{spec}: no spot of {source} has a patch in {patches}; give the matching patch file")
        dropped = len(barcodes) - len(keep)
        counts, barcodes, coords = counts[keep], barcodes[keep], coords[keep]
    if image is not None and embedded is None:
        emb = embedded_pixel_size(image)
        if emb is not None:
            embedded, embedded_detail = emb, f"resolution tags of {image.name}"
    if recorded is not None and pixel_size is None:
        um, how_found, detail = recorded
    else:
        um, how_found, detail = resolve_pixel_size(given=pixel_size, embedded=embedded, coords=coords,
                                                   pitch_um=pitch_um, spec=spec, where=f"sample {sid} ({source})",
                                                   detail_embedded=embedded_detail)
    meta = {**meta, "pixel_size_source": how_found, "pixel_size_detail": detail,
            "st_file": "" if st_path is None else str(st_path)}
    reader: H5PatchReader | ImageTileReader | None
    key: tuple
    if patches is not None:
        field_um, how = stored_field_um(attrs, um, patch_um, spec, patches)
        # HEST cuts round(field / um-per-px) whole source pixels: the field is exact only to half
        # a source pixel, so a request one source pixel wider is accepted (a given patch_um= is exact)
        tol = um if patch_um is None else 0.0
        reader = H5PatchReader(patches, rows, field_um, tolerance_um=tol)
        meta.update(patches_file=str(patches), patch_field_um=field_um, patch_field_source=how,
                    patch_field_tolerance_um=tol,
                    patch_px_stored=attrs["stored_px"], image_source="patches")
        key = (file_key(patches), rows.tobytes(), field_um)
    elif image is not None:
        w, h = open_image_size(image)
        check_coords_inside(coords, (w, h), spec, f"{source} obsm['spatial']", str(image))
        reader = ImageTileReader(image, coords, um)
        meta.update(image_file=str(image), image_size=(w, h), image_source="image")
        key = (file_key(image),)
    else:
        reader, key = None, ()
        meta.update(image_source="none")
    return SlidePart(id=sid, patient=patient, counts=counts, barcodes=barcodes, coords=coords, genes=genes,
                     gene_ids=gene_ids, pixel_size_um=um, spot_diameter_um=spot_diameter_um, tile_reader=reader,
                     meta=meta, source_key=key, dropped=dropped)
