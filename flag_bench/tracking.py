"""MLflow logging from the driver only (one writer keeps SQLite safe).

Layout: experiment ``flag-bench/<suite>/<protocol>``; a parent run per ``flag-bench run``
invocation; a child run per cell tagged ``flag_bench.cell_id``; metrics use ``step = G`` so
Gene-Dimension-Curse curves line up; the parent run carries the per-method curves.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from flag_bench import PROTOCOL_VERSION
from flag_bench.errors import UserError

_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(name: str) -> str:
    """MLflow keys allow [A-Za-z0-9_-. /]; 'ssc@32' is logged as 'ssc_at_32'."""
    return _BAD_KEY.sub("_", name.replace("@", "_at_"))


def experiment_name(suite: str) -> str:
    return f"flag-bench/{suite}/{PROTOCOL_VERSION}"


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def open_client(uri: str):
    """An MlflowClient whose store answers, or a UserError naming the database file."""
    import logging

    # alembic and MLflow print migration chatter at INFO on first use of a new SQLite store
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    path = _sqlite_path(uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
        return client
    except Exception as exc:
        where = f"MLflow database {path}" if path else f"MLflow tracking URI {uri}"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{where} cannot be opened ({first}); move it aside or pass another --tracking-uri "
            "(the results store under cells/ is intact and will be re-logged)"
        ) from None


class Tracker:
    def __init__(self, uri: str, results_dir: Path, suite: str):
        self.uri = uri
        self.client = open_client(uri)
        name = experiment_name(suite)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            art = (Path(results_dir).resolve() / "mlartifacts").as_uri()
            self.experiment_id = self.client.create_experiment(name, artifact_location=art)
        else:
            self.experiment_id = exp.experiment_id

    # -- parent ------------------------------------------------------------------------------
    def start_parent(self, grid_spec: dict[str, Any], prov: dict[str, Any]) -> str:
        from mlflow.entities import Param, RunTag

        tags = {
            "flag_bench.level": "invocation",
            "flag_bench.git_commit": str(prov.get("git_commit")),
            "flag_bench.version": str(prov.get("flag_bench")),
            "mlflow.runName": "flag-bench run",
        }
        run = self.client.create_run(self.experiment_id, tags=tags)
        params = [Param(k, _short(json.dumps(v, default=str))) for k, v in sorted(grid_spec.items())]
        params.append(Param("packages", _short(json.dumps(prov.get("packages")))))
        self.client.log_batch(run.info.run_id, params=params,
                              tags=[RunTag("flag_bench.device", str(prov.get("device_name")))])
        return run.info.run_id

    def end_parent(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    # -- cells -------------------------------------------------------------------------------
    def _cell_run(self, rec: dict, parent_id: str | None):
        from mlflow.entities import Param

        cell = rec["cell"]
        tags = {
            "flag_bench.level": "cell",
            "flag_bench.cell_id": rec["cell_id"],
            "flag_bench.status": rec["status"],
            "mlflow.runName": f"{cell['method']} G={cell['n_genes']} {cell['fold']} s{cell['seed']}",
        }
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, tags=tags)
        from flag_bench.grid import Cell

        c = Cell(**{k: tuple(v) if isinstance(v, list) else v for k, v in cell.items()})
        params = c.as_params()
        params["device"] = rec.get("device", "")
        if "panel" in rec:
            params["panel_id"] = rec["panel"]["panel_id"]
        protocol = rec.get("protocol", {})
        params["protocol"] = _short(json.dumps(protocol, sort_keys=True))
        return run.info.run_id, [Param(k, _short(str(v))) for k, v in params.items()]

    def log_cell(self, rec: dict, store, parent_id: str | None) -> str:
        from mlflow.entities import Metric, RunTag

        run_id, params = self._cell_run(rec, parent_id)
        step = int(rec["cell"]["n_genes"])
        ts = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), float(v), ts, step) for k, v in rec["scores"].items() if _finite(v)]
        for k, v in rec["costs"].items():
            if v is not None and _finite(v):
                metrics.append(Metric(k, float(v), ts, step))
        summary = {f"method.{k}": _short(json.dumps(v, default=str)) for k, v in rec.get("method_summary", {}).items()}
        tags = [RunTag(k, v) for k, v in summary.items()]
        self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        art = store.artifact_dir(rec["cell_id"])
        if art.is_dir():
            self.client.log_artifacts(run_id, str(art))
        self.client.set_terminated(run_id, status="FINISHED")
        store.mark_logged(rec["cell_id"], self.uri, run_id)
        return run_id

    def log_failed(self, rec: dict, parent_id: str | None) -> str:
        from mlflow.entities import RunTag

        run_id, params = self._cell_run(rec, parent_id)
        err = rec["error"]
        self.client.log_batch(run_id, params=params,
                              tags=[RunTag("flag_bench.error", _short(err["message"]))])
        self.client.log_text(run_id, err["traceback"], "traceback.txt")
        self.client.set_terminated(run_id, status="FAILED")
        return run_id

    def sync(self, store) -> int:
        """Log finished cells whose MLflow run is missing (a run killed between the two writes)."""
        n = 0
        for rec in store.records():
            if rec["status"] == "ok" and not store.logged_run_id(rec["cell_id"], self.uri):
                self.log_cell(rec, store, None)
                n += 1
        return n

    # -- curves ------------------------------------------------------------------------------
    def log_curves(self, parent_id: str, records: list[dict]) -> None:
        """Per (dataset, method): mean over folds and seeds of each score at step = G."""
        from mlflow.entities import Metric

        groups: dict[tuple, list[float]] = defaultdict(list)
        for rec in records:
            c = rec["cell"]
            for k, v in rec["scores"].items():
                groups[(c["dataset"], c["method"], k, int(c["n_genes"]))].append(v)
        metrics = []
        for (ds, method, k, g), vals in sorted(groups.items()):
            arr = np.asarray(vals, dtype=float)
            if np.isfinite(arr).any():
                metrics.append(Metric(mlflow_key(f"curve.{ds}.{method}.{k}"), float(np.nanmean(arr)),
                                      int(time.time() * 1000), g))
        for i in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(parent_id, metrics=metrics[i:i + 900])


def _finite(v: Any) -> bool:
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def _short(s: str, n: int = 6000) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."
