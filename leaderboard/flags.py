"""Warnings a reader must see beside a dataset's scores, for every report format: a within-patient
split, a gene panel chosen with the test slides, an encoder or method pretrained on the
benchmark's own corpus, presets tuned on the dataset's test slides (the method card's
``tuned_on``), folds of several splits, encoders or target transforms pooled in one row, oracle
rows computed from the truth, rows computed by different code versions, cells whose mean left out
a test slide with a NaN score, rows computed on other hardware than most of the board's cells
(``--from`` bundles: their records say where each cell ran)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

from flag_bench.leaderboard.stats import reference_roles

HARDWARE_MARK = "[hw{}]"


def dataset_flags(res, g) -> tuple[str, ...]:
    """``g``: the results frame of one dataset; ``res``: its ``Results`` (panel statistics live in
    the full record: one read per panel, a fold's cells share it)."""
    protos = [json.loads(p or "{}") for p in sorted(set(g["protocol"]))]
    flags = []
    if any(p.get("patient_overlap") for p in protos):
        flags.append("test patient also in train: a within-patient split, easier than a new patient")
    informed = sorted({str(r.panel_id) for r in g.drop_duplicates("panel_id").itertuples()
                       if res.panel_stats(r.cell_id).get("test_informed")})
    if informed:
        flags.append(f"test-informed gene panel ({len(informed)} of {g['panel_id'].nunique()} panels chosen "
                     "with the test slides, e.g. HEST-Benchmark's var_50genes.json): scores are optimistic")
    overlap = sorted({str(x) for p in protos for x in (p.get("pretraining_overlap") or [])})
    if overlap:
        flags.append(f"pretraining overlap: the encoder's pretraining data shares {', '.join(overlap)} "
                     "with this dataset")
    flags.extend(_tuned_on_test(g))
    for column, what, where in (("split", "folds of {n} split kinds", "one mean"),
                                ("encoder", "cells of {n} image encoders", "one row per method configuration")):
        kinds = sorted({str(x) for x in g[column]}) if column in g.columns else []
        if len(kinds) > 1:
            flags.append(f"{what.format(n=len(kinds))} ({', '.join(kinds)}) pooled in {where}: "
                         f"report each with --{column} {kinds[0]}")
    transforms = sorted({str(t) for t in g["target_transform"] if t}) if "target_transform" in g.columns else []
    if len(transforms) > 1:
        flags.append(f"cells of {len(transforms)} target transforms ({', '.join(transforms)}) on one board, pooled "
                     "in a row where a configuration ran both: MSE and MAE are in different units across them "
                     "(their headers say mixed); compare rows of one transform")
    roles = reference_roles(g)
    oracles = [m for m, role in roles.items() if role == "oracle"]
    if oracles:
        flags.append(f"oracle rows ({', '.join(oracles)}) are computed from the test truth: references that "
                     "check the metrics, not methods; left out of the rank tests")
    nulls = [m for m, role in roles.items() if role != "oracle"]
    if nulls:
        flags.append(f"null control rows ({', '.join(nulls)}) ignore the image or misplace expression: they show what "
                     "a metric gives a prediction that is wrong by construction; never ranked")
    flags.extend(_code_versions(res, g))
    flags.extend(_hardware(res, g))
    flags.extend(_nan_slides(res, g))
    return tuple(flags)


def tuned_on_test(method: str, presets, dataset: str) -> tuple[str, ...]:
    """The test slides of ``dataset`` whose scores chose ``method``'s ``presets``, from the
    registered card's ``tuned_on`` (methods.base.Tuning), in the card's order; () for a method
    whose card says nothing or that is not registered here (an unknown plugin)."""
    from flag_bench.catalog import method_card
    from flag_bench.errors import UserError

    try:
        card = method_card(method)
    except (UserError, ImportError, AttributeError):
        return ()
    out: list[str] = []
    for t in getattr(card, "tuned_on", ()) or ():
        if t.preset in presets:
            out += [s for s in t.slides_of(dataset) if s not in out]
    return tuple(out)


def _tuned_on_test(g) -> list[str]:
    """Rows whose preset was chosen by looking at scores on this dataset's test slides."""
    if g.empty or "preset" not in g.columns:
        return []
    ds = str(g["dataset"].iloc[0])
    parts = []
    for (method, preset), _ in g.groupby(["method", "preset"], sort=True):
        slides = tuned_on_test(str(method), (str(preset),), ds)
        if slides:
            parts.append(f"{method} {preset} ({', '.join(slides)})")
    if not parts:
        return []
    return [f"presets tuned on this dataset's test slides: {', '.join(parts)}: their scores here are optimistic; "
            "see each card's tuned_on (flag-bench show METHOD)"]


def _code_versions(res, g) -> list[str]:
    """Rows computed by different code (a method fixed between runs, a newer flag-bench)."""
    versions = getattr(res, "code_versions", None)
    if versions is None:
        return []
    from collections import Counter

    known = versions()
    counts = Counter(known.get(cid) or "not recorded" for cid in g["cell_id"])
    if len(counts) < 2 or set(counts) == {"not recorded"}:
        return []
    listed = "; ".join(f"{v}: {n} cell(s)" for v, n in sorted(counts.items()))
    return [f"cells computed by {len(counts)} code versions ({listed}): rows may not be comparable; rerun the "
            "older cells with `flag-bench run --force`"]


def _nan_slides(res, g) -> list[str]:
    """Rows with a cell whose mean over the test slides left out a slide with a NaN score."""
    nan_slides = getattr(res, "nan_slides", None)
    if nan_slides is None:
        return []
    rows: dict[str, list] = {}
    for r in g.itertuples():
        left = nan_slides(r.cell_id)
        if left:
            label = f"{r.method} ({r.config_label})" if r.config_label else str(r.method)
            entry = rows.setdefault(label, [0, set()])
            entry[0] += 1
            entry[1].update(left)
    if not rows:
        return []
    parts = []
    for label, (n, scores) in sorted(rows.items()):
        names = sorted(scores)
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        parts.append(f"{label}: {n} cell(s), {shown}")
    return ["fewer test slides averaged than the cells have (a slide's score was NaN and left out of the "
            "cell's mean): " + "; ".join(parts)]


@dataclass(frozen=True)
class HardwareMarks:
    legend: tuple[tuple[str, str], ...] = ()  # (mark, hardware) of every mark a row carries
    rows: Mapping[tuple[str, int, str, str], tuple[str, ...]] = field(default_factory=dict)  # row key -> marks


def _most_common(counts: Counter) -> list[str]:
    """Hardware, most cells first (ties by name, so every format and run agrees)."""
    return sorted(counts, key=lambda h: (-counts[h], h))


def hardware_marks(frame, hardware: Mapping[str, str]) -> HardwareMarks:
    """Marks for the rows (dataset, G, method, config hash) with a cell computed on other hardware
    than most cells of their dataset's board. Marks are numbered over the whole report, most cells
    first ([hw1] the most common), so a mark means one machine on every board; a board whose cells
    all ran on one machine gets none."""
    sig = {cid: hardware[cid] for cid in frame["cell_id"] if cid in hardware} if len(frame) else {}
    if len(set(sig.values())) < 2:
        return HardwareMarks()
    order = _most_common(Counter(sig.values()))
    mark = {h: HARDWARE_MARK.format(i + 1) for i, h in enumerate(order)}
    rows: dict[tuple[str, int, str, str], tuple[str, ...]] = {}
    for ds, g in frame.groupby("dataset", sort=True):
        counts = Counter(sig[cid] for cid in g["cell_id"] if cid in sig)
        if len(counts) < 2:
            continue
        major = _most_common(counts)[0]
        for (n_genes, method, config_hash), gg in g.groupby(["n_genes", "method", "config_hash"], sort=True):
            others = {sig[cid] for cid in gg["cell_id"] if cid in sig} - {major}
            if others:
                rows[(str(ds), int(n_genes), str(method), str(config_hash))] = tuple(
                    mark[h] for h in sorted(others, key=order.index))
    used = {m for marks in rows.values() for m in marks}
    return HardwareMarks(tuple((mark[h], h) for h in order if mark[h] in used), rows)


def _hardware(res, g) -> list[str]:
    """A board whose cells ran on several machines: which most of them ran on, and the others."""
    hardware = getattr(res, "hardware", None)
    if hardware is None:
        return []
    known = hardware()
    counts = Counter(known[cid] for cid in g["cell_id"] if cid in known)
    if len(counts) < 2:
        return []
    order = _most_common(Counter(known.values()))
    mark = {h: HARDWARE_MARK.format(i + 1) for i, h in enumerate(order)}
    major, *rest = _most_common(counts)
    others = sorted(rest, key=order.index)
    listed = "; ".join(f"{mark[h]} {h}: {counts[h]}" for h in others)
    return [f"cells computed on {len(counts)} kinds of hardware: most on {major} ({counts[major]} of "
            f"{sum(counts.values())} cells); rows marked {', '.join(mark[h] for h in others)} hold cells computed "
            f"elsewhere ({listed}): their times differ, and their scores may differ in the last digits"]


def all_flags(res, frame) -> dict[str, tuple[str, ...]]:
    """dataset -> its flags (datasets without any are left out)."""
    out = {}
    for ds, g in frame.groupby("dataset", sort=True):
        flags = dataset_flags(res, g)
        if flags:
            out[str(ds)] = flags
    return out
