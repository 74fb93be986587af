"""Test support, not shipped: finished cells written straight into a results store, without
training, for the report tests and the report benchmark (``benchmarks/bench_report.py``). The
scores are made up from a per-method quality (they test drawing, not methods).

Each method has a quality q; a cell's prediction is q x truth + noise on a square grid of spots
whose truth is spatially smooth, so PCC falls with q, the controls (``mean``: constant
prediction; ``ridge``) bracket the others, and every artifact the HTML report reads is real:
per_gene_metrics.csv is computed from the arrays in predictions.h5ad. The dataset is named
``demo`` (not registered), so spatial maps have no H&E underlay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

QUALITY = {"mean": 0.0, "ridge": 0.6, "knn": 0.4, "flag": 0.8, "stem": 0.3, "bleep": 0.5, "triplex": 0.7}


def _nanmean(v: np.ndarray) -> float:
    return float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")


def write_demo_store(root: str | Path, *, methods: Sequence[str] = ("mean", "ridge", "flag"),
                     genes: Sequence[int] = (20, 50), folds: int = 2, seeds: Sequence[int] = (0,), side: int = 12,
                     artifacts: bool = True, test_informed: bool | None = None,
                     pretraining_overlap: Sequence[str] | None = None, seed: int = 0, dataset: str = "demo",
                     preset: str = "tiny", target_transform: str = "log1p") -> list[str]:
    """Write len(methods) x len(genes) x folds x len(seeds) finished cells; returns their cell ids.

    ``dataset`` names the board (the spec stays ``demo``, so maps never load a registered dataset)."""
    import anndata as ad
    import pandas as pd

    from flag_bench.grid import Cell
    from flag_bench.metrics.kernels import pearson_columns
    from flag_bench.metrics.moran import morans_i_values
    from flag_bench.metrics.spatial_weights import KNNWeights
    from flag_bench.io import atomic_write, atomic_write_bytes
    from flag_bench.record import CellRecord, MethodInfo, PanelInfo
    from flag_bench.store import ResultsStore

    store = ResultsStore(root)
    store.cells.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = side * side
    yy, xx = np.mgrid[0:side, 0:side]
    coords = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64) * 100.0  # 100 um pitch
    weights = KNNWeights(k=4).build(coords)  # rook neighbours on the square grid
    slides = [f"S{i + 1:02d}" for i in range(max(folds, 2))]
    ids = []
    for g in genes:
        gene_names = [f"GENE{j:04d}" for j in range(g)]
        for f in range(folds):
            test = slides[f]
            # a smooth truth: each gene a random mix of a few spatial waves
            freq = rng.uniform(0.2, 1.2, (g, 2))
            phase = rng.uniform(0, 2 * np.pi, g)
            truth = np.sin(coords[:, :1] / 100 * freq[:, 0] + phase) + np.cos(coords[:, 1:] / 100 * freq[:, 1])
            truth = (truth + 2.0 + 0.3 * rng.standard_normal((n, g))).astype(np.float32)
            panel_stats = {"n_candidates": 300}
            if test_informed is not None:
                panel_stats["test_informed"] = bool(test_informed)
            protocol = {"protocol_version": "p2", "target_transform": target_transform, "split": "slide",
                        "split_description": f"leave-one-slide-out over {','.join(slides)}",
                        "panel_selector": "hmhvg", "encoder": "color-stats", "patch": "112 um @ 0.5 um/px (224 px)",
                        "pcc_aggregation": "per-gene r over spots of each test slide, mean over genes, then mean "
                                           "over test slides", "patient_overlap": False, "suite": "default"}
            if pretraining_overlap is not None:
                protocol["pretraining_overlap"] = list(pretraining_overlap)
            hard = rng.uniform(0.3, 1.7, g)  # some genes are harder to predict than others
            for m in methods:
                # the gene-dimension curse: a method's grip loosens as the panel grows
                q = QUALITY.get(m, 0.5) * (1.0 - 0.12 * np.log(g / min(genes)))
                for s in seeds:
                    noise = rng.standard_normal((n, g)).astype(np.float32)
                    mu = truth.mean(0)
                    pred = (mu + q * (truth - mu) + (1.05 - q) * 1.5 * hard * noise if m != "mean"
                            else np.tile(mu, (n, 1))).astype(np.float32)
                    pcc = np.nan_to_num(pearson_columns(truth, pred)[0])  # a constant prediction scores 0
                    mse_g = ((truth - pred) ** 2).mean(0)
                    mi_t, mi_p = morans_i_values(truth, weights), morans_i_values(pred, weights)
                    scores = {"pcc_mean": float(pcc.mean()), "pcc_pooled": float(pcc.mean()),
                              "mse": float(mse_g.mean()), "gsc": float(q * 0.9), "ssc": float(q * 0.8 + 0.05 * rng.random()),
                              "moran_abs_err": _nanmean(np.abs(mi_t - mi_p))}
                    cell = Cell(dataset, "demo", "v1", int(g), "hmhvg", (), m, preset, f"cfg{m}", "slide",
                                f"test={test}", tuple(x for x in slides if x != test), (), (test,), int(s),
                                target_transform, "color-stats", "112um-224px")
                    rec = CellRecord(cell=cell, status="ok", method=MethodInfo(m, preset, {}), protocol=protocol,
                                     provenance={}, device="cpu", started="2026-01-01T00:00:00+0000",
                                     finished=f"2026-01-{1 + f:02d}T00:00:00+0000", scores=scores,
                                     scores_per_slide={test: scores},
                                     costs={"fit_seconds": 0.1 + q, "predict_seconds": 0.01, "peak_rss_mb": 900.0,
                                            "n_parameters": int(1000 * q)},
                                     panel=PanelInfo(f"panel-{g}-{f}", tuple(gene_names), "hmhvg", tuple(slides),
                                                     panel_stats))
                    store.write(rec)
                    ids.append(rec.cell_id)
                    if artifacts:
                        out = store.artifact_dir(rec.cell_id)
                        out.mkdir(parents=True, exist_ok=True)
                        per = pd.DataFrame({"slide": test, "gene": gene_names, "pcc": pcc, "mse": mse_g,
                                            "moran_i_true": mi_t, "moran_i_pred": mi_p})
                        atomic_write_bytes(out / "per_gene_metrics.csv", per.to_csv(index=False).encode())
                        obs = pd.DataFrame({"slide": test, "barcode": [f"b{i}" for i in range(n)]})
                        obs.index = (obs["slide"] + ":" + obs["barcode"]).to_numpy()
                        a = ad.AnnData(X=pred.astype(np.float32), obs=obs, var=pd.DataFrame(index=gene_names))
                        a.layers["truth"] = truth
                        a.obsm["spatial"] = coords
                        a.uns["spatial_unit"] = "um"
                        atomic_write(out / "predictions.h5ad", lambda p, a=a: a.write_h5ad(p))
    return ids
