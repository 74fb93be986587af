"""Read finished cells into one pandas DataFrame (one row per cell), from MLflow or the store.

MLflow is the default source when the results dir has an MLflow database (or a tracking URI is
given); the local results store is the fallback and the source of truth for resume.
"""

from __future__ import annotations

import json
from pathlib import Path

from flag_bench.errors import UserError

ID_COLUMNS = ["dataset", "n_genes", "method", "preset", "fold", "seed", "panel_selector", "split",
              "target_transform", "encoder", "patch", "protocol_version", "cell_id"]


def _from_store(results_dir: Path):
    import pandas as pd

    from flag_bench.store import ResultsStore

    rows = []
    for rec in ResultsStore(results_dir).records():
        if rec["status"] != "ok":
            continue
        c = rec["cell"]
        row = {
            "dataset": c["dataset"], "n_genes": int(c["n_genes"]), "method": c["method"],
            "preset": c["preset"], "fold": c["fold"], "seed": int(c["seed"]),
            "panel_selector": c["panel"].split(":")[0], "split": c["split"],
            "target_transform": c["target_transform"], "encoder": c["encoder"], "patch": c["patch"],
            "protocol_version": c["protocol_version"], "cell_id": rec["cell_id"],
            "protocol": json.dumps(rec.get("protocol", {}), sort_keys=True),
        }
        row.update({k: v for k, v in rec["scores"].items()})
        for k in ("fit_seconds", "predict_seconds", "peak_rss_mb", "n_parameters"):
            row[k] = rec["costs"].get(k)
        rows.append(row)
    return pd.DataFrame(rows)


def _from_mlflow(uri: str, suite: str | None):
    import pandas as pd

    from flag_bench.tracking import mlflow_key, open_client

    client = open_client(uri)
    exps = [e for e in client.search_experiments() if e.name.startswith("flag-bench/")]
    if suite:
        exps = [e for e in exps if e.name.split("/")[1] == suite]
    if not exps:
        return pd.DataFrame()
    from flag_bench.catalog import METRICS

    # MLflow keys were sanitised ('ssc@32' -> 'ssc_at_32'); map them back to metric names
    back = {mlflow_key(o.name): o.name for m in METRICS.load_all().values() for o in m.outputs}
    rows, seen = [], set()
    token = None
    while True:
        page = client.search_runs(
            [e.experiment_id for e in exps],
            filter_string="tags.`flag_bench.level` = 'cell' and tags.`flag_bench.status` = 'ok'",
            max_results=5000, page_token=token,
        )
        for run in page:
            cid = run.data.tags.get("flag_bench.cell_id")
            if cid in seen:  # a cell logged twice (resync) counts once
                continue
            seen.add(cid)
            p = run.data.params
            row = {
                "dataset": p.get("dataset"), "n_genes": int(p.get("n_genes", 0)), "method": p.get("method"),
                "preset": p.get("preset"), "fold": p.get("fold"), "seed": int(p.get("seed", 0)),
                "panel_selector": p.get("panel_selector"), "split": p.get("split"),
                "target_transform": p.get("target_transform"), "encoder": p.get("encoder"),
                "patch": p.get("patch"), "protocol_version": p.get("protocol_version"), "cell_id": cid,
                "protocol": p.get("protocol", "{}"),
            }
            for k, v in run.data.metrics.items():
                row[back.get(k, k)] = v
            rows.append(row)
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows)


def load_results(results_dir: str | Path, *, source: str = "auto", tracking_uri: str | None = None,
                 suite: str | None = None):
    """(DataFrame, source used). ``source``: auto | mlflow | store."""
    results_dir = Path(results_dir)
    db = results_dir / "mlflow.db"
    if source not in ("auto", "mlflow", "store"):
        raise UserError(f"--source {source}: use auto, mlflow or store")
    if source == "store" or (source == "auto" and tracking_uri is None and not db.exists()):
        if not (results_dir / "cells").is_dir():
            raise UserError(f"--results-dir {results_dir}: no results here; run `flag-bench run --results-dir {results_dir}` first")
        return _from_store(results_dir), "store"
    uri = tracking_uri or f"sqlite:///{db.resolve()}"
    if tracking_uri is None and not db.exists():
        raise UserError(f"--results-dir {results_dir}: no mlflow.db here; use --source store or --tracking-uri")
    return _from_mlflow(uri, suite), "mlflow"
