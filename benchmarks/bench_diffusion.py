"""Time, peak memory and scores of the diffusion-family methods on one her2st-mini fold.

The fold is built by hand (no runner): train = C3..C6 (+ B4 with ``--with-b4``), test = C2;
panel = top-G genes by mean log1p over the training slides (a stand-in for HMHVG); targets log1p.
Methods that ask for a validation slide get the last training slide (C6) as validation.

    python benchmarks/bench_diffusion.py --methods mean,ridge,flag,stem --genes 50
    python benchmarks/bench_diffusion.py --methods flag --genes 800   # one method: clean peak RSS

Scores, by the leaderboard's rules (metrics/): PCC (mean per-gene Pearson over test spots), MSE,
GSC (Pearson of the upper triangles of the gene-gene correlation matrices). Peak memory is the
process's max RSS (ru_maxrss), so run one method per process for a clean number. Timings are
wall-clock and noisy on a shared machine: measure twice.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def build_fold(n_genes: int, test: str = "C2", train_ids=("C3", "C4", "C5", "C6"), encoder="efficientnet-lite0"):
    from flag_bench.catalog import ENCODERS
    from flag_bench.datasets import her2st_mini
    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.embed_cache import get_embeddings
    from flag_bench.datasets.views import SlideInput, TestData, TrainData, TrainSlide

    ds = her2st_mini.load()
    enc = ENCODERS.get(ENCODERS.check(encoder))()
    counts = {s.id: s.counts for s in ds.slides}
    mean = np.mean(np.vstack([np.log1p(counts[i].toarray()) for i in train_ids]), axis=0)
    panel = np.argsort(-mean, kind="stable")[:n_genes]

    def base(sid):
        s = ds.slide(sid)
        return dict(slide_id=sid, patient=s.patient, barcodes=np.asarray(s.barcodes),
                    coords_um=np.asarray(s.coords_um, dtype=np.float32),
                    embeddings=get_embeddings(ds, sid, enc, PatchSpec()), image=None,
                    spot_diameter_um=s.spot_diameter_um)

    genes = tuple(ds.genes[i] for i in panel)
    ids = tuple(getattr(ds, "gene_ids", ("",) * len(ds.genes))[i] for i in panel)
    common = dict(genes=genes, gene_ids=ids, target_transform="log1p", dataset="her2st-mini")

    def train_slide(sid):
        c = counts[sid][:, panel].toarray().astype(np.int32)
        return TrainSlide(**base(sid), targets=np.log1p(c).astype(np.float32), counts=c)

    train = TrainData(**common, slides=tuple(train_slide(i) for i in train_ids))
    truth = np.log1p(counts[test][:, panel].toarray()).astype(np.float32)
    return train, TestData(**common, slides=(SlideInput(**base(test)),)), truth


def scores(pred: np.ndarray, y: np.ndarray) -> dict:
    """The leaderboard's own rules (metrics/): PCC over genes not constant in the truth, GSC."""
    from flag_bench.metrics.core import pearson_per_gene
    from flag_bench.metrics.structure import gsc_scores

    r, valid = pearson_per_gene(y, pred)
    return {"pcc": float(r[valid].mean()) if valid.any() else float("nan"),
            "mse": float(np.mean((pred - y) ** 2)), "gsc": gsc_scores(y, pred).values["gsc"]}


def run(method: str, n_genes: int, preset: str, seed: int = 0, overrides=None) -> dict:
    from flag_bench.catalog import METHODS
    from flag_bench.datasets.views import TrainData
    from flag_bench.methods.base import seed_everything

    train, test, truth = build_fold(n_genes)
    cls = METHODS.get(method)
    val = None
    if cls.card.uses_validation:
        common = dict(genes=train.genes, gene_ids=train.gene_ids, target_transform=train.target_transform,
                      dataset=train.dataset)
        train, val = TrainData(**common, slides=train.slides[:-1]), TrainData(**common, slides=train.slides[-1:])
    seed_everything(seed)
    m = cls(cls.make_config(preset, overrides), seed=seed, device="cpu")
    t0 = time.perf_counter()
    m.fit(train, val)
    t1 = time.perf_counter()
    pred = m.predict(test)[0]
    t2 = time.perf_counter()
    out = {"method": method, "G": n_genes, "preset": preset, "fit_s": round(t1 - t0, 1),
           "predict_s": round(t2 - t1, 1), **{k: round(v, 4) for k, v in scores(pred, truth).items()},
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if m.summary.get("optimizer_steps") is not None:
        out["steps"] = m.summary["optimizer_steps"]
        out["final_loss"] = m.summary.get("final_loss")
        out["best_val_step"] = m.summary.get("best_val_step")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="mean,ridge,flag,stem")
    p.add_argument("--genes", default="50")
    p.add_argument("--preset", default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="config override key=value (JSON value)")
    a = p.parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    for g in (int(x) for x in a.genes.split(",")):
        for name in a.methods.split(","):
            ov = overrides if name not in ("mean", "ridge", "knn") else None
            print(json.dumps(run(name, g, a.preset if ov is not None else "small", a.seed, ov)), flush=True)


if __name__ == "__main__":
    main()
