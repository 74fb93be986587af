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


def write_10x_h5(path: Path, counts: sp.csr_matrix, barcodes: Sequence[str], genes: Sequence[str],
                 gene_ids: Sequence[str]) -> None:
    """Cell Ranger / Space Ranger ``filtered_feature_bc_matrix.h5`` (genes x barcodes CSC)."""
    m = sp.csr_matrix(counts).tocsr()  # rows = barcodes: CSC of the transpose shares its arrays
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array([b.encode() for b in barcodes]))
        g.create_dataset("data", data=m.data.astype(np.int32))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([m.shape[1], m.shape[0]], dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("id", data=np.array([(i or n).encode() for i, n in zip(gene_ids, genes)]))
        ft.create_dataset("name", data=np.array([n.encode() for n in genes]))
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
