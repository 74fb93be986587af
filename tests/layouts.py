"""Write her2st-mini (or any SpatialDataset with tiles) out in published layouts, for reader tests:
HEST-1k folders, HEST-Benchmark task folders and Space Ranger >= 2.0 outputs.

Used by tests/test_readers_*.py and benchmarks/bench_embed_stream.py; nothing here is imported by
the package.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import scipy.sparse as sp

from flag_bench.datasets.base import PatchSpec, SpatialDataset


def stored_patch(ds: SpatialDataset) -> PatchSpec:
    """The patch a dataset stores (her2st-mini: its JPEG field and pixels)."""
    return PatchSpec(float(ds.meta["patch_um"]), int(ds.meta["patch_px"]))


def write_patches_h5(path: Path, tiles: np.ndarray, barcodes: Sequence[str], coords: np.ndarray, *,
                     field_um: float, pixel_size_um: float, rows: np.ndarray | None = None) -> None:
    """A hestcore-style patch file: ``img`` (N, S, S, 3) uint8, ``barcode`` (N, 1) bytes,
    ``coords`` (N, 2) top-left level-0 pixels, attributes on ``img``. ``rows`` reorders/subsets."""
    rows = np.arange(len(tiles)) if rows is None else np.asarray(rows)
    px = tiles.shape[1]
    src = field_um / pixel_size_um
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        img = f.create_dataset("img", data=tiles[rows], chunks=(1, px, px, 3))
        img.attrs.update({"patch_size_target": px, "patch_size_src": src, "pixel_size": pixel_size_um,
                          "downsample": src / px})
        f.create_dataset("barcode", data=np.array([[str(barcodes[i]).encode()] for i in rows]))
        f.create_dataset("coords", data=np.round(coords[rows] - src / 2).astype(np.int64))


def write_hest(ds: SpatialDataset, root: Path, slide_ids: Sequence[str] | None = None, *, shuffle_seed: int | None = 0,
               drop_patches: int = 0, with_patient: bool = True, pixel_size_field: str = "pixel_size_um_estimated",
               title: str = "her2st") -> Path:
    """HEST-1k layout under ``root``: st/<id>.h5ad, patches/<id>.h5 (rows shuffled, the last
    ``drop_patches`` spots without a patch), metadata/<id>.json."""
    root = Path(root)
    for d in ("st", "patches", "metadata"):
        (root / d).mkdir(parents=True, exist_ok=True)
    patch = stored_patch(ds)
    rng = np.random.default_rng(shuffle_seed if shuffle_seed is not None else 0)
    for sid in slide_ids or ds.slide_ids:
        s = ds.slide(sid)
        adata = ds.to_anndata(sid)
        del adata.uns["flag_bench"]  # a HEST file carries no flag-bench metadata
        adata.write_h5ad(root / "st" / f"{sid}.h5ad")
        tiles = s.tiles(patch)
        keep = np.arange(s.n_spots - drop_patches)
        rows = rng.permutation(keep) if shuffle_seed is not None else keep
        write_patches_h5(root / "patches" / f"{sid}.h5", tiles, s.barcodes, s.coords, field_um=patch.size_um,
                         pixel_size_um=s.pixel_size_um, rows=rows)
        meta = {"st_technology": "Spatial Transcriptomics", "organ": "Breast", "species": "Homo sapiens",
                "dataset_title": title, pixel_size_field: s.pixel_size_um, "spot_diameter": s.spot_diameter_um,
                "inter_spot_dist": 200.0, "license": "CC BY 4.0"}
        if with_patient:
            meta["patient"] = s.patient
        (root / "metadata" / f"{sid}.json").write_text(json.dumps(meta))
    return root


def write_hest_bench(ds: SpatialDataset, task_dir: Path, folds: Sequence[tuple[Sequence[str], Sequence[str]]],
                     genes: Sequence[str] = ()) -> Path:
    """HEST-Benchmark task folder: adata/, patches/, splits/train_k.csv + test_k.csv,
    var_50genes.json (``genes``)."""
    task_dir = Path(task_dir)
    ids = sorted({s for tr, te in folds for s in (*tr, *te)})
    tmp = task_dir / "_hest"
    write_hest(ds, tmp, ids)
    (task_dir / "adata").mkdir(parents=True, exist_ok=True)
    (task_dir / "patches").mkdir(parents=True, exist_ok=True)
    for sid in ids:
        (tmp / "st" / f"{sid}.h5ad").rename(task_dir / "adata" / f"{sid}.h5ad")
        (tmp / "patches" / f"{sid}.h5").rename(task_dir / "patches" / f"{sid}.h5")
    for f in (tmp / "metadata").iterdir():
        f.unlink()
    for d in ("metadata", "st", "patches", ""):
        (tmp / d).rmdir()
    (task_dir / "splits").mkdir(exist_ok=True)
    for k, (tr, te) in enumerate(folds):
        for kind, sids in (("train", tr), ("test", te)):
            with open(task_dir / "splits" / f"{kind}_{k}.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["sample_id", "patches_path", "expr_path"])
                for s in sids:
                    w.writerow([s, f"patches/{s}.h5", f"adata/{s}.h5ad"])
    (task_dir / "var_50genes.json").write_text(json.dumps({"genes": list(genes)}))
    return task_dir


def _bytes(v) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


def write_10x_h5(path: Path, counts: sp.csr_matrix, barcodes: Sequence[str], genes: Sequence[str],
                 gene_ids: Sequence[str], data_dtype=np.int32) -> None:
    """Cell Ranger / Space Ranger ``filtered_feature_bc_matrix.h5`` (genes x barcodes CSC).
    ``data_dtype`` (default int32, as Space Ranger) may be float to write non-count values;
    names may be given as bytes (e.g. not UTF-8)."""
    m = sp.csr_matrix(counts).tocsr()  # rows = barcodes: CSC of the transpose shares its arrays
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array([_bytes(b) for b in barcodes]))
        g.create_dataset("data", data=m.data.astype(data_dtype))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([m.shape[1], m.shape[0]], dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("id", data=np.array([_bytes(i or n) for i, n in zip(gene_ids, genes)]))
        ft.create_dataset("name", data=np.array([_bytes(n) for n in genes]))
        ft.create_dataset("feature_type", data=np.array([b"Gene Expression"] * len(genes)))
        ft.create_dataset("genome", data=np.array([b"GRCh38"] * len(genes)))


def write_spaceranger2(ds: SpatialDataset, sid: str, out: Path, *, scale: float = 4.0, header: bool = True) -> Path:
    """A Space Ranger >= 2.0 ``outs`` folder for one slide, with a full-resolution TIFF image.

    The image is composed from the slide's stored patches on a white canvas at ``scale`` x the
    slide's pixel size (a downscaled "full resolution", written with its resolution tags) so the
    folder stays small; positions are in that image's pixels.
    """
    import tifffile

    s = ds.slide(sid)
    um = s.pixel_size_um * scale
    coords = s.coords / scale
    patch = stored_patch(ds)
    tile_px = max(2, int(round(patch.size_um / um)))
    tiles = s.tiles(PatchSpec(patch.size_um, tile_px))
    w = int(coords[:, 0].max() + tile_px + 2)
    h = int(coords[:, 1].max() + tile_px + 2)
    canvas = np.full((h, w, 3), 255, dtype=np.uint8)
    for (x, y), t in zip(coords, tiles):
        x0, y0 = int(round(x - tile_px / 2)), int(round(y - tile_px / 2))
        xa, ya = max(x0, 0), max(y0, 0)
        canvas[ya:y0 + tile_px, xa:x0 + tile_px] = t[ya - y0:, xa - x0:]
    out = Path(out)
    (out / "spatial").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out / "image.tif", canvas, resolution=(1e4 / um, 1e4 / um), resolutionunit="CENTIMETER")
    write_10x_h5(out / "filtered_feature_bc_matrix.h5", s.counts, list(s.barcodes), list(ds.genes), list(ds.gene_ids))
    arr = np.asarray(s.meta.get("array_xy", np.zeros((s.n_spots, 2))), dtype=np.int64)
    name = "tissue_positions.csv" if header else "tissue_positions_list.csv"
    with open(out / "spatial" / name, "w", newline="") as fh:
        wr = csv.writer(fh)
        if header:
            wr.writerow(["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"])
        for b, (ax, ay), (x, y) in zip(s.barcodes, arr, coords):
            wr.writerow([b, 1, int(ay), int(ax), f"{y:.3f}", f"{x:.3f}"])
    (out / "spatial" / "scalefactors_json.json").write_text(json.dumps({
        "spot_diameter_fullres": s.spot_diameter_um / um, "tissue_hires_scalef": 0.25, "tissue_lowres_scalef": 0.05,
        "fiducial_diameter_fullres": 1.6 * s.spot_diameter_um / um}))
    return out


# -- small synthetic slides written in every layout, from plain arrays (bad-input corpus, HEST cuts)
def synthetic_slide(nx: int = 4, ny: int = 3, n_genes: int = 25, *, um_per_px: float = 2.0, pitch_um: float = 100.0,
                    seed: int = 0, margin_um: float = 120.0) -> dict:
    """A square spot lattice (``pitch_um`` apart) on a textured RGB image: ``counts`` (spots,
    genes) int64, ``barcodes``, ``genes``, ``gene_ids``, ``coords`` (x, y image pixels),
    ``image`` (H, W, 3) uint8, ``um_per_px``, ``array_xy`` (lattice positions)."""
    rng = np.random.default_rng(seed)
    step = pitch_um / um_per_px
    off = margin_um / um_per_px
    ax, ay = np.meshgrid(np.arange(nx), np.arange(ny))
    array_xy = np.stack([ax.ravel(), ay.ravel()], axis=1)
    coords = off + array_xy * step
    w, h = int(np.ceil(2 * off + (nx - 1) * step)), int(np.ceil(2 * off + (ny - 1) * step))
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([(xx * 3 + yy) % 256, (yy * 5 + 40) % 256, (xx * yy) % 256], axis=2).astype(np.uint8)
    image = np.clip(image.astype(np.int16) + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
    n = len(coords)
    return {"counts": rng.poisson(3.0, size=(n, n_genes)).astype(np.int64),
            "barcodes": [f"AC{i:04d}-1" for i in range(n)], "genes": [f"G{j}" for j in range(n_genes)],
            "gene_ids": [f"ENSG{j:011d}" for j in range(n_genes)], "coords": coords.astype(np.float64),
            "image": image, "um_per_px": float(um_per_px), "array_xy": array_xy}


def write_h5ad_arrays(path: Path, x, barcodes: Sequence[str], genes: Sequence[str], coords: np.ndarray, *,
                      gene_ids: Sequence[str] | None = None, layers: dict | None = None, raw_x=None) -> Path:
    """An AnnData file: ``X`` as given (any values), obs names ``barcodes``, var names ``genes``
    (repeats kept), ``obsm['spatial']`` = ``coords``; optional layers and ``.raw``."""
    import warnings

    import anndata as ad
    import pandas as pd

    var = pd.DataFrame(index=pd.Index([str(g) for g in genes]))
    if gene_ids is not None:
        var["gene_ids"] = [str(g) for g in gene_ids]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata warns about the repeated names a test writes on purpose
        a = ad.AnnData(X=np.asarray(x), obs=pd.DataFrame(index=pd.Index([str(b) for b in barcodes])), var=var)
        a.obsm["spatial"] = np.asarray(coords, dtype=np.float64).reshape(len(barcodes), 2)
        for k, v in (layers or {}).items():
            a.layers[k] = np.asarray(v)
        if raw_x is not None:
            a.raw = ad.AnnData(X=np.asarray(raw_x), obs=a.obs.copy(), var=var.copy())
        path.parent.mkdir(parents=True, exist_ok=True)
        a.write_h5ad(path)
    return path


def hest_cut_patches(image: np.ndarray, coords: np.ndarray, um_per_px: float, *, target_um: float = 112.0,
                     target_px: int = 224) -> tuple[np.ndarray, int, np.ndarray]:
    """Patches cut the way hestcore cuts them: ``round(target_um / um_per_px)`` whole source
    pixels around each spot (top-left ``round(centre - src / 2)``, white outside the image),
    resized to ``target_px``. Returns (tiles (N, px, px, 3) uint8, src, top-left coords)."""
    from PIL import Image

    src = int(round(target_um / um_per_px))
    h, w = image.shape[:2]
    tops = np.round(np.asarray(coords) - src / 2).astype(np.int64)
    tiles = np.empty((len(tops), target_px, target_px, 3), dtype=np.uint8)
    for k, (x0, y0) in enumerate(tops):
        win = np.full((src, src, 3), 255, dtype=np.uint8)
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + src, w), min(y0 + src, h)
        if xb > xa and yb > ya:
            win[ya - y0:yb - y0, xa - x0:xb - x0] = image[ya:yb, xa:xb]
        tiles[k] = np.asarray(Image.fromarray(win).resize((target_px, target_px), Image.Resampling.BILINEAR))
    return tiles, src, tops


def write_hest_cut(root: Path, sid: str, slide: dict, *, patient: str | None = None, target_um: float = 112.0,
                   target_px: int = 224, technology: str = "Visium", x=None, patch_coords: np.ndarray | None = None,
                   barcodes: Sequence[str] | None = None, genes: Sequence[str] | None = None,
                   st_coords: np.ndarray | None = None) -> Path:
    """One HEST-1k sample from a ``synthetic_slide``: st/<sid>.h5ad, patches/<sid>.h5 cut as
    hestcore cuts them (integer ``patch_size_src``, ``coords`` top-left level-0 pixels) and
    metadata/<sid>.json with ``pixel_size_um_estimated``. ``x``, ``barcodes``, ``genes`` and
    ``st_coords`` replace what the h5ad holds (bad-input tests); ``patch_coords`` the centres the
    patches are cut at."""
    root = Path(root)
    bcs = list(slide["barcodes"]) if barcodes is None else list(barcodes)
    write_h5ad_arrays(root / "st" / f"{sid}.h5ad", slide["counts"] if x is None else x, bcs,
                      slide["genes"] if genes is None else genes,
                      slide["coords"] if st_coords is None else st_coords, gene_ids=slide["gene_ids"] if genes is None
                      else None)
    centres = slide["coords"] if patch_coords is None else patch_coords
    tiles, src, tops = hest_cut_patches(slide["image"], centres, slide["um_per_px"], target_um=target_um,
                                        target_px=target_px)
    (root / "patches").mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "patches" / f"{sid}.h5", "w") as f:
        img = f.create_dataset("img", data=tiles)
        img.attrs.update({"patch_size_target": target_px, "patch_size_src": src, "pixel_size": slide["um_per_px"],
                          "downsample": src / target_px})
        f.create_dataset("barcode", data=np.array([[str(b).encode()] for b in slide["barcodes"]]).reshape(-1, 1))
        f.create_dataset("coords", data=tops.reshape(-1, 2))
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "metadata" / f"{sid}.json").write_text(json.dumps({
        "st_technology": technology, "organ": "Breast", "species": "Homo sapiens", "dataset_title": "synthetic",
        "pixel_size_um_estimated": slide["um_per_px"], "spot_diameter": 55.0, "inter_spot_dist": 100.0,
        "patient": patient or sid}))
    return root


def write_spaceranger_arrays(out: Path, slide: dict, *, x=None, barcodes: Sequence[str] | None = None,
                             genes: Sequence[str] | None = None, data_dtype=np.int32,
                             positions: np.ndarray | None = None, image: np.ndarray | None = None) -> Path:
    """A Space Ranger >= 2.0 ``outs`` folder from a ``synthetic_slide`` (image.tif with resolution
    tags, filtered_feature_bc_matrix.h5, spatial/tissue_positions.csv, scalefactors)."""
    import tifffile

    out = Path(out)
    (out / "spatial").mkdir(parents=True, exist_ok=True)
    um = slide["um_per_px"]
    img = slide["image"] if image is None else image
    tifffile.imwrite(out / "image.tif", img, photometric="rgb" if img.ndim == 3 and img.shape[-1] == 3 else None,
                     resolution=(1e4 / um, 1e4 / um), resolutionunit="CENTIMETER")
    bcs = list(slide["barcodes"]) if barcodes is None else list(barcodes)
    gs = list(slide["genes"]) if genes is None else list(genes)
    write_10x_h5(out / "filtered_feature_bc_matrix.h5", sp.csr_matrix(slide["counts"] if x is None else x), bcs, gs,
                 list(slide["gene_ids"]) if genes is None else list(gs), data_dtype=data_dtype)
    pos = slide["coords"] if positions is None else positions
    with open(out / "spatial" / "tissue_positions.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"])
        for b, (ax, ay), (px, py) in zip(slide["barcodes"], slide["array_xy"], pos):
            wr.writerow([b, 1, int(ay), int(ax), f"{py:.3f}", f"{px:.3f}"])
    (out / "spatial" / "scalefactors_json.json").write_text(json.dumps({
        "spot_diameter_fullres": 55.0 / um, "tissue_hires_scalef": 0.25, "tissue_lowres_scalef": 0.05}))
    return out


def write_st_arrays(root: Path, sid: str, slide: dict, *, table_text: str | None = None,
                    pixel_xy: np.ndarray | None = None, selected: Sequence[int] | None = None,
                    array_xy: np.ndarray | None = None) -> Path:
    """A legacy ST section from a ``synthetic_slide``: <sid>.tsv (spots x genes, rows ``<x>x<y>``),
    alignment_table_<sid>.tsv (x y pixel_x pixel_y selected) and <sid>.png. ``table_text``
    replaces the count table (written as given, bytes or str)."""
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    arr = slide["array_xy"] if array_xy is None else np.asarray(array_xy)
    if table_text is None:
        lines = ["\t" + "\t".join(slide["genes"])]
        for (ax, ay), row in zip(slide["array_xy"], slide["counts"]):
            lines.append(f"{ax}x{ay}\t" + "\t".join(str(v) for v in row))
        table_text = "\n".join(lines) + "\n"
    data = table_text if isinstance(table_text, bytes) else table_text.encode()
    (root / f"{sid}.tsv").write_bytes(data)
    pxy = slide["coords"] if pixel_xy is None else pixel_xy
    sel = [1] * len(arr) if selected is None else list(selected)
    rows = ["x\ty\tpixel_x\tpixel_y\tselected"] + [f"{ax}\t{ay}\t{px:.2f}\t{py:.2f}\t{s}"
                                                   for (ax, ay), (px, py), s in zip(arr, pxy, sel)]
    (root / f"alignment_table_{sid}.tsv").write_text("\n".join(rows) + "\n")
    Image.fromarray(slide["image"]).save(root / f"{sid}.png")
    return root


# a tiny mean+ridge grid through the CLI: what every reader test runs on the dataset it wrote
RUN = ["run", "--methods", "mean,ridge", "--preset", "tiny", "--encoder", "color-stats", "--device", "cpu",
       "--no-progress"]


def run_ok(results: Path, *args: str, genes: str = "20") -> list[dict]:
    """Run RUN + args into ``results``; the finished records (exit 0 and both methods asserted)."""
    from typer.testing import CliRunner

    from flag_bench.cli import app

    res = CliRunner().invoke(app, [*RUN, "--genes", genes, *args, "--results-dir", str(results)])
    assert res.exit_code == 0, res.output
    cells = [json.loads(p.read_text()) for p in results.glob("cells/*.json") if ".failed-" not in p.name]
    assert cells and {c["cell"]["method"] for c in cells} == {"mean", "ridge"}
    return cells
