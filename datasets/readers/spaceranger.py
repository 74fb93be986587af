"""``spaceranger``: Space Ranger 1.x and >= 2.0 ``outs`` folders.

Spec: ``spaceranger:path=DIR[,image=FILE,id=NAME,patient=NAME,pixel_size=UM]`` for one run, or
``spaceranger:manifest=FILE`` (CSV or TOML; columns ``sample_id, patient, path`` and optional
``image, pixel_size``) for several runs as one dataset.

- Counts: ``filtered_feature_bc_matrix.h5`` (Gene Expression features only); repeated gene
  symbols are made unique (``GENE-1``) with a warning, or summed with ``duplicate_genes=sum``.
- Positions: ``spatial/tissue_positions.csv`` (>= 2.0, header) or ``tissue_positions_list.csv``
  (1.x, no header), full-resolution pixels; ``spatial/scalefactors_json.json`` gives the spot
  diameter.
- Image: the full-resolution H&E given by ``image=`` (tifffile/Pillow; OpenSlide for pyramidal
  TIFF and SVS). ``spatial/tissue_hires_image.png`` or ``tissue_lowres_image.png`` may be given
  too: positions are then scaled by the matching scale factor (low resolution: smoke tests
  only). Without an image the dataset serves counts and coordinates only.
- Pixel size: ``pixel_size=`` > the image's resolution tags (full-resolution image only) >
  estimated from the spot spacing (Visium: 100 um centre to centre) > error.
- Image-only mode (``flag-bench predict``): needs the positions file (and ``image=`` for a
  method that reads images; scale factors for a low-/high-resolution PNG and the spot diameter);
  the count matrix is neither read nor needed. The spots are those the positions file marks
  ``in_tissue = 1``, in its order.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp

from flag_bench.datasets.base import SpatialDataset, no_counts
from flag_bench.datasets.readers.build import (SlidePart, as_count_matrix, check_duplicate_genes, check_spots,
                                               file_key, finish_dataset, resolve_duplicate_genes)
from flag_bench.datasets.readers.hest import check_keys
from flag_bench.datasets.readers.images import ImageTileReader, embedded_pixel_size, open_image_size
from flag_bench.datasets.readers.manifest import read_manifest
from flag_bench.datasets.readers.validate import (PITCH_UM, check_coords_inside, need_dir, need_file, read_json,
                                                  resolve_pixel_size)
from flag_bench.errors import UserError

NAME = "spaceranger"
KEYS = ("path", "image", "id", "patient", "pixel_size", "manifest", "duplicate_genes")
_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")


def _decode(a, what: str, spec: str) -> np.ndarray:
    out = []
    for i, v in enumerate(np.asarray(a).reshape(-1)):
        if isinstance(v, bytes):
            try:
                v = v.decode()
            except UnicodeDecodeError:
                raise UserError(f"{spec}: {what} row {i} ({bytes(v)!r}) is not UTF-8 text; re-export the matrix with UTF-8 "
                                "names (Space Ranger writes UTF-8)") from None
        out.append(str(v))
    return np.array(out, dtype=object).astype(str)


def read_10x_h5(path: Path, spec: str, duplicate_genes: Any = None
                ) -> tuple[sp.csr_matrix, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """(counts CSR (barcodes, genes) int32, barcodes, gene names, gene ids) of a 10x HDF5 matrix.

    Repeated gene symbols (10x keeps both copies) are made unique the AnnData way with a warning,
    or summed with ``duplicate_genes=sum``; a repeated barcode, or counts that are not raw
    (NaN, inf, negative, non-integer, > int32) -> UserError."""
    try:
        with h5py.File(path, "r") as f:
            g = f["matrix"]
            n_genes, n_bc = (int(v) for v in g["shape"][()])
            # 10x stores (genes, barcodes) CSC: the same arrays as (barcodes, genes) CSR
            m = sp.csr_matrix((g["data"][()], g["indices"][()], g["indptr"][()]), shape=(n_bc, n_genes))
            barcodes = _decode(g["barcodes"][()], f"{path} matrix/barcodes", spec)
            ft = g["features"]
            names = _decode(ft["name"][()], f"{path} matrix/features/name", spec)
            ids = _decode(ft["id"][()], f"{path} matrix/features/id", spec)
            kind = (_decode(ft["feature_type"][()], f"{path} matrix/features/feature_type", spec)
                    if "feature_type" in ft else np.full(n_genes, "Gene Expression"))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{spec}: {path} is not a 10x feature-barcode HDF5 matrix ({type(exc).__name__}: {exc}); "
                        "give Space Ranger's filtered_feature_bc_matrix.h5") from None
    if len(set(barcodes)) != len(barcodes):
        dup = next(b for b, c in zip(*np.unique(barcodes, return_counts=True)) if c > 1)
        raise UserError(f"{spec}: {path} matrix/barcodes lists {len(barcodes) - len(set(barcodes))} barcode(s) twice "
                        f"(e.g. {dup}); give Space Ranger's matrix (one column per spot)")
    keep = np.flatnonzero(kind == "Gene Expression")
    m = as_count_matrix(sp.csr_matrix(m[:, keep]), spec, f"{path} matrix/data",
                        "give Space Ranger's filtered_feature_bc_matrix.h5 (raw UMI counts)")
    names, ids = names[keep], ids[keep]
    m, genes, gene_ids = resolve_duplicate_genes(m, names, ids, duplicate_genes, spec, f"{path} matrix/features/name")
    return m, barcodes, genes, gene_ids


def read_positions(spatial: Path, spec: str) -> tuple[dict[str, tuple[float, float]], Path]:
    """barcode -> (x, y) full-resolution pixels, from either positions file."""
    pos, _, path = read_positions_table(spatial, spec)
    return pos, path


def read_positions_table(spatial: Path, spec: str) -> tuple[dict[str, tuple[float, float]], list[str], Path]:
    """(barcode -> (x, y) full-resolution pixels, the barcodes marked in_tissue = 1 in file
    order, the file read), from either positions file."""
    new, old = spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv"
    path = new if new.is_file() else old
    if not path.is_file():
        raise UserError(f"{spec}: {spatial} has neither tissue_positions.csv nor tissue_positions_list.csv; "
                        "copy the run's spatial/ folder from Space Ranger's outs/")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise UserError(f"{spec}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "re-save it as UTF-8 or copy Space Ranger's positions file") from None
    if rows and rows[0] and rows[0][0] == "barcode":
        head, rows = rows[0], rows[1:]
        missing = [c for c in _COLUMNS if c not in head]
        if missing:
            raise UserError(f"{spec}: {path} lacks column(s) {', '.join(missing)}; give Space Ranger's positions file")
        ix, iy = head.index("pxl_col_in_fullres"), head.index("pxl_row_in_fullres")
        it = head.index("in_tissue")
    else:
        ix, iy, it = 5, 4, 1
    out: dict[str, tuple[float, float]] = {}
    tissue: list[str] = []
    try:
        for r in rows:
            if r:
                if r[0] in out:
                    raise UserError(f"{spec}: {path} lists barcode {r[0]} twice; give Space Ranger's positions file "
                                    "(one row per spot)")
                out[r[0]] = (float(r[ix]), float(r[iy]))
                if not np.isfinite(out[r[0]]).all():
                    raise UserError(f"{spec}: {path} row {r!r} has a missing or infinite pixel position; "
                                    "give Space Ranger's positions file")
                if r[it].strip() == "1":
                    tissue.append(r[0])
    except (IndexError, ValueError):
        raise UserError(f"{spec}: {path} row {r!r} is not barcode,in_tissue,array_row,array_col,pxl_row,pxl_col; "
                        "give Space Ranger's positions file") from None
    return out, tissue, path


def _outs(path: Path) -> Path:
    return path / "outs" if (path / "outs" / "spatial").is_dir() and not (path / "spatial").is_dir() else path


def read_run(*, sid: str, patient: str, path: Path, image: str | None, pixel_size: Any, spec: str,
             duplicate_genes: Any = None, image_only: bool = False) -> SlidePart:
    outs = _outs(need_dir(path, spec, "Space Ranger folder", "give the run's outs/ folder"))
    genes: tuple[str, ...]
    gene_ids: tuple[str, ...]
    if image_only:  # no filtered matrix to say which spots: the positions file's tissue spots
        pos, tissue, pos_path = read_positions_table(outs / "spatial", spec)
        barcodes = np.array(tissue, dtype=str)
        check_spots(len(barcodes), spec, f"{pos_path} (in_tissue = 1)",
                    f"drop run {sid} from the dataset or give its positions file")
        counts, genes, gene_ids = no_counts(len(barcodes)), (), ()
    else:
        matrix = need_file(outs / "filtered_feature_bc_matrix.h5", spec, "count matrix",
                           "give the run's outs/ folder (it holds filtered_feature_bc_matrix.h5)")
        counts, barcodes, genes, gene_ids = read_10x_h5(matrix, spec, duplicate_genes)
        check_spots(len(barcodes), spec, str(matrix), f"drop run {sid} from the dataset or give its filtered matrix")
        pos, pos_path = read_positions(outs / "spatial", spec)
        missing = [b for b in barcodes if b not in pos]
        if missing:
            raise UserError(f"{spec}: {len(missing)} barcode(s) of {matrix} are not in {pos_path} (e.g. {missing[0]}); "
                            "the matrix and the spatial/ folder come from different runs")
    coords = np.array([pos[b] for b in barcodes], dtype=np.float64)
    sf_path = outs / "spatial" / "scalefactors_json.json"
    sf = read_json(sf_path, spec) if sf_path.is_file() else {}
    meta: dict[str, Any] = {"run": str(outs), "positions_file": str(pos_path)}
    embedded, detail, img_path, scale = None, "", None, 1.0
    if image:
        img_path = Path(image).expanduser()
        img_path = img_path if img_path.is_absolute() else outs / img_path
        need_file(img_path, spec, "image", "give image= the run's full-resolution H&E (path absolute or relative to outs/)")
        for res in ("hires", "lowres"):
            if img_path.name == f"tissue_{res}_image.png":
                key = f"tissue_{res}_scalef"
                if key not in sf:
                    raise UserError(f"{spec}: {sf_path} has no {key} for {img_path.name}; give the full-resolution image")
                scale = float(sf[key])
        if scale == 1.0:
            embedded = embedded_pixel_size(img_path)
            detail = f"resolution tags of {img_path.name}"
    # every array position of the positions file is the lattice (the matrix may keep a sparse subset)
    lattice = np.array(list(pos.values()), dtype=np.float64)
    um, source, how = resolve_pixel_size(given=pixel_size, embedded=embedded, coords=lattice, pitch_um=PITCH_UM["visium"],
                                         spec=spec, where=f"{outs}", detail_embedded=detail)
    diameter_px = sf.get("spot_diameter_fullres")
    diameter_um = float(diameter_px) * um if diameter_px else 55.0
    reader: ImageTileReader | None = None
    source_key: tuple = ()
    if img_path is not None:
        img_coords = coords * scale
        w, h = open_image_size(img_path)
        check_coords_inside(img_coords, (w, h), spec, str(pos_path), str(img_path))
        reader = ImageTileReader(img_path, img_coords, um / scale)
        source_key = (file_key(img_path), scale)
        meta.update(image_file=str(img_path), image_size=(w, h), image_scale=scale, image_source="image")
    else:
        meta["image_source"] = "none"
    meta.update(pixel_size_source=source, pixel_size_detail=how)
    return SlidePart(id=sid, patient=patient, counts=counts, barcodes=barcodes, coords=coords, genes=genes,
                     gene_ids=gene_ids, pixel_size_um=um, spot_diameter_um=diameter_um, tile_reader=reader,
                     meta=meta, source_key=source_key)


def load(*, image_only: bool = False, **params: Any) -> SpatialDataset:
    """``image_only``: positions (and image) only, no count matrix read (module docstring)."""
    spec = check_keys(NAME, params, KEYS, ())
    dup = check_duplicate_genes(params.get("duplicate_genes"), spec)
    if (params.get("path") is None) == (params.get("manifest") is None):
        raise UserError(f"{spec}: give either path=OUTS_DIR (one run) or manifest=FILE (several runs)")
    if params.get("manifest") is not None:
        extra = sorted(k for k in params if k not in ("manifest", "duplicate_genes"))
        if extra:
            raise UserError(f"{spec}: with manifest= put {', '.join(extra)} in the manifest's columns")
        rows = read_manifest(Path(str(params["manifest"])).expanduser(), spec, ("sample_id", "patient", "path"),
                             ("image", "pixel_size"), ("path", "image"))
        parts = [read_run(sid=r["sample_id"], patient=r["patient"], path=Path(r["path"]), image=r.get("image") or None,
                          pixel_size=r.get("pixel_size") or None, spec=spec, duplicate_genes=dup,
                          image_only=image_only) for r in rows]
        known = True
    else:
        path = Path(str(params["path"])).expanduser()
        sid = str(params.get("id") or (path.parent.name if path.name == "outs" else path.name))
        known = params.get("patient") is not None
        parts = [read_run(sid=sid, patient=str(params.get("patient") or sid), path=path,
                          image=None if params.get("image") is None else str(params["image"]),
                          pixel_size=params.get("pixel_size"), spec=spec, duplicate_genes=dup,
                          image_only=image_only)]
    return finish_dataset(parts, name=NAME, spec=spec, platform="Visium", organism="unknown",
                          corpora=(), patients_known=known, image_only=image_only,
                          meta={"patient_source": "given" if known else "unknown: each run is its own patient"})
