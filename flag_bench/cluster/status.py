"""Where each planned cell of a results dir stands: finished, failed, running, pending, not run."""

from __future__ import annotations

from pathlib import Path


def cell_states(results_dir: Path) -> tuple[dict[str, int], list[str]]:
    """({state: count}, notes). States: finished (an ok record), running / pending (a live claim;
    SLURM's state for a SLURM task), failed (only failed records), not_run (planned, nothing yet),
    and unknown (claimed by a SLURM job while squeue cannot be run; only when there are such cells)."""
    from flag_bench.cluster import job_state
    from flag_bench.store import ResultsStore

    store = ResultsStore(results_dir)
    planned: set[str] = {c["cell_id"] for p in store.plans() for c in p.get("cells", [])}
    ok = {r.cell_id for r in store.records()}
    failed = {r.cell_id for _, r in store.failures()} - ok
    counts = {"finished": len(ok), "failed": 0, "running": 0, "pending": 0, "not_run": 0}
    notes: list[str] = []
    for cid in sorted((planned | failed) - ok):
        holder = store.holder(cid)
        if holder is None:
            counts["failed" if cid in failed else "not_run"] += 1
            continue
        state = job_state(holder)  # None: a process holds it
        if state == "unknown":  # the engine cannot be asked (no squeue here): warned once, never a crash
            counts["unknown"] = counts.get("unknown", 0) + 1
            continue
        counts["pending" if state == "pending" else "running"] += 1
    from flag_bench.cluster.slurm import counts as task_counts, submissions
    from flag_bench.errors import UserError

    if counts.get("unknown"):
        notes.append(f"{counts['unknown']} cell(s) claimed by SLURM jobs whose state is unknown: squeue cannot "
                     "be run here; run `flag-bench status` where the SLURM client commands work")
    for sub in _safe_submissions(submissions, results_dir):
        try:
            c = task_counts(sub)
        except UserError as exc:
            notes.append(f"SLURM job {sub.job_id}: state unknown ({exc})")
            continue
        if c["done"] or c["lost"]:
            notes.append(f"SLURM job {sub.job_id}: {c['done'] + c['lost']} array task(s) ended but not collected; "
                         f"run `flag-bench collect --results-dir {results_dir}`")
    return counts, notes


def _safe_submissions(submissions, results_dir):
    try:
        return submissions(results_dir)
    except (OSError, ValueError):
        return []
