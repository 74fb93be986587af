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
- Image-only mode (``flag-bench predict``): needs the spot/alignment table (its selected spots)
  and the image; the count table is neither read nor needed, so sections are found by their
  spot tables too (``alignment_table_<id>.tsv``, ``<id>_spots.tsv``). ``gene_names=`` and
  ``duplicate_genes=`` are unused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flag_bench.datasets.base import SpatialDataset, no_counts
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


def _join_counts(table, raw_cols: list[str], keys: list[str], counts_path: Path, spots_path: Path,
                 names: dict[str, str], spec: str, duplicate_genes: Any):
    """(counts CSR (len(keys), genes), gene symbols, gene ids): the count rows of the selected
    spots ``keys``, in their order; a selected spot without a row -> UserError."""
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
    return resolve_duplicate_genes(counts, symbols, ids, duplicate_genes, spec,
                                   f"{counts_path} columns" + (" (after gene_names=)" if names else ""))


def read_section(*, sid: str, patient: str, counts_path: Path | None, spots_path: Path, image: Path | None,
                 pixel_size: Any, pitch_um: float, names: dict[str, str], spec: str,
                 duplicate_genes: Any = None, image_only: bool = False) -> SlidePart:
    """One section; ``image_only``: the count table is not read (``counts_path`` may be None)."""
    if not image_only:
        assert counts_path is not None, "a section with counts has a count table"
        table = _read_tsv(counts_path, spec, "a tab-separated count table", "give spots x genes counts with <x>x<y> "
                          "row names", index_col=0)
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
    genes: tuple[str, ...]
    ids: tuple[str, ...]
    if image_only:
        counts, genes, ids = no_counts(len(keys)), (), ()
    else:
        assert counts_path is not None, "a section with counts has a count table"
        counts, genes, ids = _join_counts(table, raw_cols, keys, counts_path, spots_path, names, spec, duplicate_genes)
    coords = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    embedded = embedded_pixel_size(image) if image is not None else None
    um, source, detail = resolve_pixel_size(given=pixel_size, embedded=embedded, coords=lattice, pitch_um=pitch_um,
                                            spec=spec, where=str(spots_path),
                                            detail_embedded=f"resolution tags of {image.name}" if image else "")
    meta: dict[str, Any] = {"counts_file": "" if image_only else str(counts_path), "spots_file": str(spots_path),
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


def _stems(root: Path, image_only: bool) -> list[str]:
    """Section ids of ``root``: its count tables' (image-only mode: its spot tables' too)."""
    out = set()
    for p in root.iterdir():
        stem = p.name.split(".")[0]
        if p.name.endswith((".tsv", ".tsv.gz")) and not p.name.startswith("alignment_table_") \
                and not stem.endswith("_spots"):
            out.add(stem)
        elif image_only and p.name.endswith(".tsv"):
            if p.name.startswith("alignment_table_"):
                out.add(stem[len("alignment_table_"):])
            elif stem.endswith("_spots"):
                out.add(stem[:-len("_spots")])
    return sorted(out)


def load(*, image_only: bool = False, **params: Any) -> SpatialDataset:
    """``image_only``: spot tables and images only, no count table read (module docstring)."""
    spec = check_keys(NAME, params, KEYS, ("root",))
    root = need_dir(Path(str(params["root"])).expanduser(), spec, "ST folder",
                    "give the folder holding <id>.tsv.gz, alignment_table_<id>.tsv and <id>.jpg")
    pitch = positive_float(params.get("pitch_um")) or PITCH_UM["st"]
    dup = check_duplicate_genes(params.get("duplicate_genes"), spec)
    names = _gene_map(Path(str(params["gene_names"])).expanduser()
                      if params.get("gene_names") and not image_only else None, spec)
    mpath = Path(str(params["manifest"])).expanduser() if params.get("manifest") else root / "manifest.csv"
    if params.get("manifest") or mpath.is_file():
        rows = read_manifest(mpath, spec, ("sample_id", "patient"), ("counts", "spots", "image", "pixel_size"),
                             ("counts", "spots", "image"))
        known = True
    else:
        rows = [{"sample_id": s, "patient": s} for s in _stems(root, image_only)]
        known = False
    if not rows:
        what = "<id>.tsv[.gz] count table or spot table" if image_only else "<id>.tsv[.gz] count table"
        raise UserError(f"{spec}: {root} holds no {what}; give the folder of an ST dataset")
    parts = []
    for r in rows:
        sid = r["sample_id"]
        counts = Path(r["counts"]) if r.get("counts") else _find(root, sid, [f"{sid}.tsv.gz", f"{sid}.tsv"])
        if image_only:
            counts = None  # never read, so never required
        elif counts is None:
            raise UserError(f"{spec}: no count table {root}/{sid}.tsv[.gz]; add it or give its path in the manifest")
        else:
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
                                  names=names, spec=spec, duplicate_genes=dup, image_only=image_only))
    ids = parts[0].gene_ids[:20]
    organism = "mouse" if ids and all(i.startswith("ENSMUSG") for i in ids) else "unknown"
    return finish_dataset(parts, name=NAME, spec=spec, platform="ST", organism=organism, corpora=(),
                          patients_known=known, image_only=image_only,
                          meta={"root": str(root), "patient_source": "manifest" if known else
                                "unknown: each section is its own patient"})
