"""The results API: finished cells as one DataFrame, whichever source was read, plus what plots need.

``load_results`` reads the results store or MLflow (``sources.py``) and returns ``Results``. Its
frame is built by one function from ``CellRecord.to_row()`` rows, so both sources give the same
columns (ROW_COLUMNS, the scores sorted by name, then COST_COLUMNS), dtypes and row order.

    res = load_results("flag-bench-results", source=ResultSource.AUTO)
    res.frame()               one row per finished cell
    res.failed()              failed cells: one-line error and where the traceback is
    res.per_slide()           cell_id, slide, metric, value
    res.per_gene(cell_id)     the cell's per-gene metrics (slide, gene, one column per metric)
    res.predictions(cell_id)  AnnData: X predictions, layers['truth'] (rebuilt from the dataset when the
                              file holds none), obs slide/barcode, spatial coords
    res.curves("pcc_mean")    metric vs G per dataset and method configuration: mean, std, n
    res.where(Filter(...))    the same API over a subset (--datasets, --methods, --genes, --since)
    res.finished_at(cell_id)  when the cell's record was written (ISO text)
    res.panel_stats(cell_id)  the cell's panel statistics (panel.stats of its record)
    res.code_versions()       cell_id -> the code version its record was computed with (None: unknown)
    res.nan_slides(cell_id)   score -> (test slides whose score is NaN, test slides), where some are
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from flag_bench.errors import UserError
from flag_bench.record import COST_COLUMNS, INT_COLUMNS, ROW_COLUMNS
from flag_bench.spec import ResultSource
from flag_bench.leaderboard.sources import Bundle, Loaded, from_bundles, from_mlflow, from_store, open_bundles

# rows sort by what a reader scans for; cell_id makes the order total
SORT_COLUMNS = ["dataset", "n_genes", "method", "config_hash", "fold", "seed", "cell_id"]
CONFIG_COLUMNS = ["dataset", "method", "config_hash"]  # one method configuration on one dataset
FAILED_COLUMNS = ["cell_id", "dataset", "n_genes", "method", "config_hash", "config_label", "fold", "seed",
                  "stage", "error", "traceback", "finished"]


def results_frame(rows: Iterable[dict[str, Any]]):
    """``CellRecord.to_row()`` rows -> the one results DataFrame (canonical columns, dtypes, order)."""
    import pandas as pd

    df = pd.DataFrame.from_records(list(rows))
    for c in ROW_COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series(dtype="int64" if c in INT_COLUMNS else "object")
    scores = sorted(c for c in df.columns if c not in ROW_COLUMNS and c not in COST_COLUMNS)
    df = df[[*ROW_COLUMNS, *scores, *(c for c in COST_COLUMNS if c in df.columns)]]
    for c in df.columns:
        if c in INT_COLUMNS and not df[c].isna().any():
            df[c] = df[c].astype("int64")
        elif c not in ROW_COLUMNS:
            df[c] = df[c].astype("float64")
    return df.sort_values(SORT_COLUMNS, kind="stable").reset_index(drop=True)


def curves(frame, metric: str):
    """Metric vs G per dataset x method configuration: mean, std (ddof 1) and n of the finite values."""
    import pandas as pd

    check_metric(frame, metric)
    out = []
    for key, g in frame.groupby([*CONFIG_COLUMNS, "n_genes"], sort=True):
        v = [x for x in g[metric].to_numpy(dtype=float) if math.isfinite(x)]
        mean = sum(v) / len(v) if v else math.nan
        std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else math.nan
        out.append({**dict(zip([*CONFIG_COLUMNS, "n_genes"], key)), "config_label": joined_labels(g["config_label"]),
                    "mean": mean, "std": std, "n": len(v)})
    cols = [*CONFIG_COLUMNS, "config_label", "n_genes", "mean", "std", "n"]
    return pd.DataFrame(out, columns=cols).astype({"n_genes": "int64", "n": "int64"})


def joined_labels(config_labels) -> str:
    """The config label(s) of one configuration: two when one config was reached through two presets."""
    return " = ".join(sorted(set(config_labels)))


def check_metric(frame, metric: str) -> None:
    if metric not in frame.columns or metric in ROW_COLUMNS or metric in COST_COLUMNS:
        known = sorted(c for c in frame.columns if c not in ROW_COLUMNS and c not in COST_COLUMNS)
        raise UserError(f"--metric {metric}: no such score in these results (scores: {', '.join(known) or 'none'})")


class Results:
    """What one results source holds, in source-blind frames (see the module docstring)."""

    def __init__(self, loaded: Loaded, flt=None):
        self._loaded = loaded
        self.source: ResultSource = loaded.source
        self.filter = flt
        rows, failures = loaded.rows, loaded.failures
        if flt is not None and not flt.empty:
            fin = loaded.finished
            rows = [r for r in rows if flt.keep(r["dataset"], r["dataset_spec"], r["method"], r["n_genes"],
                                                fin.get(r["cell_id"], ""), r.get("split"), r.get("encoder"))]
            failures = [f for f in failures if flt.keep(f.row.get("dataset", ""), f.row.get("dataset_spec", ""),
                                                        f.row.get("method", ""), f.row.get("n_genes", 0), f.finished,
                                                        f.row.get("split"), f.row.get("encoder"))]
        self._failures = failures
        self._frame = results_frame(rows)
        self._panels: dict[str, dict] = {}

    def where(self, flt) -> "Results":
        """These results narrowed by a ``filters.Filter`` (a value matching nothing: UserError)."""
        from flag_bench.leaderboard.filters import check_matches

        check_matches(flt, self._frame, self.failed())
        return Results(self._loaded, flt)

    def all_finished(self) -> set[str]:
        """Ids of every finished cell of the source, whatever the filter."""
        return {r["cell_id"] for r in self._loaded.rows}

    def finished_at(self, cell_id: str) -> str:
        return self._loaded.finished.get(cell_id, "")

    def panel_stats(self, cell_id: str) -> dict:
        """The panel statistics of a cell's record; one record read per panel (a fold's cells share it)."""
        row = self._frame.loc[self._frame["cell_id"] == cell_id]
        if row.empty:
            raise UserError(f"cell {cell_id}: not a finished cell of these results ({self.source} source)")
        panel_id = str(row["panel_id"].iloc[0])
        if panel_id not in self._panels:
            if self._loaded.record is None:
                raise UserError(f"cell {cell_id}: this results source cannot read full records")
            rec = self._loaded.record(cell_id)
            self._panels[panel_id] = dict(rec.panel.stats) if rec.panel is not None else {}
        return self._panels[panel_id]

    def code_versions(self) -> dict[str, str | None]:
        """cell_id -> ``record.code_version`` of each finished cell here (None: not recorded)."""
        versions = self._loaded.versions
        return {cid: versions.get(cid) for cid in self._frame["cell_id"]}

    def hardware(self) -> dict[str, str]:
        """cell_id -> where each finished cell here was computed (``sources.hardware_signature``);
        empty unless read from bundles (``load_bundles``), the only reports that mark hardware."""
        hw = self._loaded.hardware
        return {cid: hw[cid] for cid in self._frame["cell_id"] if cid in hw}

    @property
    def remarks(self) -> tuple[str, ...]:
        """What a reader should hear about how these results were merged (on stderr)."""
        return self._loaded.remarks

    @property
    def bundles(self) -> tuple[Bundle, ...]:
        return self._loaded.bundles

    def nan_slides(self, cell_id: str) -> dict[str, tuple[int, int]]:
        """score -> (test slides whose score is NaN, test slides) for the scores whose cell mean left
        out some, not all, of the cell's slides (the mean then stands on fewer slides than it has)."""
        slides = self._loaded.per_slide.get(cell_id) or {}
        out = {}
        for k in sorted({k for d in slides.values() for k in d}):
            n_nan = sum(1 for d in slides.values() if math.isnan(float(d.get(k, math.nan))))
            if 0 < n_nan < len(slides):
                out[k] = (n_nan, len(slides))
        return out

    def frame(self):
        return self._frame.copy()

    def failed(self):
        import pandas as pd

        rows = [{**{c: f.row[c] for c in FAILED_COLUMNS if c in f.row}, "stage": f.stage, "error": f.error,
                 "traceback": f.traceback, "finished": f.finished} for f in self._failures]
        df = pd.DataFrame(rows, columns=FAILED_COLUMNS).astype({"n_genes": "int64", "seed": "int64"})
        return df.sort_values([c for c in SORT_COLUMNS if c in df.columns], kind="stable").reset_index(drop=True)

    def per_slide(self):
        import pandas as pd

        keep = set(self._frame["cell_id"])
        rows = [(cid, slide, metric, float(v)) for cid, slides in self._loaded.per_slide.items() if cid in keep
                for slide, scores in slides.items() for metric, v in scores.items()]
        df = pd.DataFrame(rows, columns=["cell_id", "slide", "metric", "value"])
        return df.sort_values(["cell_id", "slide", "metric"], kind="stable").reset_index(drop=True)

    def _artifact(self, cell_id: str, name: str) -> Path:
        if cell_id not in set(self._frame["cell_id"]):
            raise UserError(f"cell {cell_id}: not a finished cell of these results ({self.source} source)")
        path = self._loaded.fetch(cell_id, name)
        if not path.is_file():
            raise UserError(f"cell {cell_id}: its artifact {name} is missing ({path})")
        return path

    def per_gene(self, cell_id: str):
        import pandas as pd

        return pd.read_csv(self._artifact(cell_id, "per_gene_metrics.csv"))

    def predictions(self, cell_id: str):
        """The cell's predictions.h5ad with ``layers['truth']``: as stored by files written before
        the truth left the artifacts, else rebuilt from the dataset the record names
        (leaderboard/truth.py)."""
        import anndata as ad

        adata = ad.read_h5ad(self._artifact(cell_id, "predictions.h5ad"))
        if "truth" not in adata.layers:
            if self._loaded.record is None:
                raise UserError(f"cell {cell_id}: its predictions hold no truth and this results source cannot "
                                "read the record it is rebuilt from")
            from flag_bench.leaderboard.truth import add_truth

            add_truth(adata, self._loaded.record(cell_id))
        return adata

    def curves(self, metric: str):
        return curves(self._frame, metric)


def load_results(results_dir: str | Path, *, source: ResultSource | str = ResultSource.AUTO,
                 tracking_uri: str | None = None, suite: str | None = None) -> Results:
    """AUTO reads MLflow when a tracking URI is given or the results dir has mlflow.db, else the store."""
    from flag_bench.tracking import default_tracking_uri

    results_dir = Path(results_dir)
    source = ResultSource.parse(source, "--source")
    db = results_dir / "mlflow.db"
    if source is ResultSource.AUTO:
        source = ResultSource.MLFLOW if tracking_uri is not None or db.exists() else ResultSource.STORE
    if source is ResultSource.STORE:
        if not (results_dir / "cells").is_dir():
            raise UserError(f"--results-dir {results_dir}: no results here; "
                            f"run `flag-bench run --results-dir {results_dir}` first")
        return Results(from_store(results_dir, suite))
    if tracking_uri is None and not db.exists():
        raise UserError(f"--results-dir {results_dir}: no mlflow.db here; use --source store or --tracking-uri")
    return Results(from_mlflow(tracking_uri or default_tracking_uri(results_dir), suite, results_dir))


def load_bundles(paths: Iterable[str | Path], *, suite: str | None = None, flt=None) -> Results:
    """One ``Results`` over bundles written by ``flag-bench export``, each verified against its
    manifest first (``flag_bench.bundle.open_bundle``). Rows of two bundles that would share a
    board (dataset x G; ``flt``, a filters.Filter, narrows which do) with different protocol
    versions, dataset versions or panels are refused, naming both bundles and what differs."""
    bundles = open_bundles(paths)
    return Results(from_bundles(bundles, suite, flt))


def bundle_notes(res: Results, suite: str | None = None):
    """``notes.gather`` over every bundle of ``res``: the same failed and planned-but-missing cells
    a report of each exported results dir lists, each planned cell counted once, and rerun
    commands that name the exported results dir (its name: the bundle never holds its path)."""
    from flag_bench.leaderboard.notes import EXAMPLES, MissingGroup, Notes, gather
    from flag_bench.store import ResultsStore

    planned: set[str] = set()  # cells an earlier bundle's plans named: listed once
    failed: tuple = ()
    groups: dict[str, tuple[int, list[str]]] = {}
    running = 0
    rerun: list[tuple[str, ...]] = []
    for b in res.bundles:
        notes = gather(_SeenAlso(res, frozenset(planned)), b.folder, suite=suite)
        failed = notes.failed  # from the merged results: the same for every bundle
        running += notes.running
        for g in notes.missing:
            count, examples = groups.get(g.label, (0, []))
            groups[g.label] = (count + g.count, [*examples, *g.examples][:EXAMPLES])
        for argv in notes.rerun:
            i = argv.index("--results-dir") + 1
            argv = (*argv[:i], b.results_dir_name, *argv[i + 1:])
            if argv not in rerun:
                rerun.append(argv)
        planned |= {str(c["cell_id"]) for p in ResultsStore(b.folder).plans()
                    if suite is None or str((p.get("grid_spec") or {}).get("suite", "default")) == suite
                    for c in p.get("cells", []) if c.get("cell_id")}
    missing = tuple(MissingGroup(label, n, tuple(ex)) for label, (n, ex) in sorted(groups.items()))
    return Notes(failed, missing, running, tuple(rerun))


class _SeenAlso:
    """``res`` as ``notes.gather`` reads it, with ``extra`` cells counted as finished: planned
    cells that an earlier bundle already lists."""

    def __init__(self, res: Results, extra: frozenset[str]):
        self._res, self._extra = res, extra
        self.filter = res.filter

    def frame(self):
        return self._res.frame()

    def failed(self):
        return self._res.failed()

    def all_finished(self) -> set[str]:
        return self._res.all_finished() | self._extra
