"""`flag-bench reproduce CELL_ID`: recompute one recorded cell and compare every metric (issue 25).

The record says everything the cell was computed from (flag_bench/record.py): its ``Cell``
(dataset version, panel, method, preset and config hash, fold, seed, ...), the user's overrides,
the protocol card (encoder and its weights' sha256) and the code version. Reproducing it:

1. read the finished record (a results store or a verified bundle laid out like one);
2. refuse, before anything is computed, when what the numbers depend on is not what the record
   names: another code version (unless allowed: then no bit-identity is promised), encoder or
   method weights or a gene set file whose sha256 differs, a dataset whose content version changed;
3. plan the cell again from a ``RunConfig`` rebuilt from the record and take the task whose
   ``cell_id`` is the record's (none: say which ``Cell`` field now differs);
4. compute it here with ``cell.run_cell`` on the record's device and torch thread count (float32
   reductions split across threads: the same seed, device and thread count give the same bits),
   its artifacts in a temporary folder, never over the stored ones;
5. compare every score and per-slide score: bit-identical (NaN equal to NaN) when device, thread
   count and code are the record's, else within ``atol + rtol * |recorded|``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from flag_bench import resolve
from flag_bench.cell import run_cell
from flag_bench.config import RunConfig
from flag_bench.errors import UserError, one_line
from flag_bench.gene_sets import spec_from_protocol
from flag_bench.grid import Cell
from flag_bench.plan import CellTask, plan_grid
from flag_bench.record import CellRecord, code_version
from flag_bench.spec import DatasetSpec
from flag_bench.store import ResultsStore

# across devices, thread counts or code versions float32 reductions differ in their last bits and
# a trained model drifts further: half a unit of the third decimal a leaderboard prints, or 0.1 %
DEFAULT_ATOL = 5e-4
DEFAULT_RTOL = 1e-3


@dataclass(frozen=True)
class Tolerance:
    """How a new value must match its recorded one: exactly (``exact``), or within
    ``atol + rtol * |recorded|``. NaN matches NaN only; ``why`` says which rule applies and why."""

    exact: bool
    atol: float
    rtol: float
    why: str

    def agrees(self, recorded: float, new: float) -> bool:
        if math.isnan(recorded) or math.isnan(new):
            return math.isnan(recorded) and math.isnan(new)
        if self.exact or math.isinf(recorded) or math.isinf(new):
            return recorded == new
        return abs(new - recorded) <= self.atol + self.rtol * abs(recorded)

    def describe(self) -> str:
        rule = "bit-identical" if self.exact else f"|new - recorded| <= {self.atol:g} + {self.rtol:g} x |recorded|"
        return f"{rule} ({self.why})"


@dataclass(frozen=True)
class Comparison:
    """One score: its name (``slide / metric`` for a per-slide score), both values (NaN where
    missing: ``missing`` says on which side) and whether they agree."""

    name: str
    recorded: float
    new: float
    agrees: bool
    missing: str = ""  # "new": the recomputed cell has no such score; "recorded": only the new one has it

    @property
    def diff(self) -> float:
        if math.isnan(self.recorded) and math.isnan(self.new):
            return 0.0
        return abs(self.new - self.recorded)


@dataclass
class Reproduction:
    record: CellRecord
    new: CellRecord
    tolerance: Tolerance
    metrics: list[Comparison]
    per_slide: list[Comparison]
    checks: list[str] = field(default_factory=list)  # what was checked before computing, one line each

    @property
    def disagreeing(self) -> list[Comparison]:
        return [c for c in (*self.metrics, *self.per_slide) if not c.agrees]

    @property
    def ok(self) -> bool:
        return self.new.ok and not self.disagreeing


# -- 1. the record -----------------------------------------------------------------------------
def find_record(root: Path | str, cell_id: str, shown: str | None = None) -> CellRecord:
    """The finished record of the cell whose id is ``cell_id`` or starts with it. Unknown or
    ambiguous ids and cells that only failed are one-line errors naming the candidates; ``shown``
    names where the records are (default ``--results-dir ROOT``; a bundle's extracted folder is
    nobody's business)."""
    store = ResultsStore(root)
    shown = shown or f"--results-dir {root}"
    prefix = cell_id.strip()
    if not store.cells.is_dir():
        raise UserError(f"{shown}: no results here (no cells/ folder); give the results dir of a "
                        "`flag-bench run`, or --from BUNDLE")
    if not prefix:
        raise UserError("CELL_ID: empty; give a cell id or a unique prefix of one (cells/<id>.json)")
    ids = sorted({p.name.split(".", 1)[0] for p in store.cells.glob("*.json") if not p.name.startswith(".")})
    hits = [c for c in ids if c.startswith(prefix)]
    if not hits:
        shown = ", ".join(ids[:6]) + (f", ... ({len(ids)} in all)" if len(ids) > 6 else "")
        raise UserError(f"cell {prefix}: no record of {shown} has an id starting so "
                        f"(ids there: {shown or 'none'}); give an id listed there")
    if len(hits) > 1:
        shown = ", ".join(hits[:8]) + (", ..." if len(hits) > 8 else "")
        raise UserError(f"cell {prefix}: {len(hits)} records match ({shown}); give a longer prefix")
    cid = hits[0]
    path = store.record_path(cid)
    if path.exists():
        rec = CellRecord.loads(path.read_text(), where=f"record {path}")
        if rec.ok:
            return rec
    else:
        failures = sorted(store.cells.glob(f"{cid}.failed-*.json"))
        rec = CellRecord.loads(failures[-1].read_text(), where=f"record {failures[-1]}")
    why = one_line(rec.error.message) if rec.error else "no error recorded"
    raise UserError(f"cell {cid} failed ({why}): a failed cell has no scores to reproduce; compute it with "
                    "`flag-bench run` first")


# -- 2. the checks before computing ------------------------------------------------------------
def check_code(record: CellRecord, current: Mapping[str, Any], allow_other_code: bool) -> tuple[bool, str]:
    """(same code, one line). Other code refused unless ``allow_other_code``."""
    then, now = code_version(record.provenance), code_version(current)
    if then is not None and then == now:
        return True, f"code: {now}, as recorded"
    then_text = then or "not named in the record"
    if not allow_other_code:
        raise UserError(f"code version: the record was computed with flag-bench {then_text}, this is {now}; "
                        "install that version to reproduce the cell bit for bit, or pass --allow-other-code "
                        "to compare within a tolerance")
    return False, f"code: {now}, recorded {then_text} (--allow-other-code: not bit-identical)"


def check_encoder_weights(record: CellRecord) -> str:
    """The encoder's weights file now has the sha256 the record names (None: a built-in encoder)."""
    info = record.protocol.get("encoder_info") or {}
    name = str(record.protocol.get("encoder") or info.get("name") or record.cell.encoder.split("@")[0])
    w = info.get("weights")
    if not w:
        return f"encoder {name}: no weights file (built-in)"
    from flag_bench.datasets.encoders import file_sha256

    encoder = resolve.encoder(name)  # an encoder whose weights are not found now fails here, one line
    found = getattr(encoder, "weights_file", lambda: None)()
    if found is None:
        raise UserError(f"encoder {name}: no weights file found now; the record used {w.get('path')} "
                        f"(sha256 {str(w.get('sha256'))[:12]}); give the encoder that file")
    sha = file_sha256(Path(found))
    if sha != w.get("sha256"):
        raise UserError(f"encoder {name}: weights {found} have sha256 {sha[:12]}, the record used {w.get('path')} "
                        f"with sha256 {str(w.get('sha256'))[:12]}; give the encoder the recorded weights file")
    moved = "" if str(found) == str(w.get("path")) else f" (recorded at {w.get('path')})"
    return f"encoder {name}: weights {found}{moved}, sha256 {sha[:12]} as recorded"


def _strings(obj: Any, at: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, value) of every string in a JSON-like value."""
    if isinstance(obj, str):
        yield at, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _strings(v, f"{at}.{k}" if at else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{at}[{i}]")


def _recorded_hashes(obj: Any) -> Iterator[tuple[str, str]]:
    """(sha256 hex, the text of the mapping holding it) for every mapping with a ``*sha256`` key:
    what a method reported about a file it read (a FLAG gene table: its source and sha256)."""
    if isinstance(obj, Mapping):
        text = " ".join(v for _, v in _strings({k: v for k, v in obj.items() if not isinstance(v, Mapping)}))
        for k, v in obj.items():
            if str(k).endswith("sha256") and isinstance(v, str) and v:
                yield v, text
        for v in obj.values():
            yield from _recorded_hashes(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _recorded_hashes(v)


def check_method_files(record: CellRecord) -> list[str]:
    """Every file a method's config names (weights, gene tables) whose sha256 the record gives
    (in the method's summary) must have that sha256 now. Files with no recorded hash are listed
    as unchecked; a missing weights file also fails the method's own resource check at planning."""
    from flag_bench.datasets.encoders import file_sha256

    hashes = list(_recorded_hashes(record.method.summary))
    lines = []
    for key, value in _strings(record.method.config):
        if not value or ("/" not in value and "\\" not in value and not Path(value).suffix):
            continue  # a name, not a path
        known = [sha for sha, text in hashes if value in text]
        path = Path(value).expanduser()
        if not known:
            if path.is_file():
                lines.append(f"method {record.cell.method}: {key} = {value} (no sha256 in the record: not checked)")
            continue
        if not path.is_file():
            raise UserError(f"method {record.cell.method}: config {key} names {value}, which does not exist now "
                            f"(the record read sha256 {known[0][:12]}); restore that file")
        sha = file_sha256(path)
        if not any(sha.startswith(k) or k.startswith(sha) for k in known):
            raise UserError(f"method {record.cell.method}: config {key} file {value} has sha256 {sha[:12]}, the "
                            f"record read sha256 {known[0][:12]}; restore the file the cell was computed with")
        lines.append(f"method {record.cell.method}: {key} = {value}, sha256 {sha[:12]} as recorded")
    return lines


def check_dataset(record: CellRecord) -> str:
    """The dataset as its files are now has the content version the record was computed on."""
    cell = record.cell
    spec = DatasetSpec.parse(cell.dataset_spec)
    # the files as they are now, not this process's memo of them (a test or a session that loaded
    # the dataset before a file changed)
    resolve.forget_dataset(spec)
    ds = resolve.dataset(spec)
    if ds.version != cell.dataset_version:
        raise UserError(f"dataset {spec.key}: its content version is {ds.version} now, the cell was computed on "
                        f"version {cell.dataset_version}: its data files changed; restore the data the cell was "
                        "computed on, or compute the new data with `flag-bench run` (a new cell)")
    return f"dataset {spec.key}: version {ds.version}, as recorded"


# -- 3. the task -------------------------------------------------------------------------------
def _patch(key: str) -> tuple[float, int]:
    """PatchSpec.key() ("112um-224px") back to (size_um, size_px)."""
    try:
        um, px = key.split("um-")
        return float(um), int(px.removesuffix("px"))
    except ValueError:
        raise UserError(f"record: patch {key!r} is not of the form <um>um-<px>px; the record is damaged") from None


def recorded_gene_sets(record: CellRecord) -> str | None:
    """The ``--gene-sets`` value a cell scored pathways with (its protocol card), or None (none, or
    a record written before pathway scores)."""
    spec = spec_from_protocol(record.protocol)
    if spec is None and record.cell.gene_sets:
        raise UserError(f"cell {record.cell_id}: it scored gene sets {record.cell.gene_sets} but its protocol card "
                        "does not say which --gene-sets value read them; the record is damaged")
    return spec


def check_gene_sets(record: CellRecord) -> str | None:
    """The GMT file a cell scored pathways with has the sha256 the record names (None: no gene sets)."""
    spec = recorded_gene_sets(record)
    if spec is None:
        return None
    from flag_bench.gene_sets import expected_sha256_from_protocol, resolve_gene_sets

    sets = resolve_gene_sets(spec)  # a file that is gone fails here, one line
    want = expected_sha256_from_protocol(record.protocol)
    if want and sets.sha256 != want:
        raise UserError(f"gene sets {spec}: sha256 {sets.sha256[:12]} now, the cell scored pathways with sha256 "
                        f"{want[:12]}; restore the gene set file the cell was scored with")
    return f"gene sets {spec}: sha256 {sets.sha256[:12]}" + (" as recorded" if want else "")


def rebuild_config(record: CellRecord, *, device: str, results_dir: str) -> RunConfig:
    """The RunConfig that plans ``record``'s cell again (every fold: the match is by cell id)."""
    c, protocol = record.cell, record.protocol
    info = protocol.get("encoder_info") or {}
    size_um, size_px = _patch(c.patch)
    overrides = dict(record.method.overrides or {})
    kw: dict[str, Any] = dict(
        datasets=(c.dataset_spec,), methods=(c.method,), genes=(int(c.n_genes),), panel=c.panel, split=c.split,
        seeds=(int(c.seed),), preset=c.preset, device=device,
        encoder=str(protocol.get("encoder") or info.get("name") or c.encoder.split("@")[0]),
        patch_um=size_um, patch_px=size_px, target_transform=c.target_transform,
        suite=str(protocol.get("suite") or "default"), results_dir=results_dir,
        # a recorded overlap was allowed when the cell ran (by the user or the dataset's protocol)
        allow_patient_overlap=True if protocol.get("patient_overlap") else None,
        method_overrides={c.method: overrides} if overrides else {},
    )
    gene_sets = recorded_gene_sets(record)
    if gene_sets is not None:
        kw["gene_sets"] = gene_sets
    return RunConfig(**kw)


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


def cell_differences(then: Cell, now: Cell) -> list[str]:
    """``field: recorded X, now Y`` for every Cell field that differs."""
    out = []
    for f in fields(Cell):
        a, b = getattr(then, f.name, None), getattr(now, f.name, None)
        if a != b:
            out.append(f"{f.name}: recorded {_short(a)}, now {_short(b)}")
    return out


def rebuild_task(record: CellRecord, *, device: str, provenance: Mapping[str, Any], results_dir: str) -> CellTask:
    """Plan the record's cell again; the task whose cell id is the record's (else a one-line error
    naming the id the plan gives now and the Cell fields that differ)."""
    cfg = rebuild_config(record, device=device, results_dir=results_dir)
    plan = plan_grid(cfg, device=device, provenance=provenance, results_dir=results_dir)
    for task in plan.tasks:
        if task.cell.cell_id == record.cell_id:
            return task
    if not plan.tasks:
        raise UserError(f"cell {record.cell_id}: planning it again gives no cell; the record is damaged")
    near = next((t for t in plan.tasks if t.cell.fold == record.cell.fold), plan.tasks[0])
    diffs = "; ".join(cell_differences(record.cell, near.cell)) or "no field differs (another cell-id rule)"
    raise UserError(f"cell {record.cell_id}: planned again it is cell {near.cell.cell_id} ({diffs}); "
                    "reproduce it with the flag-bench version and inputs that planned it")


# -- 4. computing ------------------------------------------------------------------------------
@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """torch, OpenMP and BLAS at ``n`` threads whatever the machine's load (FLAG_BENCH_ADAPT_THREADS=0
    for the duration: the count the record's numbers were computed at)."""
    from flag_bench.cluster import threads

    before = os.environ.get(threads.ADAPT_ENV)
    os.environ[threads.ADAPT_ENV] = "0"
    try:
        threads.limit_threads(n)
        yield
    finally:
        if before is None:
            os.environ.pop(threads.ADAPT_ENV, None)
        else:
            os.environ[threads.ADAPT_ENV] = before


def current_provenance(device: str) -> dict[str, Any]:
    """This process's provenance as the driver records it (code version included)."""
    from flag_bench.driver import code_provenance
    from flag_bench.measure import provenance

    return code_provenance(provenance(device))


# -- 5. comparing ------------------------------------------------------------------------------
def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def compare_scores(recorded: Mapping[str, Any], new: Mapping[str, Any], tol: Tolerance,
                   prefix: str = "") -> list[Comparison]:
    """Every recorded score against the new one (a score missing from the new cell disagrees);
    scores only the new cell has are listed as agreeing, marked ``missing="recorded"``."""
    out = []
    for k in recorded:
        r = _num(recorded[k])
        if k not in new:
            out.append(Comparison(prefix + k, r, math.nan, False, "new"))
        else:
            n = _num(new[k])
            out.append(Comparison(prefix + k, r, n, tol.agrees(r, n)))
    out += [Comparison(prefix + k, math.nan, _num(new[k]), True, "recorded") for k in new if k not in recorded]
    return out


def compare(record: CellRecord, new: CellRecord, tol: Tolerance) -> tuple[list[Comparison], list[Comparison]]:
    """(per-cell scores, per-slide scores as ``slide / metric``)."""
    metrics = compare_scores(record.scores, new.scores, tol)
    per_slide: list[Comparison] = []
    for slide, scores in record.scores_per_slide.items():
        per_slide += compare_scores(scores, new.scores_per_slide.get(slide, {}), tol, f"{slide} / ")
    for slide in new.scores_per_slide:
        if slide not in record.scores_per_slide:
            per_slide += compare_scores({}, new.scores_per_slide[slide], tol, f"{slide} / ")
    return metrics, per_slide


def choose_tolerance(reasons: list[str], atol: float | None, rtol: float | None) -> Tolerance:
    """Bit-identity when nothing differs from the record's conditions (``reasons`` empty) and the
    user gave no tolerance; else ``atol`` / ``rtol`` (defaults DEFAULT_ATOL / DEFAULT_RTOL)."""
    a = DEFAULT_ATOL if atol is None else atol
    r = DEFAULT_RTOL if rtol is None else rtol
    if a < 0 or r < 0:
        raise UserError(f"--atol {a:g} --rtol {r:g}: tolerances must be 0 or more")
    if atol is not None or rtol is not None:
        why = "given on the command line" + (f"; {'; '.join(reasons)}" if reasons else "")
        return Tolerance(False, a, r, why)
    if reasons:
        return Tolerance(False, a, r, "; ".join(reasons))
    return Tolerance(True, 0.0, 0.0, "same device, thread count and code as the record")


def _device_name(prov: Mapping[str, Any]) -> str:
    return str(prov.get("device_name") or prov.get("device") or "")


def reproduce(root: Path | str, cell_id: str, *, device: str | None = None, atol: float | None = None,
              rtol: float | None = None, allow_other_code: bool = False, shown: str | None = None,
              say: Callable[[str], None] = lambda line: None) -> Reproduction:
    """Recompute ``cell_id``'s record from ``root`` (a results store, or an opened bundle: ``shown``
    names it in messages) and compare. ``say(line)`` hears each check as it passes and when
    computing starts."""
    record = find_record(root, cell_id, shown)
    cell = record.cell
    say(f"cell {record.cell_id}: {cell.method} ({cell.preset}) on {cell.dataset_spec}, G={cell.n_genes}, "
        f"fold {cell.fold}, seed {cell.seed}")
    if device:
        dev = resolve.device(device)
    else:
        try:
            dev = resolve.device(record.device)
        except UserError as exc:
            raise UserError(f"the cell was computed on {record.device}, which this machine lacks ({exc}); pass "
                            "--device to compute it on another device (compared within a tolerance)") from None
    prov = current_provenance(dev)
    checks: list[str] = []

    def passed(line: str) -> None:
        checks.append(line)
        say(line)

    same_code, line = check_code(record, prov, allow_other_code)
    passed(line)
    passed(check_encoder_weights(record))
    for line in check_method_files(record):
        passed(line)
    sets_line = check_gene_sets(record)
    if sets_line:
        passed(sets_line)
    passed(check_dataset(record))
    reasons = [] if same_code else ["other code"]
    then_kind, now_kind = record.device.split(":")[0], dev.split(":")[0]
    if then_kind != now_kind:
        reasons.append(f"device {dev}, recorded {record.device}")
    elif now_kind != "cpu" and _device_name(record.provenance) != _device_name(prov):
        reasons.append(f"device {_device_name(prov)}, recorded {_device_name(record.provenance)}")
    elif now_kind == "cpu" and record.provenance.get("cpu_model") and prov.get("cpu_model") \
            and record.provenance["cpu_model"] != prov["cpu_model"]:
        # BLAS picks its kernels by CPU (AVX2, AVX-512, ...): another model may change the last bits
        reasons.append(f"CPU {prov['cpu_model']}, recorded {record.provenance['cpu_model']}")
    from flag_bench.cluster.threads import granted_cpus

    recorded_threads = record.costs.get("torch_threads")
    threads = int(recorded_threads) if recorded_threads else granted_cpus()
    if not recorded_threads:
        reasons.append("the record names no torch thread count")
    tol = choose_tolerance(reasons, atol, rtol)
    with tempfile.TemporaryDirectory(prefix="flag-bench-reproduce-") as tmp:
        task = rebuild_task(record, device=dev, provenance=prov, results_dir=tmp)
        passed(f"planned again: cell {task.cell.cell_id}, the record's")
        isolated = (record.provenance.get("isolation") or {}).get("isolated")
        say(f"computing on {dev} with {threads} torch thread(s)" + (" as recorded" if recorded_threads else "")
            + (" (recorded under --isolate; computed here: the same numbers by design)" if isolated else "")
            + "; new artifacts in a temporary folder")
        with pinned_threads(threads):
            new = run_cell(task)
    # the numbers as the store would hold them (JSON), so both sides went through the same round trip
    new = CellRecord.from_json(json.loads(new.dumps()), where="recomputed record")
    metrics, per_slide = compare(record, new, tol) if new.ok else ([], [])
    return Reproduction(record, new, tol, metrics, per_slide, checks)
