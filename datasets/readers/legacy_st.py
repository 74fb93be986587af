"""``st``: legacy Spatial Transcriptomics sections (count matrix + spot/alignment table + image),
e.g. STUtility's mouse olfactory bulb (``../shared/data/mob_stutility``).

Spec: ``st:root=DIR[,manifest=FILE,gene_names=FILE,pitch_um=200,pixel_size=UM,duplicate_genes=unique]``.

- Sections are found in ``root`` as ``<id>.tsv[.gz]`` (spots x genes; rows named ``<x>x<y>``
  array positions), ``alignment_table_<id>.tsv`` or ``<id>_spots.tsv`` (columns ``x y pixel_x
  pixel_y`` and optional ``selected``), and ``<id>.jpg|.png|.tif``.
- A manifest (``manifest=`` or ``root/manifest.csv``; CSV or TOML; columns ``sample_id,
  patient`` and optional ``counts, spots, image, pixel_size``) names the patients; without one
  each section is its own patient.
- ``gene_names=``: a two-column TSV (id, symbol; header row) mapping column ids (version suffix
  stripped) to symbols; unmapped ids keep their id. Repeated names (two ids, one symbol) are
  made unique (``GENE-1``) with a warning, or summed with ``duplicate_genes=sum``.
- Spots: rows of the spot table with ``selected == 1`` joined to the count rows; a selected
  spot without counts is an error (the files do not belong together).
- Pixel size: ``pixel_size=`` > the image's resolution tags > estimated from the spot spacing
  with ``pitch_um`` (default 200 um, the ST array's centre-to-centre distance) > error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flag_bench.datasets.base import SpatialDataset
from flag_bench.datasets.readers.build import (SlidePart, as_count_matrix, check_duplicate_genes, check_spots,
                                               file_key, finish_dataset, resolve_duplicate_genes)
from flag_bench.datasets.readers.hest import check_keys
from flag_bench.datasets.readers.images import ImageTileReader, embedded_pixel_size, open_image_size
from flag_bench.datasets.readers.manifest import read_manifest
from flag_bench.datasets.readers.validate import (PITCH_UM, check_coords_inside, need_dir, need_file, positive_float,
                                                  resolve_pixel_size)
from flag_bench.errors import UserError

NAME = "st"
KEYS = ("root", "manifest", "gene_names", "pitch_um", "pixel_size", "duplicate_genes")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def _find(root: Path, sid: str, names: list[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _gene_map(path: Path | None, spec: str) -> dict[str, str]:
    if path is None:
        return {}
    need_file(path, spec, "gene name table", "give gene_names= a TSV with id and symbol columns")
    t = _read_tsv(path, spec, "a gene name table", "give gene_names= a TSV with id and symbol columns", dtype=str).dropna()
    if t.shape[1] < 2:
        raise UserError(f"{spec}: {path} needs two tab-separated columns (id, symbol); fix the file")
    return dict(zip(t.iloc[:, 0], t.iloc[:, 1]))


def _read_tsv(path: Path, spec: str, what: str, fix: str, **kw):
    """pandas.read_csv, every failure a one-line UserError naming the file."""
    import pandas as pd

    kw.setdefault("sep", "\t")
    try:
        return pd.read_csv(path, encoding="utf-8", **kw)
    except UnicodeDecodeError as exc:
        raise UserError(f"{spec}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from None
    except Exception as exc:
        raise UserError(f"{spec}: cannot read {path} as {what} ({type(exc).__name__}); {fix}") from None


def read_section(*, sid: str, patient: str, counts_path: Path, spots_path: Path, image: Path | None,
                 pixel_size: Any, pitch_um: float, names: dict[str, str], spec: str,
                 duplicate_genes: Any = None) -> SlidePart:
    table = _read_tsv(counts_path, spec, "a tab-separated count table", "give spots x genes counts with <x>x<y> row "
                      "names", index_col=0)
    # pandas renames a repeated header (G, G.1): read the header as written
    header = _read_tsv(counts_path, spec, "a tab-separated count table", "give spots x genes counts",
                       header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    n = table.shape[1]
    raw_cols = [str(c) for c in (header[1:] if len(header) == n + 1 else header if len(header) == n
                                 else table.columns)]
    spots = _read_tsv(spots_path, spec, "an ST spot/alignment table", "give x y pixel_x pixel_y [selected] columns",
                      sep=r"\s+|\t", engine="python")
    need = [c for c in ("x", "y", "pixel_x", "pixel_y") if c not in spots.columns]
    if need:
        raise UserError(f"{spec}: {spots_path} lacks column(s) {', '.join(need)}; give an ST spot/alignment table "
                        "(x y pixel_x pixel_y [selected])")
    try:
        num = spots[["x", "y", "pixel_x", "pixel_y"]].astype(np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{spec}: {spots_path} has non-numeric x, y, pixel_x or pixel_y values; give an ST spot/"
                        "alignment table") from None
    if not np.isfinite(num.to_numpy()).all():
        raise UserError(f"{spec}: {spots_path} has missing or infinite x, y, pixel_x or pixel_y values; "
                        "fill them in or drop those rows")
    # the whole array (selected or not) is the lattice the pixel size is estimated from
    lattice = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    if "selected" in spots.columns:
        spots = spots[spots["selected"] == 1]
    check_spots(len(spots), spec, f"{spots_path} (selected == 1)", f"select the spots under tissue or drop section {sid}")
    # array positions may be written as floats (10.0); the count rows use integers (10x10)
    keys = [f"{int(round(float(x)))}x{int(round(float(y)))}" for x, y in zip(spots["x"], spots["y"])]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise UserError(f"{spec}: {spots_path} selects array position {dup} twice; give one row per spot")
    index = [str(r) for r in table.index]
    if len(set(index)) != len(index):
        dup = next(k for k, c in zip(*np.unique(index, return_counts=True)) if c > 1)
        raise UserError(f"{spec}: {counts_path} has row {dup} twice (duplicate spot); give one row per spot")
    rows = {r: i for i, r in enumerate(index)}
    absent = [k for k in keys if k not in rows]
    if absent:
        raise UserError(f"{spec}: {len(absent)} selected spot(s) of {spots_path} have no row in {counts_path} "
                        f"(e.g. {absent[0]}); the files belong to different sections")
    nonnum = [c for c, t in zip(raw_cols, table.dtypes) if not np.issubdtype(t, np.number)]
    if nonnum:
        raise UserError(f"{spec}: {counts_path} column {nonnum[0]} holds non-numeric values, not raw counts; "
                        "give spots x genes raw counts")
    values = table.to_numpy(dtype=np.float64) if table.shape[1] else np.zeros((len(index), 0))
    counts = as_count_matrix(values[[rows[k] for k in keys]], spec, str(counts_path), "give spots x genes raw counts")
    ids: list[str] | tuple[str, ...] = raw_cols
    symbols = [names.get(c.split(".")[0], c) for c in ids]
    counts, genes, ids = resolve_duplicate_genes(counts, symbols, ids, duplicate_genes, spec,
                                                 f"{counts_path} columns" + (" (after gene_names=)" if names else ""))
    coords = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    embedded = embedded_pixel_size(image) if image is not None else None
    um, source, detail = resolve_pixel_size(given=pixel_size, embedded=embedded, coords=lattice, pitch_um=pitch_um,
                                            spec=spec, where=str(spots_path),
                                            detail_embedded=f"resolution tags of {image.name}" if image else "")
    meta: dict[str, Any] = {"counts_file": str(counts_path), "spots_file": str(spots_path),
                            "pixel_size_source": source, "pixel_size_detail": detail, "pitch_um": pitch_um}
    reader: ImageTileReader | None = None
    key: tuple = ()
    if image is not None:
        w, h = open_image_size(image)
        check_coords_inside(coords, (w, h), spec, str(spots_path), str(image))
        reader, key = ImageTileReader(image, coords, um), (file_key(image),)
        meta.update(image_file=str(image), image_size=(w, h), image_source="image")
    else:
        meta["image_source"] = "none"
    return SlidePart(id=sid, patient=patient, counts=counts, barcodes=np.array(keys), coords=coords,
                     genes=tuple(genes), gene_ids=tuple(ids), pixel_size_um=um, spot_diameter_um=pitch_um / 2,
                     tile_reader=reader, meta=meta, source_key=key)


def load(**params: Any) -> SpatialDataset:
    spec = check_keys(NAME, params, KEYS, ("root",))
    root = need_dir(Path(str(params["root"])).expanduser(), spec, "ST folder",
                    "give the folder holding <id>.tsv.gz, alignment_table_<id>.tsv and <id>.jpg")
    pitch = positive_float(params.get("pitch_um")) or PITCH_UM["st"]
    dup = check_duplicate_genes(params.get("duplicate_genes"), spec)
    names = _gene_map(Path(str(params["gene_names"])).expanduser() if params.get("gene_names") else None, spec)
    mpath = Path(str(params["manifest"])).expanduser() if params.get("manifest") else root / "manifest.csv"
    if params.get("manifest") or mpath.is_file():
        rows = read_manifest(mpath, spec, ("sample_id", "patient"), ("counts", "spots", "image", "pixel_size"),
                             ("counts", "spots", "image"))
        known = True
    else:
        stems = sorted({p.name.split(".")[0] for p in root.iterdir()
                        if p.name.endswith((".tsv", ".tsv.gz")) and not p.name.startswith("alignment_table_")
                        and not p.name.split(".")[0].endswith("_spots")})
        rows = [{"sample_id": s, "patient": s} for s in stems]
        known = False
    if not rows:
        raise UserError(f"{spec}: {root} holds no <id>.tsv[.gz] count table; give the folder of an ST dataset")
    parts = []
    for r in rows:
        sid = r["sample_id"]
        counts = Path(r["counts"]) if r.get("counts") else _find(root, sid, [f"{sid}.tsv.gz", f"{sid}.tsv"])
        if counts is None:
            raise UserError(f"{spec}: no count table {root}/{sid}.tsv[.gz]; add it or give its path in the manifest")
        need_file(counts, spec, "count table", "fix the path in the manifest")
        spots = Path(r["spots"]) if r.get("spots") else _find(root, sid, [f"alignment_table_{sid}.tsv", f"{sid}_spots.tsv"])
        if spots is None:
            raise UserError(f"{spec}: no spot table {root}/alignment_table_{sid}.tsv (or {sid}_spots.tsv); "
                            "add the section's spot/alignment table")
        need_file(spots, spec, "spot table", "fix the path in the manifest")
        image = Path(r["image"]) if r.get("image") else _find(root, sid, [sid + s for s in _IMAGE_SUFFIXES])
        if image is not None:
            need_file(image, spec, "image", "fix the path in the manifest")
        parts.append(read_section(sid=sid, patient=r["patient"], counts_path=counts, spots_path=spots, image=image,
                                  pixel_size=r.get("pixel_size") or params.get("pixel_size"), pitch_um=pitch,
                                  names=names, spec=spec, duplicate_genes=dup))
    organism = "mouse" if all(i.startswith("ENSMUSG") for i in parts[0].gene_ids[:20]) else "unknown"
    return finish_dataset(parts, name=NAME, spec=spec, platform="ST", organism=organism, corpora=(),
                          patients_known=known,
                          meta={"root": str(root), "patient_source": "manifest" if known else
                                "unknown: each section is its own patient"})
