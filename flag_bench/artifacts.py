"""A cell's artifacts, written by whichever process computed it, under artifacts/<cell_id>/.

predictions.h5ad holds the predictions (X), barcodes and slides (obs), and spot coordinates in
micrometres (obsm['spatial'], unit in uns), so scanpy and squidpy can plot it directly. It holds
no truth: a later cell's method could open the file (docs/threat-model.md). The results API
(``Results.predictions``) adds ``layers['truth']`` rebuilt from the dataset
(leaderboard/truth.py); files written before this change keep their stored layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from flag_bench.io import atomic_write, atomic_write_bytes, atomic_write_json

FILES = ("per_gene_metrics.csv", "predictions.h5ad", "config.json", "genes.txt")


def write_artifacts(out: Path, *, cell_json: Mapping[str, Any], config_json: Mapping[str, Any], test,
                    genes: Sequence[str], preds, per_gene: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[str, ...]:
    import anndata as ad
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for sid, cols in per_gene.items():
        df = pd.DataFrame({k: np.asarray(v) for k, v in cols.items()})
        df.insert(0, "gene", list(genes))
        df.insert(0, "slide", sid)
        frames.append(df)
    atomic_write_bytes(out / "per_gene_metrics.csv", pd.concat(frames).to_csv(index=False).encode())
    obs = pd.DataFrame({
        "slide": np.concatenate([[s.slide_id] * s.n_spots for s in test.slides]),
        "barcode": np.concatenate([np.asarray(s.barcodes) for s in test.slides]),
    })
    obs.index = (obs["slide"] + ":" + obs["barcode"]).to_numpy()
    adata = ad.AnnData(X=np.concatenate(preds), obs=obs, var=pd.DataFrame(index=list(genes)))
    coords = np.concatenate([np.asarray(s.coords_um, dtype=np.float64) for s in test.slides])
    adata.obsm["spatial"] = coords
    adata.uns["spatial_unit"] = "um"
    adata.uns["cell_id"] = cell_json["cell_id"] if "cell_id" in cell_json else ""
    adata.uns["target_transform"] = str(cell_json.get("target_transform", ""))
    atomic_write(out / "predictions.h5ad", lambda p: adata.write_h5ad(p))
    atomic_write_json(out / "config.json", {"cell": cell_json, "method_config": config_json})
    atomic_write_bytes(out / "genes.txt", ("\n".join(genes) + "\n").encode())
    return FILES
