#!/usr/bin/env python
"""Build the embedded ``her2st-mini`` package data from the her2st release.

Reads the her2st folder (counts, spot files, the six full-resolution H&E JPEGs, the authors'
cluster labels) and the gene id maps, and writes ``datasets/data/her2st_mini.h5`` plus
``datasets/data/HER2ST_MINI_README.md``. Only this script reads the source folders; the
shipped loader (``flag_bench.datasets.her2st_mini``) reads nothing but the package data.

Usage::

    python scripts/build_her2st_mini.py [--her2st DIR] [--gene-resources DIR] [--out DIR]
                                        [--n-genes 3000] [--patch-px 160] [--jpeg-quality 90]

Layout of the HDF5 file (all datasets gzip'd)::

    attrs: name, licence, citation, source_repo, source_commit, builder_version,
           patch_um, patch_px, jpeg_quality, pool_rule, pool_sections
    genes (G,) str, gene_ids (G,) str ("" where no Ensembl id maps)
    slides/<S>/  attrs: patient, pixel_size_um, spot_diameter_um, image_file, image_w, image_h
        counts/data (nnz,) int32, counts/indices (nnz,) int32, counts/indptr (N+1,) int64
        barcodes (N,) str "{x}x{y}", array_xy (N,2) int32, coords (N,2) float64 (pixel_x, pixel_y)
        annotations (N,) int8 (authors' cluster label, -1 where missing)
        tiles (N,) vlen uint8: one JPEG per spot, patch_um of tissue at patch_px pixels
"""

from __future__ import annotations

import argparse
import io
import pickle
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image

from flag_bench.datasets.readers.images import open_bounded, pil_pixel_limit, slide_pixel_limit

# These JPEGs are ~92 megapixels, above PIL's default decompression-bomb limit: each is opened with
# a limit from its own spots' extent (pil_pixel_limit restores PIL's limit after it), never None.

BUILDER_VERSION = "1"
SOURCE_REPO = "https://github.com/almaan/her2st"
SOURCE_COMMIT = "85df7411b987a7dec3feff9718b869a7a82091ec"
LICENCE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
CITATION = (
    "Andersson A, Larsson L, Stenbeck L, et al. Spatial deconvolution of HER2-positive breast "
    "cancer delineates tumor-associated cell type interactions. Nat Commun 12, 6012 (2021). "
    "https://doi.org/10.1038/s41467-021-26271-2"
)

# The six sections with a full-resolution H&E in the release, and their JPEGs.
IMAGED = {
    "B4": ("B", "BT10737_D2_HE.jpg"),
    "C2": ("C", "5714_HE_BT_C2.jpg"),
    "C3": ("C", "5714_HE_BT_D1.jpg"),
    "C4": ("C", "5714_HE_BT_D2.jpg"),
    "C5": ("C", "5714_HE_BT_E1.jpg"),
    "C6": ("C", "5714_HE_BT_E2.jpg"),
}
# Counts-only sections from patients that share nobody with the benchmark sections (B, C):
# the candidate gene pool is ranked on these, so panel choice never sees a test slide.
POOL_PATIENTS = ("A", "D", "E", "F", "G", "H")

SPOT_PITCH_UM = 200.0  # legacy ST array: 200 um centre to centre
SPOT_DIAMETER_UM = 100.0
PATCH_UM = 112.0  # HEST-Benchmark field: 224 px at 0.5 um/px


def read_counts(her2st: Path, section: str) -> pd.DataFrame:
    df = pd.read_csv(her2st / "data" / "ST-cnts" / f"{section}.tsv.gz", sep="\t", index_col=0)
    # a few upstream tables repeat a symbol; summing keeps every UMI and makes columns unique
    if df.columns.has_duplicates:
        df = df.T.groupby(level=0, sort=False).sum().T
    return df


def pool_ranking(her2st: Path) -> tuple[pd.Series, list[str]]:
    """Mean over pool sections of each gene's per-section mean log1p(CPM); missing gene = 0.

    Each section is weighted equally (not each spot), so deep or large sections do not dominate,
    and CPM removes the depth differences between sections before averaging.
    """
    sections = sorted(
        p.name.split(".")[0]
        for p in (her2st / "data" / "ST-cnts").glob("*.tsv.gz")
        if p.name[0] in POOL_PATIENTS
    )
    per_section = []
    for s in sections:
        df = read_counts(her2st, s)
        x = df.to_numpy(dtype=np.float64)
        lib = np.maximum(x.sum(axis=1, keepdims=True), 1.0)
        per_section.append(pd.Series(np.log1p(x / lib * 1e6).mean(axis=0), index=df.columns))
    table = pd.concat(per_section, axis=1).fillna(0.0)
    return table.mean(axis=1), sections


def excluded(symbol: str) -> bool:
    s = symbol.upper()
    return s.startswith(("MT-", "RPS", "RPL"))


def ensembl_ids(genes: list[str], gene_resources: Path) -> list[str]:
    """HGNC approved symbol -> Ensembl first, then 10x GRCh38-2020-A features, then Geneformer's
    name->id dictionary; "" when none maps."""
    id_maps = gene_resources / "id_maps"
    hgnc = pd.read_csv(id_maps / "hgnc_symbol_to_ensembl.tsv", sep="\t", dtype=str)
    hgnc = hgnc.dropna(subset=["Ensembl gene ID"])
    m_hgnc = dict(zip(hgnc["Approved symbol"], hgnc["Ensembl gene ID"]))
    tenx = pd.read_csv(id_maps / "10x_GRCh38-2020-A_features.tsv", sep="\t", header=None, dtype=str)
    m_10x: dict[str, str] = {}
    for ens, sym in zip(tenx[0], tenx[1]):
        m_10x.setdefault(sym, ens)  # first row wins for the few duplicated symbols
    with open(gene_resources / "geneformer_v1" / "gene_name_id_dict.pkl", "rb") as fh:
        m_gf = {str(k): str(v) for k, v in pickle.load(fh).items()}
    return [m_hgnc.get(g) or m_10x.get(g) or m_gf.get(g) or "" for g in genes]


def pixel_size_um(spots: pd.DataFrame) -> float:
    """um/px from a least-squares fit of pixel vs sub-spot-adjusted array coordinates."""
    steps = []
    for arr, pix in (("new_x", "pixel_x"), ("new_y", "pixel_y")):
        a = np.vstack([spots[arr].to_numpy(float), np.ones(len(spots))]).T
        slope = np.linalg.lstsq(a, spots[pix].to_numpy(float), rcond=None)[0][0]
        steps.append(abs(slope))
    return SPOT_PITCH_UM / float(np.mean(steps))


def cut_patches(img: Image.Image, centres: np.ndarray, crop_px: float, out_px: int, quality: int) -> list[bytes]:
    """JPEG bytes of a ``crop_px``-wide square around each centre, resampled to ``out_px``.

    Crops reaching past the image edge are padded white (background of the slide scan).
    """
    out = []
    half = crop_px / 2.0
    for cx, cy in centres:
        box = (cx - half, cy - half, cx + half, cy + half)
        # Image.transform with EXTENT samples the exact (sub-pixel) box, then we downsample
        # with a proper filter via resize; a direct crop+resize would round the box to pixels.
        big = int(np.ceil(crop_px))
        patch = img.transform((big, big), Image.Transform.EXTENT, box, Image.Resampling.BILINEAR,
                              fillcolor=(255, 255, 255))
        patch = patch.resize((out_px, out_px), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        # 4:2:0 chroma like the source scans (which are 4:2:0 at roughly quality 60), so the
        # stored tiles lose nothing the source had in colour resolution
        patch.save(buf, format="JPEG", quality=quality, subsampling=2, optimize=True)
        out.append(buf.getvalue())
    return out


def main(argv=None) -> None:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--her2st", type=Path, default=Path("/work/shared/data/her2st"))
    ap.add_argument("--gene-resources", type=Path, default=None,
                    help="default: <her2st>/../gene_resources")
    ap.add_argument("--out", type=Path, default=root / "datasets" / "data")
    ap.add_argument("--n-genes", type=int, default=3000)
    ap.add_argument("--patch-px", type=int, default=160)
    ap.add_argument("--jpeg-quality", type=int, default=90)
    ap.add_argument("--extra-genes", type=Path, default=None,
                    help="text file, one symbol per line, added to the pool if present in all 6 sections "
                         "(off by default: published lists were chosen with the benchmark sections)")
    args = ap.parse_args(argv)
    her2st: Path = args.her2st
    gene_resources = args.gene_resources or her2st.parent / "gene_resources"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # -- benchmark sections: counts joined to spot files ------------------------------------
    slides = {}
    for s, (patient, jpg) in IMAGED.items():
        cnt = read_counts(her2st, s)
        spots = pd.read_csv(her2st / "data" / "ST-spotfiles" / f"{s}_selection.tsv", sep="\t")
        spots.index = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"])]
        keep = [b for b in spots.index if b in cnt.index]  # spot-file order; drops rows without counts
        n_dropped = len(spots) - len(keep)
        spots = spots.loc[keep]
        lbl = pd.read_csv(her2st / "res" / "ST-cluster" / "lbl" / f"{s}-cluster-annotation.tsv.gz", sep="\t")
        lbl_map = {f"{int(x)}x{int(y)}": int(v) for x, y, v in zip(lbl["x"], lbl["y"], lbl["label"])}
        total = cnt.loc[keep].sum(axis=1)
        near_empty = [f"{b} ({int(total[b])})" for b in keep if total[b] < 10]
        slides[s] = dict(patient=patient, jpg=jpg, counts=cnt.loc[keep], spots=spots, near_empty=near_empty,
                         labels=np.array([lbl_map.get(b, -1) for b in keep], dtype=np.int8),
                         n_dropped=n_dropped)
        print(f"{s}: {len(keep)} spots ({n_dropped} spot-file rows without counts dropped), "
              f"{int((slides[s]['labels'] >= 0).sum())} with a cluster label")

    # -- candidate gene pool (ranked on patients A, D-H only) -------------------------------
    score, pool_sections = pool_ranking(her2st)
    in_all = set.intersection(*(set(v["counts"].columns) for v in slides.values()))
    cand = score[[g for g in score.index if g in in_all and not excluded(g)]]
    # stable tie-break on the symbol so the pool never depends on pandas' sort internals
    order = sorted(cand.index, key=lambda g: (-cand[g], g))
    genes = order[: args.n_genes]
    if args.extra_genes is not None:
        extra = [ln.strip() for ln in args.extra_genes.read_text().splitlines() if ln.strip()]
        added = [g for g in dict.fromkeys(extra) if g in in_all and g not in set(genes)]
        genes = genes + added
        print(f"--extra-genes: added {len(added)} of {len(extra)} listed genes")
    gene_ids = ensembl_ids(genes, gene_resources)
    print(f"pool: {len(genes)} genes from {len(cand)} candidates ranked on {len(pool_sections)} sections; "
          f"{sum(bool(i) for i in gene_ids)} with an Ensembl id")
    hvg_file = her2st / "gene_lists" / "her_hvg_cut_1000.txt"
    if hvg_file.exists():
        hvg = [line.strip() for line in hvg_file.read_text().splitlines() if line.strip()]
        print(f"HisToGene 785-gene list: {len(set(hvg) & set(genes))} in the pool")

    pool_rule = (
        f"top {len(genes)} genes by the mean over sections {','.join(pool_sections)} (patients "
        f"{','.join(POOL_PATIENTS)}, no image, not benchmarked) of per-section mean log1p(CPM); "
        "restricted to genes present in all 6 benchmark sections; MT-, RPS*, RPL* dropped"
    )
    if args.extra_genes is not None:
        pool_rule += f"; plus the genes listed in {args.extra_genes.name} present in all 6 sections"

    # -- write ------------------------------------------------------------------------------
    out_h5 = args.out / "her2st_mini.h5"
    tmp = out_h5.with_suffix(".h5.tmp")
    comp = dict(compression="gzip", compression_opts=9, shuffle=True)
    str_dt = h5py.string_dtype("utf-8")
    summary = {}
    with h5py.File(tmp, "w") as f:
        f.attrs.update(
            name="her2st-mini", licence=LICENCE, citation=CITATION, source_repo=SOURCE_REPO,
            source_commit=SOURCE_COMMIT, builder_version=BUILDER_VERSION, patch_um=PATCH_UM,
            patch_px=args.patch_px, jpeg_quality=args.jpeg_quality, pool_rule=pool_rule,
            pool_sections=",".join(pool_sections),
        )
        f.create_dataset("genes", data=np.array(genes, dtype=object), dtype=str_dt, **comp)
        f.create_dataset("gene_ids", data=np.array(gene_ids, dtype=object), dtype=str_dt, **comp)
        grp = f.create_group("slides")
        for s, v in slides.items():
            g = grp.create_group(s)
            counts = sp.csr_matrix(v["counts"][genes].to_numpy(dtype=np.int64))
            assert counts.data.min(initial=0) >= 0 and counts.data.max(initial=0) < 2**31
            spots = v["spots"]
            um_px = pixel_size_um(spots)
            centres = spots[["pixel_x", "pixel_y"]].to_numpy(np.float64)
            jpg = her2st / "data" / "ST-imgs" / v["patient"] / s / v["jpg"]
            limit = slide_pixel_limit(centres, um_px)
            with pil_pixel_limit(limit), open_bounded(jpg, limit) as src:
                img = src.convert("RGB")
            w, h = img.size
            assert (centres >= 0).all() and (centres[:, 0] < w).all() and (centres[:, 1] < h).all()
            jpegs = cut_patches(img, centres, PATCH_UM / um_px, args.patch_px, args.jpeg_quality)
            del img
            g.attrs.update(patient=v["patient"], pixel_size_um=um_px, spot_diameter_um=SPOT_DIAMETER_UM,
                           image_file=v["jpg"], image_w=w, image_h=h, n_genes_total=v["counts"].shape[1])
            c = g.create_group("counts")
            c.attrs["shape"] = counts.shape
            c.create_dataset("data", data=counts.data.astype(np.int32), **comp)
            c.create_dataset("indices", data=counts.indices.astype(np.int32), **comp)
            c.create_dataset("indptr", data=counts.indptr.astype(np.int64), **comp)
            g.create_dataset("barcodes", data=np.array(spots.index, dtype=object), dtype=str_dt, **comp)
            g.create_dataset("array_xy", data=spots[["x", "y"]].to_numpy(np.int32), **comp)
            g.create_dataset("coords", data=centres, **comp)
            g.create_dataset("annotations", data=v["labels"], **comp)
            t = g.create_dataset("tiles", shape=(len(jpegs),), dtype=h5py.vlen_dtype(np.uint8))
            for i, b in enumerate(jpegs):
                t[i] = np.frombuffer(b, dtype=np.uint8)
            summary[s] = dict(patient=v["patient"], spots=counts.shape[0], pixel_size_um=round(um_px, 4),
                              near_empty=", ".join(v["near_empty"]) or "-",
                              median_umi_pool=float(np.median(np.asarray(counts.sum(1)).ravel())),
                              tile_kb_mean=round(float(np.mean([len(b) for b in jpegs])) / 1024, 2))
            print(f"{s}: {um_px:.4f} um/px, crop {PATCH_UM / um_px:.1f} px -> {args.patch_px} px, "
                  f"nnz {counts.nnz}, tiles {sum(len(b) for b in jpegs) / 1e6:.2f} MB")
    tmp.replace(out_h5)
    size_mb = out_h5.stat().st_size / 1e6
    print(f"wrote {out_h5} ({size_mb:.2f} MB) in {time.time() - t0:.0f} s")
    write_readme(args.out / "HER2ST_MINI_README.md", genes, gene_ids, summary, pool_rule, args, size_mb)


def write_readme(path: Path, genes, gene_ids, summary, pool_rule, args, size_mb) -> None:
    rows = "\n".join(
        f"| {s} | {v['patient']} | {v['spots']} | {v['pixel_size_um']} | {v['median_umi_pool']:.0f} | {v['tile_kb_mean']} | {v['near_empty']} |"
        for s, v in summary.items()
    )
    crop = PATCH_UM / np.mean([v["pixel_size_um"] for v in summary.values()])
    text = f"""# her2st-mini (embedded dataset)

`her2st_mini.h5` ({size_mb:.1f} MB) holds the six her2st sections that have a full-resolution
H&E image: B4 (patient B) and C2-C6 (patient C), {sum(v['spots'] for v in summary.values())} spots.
It is built by `scripts/build_her2st_mini.py` (builder version {BUILDER_VERSION}) and read by
`flag_bench.datasets.her2st_mini.load()`.

## Source, licence, citation

- Data: {SOURCE_REPO}, commit `{SOURCE_COMMIT}`.
- Licence: {LICENCE}. The upstream repository has no LICENSE file; HEST-1k's metadata
  records this dataset as Creative Commons Attribution 4.0 International.
- Cite: {CITATION}
- Changes made here: spots joined between count tables and spot files (spot-file rows with no
  count row dropped), genes restricted to a candidate pool (below), one JPEG patch cut per spot.

## Sections

| section | patient | spots | um/px (fit) | median UMIs over the pool | mean tile KB | near-empty spots (total UMIs) |
|---|---|---|---|---|---|---|
{rows}

`um/px` is estimated per slide from a least-squares fit of `pixel_x`/`pixel_y` against the
sub-spot-adjusted array coordinates `new_x`/`new_y` (legacy ST pitch: 200 um centre to centre).
Spot diameter: {SPOT_DIAMETER_UM:g} um. Barcodes are `"{{x}}x{{y}}"` array coordinates; `coords`
are spot centres in full-resolution image pixels (`pixel_x`, `pixel_y` = column, row).
Near-empty spots (under 10 UMIs over all genes upstream; the same array positions recur across
sections, so they look like array defects) are kept as published, like HisToGene's loader does;
they have a library size of 0-3 and may be filtered by users.
`annotations` are the authors' expression-based cluster labels (0-6; -1 where a spot has none).
They are external annotations, not ground truth, and they were derived from expression.

## Candidate gene pool ({len(genes)} genes, {sum(bool(i) for i in gene_ids)} with an Ensembl id)

Rule: {pool_rule}.

Why: ranking on sections from patients A and D-H keeps the six benchmark sections' expression
out of pool choice (no leakage into panel selection); mean log1p(CPM) per section removes the
large depth differences between sections before they are averaged with equal weight; genes
absent from any benchmark section cannot be scored there. Panels (`hmhvg`, `hvg`, ...) are then
selected inside this pool on each fold's training slides. Ensembl ids: HGNC table first, then
the 10x GRCh38-2020-A features, then Geneformer v1's name->id dictionary; "" if none maps.

## Patches

One RGB patch per spot covering a {PATCH_UM:g} um square field (the HEST-Benchmark field:
224 px at 0.5 um/px), centred on the spot. At the native ~{np.mean([v['pixel_size_um'] for v in summary.values()]):.3f} um/px that is
~{crop:.0f} px of the JPEG; it is stored resampled to {args.patch_px} px ({PATCH_UM / args.patch_px:.2f} um/px)
as JPEG quality {args.jpeg_quality} with 4:2:0 chroma (the source scans are 4:2:0 JPEGs at about
quality 60, so this adds little loss of its own). {args.patch_px} px keeps almost all of the native
resolution (~{crop:.0f} px) while the whole file stays under 15 MB; 224-px encoder inputs are
upsampled from it. The loader serves any `PatchSpec(size_um <= {PATCH_UM:g}, size_px)` by
cropping the centre and resampling; larger fields raise an error because the pixels were not kept.
"""
    path.write_text(text)


if __name__ == "__main__":
    main()
