"""MLflow logging from the driver only (one writer keeps SQLite safe), and reading it back.

Layout: experiment ``flag-bench/<suite>/<protocol>``, holding the cells computed under that suite
(a suite's report also reads the cells it planned that another suite computed, from their own
experiment: leaderboard.sources); a parent run per ``flag-bench run`` invocation; a child run per cell (ok or failed) tagged ``flag_bench.cell_id``; metrics use
``step = G`` so Gene-Dimension-Curse curves line up; the parent run carries the per-configuration
curves.

A child run holds its CellRecord twice: as params/metrics/tags (what the MLflow UI filters and
plots, and what ``decode_run`` turns back into ``CellRecord.to_row()`` exactly), and as the
``record.json`` artifact. The report reads the first, because one paged ``search_runs`` query
returns them for thousands of runs, where fetching an artifact per run is one file copy or HTTP
request each. A record that params cannot hold exactly (a value over MLflow's length limits, two
names that sanitise to one key) is tagged ``row_source = record.json`` and read from the artifact.

A cell recomputed with ``--force`` gets a new run; the run of the record it replaced is tagged
``flag_bench.superseded_by = <new run id>`` and no report reads it. Each cell run is tagged with
the code version its record was computed with (``flag_bench.code_version``).

The local artifact store is ``<results-dir>/mlartifacts``, recorded as an absolute path in the
experiment. A results dir copied or moved elsewhere keeps working: new runs put their artifacts
under the results dir they are logged into, and the report finds them there (leaderboard.sources).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from flag_bench import PROTOCOL_VERSION
from flag_bench.errors import UserError, one_line
from flag_bench.record import (COST_COLUMNS, INT_COLUMNS, ROW_COLUMNS, SCHEMA_VERSION, CellRecord, code_version,
                               jsonable)
from flag_bench.roles import Role

_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
# MLflow's limits (mlflow.utils.validation): values are refused or cut beyond these
_PARAM_LEN, _TAG_LEN, _PER_BATCH, _METRICS_PER_BATCH = 6000, 8000, 100, 800
# MLflow stores +-inf as +-DBL_MAX; no score comes near it, so reading maps it back
_DBL_MAX = 1.7976931348623157e308

T_LEVEL, T_CELL, T_STATUS, T_FINISHED = "flag_bench.level", "flag_bench.cell_id", "flag_bench.status", "flag_bench.finished"
T_SCHEMA, T_SOURCE, T_NAMES = "flag_bench.schema_version", "flag_bench.row_source", "flag_bench.score_names"
T_ERROR, T_STAGE = "flag_bench.error", "flag_bench.error_stage"
T_VERSION, T_SUPERSEDED = "flag_bench.code_version", "flag_bench.superseded_by"
ARTIFACT_ROOT = "mlartifacts"  # under the results dir, for a local (SQLite) store
RECORD_ARTIFACT, TRACEBACK_ARTIFACT = "record.json", "traceback.txt"


def mlflow_key(name: str) -> str:
    """MLflow keys allow [A-Za-z0-9_-. /]; 'ssc@32' is logged as 'ssc_at_32'."""
    return _BAD_KEY.sub("_", name.replace("@", "_at_"))


def slide_key(slide: str, score: str) -> str:
    return f"slide.{mlflow_key(slide)}.{mlflow_key(score)}"


def experiment_name(suite: str) -> str:
    return f"flag-bench/{suite}/{PROTOCOL_VERSION}"


def default_tracking_uri(results_dir: str | Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def open_client(uri: str):
    """An MlflowClient whose store answers, or a UserError naming the database file."""
    import logging

    # alembic and MLflow print migration chatter at INFO on first use of a new SQLite store
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    from flag_bench.redact import connectable, redact_text, redact_uri

    path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    real = connectable(uri)  # a redacted URI (***) gets its password from the environment, or a UserError
    try:
        client = MlflowClient(tracking_uri=real)
        client.search_experiments(max_results=1)
        return client
    except Exception as exc:
        where = f"MLflow database {path}" if path else f"MLflow tracking URI {redact_uri(uri)}"
        why = redact_text(one_line(str(exc), 200), uri, real) or type(exc).__name__
        raise UserError(
            f"{where} cannot be opened ({why}); move it aside or pass "
            "another --tracking-uri (the results store under cells/ is intact and will be re-logged)"
        ) from None


def _experiment_id(client, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as exc:
            # another process created it between our lookup and our create
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage != "active":
        raise UserError(f"MLflow experiment {name} is deleted; restore it in MLflow (`mlflow experiments restore "
                        f"--experiment-id {exp.experiment_id}`) or pass another --suite")
    return exp.experiment_id


# -- the record <-> run codec -------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(jsonable(v), sort_keys=True)


def _value(v: Any, n: int = _PARAM_LEN) -> str:
    s = _text(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def encode(rec: CellRecord) -> Encoded:
    """Params, metrics and tags of a cell's child run (the run's own create-time tags aside)."""
    row = rec.to_row()
    params = dict(rec.cell.as_params())
    params.update({c: str(row[c]) for c in ROW_COLUMNS if c != "cell_id"})
    params["device"] = rec.device
    # R5: the resolved hyper-parameters, so the MLflow UI can filter on lr, steps, k
    params.update({f"method.{mlflow_key(k)}": _text(v) for k, v in rec.method.config.items()})
    exact = all(len(params[c]) <= _PARAM_LEN for c in ROW_COLUMNS if c != "cell_id")
    params = {k: _value(v) for k, v in params.items()}
    metrics = {mlflow_key(k): float(v) for k, v in rec.scores.items()}
    metrics.update({mlflow_key(k): float(v) for k, v in rec.costs.items() if v is not None})
    per_slide = {slide_key(s, k): float(v) for s, d in rec.scores_per_slide.items() for k, v in d.items()}
    n_keys = len(rec.scores) + sum(v is not None for v in rec.costs.values()) + len(per_slide)
    metrics.update(per_slide)
    names = json.dumps({"scores": list(rec.scores), "slides": {s: list(d) for s, d in rec.scores_per_slide.items()}})
    exact = exact and len(metrics) == n_keys and len(names) <= _TAG_LEN  # no two names share a key
    tags = {T_FINISHED: rec.finished, T_SCHEMA: str(rec.schema_version),
            T_SOURCE: "params" if exact else RECORD_ARTIFACT, T_NAMES: names if exact else "{}"}
    version = code_version(rec.provenance)
    if version:
        tags[T_VERSION] = _value(version, _TAG_LEN)
    # the method's own report (epochs run, final loss): tags, apart from the method.<field> params
    tags.update({f"summary.{mlflow_key(k)}": _value(v, _TAG_LEN) for k, v in rec.method.summary.items()})
    if rec.error is not None:
        tags.update({T_ERROR: one_line(rec.error.message), T_STAGE: rec.error.stage})
    return Encoded(params, metrics, tags)


def _metric(metrics: Mapping[str, float], key: str) -> float:
    v = metrics.get(key, math.nan)
    return math.copysign(math.inf, v) if abs(v) == _DBL_MAX else v


def decode_run(run, client) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """A cell's child run -> (CellRecord.to_row() of its record, scores per slide), exactly."""
    tags, run_id = run.data.tags, run.info.run_id
    if tags.get(T_SCHEMA) != str(SCHEMA_VERSION):
        raise UserError(f"MLflow run {run_id} (cell {tags.get(T_CELL)}) has record schema {tags.get(T_SCHEMA)!r}, "
                        f"this flag-bench reads {SCHEMA_VERSION}; report it with the flag-bench that logged it, "
                        "or use --source store")
    p, m = run.data.params, run.data.metrics
    # a run logged before the role column: its record artifact holds the card the role is read from
    if tags.get(T_SOURCE) != "params" or "role" not in p:
        rec = fetch_record(client, run_id)
        return rec.to_row(), {s: dict(d) for s, d in rec.scores_per_slide.items()}
    row: dict[str, Any] = {c: int(p[c]) if c in INT_COLUMNS else p[c] for c in ROW_COLUMNS if c != "cell_id"}
    row["cell_id"] = tags[T_CELL]
    names = json.loads(tags[T_NAMES])
    row.update({k: _metric(m, mlflow_key(k)) for k in names["scores"]})
    for k in COST_COLUMNS:
        if k in m:
            row[k] = int(m[k]) if k in INT_COLUMNS else _metric(m, k)
    per_slide = {s: {k: _metric(m, slide_key(s, k)) for k in ks} for s, ks in names["slides"].items()}
    return row, per_slide


def file_path(uri: str | None) -> Path | None:
    """The local path of a ``file://`` URI (or a plain path); None for any other scheme."""
    from urllib.parse import unquote, urlparse

    if not uri:
        return None
    u = urlparse(uri)
    if u.scheme == "file":
        return Path(unquote(u.path))
    if u.scheme == "" or (len(u.scheme) == 1 and uri[1:3] in (":/", ":\\")):  # a path (Windows drive too)
        return Path(uri)
    return None


def download(client, run_id: str, name: str, dst: str | Path) -> Path:
    """One artifact of a run into dst, without MLflow's progress bar on stderr."""
    import os

    key, before = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ[key] = "false"
    try:
        return Path(client.download_artifacts(run_id, name, str(dst)))
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def fetch_record(client, run_id: str) -> CellRecord:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = download(client, run_id, RECORD_ARTIFACT, tmp)
        return CellRecord.loads(path.read_text(), where=f"MLflow run {run_id} {RECORD_ARTIFACT}")


def paged(call) -> Iterator:
    """Every item of an MLflow paged search: ``call(page_token)`` returns one page (a list with
    ``.token``); pages are fetched until the token runs out."""
    token = None
    while True:
        page = call(token)
        yield from page
        token = page.token
        if not token:
            return


# -- the writer ---------------------------------------------------------------------------------
def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


class Tracker:
    """The driver's MLflow writer. Logging a cell never stops a grid: the first failure (a
    tracking server that went away) is reported once through ``warn`` and the rest of the
    invocation logs nothing more; the results store has every record and ``flag-bench
    sync-tracking`` (or the next run) logs what is missing."""

    def __init__(self, uri: str, results_dir: Path, suite: str, warn=None):
        import os

        from flag_bench.redact import redact_uri

        self.uri = uri  # to connect with; never printed nor written (markers key on redact_uri(uri))
        self.shown_uri = redact_uri(uri)
        self.warn = warn or _stderr
        self.offline: str | None = None
        if is_server(uri):
            # MLflow retries a refused connection 7 times with backoff (minutes per call); the store
            # is the source of truth, so fail fast and let sync-tracking catch up
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        self.client = open_client(uri)
        # a server stores artifacts where its --artifacts-destination says; a local store beside results
        art = None if is_server(uri) else (Path(results_dir).resolve() / ARTIFACT_ROOT).as_uri()
        self.experiment_id = _experiment_id(self.client, experiment_name(suite), art)
        self.artifact_root = self._moved_artifact_root(results_dir)

    def _moved_artifact_root(self, results_dir: Path) -> Path | None:
        """``<results-dir>/mlartifacts`` when this results dir's own database records the artifact
        store at another absolute path (the dir was copied or moved there): MLflow would keep
        writing artifacts to the old place, so runs put theirs under this results dir instead."""
        if self.uri != default_tracking_uri(results_dir):
            return None
        here = Path(results_dir).resolve() / ARTIFACT_ROOT
        recorded = file_path(self.client.get_experiment(self.experiment_id).artifact_location)
        if recorded is None or recorded.name != ARTIFACT_ROOT or recorded == here:
            return None
        return here

    def safely(self, what: str, fn, *args, **kwargs):
        """Call a logging method; on failure warn once, go offline and return None."""
        if self.offline:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any transport or server error: the store keeps the record
            from flag_bench.redact import redact_text

            self.offline = redact_text(f"{type(exc).__name__}: {one_line(str(exc), 200)}", self.uri)
            self.warn(f"MLflow logging at {self.shown_uri} failed while {what} ({self.offline}); the results store keeps "
                      "every cell, and `flag-bench sync-tracking` logs the missing ones once the server answers")
            return None

    def _log(self, run_id: str, metrics: Mapping[str, float] | None = None, params: Mapping[str, str] | None = None,
             tags: Mapping[str, str] | None = None, step: int = 0) -> None:
        """log_batch under MLflow's caps (100 params, 100 tags, 1000 entities per call)."""
        from mlflow.entities import Metric, Param, RunTag

        ts = int(time.time() * 1000)
        m = [Metric(k, v, ts, step) for k, v in (metrics or {}).items()]
        p = [Param(k, v) for k, v in (params or {}).items()]
        t = [RunTag(k, v) for k, v in (tags or {}).items()]
        n = max(math.ceil(len(m) / _METRICS_PER_BATCH), math.ceil(len(p) / _PER_BATCH), math.ceil(len(t) / _PER_BATCH))
        for i in range(n):
            self.client.log_batch(run_id, metrics=m[i * _METRICS_PER_BATCH:(i + 1) * _METRICS_PER_BATCH],
                                  params=p[i * _PER_BATCH:(i + 1) * _PER_BATCH], tags=t[i * _PER_BATCH:(i + 1) * _PER_BATCH])

    # -- parent ------------------------------------------------------------------------------
    def start_parent(self, grid_spec: Mapping[str, Any], provenance: Mapping[str, Any]) -> str:
        tags = {T_LEVEL: "invocation", "flag_bench.git_commit": str(provenance.get("git_commit")),
                "flag_bench.version": str(provenance.get("flag_bench")), "mlflow.runName": "flag-bench run"}
        run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        params = {k: _value(v) for k, v in sorted(grid_spec.items())}
        params["packages"] = _value(provenance.get("packages"))
        self._log(run_id, params=params, tags={"flag_bench.device": str(provenance.get("device_name"))})
        return run_id

    def log_parent_metrics(self, run_id: str, values: Mapping[str, float]) -> None:
        self._log(run_id, metrics={mlflow_key(k): float(v) for k, v in values.items()})

    def end_parent(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    # -- cells -------------------------------------------------------------------------------
    def log_record(self, rec: CellRecord, artifact_dir: Path | None, parent_id: str | None) -> str:
        """One child run per record, ok or failed; returns its run id (the driver marks the store)."""
        c = rec.cell
        tags = {T_LEVEL: "cell", T_CELL: rec.cell_id, T_STATUS: rec.status,
                "mlflow.runName": f"{c.method} ({rec.method.label}) G={c.n_genes} {c.fold} s{c.seed}"}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        role = rec.method.role  # as the record stores it
        if role is Role.ORACLE:  # computed from the truth: say so where the UI lists runs
            tags["flag_bench.oracle"] = "true"
        if role.is_reference:  # a reference row (oracle or null control): never ranked as a method
            tags["flag_bench.role"] = role.board_mark
        run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        enc = encode(rec)
        self._log(run_id, enc.metrics, enc.params, enc.tags, step=int(c.n_genes))
        texts = {RECORD_ARTIFACT: rec.dumps()}
        if rec.error is not None:
            texts[TRACEBACK_ARTIFACT] = rec.error.traceback
        if self.artifact_root is not None:
            self._put_artifacts(self.artifact_root / run_id / "artifacts", artifact_dir, texts)
        else:
            if artifact_dir is not None and Path(artifact_dir).is_dir():
                self.client.log_artifacts(run_id, str(artifact_dir))
            for name, text in texts.items():
                self.client.log_text(run_id, text, name)
        # the report reads terminated runs only, so a run cut short here is never half-read
        self.client.set_terminated(run_id, status="FINISHED" if rec.ok else "FAILED")
        return run_id

    def _put_artifacts(self, dst: Path, artifact_dir: Path | None, texts: Mapping[str, str]) -> None:
        """A run's artifacts written straight into this results dir's artifact store (see
        ``_moved_artifact_root``), where MLflow's local repository would have put them."""
        import shutil

        from flag_bench.io import atomic_write_bytes

        dst.mkdir(parents=True, exist_ok=True)
        if artifact_dir is not None and Path(artifact_dir).is_dir():
            shutil.copytree(artifact_dir, dst, dirs_exist_ok=True)
        for name, text in texts.items():
            atomic_write_bytes(dst / name, text.encode())

    def supersede(self, old_run_id: str, new_run_id: str) -> None:
        """The old run logged a record that a recomputation replaced: tag it, the report skips it."""
        self.client.set_tag(old_run_id, T_SUPERSEDED, new_run_id)

    def sync(self, store) -> int:
        """Log finished records whose MLflow run is missing (a run killed between the two writes,
        a server that was down, a ``--force`` rerun logged while it was). A cell the server already
        has as a finished run of this very record is only marked; its other runs are tagged
        superseded and runs a dead writer left unfinished are deleted, so each cell has one run
        the report reads."""
        missing = [rec for rec in store.records()
                   # a cell claimed by a live run is that run's to log (it may be between the two writes)
                   if not store.logged_run_id(rec.cell_id, self.uri) and not store.busy(rec.cell_id)]
        if not missing:
            return 0
        finished, unfinished = self.cell_runs()
        n = 0
        for rec in missing:
            for stale in unfinished.get(rec.cell_id, ()):
                self.client.delete_run(stale)
            runs = finished.get(rec.cell_id, [])
            run_id = next((r for r, key in runs if key == _identity(rec.finished, rec.costs.get("total_seconds"))),
                          None)
            if run_id is None:
                run_id = self.log_record(rec, store.artifact_dir(rec.cell_id), None)
                n += 1
            for other, _ in runs:
                if other != run_id:
                    self.supersede(other, run_id)
            store.mark_logged(rec.cell_id, self.uri, run_id)
        return n

    def cell_runs(self) -> tuple[dict[str, list[tuple[str, tuple]]], dict[str, list[str]]]:
        """({cell_id: [(run id, _identity of its record) of each finished ok run not superseded]},
        {cell_id: [run ids never terminated]})."""
        from mlflow.entities import ViewType

        finished: dict[str, list[tuple[str, tuple]]] = defaultdict(list)
        unfinished: dict[str, list[str]] = defaultdict(list)
        runs = paged(lambda t: self.client.search_runs([self.experiment_id], f"tags.`{T_LEVEL}` = 'cell'",
                                                       run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                                       page_token=t))
        for run in runs:
            cid, status = run.data.tags.get(T_CELL), run.info.status
            if cid is None:
                continue
            if status == "FINISHED" and run.data.tags.get(T_STATUS) == "ok":
                if T_SUPERSEDED not in run.data.tags:
                    key = _identity(run.data.tags.get(T_FINISHED, ""), run.data.metrics.get("total_seconds"))
                    finished[cid].append((run.info.run_id, key))
            elif status in ("RUNNING", "SCHEDULED"):
                unfinished[cid].append(run.info.run_id)
        return dict(finished), dict(unfinished)

    # -- curves ------------------------------------------------------------------------------
    def log_curves(self, parent_id: str, records: Iterable[CellRecord]) -> None:
        """Per (dataset, method configuration, score): mean over folds and seeds at step = G."""
        groups: dict[tuple[str, str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        labels: dict[str, str] = {}
        for rec in records:
            if not rec.ok:
                continue
            c = rec.cell
            labels[mlflow_key(f"curve_label.{c.method}.{c.config_hash}")] = _value(f"{c.method} ({rec.method.label})", _TAG_LEN)
            for k, v in rec.scores.items():
                groups[(c.dataset, c.config_hash, c.method, k)][int(c.n_genes)].append(float(v))
        by_step: dict[int, dict[str, float]] = defaultdict(dict)
        for (ds, config_hash, method, k), points in groups.items():
            key = mlflow_key(f"curve.{ds}.{config_hash}.{method}.{k}")
            for g, vals in points.items():
                finite = [v for v in vals if math.isfinite(v)]
                if finite:
                    by_step[g][key] = sum(finite) / len(finite)
        for g, metrics in sorted(by_step.items()):
            self._log(parent_id, metrics=metrics, step=g)
        self._log(parent_id, tags=labels)


def _identity(finished: str, total_seconds) -> tuple:
    """Which computation a record is: its finish time (to the second) and its measured run time."""
    return finished, None if total_seconds is None else float(total_seconds)


def _stderr(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr)
