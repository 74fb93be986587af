"""Build the package data behind ``flag_bench.methods.flag.gene_tables``.

Writes into ``methods/data/``:

* ``geneformer_v1_dicts.npz``: the Geneformer V1 (Genecorpus-30M) token dictionary, gene
  median dictionary and the symbol -> Ensembl map restricted to in-vocabulary ids, as plain
  string/number arrays (no pickle at run time).
* ``her2st_expr_gene_table.npz``: the offline default alignment target. A static gene table
  learned from her2st patients A and D–H only (never B or C, the benchmarked patients):

  1. per spot log1p(CPM) over the full transcriptome of each section;
  2. each gene centred within its section (so the table encodes within-tissue co-variation,
     not depth or patient differences between sections), then scaled to unit variance over
     all pooled spots;
  3. truncated SVD of that spots × genes matrix. The gene loadings V·S/√(n−1) are the
     truncated eigen-decomposition of the gene–gene correlation matrix, i.e. the same
     co-expression structure that GSC scores, computed without forming the 16k × 16k matrix;
  4. each gene's row L2-normalised (the alignment loss is a cosine) and stored as float16.

  Genes detected (count > 0) in at least ``--min-spots`` pooled spots are kept. The table
  also stores each gene's median non-zero CPM over the same spots, used at run time as the
  rank-value normaliser (the role Geneformer's gene median dictionary plays).
* ``GENE_RESOURCES.md`` is hand-written (provenance and licences); this script prints the
  numbers it quotes.

Run: python scripts/build_gene_embeddings.py [--her2st DIR] [--gene-resources DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils.extmath import randomized_svd

SHARED = Path("/work/shared/data")
POOL_PATIENTS = ("A", "D", "E", "F", "G", "H")  # B and C are the benchmarked patients
BENCHMARK_PATIENTS = ("B", "C")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_geneformer(res: Path, out: Path) -> dict:
    d = res / "geneformer_v1"
    files = {n: d / f"{n}.pkl" for n in ("token_dictionary", "gene_median_dictionary", "gene_name_id_dict")}
    with open(files["token_dictionary"], "rb") as f:
        tok = {str(k): int(v) for k, v in pickle.load(f).items()}
    with open(files["gene_median_dictionary"], "rb") as f:
        med = {str(k): float(v) for k, v in pickle.load(f).items()}
    with open(files["gene_name_id_dict"], "rb") as f:
        names = {str(k): str(v) for k, v in pickle.load(f).items()}
    tok_keys = sorted(tok, key=tok.get)
    med_keys = sorted(med)
    # symbols whose id has no token can never be embedded: leave them out to keep the file small
    name_keys = sorted(k for k, v in names.items() if v in tok)
    meta = {
        "source": "Geneformer V1 (Genecorpus-30M) dictionaries, GitHub jkobject/geneformer "
                  "@95b63404eac211e8896068005866f5d3b76923cd geneformer/*.pkl (mirror of HF ctheodoris/Geneformer)",
        "sha256": {n: sha256(p) for n, p in files.items()},
        "n_tokens": len(tok), "n_medians": len(med), "n_names_in_vocab": len(name_keys), "n_names_total": len(names),
    }
    path = out / "geneformer_v1_dicts.npz"
    np.savez_compressed(
        path,
        token_keys=np.array(tok_keys), token_values=np.array([tok[k] for k in tok_keys], dtype=np.int32),
        median_keys=np.array(med_keys), median_values=np.array([med[k] for k in med_keys], dtype=np.float64),
        name_keys=np.array(name_keys), name_values=np.array([names[k] for k in name_keys]),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )
    meta["bytes"] = path.stat().st_size
    return meta


def load_sections(her2st: Path) -> list[tuple[str, pd.DataFrame]]:
    files = sorted((her2st / "data" / "ST-cnts").glob("*.tsv.gz"))
    picked = [f for f in files if f.name[0] in POOL_PATIENTS]
    assert not any(f.name[0] in BENCHMARK_PATIENTS for f in picked)
    return [(f.name.split(".")[0], pd.read_csv(f, sep="\t", index_col=0)) for f in picked]


def build_her2st_table(her2st: Path, out: Path, dim: int, min_spots: int) -> dict:
    sections = load_sections(her2st)
    genes = sorted(set().union(*(df.columns for _, df in sections)))
    col = {g: i for i, g in enumerate(genes)}
    n = sum(len(df) for _, df in sections)
    detected = np.zeros(len(genes), dtype=np.int64)
    for _, df in sections:
        detected[[col[g] for g in df.columns]] += (df.to_numpy() > 0).sum(0)
    keep = np.flatnonzero(detected >= min_spots)
    kcol = {genes[i]: j for j, i in enumerate(keep)}
    z = np.zeros((n, len(keep)), dtype=np.float32)
    cpm_nonzero = [[] for _ in keep]
    row = 0
    for _, df in sections:
        x = df.to_numpy(dtype=np.float64)
        cpm = x / np.maximum(x.sum(1, keepdims=True), 1.0) * 1e6
        y = np.log1p(cpm)
        y -= y.mean(0, keepdims=True)
        cols = [(j, kcol[g]) for j, g in enumerate(df.columns) if g in kcol]
        src, dst = map(np.array, zip(*cols))
        z[row:row + len(df), dst] = y[:, src]
        for s, d in cols:
            v = cpm[:, s]
            cpm_nonzero[d].append(v[v > 0])
        row += len(df)
    sd = z.std(0, ddof=1)
    z /= np.where(sd > 0, sd, 1.0)
    u, s, vt = randomized_svd(z, n_components=dim, n_iter=8, random_state=0)
    # fix the SVD sign so the table does not depend on the BLAS build
    vt *= np.sign(vt[np.arange(dim), np.abs(vt).argmax(1)])[:, None]
    load = (vt.T * s[None, :]) / np.sqrt(n - 1)  # gene loadings: corr(gene, component score)
    explained = (load**2).sum(1)  # fraction of each gene's (within-section) variance captured
    emb = load / np.linalg.norm(load, axis=1, keepdims=True).clip(1e-12)
    medians = np.array([np.median(np.concatenate(v)) for v in cpm_nonzero], dtype=np.float32)
    kept = [genes[i] for i in keep]
    h = hashlib.sha256()
    h.update(json.dumps(kept).encode())
    h.update(emb.astype(np.float16).tobytes())
    h.update(medians.tobytes())
    meta = {
        "source": "her2st (Andersson et al. 2021, CC BY 4.0), GitHub almaan/her2st @85df7411, data/ST-cnts",
        "sections": [name for name, _ in sections],
        "patients": list(POOL_PATIENTS),
        "excluded_patients": list(BENCHMARK_PATIENTS),
        "n_spots": int(n), "n_genes_seen": len(genes), "n_genes": len(kept), "min_spots_detected": min_spots,
        "dim": dim,
        "method": "per-section-centred, unit-variance log1p(CPM); randomized truncated SVD (8 power iterations, "
                  "seed 0); gene loadings V*S/sqrt(n-1), sign-fixed, L2-normalised, float16",
        "svd_singular_values_head": [round(float(v), 3) for v in s[:8]],
        "median_explained_variance": float(np.median(explained)),
        "input_sha256": {name: sha256(her2st / "data" / "ST-cnts" / f"{name}.tsv.gz") for name, _ in sections},
        "build_hash": h.hexdigest()[:16],
    }
    path = out / "her2st_expr_gene_table.npz"
    np.savez_compressed(path, genes=np.array(kept), emb=emb.astype(np.float16), median_cpm=medians,
                        meta=np.array(json.dumps(meta, sort_keys=True)))
    meta["bytes"] = path.stat().st_size
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--her2st", type=Path, default=SHARED / "her2st")
    ap.add_argument("--gene-resources", type=Path, default=SHARED / "gene_resources")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "methods" / "data")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--min-spots", type=int, default=5, help="keep genes detected in at least this many spots")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gf = build_geneformer(args.gene_resources, args.out)
    print("geneformer_v1_dicts.npz:", json.dumps({k: v for k, v in gf.items() if k != "sha256"}))
    tab = build_her2st_table(args.her2st, args.out, args.dim, args.min_spots)
    print("her2st_expr_gene_table.npz:", json.dumps({k: v for k, v in tab.items() if k != "input_sha256"}))


if __name__ == "__main__":
    main()
