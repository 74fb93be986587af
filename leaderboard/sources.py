"""Where results come from: the results store or MLflow, both read into one source-blind shape.

Each loader returns a ``Loaded``: the rows of finished cells (``CellRecord.to_row()``, rebuilt
exactly from MLflow by ``flag_bench.tracking.decode_run``), their scores per slide, the failed
cells, and a way to fetch a cell's artifact file. Everything after this (``results.py``) never
asks which source it reads, which is what makes the two reports identical.

Both sides keep one run of a cell: its latest finished record (a ``--force`` rerun replaces the
store's record and tags the MLflow run it replaces superseded, which is never read), and list a
cell as failed only when it has no finished record.

A results dir can be copied or moved: MLflow records the local artifact store as an absolute
path, so a run's artifacts are looked up under ``<results-dir>/mlartifacts`` first.

Suites are views over cells: the suite is not part of a cell's id, so a run under suite B reuses
a cell that a run under suite A finished. A suite's cells are the cells of every plan written
under that suite (``ResultsStore.plans()``), plus the cells whose record was computed under it.
Both sources apply this one rule: the store to its records; MLflow to the cell runs of every
flag-bench experiment (a cell is logged once, in the experiment of the suite that computed it),
taking a run's suite from the record's protocol (its ``protocol`` param), else its experiment.

Bundles (``flag-bench export``, flag_bench/bundle.py) are results stores: ``from_bundles`` reads
each verified bundle with ``from_store`` and merges them (the first bundle holding a cell wins),
after refusing two bundles that would put rows of different protocol versions, dataset versions,
panels or gene sets on one board. It alone records where each cell ran (``hardware_signature``), which the
report uses to mark rows computed on other hardware than most of their board's cells.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flag_bench.errors import UserError, one_line
from flag_bench.record import CellRecord, code_version
from flag_bench.spec import ResultSource


@dataclass(frozen=True)
class Failure:
    row: dict[str, Any]  # to_row() of the failed record: its identity columns
    stage: str
    error: str  # one line
    traceback: str  # where the full traceback is: a record file, or an MLflow artifact URI
    finished: str


@dataclass
class Loaded:
    source: ResultSource
    rows: list[dict[str, Any]]
    per_slide: dict[str, dict[str, dict[str, float]]]  # cell_id -> slide -> score -> value
    failures: list[Failure]
    fetch: Callable[[str, str], Path]  # (cell_id, artifact file name) -> a local path
    keep: Any = field(default=None, repr=False)  # what must live as long as fetch (a temp dir)
    finished: dict[str, str] = field(default_factory=dict)  # cell_id -> the record's finish time
    # cell_id -> its full CellRecord (what the row leaves out: panel stats); MLflow fetches an artifact
    record: Callable[[str], CellRecord] | None = None
    versions: dict[str, str | None] = field(default_factory=dict)  # cell_id -> record.code_version (None: unknown)
    # --from bundles only: cell_id -> where it was computed (hardware_signature), what the reader
    # should hear on stderr (a cell two bundles disagree on), and the bundles read
    hardware: dict[str, str] = field(default_factory=dict)
    remarks: tuple[str, ...] = ()
    bundles: tuple["Bundle", ...] = ()


# -- the results store --------------------------------------------------------------------------
def from_store(results_dir: Path, suite: str | None) -> Loaded:
    from flag_bench.store import ResultsStore

    store = ResultsStore(results_dir)
    planned = suite_cells(results_dir, suite)
    mine = (lambda rec: True) if suite is None else (lambda rec: in_suite(suite, planned, rec.cell_id,
                                                                          rec.protocol.get("suite")))
    finished = [rec for rec in store.records() if mine(rec)]
    done = {rec.cell_id for rec in finished}
    latest: dict[str, tuple[CellRecord, Path]] = {}
    for path, rec in store.failures():
        if mine(rec) and rec.cell_id not in done:
            if rec.cell_id not in latest or rec.finished >= latest[rec.cell_id][0].finished:
                latest[rec.cell_id] = (rec, path)
    failures = [Failure(rec.to_row(), rec.error.stage, one_line(rec.error.message), str(path), rec.finished)
                for rec, path in latest.values() if rec.error is not None]  # a failure carries its error

    def fetch(cell_id: str, name: str) -> Path:
        return store.artifact_dir(cell_id) / name

    by_id = {rec.cell_id: rec for rec in finished}
    return Loaded(ResultSource.STORE, [rec.to_row() for rec in finished],
                  {rec.cell_id: {s: dict(d) for s, d in rec.scores_per_slide.items()} for rec in finished},
                  failures, fetch, finished={rec.cell_id: rec.finished for rec in finished},
                  record=by_id.__getitem__, versions={rec.cell_id: code_version(rec.provenance) for rec in finished})


# -- suites -------------------------------------------------------------------------------------
def suite_cells(results_dir: Path | None, suite: str | None) -> frozenset[str]:
    """The cell ids of every plan written under ``suite`` into ``results_dir`` (empty for no suite)."""
    if suite is None or results_dir is None or not (Path(results_dir) / "plans").is_dir():
        return frozenset()
    from flag_bench.store import ResultsStore

    return frozenset(c["cell_id"] for p in ResultsStore(results_dir).plans()
                     if str((p.get("grid_spec") or {}).get("suite", "default")) == suite
                     for c in p.get("cells", []) if c.get("cell_id"))


def in_suite(suite: str, planned: frozenset[str], cell_id: str, computed_under: str | None) -> bool:
    """Whether a cell shows in ``suite``'s leaderboard: planned by it, or computed under it."""
    return cell_id in planned or computed_under == suite


# -- MLflow -------------------------------------------------------------------------------------
def _suite_of(experiment: str) -> str | None:
    parts = experiment.split("/")
    return "/".join(parts[1:-1]) if len(parts) >= 3 and parts[0] == "flag-bench" else None


def _run_suite(run, experiment_suite: str | None) -> str | None:
    """The suite a cell run's record was computed under: its protocol param (cut when over
    MLflow's length limit), else the experiment it was logged into."""
    import json

    try:
        protocol = json.loads(run.data.params.get("protocol", ""))
        if isinstance(protocol, dict) and "suite" in protocol:
            return str(protocol["suite"])
    except ValueError:
        pass
    return experiment_suite


def _cell_runs(client, suite: str | None, planned: frozenset[str] = frozenset()) -> list:
    from mlflow.entities import ViewType

    from flag_bench.tracking import T_CELL, T_SUPERSEDED, paged

    # every flag-bench experiment: a suite also shows the cells it planned that another suite computed
    exps = {e.experiment_id: _suite_of(e.name)
            for e in paged(lambda t: client.search_experiments(view_type=ViewType.ACTIVE_ONLY, page_token=t))
            if _suite_of(e.name) is not None}
    if not exps:
        return []
    pages = paged(lambda t: client.search_runs(list(exps), filter_string="tags.`flag_bench.level` = 'cell'",
                                                max_results=5000, page_token=t))
    # a run still RUNNING was cut short while being logged; the store re-logs that cell. A superseded
    # run logged a record that a --force rerun replaced
    runs = [r for r in pages if r.info.status in ("FINISHED", "FAILED") and T_SUPERSEDED not in r.data.tags]
    if suite is None:
        return runs
    return [r for r in runs if in_suite(suite, planned, r.data.tags.get(T_CELL, ""),
                                        _run_suite(r, exps.get(r.info.experiment_id)))]


def _latest(runs: list) -> dict[str, Any]:
    """cell_id -> its latest run, by the record's finish time then the run's start."""
    out: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: (r.data.tags.get("flag_bench.finished", ""), r.info.start_time)):
        out[run.data.tags["flag_bench.cell_id"]] = run
    return out


def from_mlflow(uri: str, suite: str | None, results_dir: Path | None = None) -> Loaded:
    """``results_dir``: where the MLflow database's results dir is now (its ``mlartifacts`` is
    read in place, wherever the database recorded it)."""
    from flag_bench.tracking import (RECORD_ARTIFACT, T_ERROR, T_FINISHED, T_STAGE, T_STATUS, T_VERSION,
                                     TRACEBACK_ARTIFACT, decode_run, download, fetch_record, open_client)

    client = open_client(uri)
    runs = _cell_runs(client, suite, suite_cells(results_dir, suite))
    ok = _latest([r for r in runs if r.data.tags.get(T_STATUS) == "ok"])
    bad = _latest([r for r in runs if r.data.tags.get(T_STATUS) == "failed"])
    rows, per_slide = [], {}
    for cell_id, run in ok.items():
        row, per_slide[cell_id] = decode_run(run, client)
        rows.append(row)
    failures = []
    for cell_id, run in bad.items():
        if cell_id not in ok:
            tags = run.data.tags
            where = relocated(run.info.artifact_uri, results_dir)
            failures.append(Failure(decode_run(run, client)[0], tags.get(T_STAGE, ""), tags.get(T_ERROR, ""),
                                    f"{where}/{TRACEBACK_ARTIFACT}", tags.get(T_FINISHED, "")))
    tmp = tempfile.TemporaryDirectory(prefix="flag-bench-artifacts-")

    def fetch(cell_id: str, name: str) -> Path:
        local = local_artifact(relocated(ok[cell_id].info.artifact_uri, results_dir), name)
        if local is not None:
            return local
        dst = Path(tmp.name) / cell_id
        if (dst / name).exists():
            return dst / name
        dst.mkdir(exist_ok=True)
        try:
            return download(client, ok[cell_id].info.run_id, name, dst)
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise UserError(f"cell {cell_id}: MLflow run {ok[cell_id].info.run_id} has no artifact {name} "
                            f"({type(exc).__name__})") from None

    def record(cell_id: str) -> CellRecord:
        local = local_artifact(relocated(ok[cell_id].info.artifact_uri, results_dir), RECORD_ARTIFACT)
        if local is None:
            return fetch_record(client, ok[cell_id].info.run_id)
        return CellRecord.loads(local.read_text(), where=f"MLflow run {ok[cell_id].info.run_id} {RECORD_ARTIFACT}")

    return Loaded(ResultSource.MLFLOW, rows, per_slide, failures, fetch, keep=tmp,
                  finished={cid: run.data.tags.get(T_FINISHED, "") for cid, run in ok.items()}, record=record,
                  versions={cid: run.data.tags.get(T_VERSION) for cid, run in ok.items()})


def relocated(artifact_uri: str, results_dir: Path | None) -> str:
    """A run's local artifact folder as found under ``results_dir`` now: MLflow records
    ``<results-dir>/mlartifacts/<run id>/artifacts`` with the absolute path of the time, which a
    copied or moved results dir no longer has. The folder under ``results_dir`` wins when it
    exists (a copy's own artifacts); otherwise the URI as recorded (a remote store, another place)."""
    from flag_bench.tracking import ARTIFACT_ROOT, file_path

    path = file_path(artifact_uri)
    if path is None or results_dir is None or ARTIFACT_ROOT not in path.parts:
        return artifact_uri
    i = len(path.parts) - 1 - path.parts[::-1].index(ARTIFACT_ROOT)
    here = Path(results_dir).resolve().joinpath(ARTIFACT_ROOT, *path.parts[i + 1:])
    return here.as_uri() if here.is_dir() else artifact_uri


def local_artifact(artifact_uri: str, name: str) -> Path | None:
    """An artifact of a run whose artifact store is a local folder (``file://`` or a path, the default
    ``<results-dir>/mlartifacts``): its path, read in place. MLflow's download API copies the file
    through the client at ~40 ms a call, which is most of a 500-cell report's time. None for a
    remote store, or when the file is not there (the download then says what is missing)."""
    from flag_bench.tracking import file_path

    base = file_path(artifact_uri)
    if base is None:
        return None
    path = base / name
    return path if path.is_file() else None


# -- bundles (flag-bench export) ----------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    """One ``--from`` bundle: as the user named it, its verified folder and its bundle.json."""

    name: str
    folder: Path
    info: dict[str, Any]

    @property
    def results_dir_name(self) -> str:
        """The exported results dir's name (never its path): what a rerun command names."""
        return str(self.info.get("results_dir_name") or "flag-bench-results")

    def where(self, path: Path) -> str:
        """A file of this bundle as the user can find it: in the folder, or inside the archive."""
        rel = path.relative_to(self.folder).as_posix()
        return str(Path(self.name) / rel) if Path(self.name).is_dir() else f"{rel} in {self.name}"


def open_bundles(paths) -> tuple[Bundle, ...]:
    from flag_bench.bundle import open_bundle, read_info

    out = []
    for p in paths:
        folder = open_bundle(p)
        out.append(Bundle(str(p), folder, read_info(folder, str(p))))
    return tuple(out)


def hardware_signature(provenance, environment) -> str:
    """Where a cell was computed, as one text: the device (a GPU's model) and the CPU model; the
    CPU from the bundle's exporting machine where the record has none (written before it was
    recorded). A cell run by a cluster engine names its node's device only: its recorded CPU is
    the submitting machine's."""
    device = str(provenance.get("device_name") or provenance.get("device") or "unknown device")
    cpu = provenance.get("cpu_model") if "cpu_model" in provenance else (environment or {}).get("cpu_model")
    if provenance.get("scheduler"):
        cpu = None
    return f"{device}, {cpu}" if cpu else device


def _check_boards(bundles: tuple[Bundle, ...], loaded: list[Loaded]) -> None:
    """Refuse two bundles whose rows would share a board (dataset x G) but not what a score means:
    protocol version, dataset version, panel selector and parameters, a fold's panel, the gene sets
    scored as pathways. What one
    bundle pools on its own is left as its results dir's report leaves it."""
    # (board, what) -> value -> the bundles with rows of that value, in --from order
    values: dict[tuple[tuple[str, int], str], dict[str, list[str]]] = {}
    for b, ld in zip(bundles, loaded):
        assert ld.record is not None  # the store reader reads full records
        for row in ld.rows:
            rec = ld.record(row["cell_id"])
            board = (rec.cell.dataset, int(rec.cell.n_genes))
            what = {"protocol version": rec.cell.protocol_version, "dataset version": rec.cell.dataset_version,
                    "panel": f"{rec.cell.panel.split(':')[0]} {json.dumps(rec.cell.panel_params, default=str)}",
                    f"panel of {rec.cell.split} fold {rec.cell.fold}": rec.panel.panel_id if rec.panel else "",
                    # PathPCC means the sets it averaged (name@sha256); "" where none were scored
                    "gene sets": rec.cell.gene_sets or "none"}
            for key, value in what.items():
                seen = values.setdefault((board, key), {}).setdefault(str(value), [])
                if b.name not in seen:
                    seen.append(b.name)
    for (board, key), by_value in values.items():
        pairs = [((v, x), (w, y)) for v, xs in by_value.items() for w, ys in by_value.items() if v != w
                 for x in xs for y in ys if x != y]
        if pairs:
            first = min(pairs, key=lambda p: ([b.name for b in bundles].index(p[0][1]),
                                              [b.name for b in bundles].index(p[1][1])))
            _refuse(board, key, *first)


def _refuse(board: tuple[str, int], what: str, a: tuple[str, str], b: tuple[str, str]) -> None:
    raise UserError(f"--from {a[1]} and --from {b[1]} put rows on one board ({board[0]} G={board[1]}) but differ "
                    f"in {what}: {a[0]} vs {b[0]}; their scores do not mean the same: report them apart "
                    "(or narrow with --datasets/--genes)")


def _differing(a: CellRecord, b: CellRecord, n: int = 3) -> list[str]:
    import math

    out = []
    for k in sorted(set(a.scores) | set(b.scores)):
        x, y = a.scores.get(k), b.scores.get(k)
        same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        if not same:
            out.append(f"{k} {x!r} vs {y!r}")
    return out[:n] + ([f"{len(out) - n} more"] if len(out) > n else [])


def from_bundles(bundles: tuple[Bundle, ...], suite: str | None, flt=None) -> Loaded:
    """One source over several verified bundles, each read by the store reader. A cell in two
    bundles is taken from the first (a note says so when their scores differ); a cell is failed
    only when no bundle has it finished. ``flt`` (a filters.Filter) narrows the board check to
    the rows a report shows, so two labs' boards can be reported apart from one set of bundles."""
    loaded = [from_store(b.folder, suite) for b in bundles]
    if flt is not None and not flt.empty:
        shown = [_kept(ld, flt) for ld in loaded]
    else:
        shown = loaded
    _check_boards(bundles, shown)
    owner: dict[str, int] = {}
    remarks: list[str] = []
    for i, ld in enumerate(loaded):
        assert ld.record is not None
        for row in ld.rows:
            cid = row["cell_id"]
            if cid not in owner:
                owner[cid] = i
                continue
            first = loaded[owner[cid]]
            assert first.record is not None
            diff = _differing(first.record(cid), ld.record(cid))
            if diff:
                remarks.append(f"cell {cid} is in --from {bundles[owner[cid]].name} and --from {bundles[i].name} "
                               f"with different scores ({'; '.join(diff)}): the board shows the first's")
    latest: dict[str, tuple[Failure, int]] = {}
    for i, ld in enumerate(loaded):
        for f in ld.failures:
            cid = str(f.row["cell_id"])
            if cid not in owner and (cid not in latest or f.finished >= latest[cid][0].finished):
                latest[cid] = (f, i)
    failures = [dataclasses.replace(f, traceback=bundles[i].where(Path(f.traceback))) for f, i in latest.values()]
    def record(cell_id: str) -> CellRecord:
        read = loaded[owner[cell_id]].record
        assert read is not None  # the store reader reads full records
        return read(cell_id)

    hardware = {cid: hardware_signature(record(cid).provenance, bundles[i].info.get("environment"))
                for cid, i in owner.items()}

    def fetch(cell_id: str, name: str) -> Path:
        return loaded[owner[cell_id]].fetch(cell_id, name)

    rows = [row for i, ld in enumerate(loaded) for row in ld.rows if owner[row["cell_id"]] == i]
    pick = {cid: loaded[i] for cid, i in owner.items()}
    return Loaded(ResultSource.STORE, rows, {cid: ld.per_slide[cid] for cid, ld in pick.items()}, failures, fetch,
                  finished={cid: ld.finished[cid] for cid, ld in pick.items()}, record=record,
                  versions={cid: ld.versions.get(cid) for cid, ld in pick.items()}, hardware=hardware,
                  remarks=tuple(remarks), bundles=bundles)


def _kept(ld: Loaded, flt) -> Loaded:
    fin = ld.finished
    rows = [r for r in ld.rows if flt.keep(r["dataset"], r["dataset_spec"], r["method"], r["n_genes"],
                                           fin.get(r["cell_id"], ""), r.get("split"), r.get("encoder"))]
    return dataclasses.replace(ld, rows=rows)
