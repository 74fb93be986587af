"""Scoring a cell: check what the method returned, then every registered metric per test slide,
mean over the slides, plus the pooled metrics over all test spots of the cell, plus each test
slide's noise ceilings (``metrics.ceilings``, from the slide's raw counts: the same for every
method of the fold, so they are computed once per slide and panel in a process)."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from flag_bench.catalog import METRICS
from flag_bench.errors import CellFailure


def _one_per_slide(method: str, what: str, value: Any, test) -> None:
    """CellFailure unless ``value`` is a list (or tuple) with one entry per test slide."""
    if not isinstance(value, (list, tuple)) or len(value) != len(test.slides):
        n = len(value) if hasattr(value, "__len__") else "?"
        raise CellFailure(f"method '{method}' returned {what}{type(value).__name__} of length {n}; "
                          f"expected a list of {len(test.slides)} arrays")


def _finite(method: str, verb: str, x: np.ndarray, slide_id: str) -> np.ndarray:
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise CellFailure(f"method '{method}' {verb} {bad} non-finite value(s) on slide {slide_id}")
    return x.astype(np.float32, copy=False)


def check_predictions(method: str, preds: Any, test) -> list[np.ndarray]:
    """One finite (n_spots, G) array per test slide, as float32; CellFailure naming what is wrong."""
    _one_per_slide(method, "", preds, test)
    out = []
    for p, s in zip(preds, test.slides):
        p = np.asarray(p)
        if p.shape != (s.n_spots, test.n_genes):
            raise CellFailure(f"method '{method}' predicted shape {p.shape} for slide {s.slide_id}; "
                              f"expected {(s.n_spots, test.n_genes)}")
        out.append(_finite(method, "predicted", p, s.slide_id))
    return out


def check_samples(method: str, samples: Any, test) -> list[np.ndarray]:
    """One finite (n_samples >= 1, n_spots, G) array per test slide, the same n_samples on every
    slide, as float32; CellFailure naming what is wrong."""
    _one_per_slide(method, "samples as ", samples, test)
    out: list[np.ndarray] = []
    for x, s in zip(samples, test.slides):
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[0] < 1 or x.shape[1:] != (s.n_spots, test.n_genes):
            raise CellFailure(f"method '{method}' sampled shape {x.shape} for slide {s.slide_id}; "
                              f"expected (n_samples, {s.n_spots}, {test.n_genes})")
        if out and x.shape[0] != out[0].shape[0]:
            raise CellFailure(f"method '{method}' drew {x.shape[0]} samples on slide {s.slide_id} but "
                              f"{out[0].shape[0]} on {test.slides[0].slide_id}")
        out.append(_finite(method, "sampled", x, s.slide_id))
    return out


# the scores a generative method's single draws are scored on: the headline ones, so the per-draw
# pass costs a few metric evaluations per draw rather than every registered metric
SAMPLE_SCORES = ("pcc_mean", "mse", "gsc", "ssc", "ssc_spot", "lee_l")
SAMPLE_PREFIX, SAMPLE_SD_PREFIX = "sample.", "sample_sd."


def sample_name(score: str, sd: bool = False) -> str:
    """'pcc_mean' -> 'sample.pcc_mean' (mean over the draws) or 'sample_sd.pcc_mean' (their sd)."""
    return (SAMPLE_SD_PREFIX if sd else SAMPLE_PREFIX) + score


def score_samples(samples: Sequence[np.ndarray], truths: Sequence[np.ndarray], test, seed: int,
                  annotations: Sequence[np.ndarray | None], *, target_transform: str = "log1p") -> dict[str, float]:
    """(n_samples, N, G) draws per slide -> each draw scored like a prediction (cell mean over the
    slides, as ``score_cell``), then per score in SAMPLE_SCORES the mean over the draws
    (``sample.<score>``) and their sd (``sample_sd.<score>``, ddof 1; NaN with one draw), plus
    ``n_samples``. Only the metrics that produce SAMPLE_SCORES are evaluated."""
    metrics = {name: m for name, m in METRICS.load_all().items()
               if m.scope == "slide" and {o.name for o in m.outputs} & set(SAMPLE_SCORES)}
    ctxs = _contexts(test, seed, annotations, target_transform)
    n = int(samples[0].shape[0])
    per_draw: dict[str, list[float]] = {k: [] for k in SAMPLE_SCORES}
    for k in range(n):
        per_slide = [_slide_scores(metrics, y, x[k], ctx, {})[0] for x, y, ctx in zip(samples, truths, ctxs)]
        for key in SAMPLE_SCORES:
            per_draw[key].append(_slide_mean(np.array([d.get(key, np.nan) for d in per_slide], dtype=np.float64)))
    out: dict[str, float] = {"n_samples": float(n)}
    for key, vals in per_draw.items():
        v = np.asarray(vals, dtype=np.float64)
        if not np.isfinite(v).any():
            continue  # no registered metric produced it
        out[sample_name(key)] = float(np.nanmean(v))
        out[sample_name(key, sd=True)] = float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else float("nan")
    return out


def _contexts(test, seed: int, annotations: Sequence[np.ndarray | None], target_transform: str) -> list:
    """One SlideContext per test slide, in ``test.slides`` order."""
    from flag_bench.metrics.base import SlideContext

    return [SlideContext(s.slide_id, np.asarray(s.coords_um, dtype=np.float64), test.genes, seed, ann,
                         target_transform=target_transform) for s, ann in zip(test.slides, annotations)]


def _slide_mean(values: np.ndarray) -> float:
    """A cell's score: the mean over its test slides, a NaN slide left out (NaN when all are)."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _slide_scores(metrics, y, p, ctx, notes: dict) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    vals: dict[str, float] = {}
    genes: dict[str, np.ndarray] = {}
    for name, m in metrics.items():
        if m.scope != "slide":
            continue
        sc = m.compute(y.astype(np.float64), p.astype(np.float64), ctx)
        vals.update(sc.values)
        genes.update(sc.per_gene)
        for k, v in sc.notes.items():
            notes[f"{ctx.slide_id}.{name}.{k}"] = v
    return vals, genes


def score_cell(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], test, seed: int,
               annotations: Sequence[np.ndarray | None], *, counts: Sequence[np.ndarray] | None = None,
               libraries: Sequence[np.ndarray] | None = None, target_transform: str = "log1p",
               gene_sets: Sequence[tuple[str, Sequence[str]]] = ()):
    """-> (cell scores, per-slide scores, per-slide per-gene vectors, notes).

    ``counts``/``libraries`` (the test slides' raw panel counts (N, G) and spot totals (N,)) add
    the noise ceilings ``ceiling.<score>`` per slide and, averaged, per cell. ``gene_sets``
    ((name, genes), ...; the run's --gene-sets) add ``pathway_pcc`` per slide and, averaged like
    every slide score, per cell; the sets each slide scored are in the notes
    (``<slide>.pathways.n_sets_scored``, and ``n_pathways_scored`` by slide)."""
    from flag_bench.metrics.base import SlideContext

    metrics = METRICS.load_all()
    # the pathway metric is the run's, not a registered one: scored per slide like them, never pooled
    # and given no noise ceiling (the ceilings of a registered metric's scores only)
    extra: dict[str, Any] = {}
    if gene_sets:
        from flag_bench.metrics.pathways import pathway_metric

        extra = {"pathways": pathway_metric(gene_sets)}
    per_slide: dict[str, dict[str, float]] = {}
    per_gene: dict[str, dict[str, np.ndarray]] = {}
    notes: dict[str, Any] = {}
    for i, (p, y, s, ctx) in enumerate(zip(preds, truths, test.slides,
                                           _contexts(test, seed, annotations, target_transform))):
        per_slide[s.slide_id], per_gene[s.slide_id] = _slide_scores(metrics, y, p, ctx, notes)
        if extra:
            per_slide[s.slide_id].update(_slide_scores(extra, y, p, ctx, notes)[0])
        if counts is not None and libraries is not None:
            ceil, why = _ceilings(counts[i], libraries[i], target_transform, ctx, metrics)
            per_slide[s.slide_id].update(ceil)
            notes.update({f"{s.slide_id}.ceiling.{k}": v for k, v in why.items()})
    cell: dict[str, float] = {}
    for k in sorted({k for v in per_slide.values() for k in v}):
        arr = np.array([per_slide[s].get(k, np.nan) for s in per_slide], dtype=np.float64)
        cell[k] = _slide_mean(arr)
        # a slide whose score is NaN is left out of the mean: say over how many slides it is
        notes[f"n_slides.{k}"] = int(arr.size)
        notes[f"n_nan_slides.{k}"] = int(np.isnan(arr).sum())
    if extra:
        notes["n_pathways_scored"] = {s: notes.get(f"{s}.pathways.n_sets_scored", 0) for s in per_slide}
    yp = np.concatenate([p.astype(np.float64) for p in preds])
    yt = np.concatenate([y.astype(np.float64) for y in truths])
    pooled_ctx = SlideContext("pooled", None, test.genes, seed, None, target_transform=target_transform)
    for m in metrics.values():
        if m.scope == "pooled":
            cell.update(m.compute(yt, yp, pooled_ctx).values)
    return cell, per_slide, per_gene, notes


# (slide, genes, transform, metrics, content of the counts) -> (ceilings, notes): every method of a
# fold shares its slides' ceilings, so a worker computes them once
_CEILINGS: dict[tuple, tuple[dict[str, float], dict[str, Any]]] = {}
_CEILINGS_MAX = 4096


def _ceilings(counts, library, target_transform: str, ctx, metrics):
    from flag_bench.datasets.fold import transform_counts
    from flag_bench.metrics.ceilings import slide_ceilings

    c = np.ascontiguousarray(counts)
    digest = hashlib.blake2b(c.tobytes(), digest_size=16)
    digest.update(str(c.shape).encode())
    digest.update(np.ascontiguousarray(library, dtype=np.float64).tobytes())
    key = (ctx.slide_id, tuple(ctx.genes), target_transform, tuple(sorted(metrics)), digest.hexdigest())
    if key not in _CEILINGS:
        if len(_CEILINGS) >= _CEILINGS_MAX:
            _CEILINGS.clear()
        _CEILINGS[key] = slide_ceilings(c, library, lambda x, lib: transform_counts(x, lib, target_transform),
                                        ctx, metrics)
    return _CEILINGS[key]
