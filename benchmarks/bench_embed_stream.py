"""`flag-bench embed` on a 20,000-spot synthetic HEST-1k folder: peak memory and spots per second.

    python benchmarks/bench_embed_stream.py [--spots 20000] [--slides 1] [--encoder efficientnet-lite0]
                                            [--workdir DIR] [--keep]

Writes ``st/<id>.h5ad`` (sparse Poisson counts, 300 genes, a 100-um hex lattice at 0.5 um/px),
``patches/<id>.h5`` (224-px uint8 patches, uncompressed and chunked per patch like hestcore's, rows
shuffled against the h5ad, 1 % of spots without a patch) and ``metadata/<id>.json``, then runs
``flag-bench embed hest:root=... --encoder ... --no-progress`` in a child process and reports its
peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) and spots per second (wall time of the child,
start-up and dataset loading included, so the rate is a lower bound). The acceptance bound is
peak RSS < 2 GB. A whole slide of 20,000 patches is 3 GB of uint8, so passing it shows the
patches are streamed. Patch files take ~150 kB per spot on disk (3 GB for 20,000).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp


def hex_lattice(n: int, pitch_px: float) -> np.ndarray:
    cols = int(np.ceil(np.sqrt(n * 2 / np.sqrt(3))))
    pts = []
    r = 0
    while len(pts) < n:
        for c in range(cols):
            pts.append((c * pitch_px + (pitch_px / 2 if r % 2 else 0), r * pitch_px * np.sqrt(3) / 2))
            if len(pts) == n:
                break
        r += 1
    return np.asarray(pts, dtype=np.float64) + 500.0


def write_slide(root: Path, sid: str, n: int, rng: np.random.Generator, px: int = 224, um_per_px: float = 0.5) -> None:
    import anndata as ad
    import pandas as pd

    coords = hex_lattice(n, 100.0 / um_per_px)
    genes = [f"G{i}" for i in range(300)]
    rate = rng.gamma(1.0, 0.3, size=(1, len(genes)))
    counts = sp.csr_matrix(rng.poisson(np.repeat(rate, n, axis=0)).astype(np.int32))
    barcodes = [f"{sid}-{i:06d}" for i in range(n)]
    adata = ad.AnnData(X=counts, obs=pd.DataFrame(index=pd.Index(barcodes)), var=pd.DataFrame(index=pd.Index(genes)))
    adata.obsm["spatial"] = coords
    adata.write_h5ad(root / "st" / f"{sid}.h5ad")
    keep = rng.permutation(n)[: n - n // 100]  # shuffled rows; 1 % of spots have no patch
    yy, xx = np.mgrid[0:px, 0:px]
    with h5py.File(root / "patches" / f"{sid}.h5", "w") as f:
        img = f.create_dataset("img", shape=(len(keep), px, px, 3), dtype=np.uint8, chunks=(1, px, px, 3))
        img.attrs.update({"patch_size_target": px, "patch_size_src": px, "pixel_size": um_per_px, "downsample": 1.0})
        block = 256
        for lo in range(0, len(keep), block):
            idx = keep[lo:lo + block]
            phase = (idx % 97)[:, None, None] / 97.0 * 2 * np.pi
            base = 0.5 + 0.25 * np.sin(xx[None] / 9.0 + phase) * np.cos(yy[None] / 13.0 - phase)
            tile = np.stack([200 * base, 120 * base + 40, 180 * base + 30], axis=-1)
            tile += rng.normal(0, 12, size=tile.shape)
            img[lo:lo + len(idx)] = np.clip(tile, 0, 255).astype(np.uint8)
        f.create_dataset("barcode", data=np.array([[barcodes[i].encode()] for i in keep]))
        f.create_dataset("coords", data=np.round(coords[keep] - px / 2).astype(np.int64))
    (root / "metadata" / f"{sid}.json").write_text(json.dumps({
        "patient": f"P{sid}", "st_technology": "Visium", "species": "Homo sapiens", "organ": "Synthetic",
        "pixel_size_um_estimated": um_per_px, "spot_diameter": 55.0, "dataset_title": "synthetic"}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spots", type=int, default=20_000)
    ap.add_argument("--slides", type=int, default=1)
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the folder and the cache")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-embed-"))
    root = work / "hest"
    for d in ("st", "patches", "metadata"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    per = [args.spots // args.slides + (1 if i < args.spots % args.slides else 0) for i in range(args.slides)]
    for i, n in enumerate(per):
        write_slide(root, f"SYN{i}", n, rng)
    print(f"wrote {args.spots} spots in {args.slides} slide(s) under {root} in {time.perf_counter() - t0:.0f} s")
    cmd = [sys.executable, "-m", "flag_bench.cli", "embed", f"hest:root={root}", "--encoder", args.encoder,
           "--cache-dir", str(work / "cache"), "--no-progress", "--device", "cpu"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(proc.stdout.strip())
    if proc.returncode != 0:
        print(proc.stderr.strip())
        sys.exit(proc.returncode)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    n_enc = args.spots - sum(n // 100 for n in per)
    print(f"encoder {args.encoder}, {os.cpu_count()} CPU(s): {n_enc} spots in {wall:.1f} s = {n_enc / wall:.1f} spots/s "
          f"(child wall time, start-up included); peak RSS {peak_kib / 1024**2:.2f} GiB "
          f"({'under' if peak_kib * 1024 < 2e9 else 'OVER'} the 2 GB bound)")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
