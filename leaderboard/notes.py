"""What a leaderboard does not show by itself: the cells that failed, the planned cells that never
finished, and the ``flag-bench run`` command that finishes them.

Every ``flag-bench run`` writes its plan into the results dir (``ResultsStore.plans()``), so a
cell that was planned but has neither a finished nor a failed record (the run was killed, or is
still running) can be named. The lists are read from whichever source the table came from, so
the store and MLflow print the same notes; only where a traceback is differs by source, and the
report prints that apart (on stderr).
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

EXAMPLES = 3  # planned-but-missing cells named per method configuration
MAX_FAILED = 20  # failed cells listed one by one; the rest are counted


@dataclass(frozen=True)
class FailedCell:
    description: str
    stage: str
    error: str  # one line
    traceback: str  # where the full traceback is: a failed record file, or an MLflow artifact URI


@dataclass(frozen=True)
class MissingGroup:
    label: str  # method (preset)
    count: int
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Notes:
    failed: tuple[FailedCell, ...] = ()
    missing: tuple[MissingGroup, ...] = ()
    running: int = 0  # planned cells that a live `flag-bench run` is computing right now
    rerun: tuple[tuple[str, ...], ...] = ()  # argv of the runs that finish missing and failed cells

    @property
    def n_missing(self) -> int:
        return sum(g.count for g in self.missing)


def failed_cells(failed) -> tuple[FailedCell, ...]:
    """``Results.failed()`` -> one FailedCell per cell, in the frame's order."""
    out = []
    for r in failed.itertuples(index=False):
        label = f" ({r.config_label})" if r.config_label else ""
        desc = f"{r.dataset} G={r.n_genes} {r.method}{label} {r.fold} seed={r.seed}"
        out.append(FailedCell(desc, str(r.stage), str(r.error), str(r.traceback)))
    return tuple(out)


def _plans(results_dir: Path, suite: str | None) -> list[dict]:
    from flag_bench.store import ResultsStore

    if not (results_dir / "plans").is_dir():
        return []
    plans = ResultsStore(results_dir).plans()
    return [p for p in plans if suite is None or p.get("grid_spec", {}).get("suite", "default") == suite]


def _groups(cells: Iterable[dict]) -> tuple[MissingGroup, ...]:
    by: dict[str, list[str]] = {}
    for c in sorted(cells, key=lambda c: (c.get("method", ""), c.get("n_genes", 0), c.get("description", ""))):
        by.setdefault(f"{c.get('method')} ({c.get('preset')})", []).append(str(c.get("description", c["cell_id"])))
    return tuple(MissingGroup(label, len(d), tuple(d[:EXAMPLES])) for label, d in sorted(by.items()))


def gather(results, results_dir: str | Path, *, suite: str | None = None, tracking_uri: str | None = None) -> Notes:
    """Failed and planned-but-missing cells of ``results`` (a ``Results``) and how to finish them."""
    from flag_bench.store import ResultsStore

    results_dir = Path(results_dir)
    failed = results.failed()
    # a cell the filter hides (finished before --since) is still finished, not missing
    done = set(results.frame()["cell_id"]) | set(getattr(results, "all_finished", lambda: ())())
    bad = set(failed["cell_id"])
    owner: dict[str, tuple[dict, dict]] = {}  # cell_id -> (planned cell, the latest plan naming it)
    flt = getattr(results, "filter", None)
    for plan in _plans(results_dir, suite):
        for cell in plan.get("cells", []):
            if cell.get("cell_id") and cell["cell_id"] not in done:
                # a filtered report names only the planned cells it would show; --since asks when it was planned
                spec = plan.get("grid_spec") or {}
                split = str(spec.get("split") or "default").split(":", 1)[0]  # file:PATH -> file, as cells record
                if flt is None or flt.keep(str(cell.get("dataset", "")), str(cell.get("dataset", "")),
                                           str(cell.get("method", "")), int(cell.get("n_genes", 0)),
                                           str(plan.get("created", "")), None if split == "default" else split,
                                           spec.get("encoder")):
                    owner[cell["cell_id"]] = (cell, plan)
    store = ResultsStore(results_dir)
    busy = {cid for cid in owner if cid not in bad and store.busy(cid)}
    missing = [cell for cid, (cell, _) in owner.items() if cid not in bad and cid not in busy]
    specs: list[dict] = []
    for cid, (_, plan) in owner.items():
        if cid not in busy and plan.get("grid_spec") not in specs:
            specs.append(plan.get("grid_spec", {}))
    return Notes(failed_cells(failed), _groups(missing), len(busy),
                 tuple(rerun_argv(s, results_dir, tracking_uri) for s in specs))


# -- the command that finishes a plan ------------------------------------------------------------
_FLAGS = (("datasets", "--datasets"), ("methods", "--methods"), ("genes", "--genes"), ("panel", "--panel"),
          ("split", "--split"), ("folds", "--folds"), ("seeds", "--seeds"), ("preset", "--preset"),
          ("encoder", "--encoder"), ("patch_um", "--patch-um"), ("patch_px", "--patch-px"),
          ("target_transform", "--target-transform"), ("suite", "--suite"))
CONFIG_PLACEHOLDER = "CONFIG.toml"


def _defaults() -> dict[str, Any]:
    from flag_bench.config import RunConfig, plain_value

    return {f.name: plain_value(f.default) for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}


def rerun_argv(grid_spec: dict, results_dir: Path, tracking_uri: str | None = None) -> tuple[str, ...]:
    """The ``flag-bench run`` argv of a plan: only what differs from the defaults, plus where results go."""
    from flag_bench.redact import redact_uri

    defaults = _defaults()
    argv = ["flag-bench", "run", "--results-dir", str(results_dir)]
    if tracking_uri:  # never its password: a redacted URI gets it from the environment (flag_bench.redact)
        argv += ["--tracking-uri", redact_uri(tracking_uri)]
    for key, flag in _FLAGS:
        v = grid_spec.get(key)
        if v is None or v == defaults.get(key):
            continue
        argv += [flag, ",".join(str(x) for x in v) if isinstance(v, list) else str(v)]
    overlap = grid_spec.get("allow_patient_overlap")
    if overlap is not None:
        argv.append("--allow-patient-overlap" if overlap else "--no-allow-patient-overlap")
    if grid_spec.get("method_overrides"):
        # overrides have no command-line form: they came from a [methods.NAME] table
        argv += ["--config", CONFIG_PLACEHOLDER]
    return tuple(argv)


def shell_lines(argv: Sequence[str], width: int, indent: int = 2) -> list[str]:
    """argv as shell text broken at option boundaries with `` \\`` so it fits ``width`` and pastes."""
    words, i = [], 0
    while i < len(argv):  # an option and its value stay on one line
        take = 2 if argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--") else 1
        words.append(" ".join(shlex.quote(a) for a in argv[i:i + take]))
        i += take
    lines, cur = [], " " * indent
    for w in words:
        if cur.strip() and len(cur) + 1 + len(w) + 2 > width:
            lines.append(cur + " \\")
            cur = " " * (indent + 2)
        cur += ("" if not cur.strip() else " ") + w
    return [*lines, cur]


def text_lines(notes: Notes, width: int) -> list[str]:
    """The notes as plain lines, for every renderer that prints text (terminal and markdown)."""
    out: list[str] = []
    if notes.missing:
        out.append(f"{notes.n_missing} planned cell{'s' if notes.n_missing != 1 else ''} never finished "
                   f"(no finished or failed record):")
        for g in notes.missing:
            out.append(f"  {g.label}: {g.count}")
            out += [f"    {e}" for e in g.examples]
            if g.count > len(g.examples):
                out.append(f"    ... and {g.count - len(g.examples)} more")
    if notes.running:
        out.append(f"{notes.running} planned cell{'s' if notes.running != 1 else ''} being computed now by a live run")
    if notes.failed:
        n = len(notes.failed)
        out += [""] if out else []
        out.append(f"{n} failed cell{'s' if n != 1 else ''} (one-line error; where each traceback is: on stderr):")
        for f in notes.failed[:MAX_FAILED]:
            # the harness's messages name their stage already ("RuntimeError in fit of ...")
            error = f.error if f.stage and f.stage in f.error else f"{f.stage}: {f.error}"
            out += [f"  {f.description}", f"    {error}"]
        if n > MAX_FAILED:
            out.append(f"  ... and {n - MAX_FAILED} more (all: leaderboard.results.load_results(...).failed())")
    if notes.rerun and (notes.missing or notes.failed):
        out.append("")
        out.append("to finish them, rerun (finished cells are skipped, failed ones retried):")
        for argv in notes.rerun:
            out += shell_lines(argv, width)
        if any(CONFIG_PLACEHOLDER in argv for argv in notes.rerun):
            out.append(f"  ({CONFIG_PLACEHOLDER}: the config file with the run's [methods.NAME] overrides)")
    return out


def traceback_lines(notes: Notes, source: str) -> list[str]:
    """Where each failed cell's traceback is: differs by source, so the report prints it on stderr."""
    if not notes.failed:
        return []
    return [f"tracebacks of the failed cells ({source}):",
            *(f"  {f.description}: {f.traceback}" for f in notes.failed[:MAX_FAILED])]
