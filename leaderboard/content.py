"""Everything the HTML report (and ``--format png|svg``) shows, computed once from ``Results`` and
the leaderboard model: protocol cards, coverage, statistics, scaled scores and the figures.

Spatial maps: by default, for each method configuration, its best-PCC cell at the dataset's
largest G (``map_cells`` names cells by id or id prefix instead). For each mapped cell: the two
genes with the highest and the two with the lowest per-gene PCC, plus every ``genes_to_plot``
gene in its panel, on the first test slide. The H&E underlay comes from the ``thumbnail`` the
caller hands in (the CLI: flag_bench/thumbnails.py, composed from the dataset's tiles when the
record's dataset spec loads and has images); otherwise the caption says why it is absent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from flag_bench.errors import UserError
from flag_bench.leaderboard import figures as F
from flag_bench.leaderboard.flags import dataset_flags
from flag_bench.leaderboard import stats as S
from flag_bench.leaderboard.model import (TRANSFORM_UNITS, Leaderboard, config_labels, gene_sets_text, metric_direction,
                                          short_name, transform_tag)

CURVE_METRICS = ("pcc_mean", "pcc_pooled", "mse", "gsc", "ssc", "ssc_spot", "lee_l", "moran_abs_err")
# structure scores: a constant prediction (the mean control) scores 0 on them only by convention,
# so they are not scaled between mean and the positive controls; their calibrated columns are the scale
NOT_CONTROL_SCALED = frozenset({"gsc", "gsc_cpm", "ssc", "ssc_spot", "lee_l", "moran_abs_err"})
TOP_BOTTOM = 2  # genes shown from each end of a mapped cell's per-gene PCC ranking
# (dataset spec, slide, spot coords um) -> (H&E image, extent (x0, x1, y1, y0) um, "") or (None, None,
# why not): the caller's (the CLI passes flag_bench.thumbnails.thumbnail); the leaderboard loads no datasets
Thumbnail = Callable[[str, str, np.ndarray], tuple[Any, Any, str]]
NO_THUMBNAIL = "no slide images were handed to the report"
CARD_KEYS = (("split", "split_description"), ("panel selector", "panel_selector"),
             ("panel fitted on", "panel_fitted_on"), ("target transform", "target_transform"),
             ("encoder", "encoder"), ("patch", "patch"), ("PCC aggregation", "pcc_aggregation"),
             ("protocol version", "protocol_version"), ("suite", "suite"))


@dataclass(frozen=True)
class Fig:
    key: str  # file stem for --format png|svg
    section: str
    title: str
    caption: str
    data: bytes  # PNG or SVG bytes


@dataclass(frozen=True)
class Card:
    dataset: str
    fields: tuple[tuple[str, str], ...]
    flags: tuple[str, ...]  # warnings a reader must see: test-informed panel, pretraining overlap


@dataclass(frozen=True)
class Coverage:
    dataset: str
    n_genes: int
    label: str
    finished: int
    failed: int


@dataclass
class Content:
    lb: Leaderboard
    labels: dict  # (method, config_hash) -> label
    cards: list[Card] = field(default_factory=list)
    coverage: list[Coverage] = field(default_factory=list)
    tests: list[S.MetricTests] = field(default_factory=list)
    scaled: tuple[S.ScaledCell, ...] = ()
    figures: list[Fig] = field(default_factory=list)
    map_notes: list[str] = field(default_factory=list)
    filter_text: str = ""


def build_content(res, lb: Leaderboard, *, kind: str = "png", genes_to_plot: Sequence[str] = (),
                  map_cells: Sequence[str] = (), thumbnail: Thumbnail | None = None) -> Content:
    """``thumbnail``: where the maps' H&E underlays come from (none: the captions say so)."""
    frame = res.frame()
    labels = config_labels(frame)
    direction = metric_direction()
    metrics = [m for m in CURVE_METRICS if m in frame.columns and frame[m].notna().any()]
    colors = F.palette(sorted(set(labels.values())))
    c = Content(lb, labels, filter_text=res.filter.describe() if getattr(res, "filter", None) else "")
    c.cards = cards(res, frame)
    c.coverage = coverage(frame, res.failed(), labels)
    # per dataset x G x metric over test folds (seeds averaged); oracles and null controls are
    # shown on every board, never ranked against methods
    c.tests = list(S.ranked_tests(frame, metrics, direction, labels))
    roles = S.control_roles(frame)
    c.scaled = S.scaled_scores(frame, [m for m in metrics if m not in NOT_CONTROL_SCALED], direction, labels, roles)
    _curve_figures(c, frame, metrics, direction, colors, kind)
    _stat_figures(c, colors, kind)
    _map_figures(c, res, frame, colors, kind, genes_to_plot, map_cells, thumbnail)
    return c


def _add(c: Content, fig, key: str, section: str, title: str, caption: str, kind: str) -> None:
    c.figures.append(Fig(key, section, title, caption, F.encode(fig, kind)))


# -- protocol card and coverage -----------------------------------------------------------------
def cards(res, frame) -> list[Card]:
    out = []
    for ds, g in frame.groupby("dataset", sort=True):
        protos = [json.loads(p or "{}") for p in sorted(set(g["protocol"]))]
        fields_ = []
        for name, key in CARD_KEYS:
            vals = sorted({str(p.get(key, p.get("split") if key == "split_description" else "")) for p in protos} - {""})
            if vals:
                fields_.append((name, " / ".join(vals)))
        sets = sorted({gene_sets_text(p) for p in protos} - {""})
        if sets:
            fields_.append(("gene sets (PathPCC)", " / ".join(sets)))
        flags = dataset_flags(res, g)
        out.append(Card(str(ds), tuple(fields_), tuple(flags)))
    return out


def coverage(frame, failed, labels) -> list[Coverage]:
    counts: dict[tuple, list[int]] = {}
    for r in frame.itertuples():
        counts.setdefault((r.dataset, int(r.n_genes), labels[(r.method, r.config_hash)]), [0, 0])[0] += 1
    for r in failed.itertuples():
        lab = labels.get((r.method, r.config_hash), f"{r.method} ({r.config_label})" if r.config_label else r.method)
        counts.setdefault((r.dataset, int(r.n_genes), lab), [0, 0])[1] += 1
    return [Coverage(ds, g, lab, ok, bad) for (ds, g, lab), (ok, bad) in sorted(counts.items())]


# -- curves and statistics ----------------------------------------------------------------------
def _bands(d, metric: str) -> dict:
    """The null and the ceiling of ``metric`` per G as 95% bootstrap bands over the folds.

    FOLD holds no seed: each fold's cells (its seeds) are averaged first, so the bootstrap resamples
    folds, the unit of replication, never seeds."""
    from flag_bench.leaderboard.calibration import FOLD, null_name
    from flag_bench.metrics.ceilings import ceiling_name
    from flag_bench.metrics.stats import bootstrap_ci

    keys = [k for k in FOLD if k in d.columns]
    out = {}
    for what, col in (("null", null_name(metric)), ("ceiling", ceiling_name(metric))):
        if col not in d.columns:
            continue
        gs, low, high = [], [], []
        for g, x in d.groupby("n_genes", sort=True):
            v = x.groupby(keys, sort=False)[col].mean().to_numpy(float)
            v = v[np.isfinite(v)]
            if v.size:
                lo, hi = bootstrap_ci(v, level=0.95, seed=0) if v.size > 1 else (v[0], v[0])
                lo, hi = (float(v.mean()), float(v.mean())) if not np.isfinite(lo) else (lo, hi)
                gs.append(int(g))
                low.append(lo)
                high.append(hi)
        if gs:
            out[what] = {"G": gs, "low": low, "high": high}
    return out


def _curve_figures(c: Content, frame, metrics, direction, colors, kind) -> None:
    from flag_bench.leaderboard.calibration import add_calibration
    from flag_bench.metrics.stats import bootstrap_ci

    frame = add_calibration(frame)
    for ds, d in frame.groupby("dataset", sort=True):
        if d["n_genes"].nunique() < 2:
            c.map_notes.append(f"{ds}: one G only ({int(d['n_genes'].iloc[0])}), so no Gene-Dimension-Curse curve")
            continue
        panels = []
        tag = transform_tag(list(d["target_transform"])) if "target_transform" in d.columns else ""
        for m in metrics:
            lines = {}
            for (method, ch), sub in d.groupby(["method", "config_hash"], sort=True):
                gs, mean, low, high = [], [], [], []
                for g, x in sub.groupby("n_genes", sort=True):
                    v = x[m].to_numpy(float)
                    v = v[np.isfinite(v)]
                    if not v.size:
                        continue
                    lo, hi = bootstrap_ci(v, level=0.95, seed=0)
                    gs.append(int(g))
                    mean.append(float(v.mean()))
                    low.append(lo)
                    high.append(hi)
                lines[c.labels[(method, ch)]] = {"G": gs, "mean": mean, "low": low, "high": high,
                                                 "points_G": sub["n_genes"].to_numpy(float),
                                                 "points": sub[m].to_numpy(float)}
            panels.append({"metric": short_name(m), "lower_better": direction.get(m) is False, "lines": lines,
                           "bands": _bands(d, m), "units": tag if m in TRANSFORM_UNITS else ""})
        target = f", target {tag}" if tag else ""
        fig = F.gdc_curves(panels, colors, f"{ds}{target}: metrics vs G (mean, 95% bootstrap CI band, one point per "
                                           "fold x seed)")
        _add(c, fig, f"curves-{slug(ds)}", "curves", f"{ds}: Gene-Dimension-Curse curves",
             "Each metric against the panel size G on a log axis; lines are means over test folds (seeds averaged "
             "within each), bands the 95% bootstrap CI of the mean over folds, points single cells. Grey band: the null (best image-free control "
             "of each fold); green band: the split-half noise ceiling (both 95% bootstrap CIs over folds)."
             + (f" Target transform {tag}: MSE is in its units." if tag else ""), kind)


def stat_key(kind: str, t: S.MetricTests) -> str:
    """The figure key of a test's matrix ("wilcoxon") or CD diagram ("cd"): one per dataset x G x metric."""
    return f"{kind}-{slug(t.metric)}-{slug(t.dataset)}-g{t.n_genes}"


def _stat_figures(c: Content, colors, kind) -> None:
    for t in c.tests:
        labs = sorted({x for p in t.pairs for x in (p.a, p.b)})
        if len(labs) < 2:
            continue
        p = {(x.b, x.a): x.p_holm for x in t.pairs} | {(x.a, x.b): x.p_holm for x in t.pairs}
        n = {(x.b, x.a): x.n_used for x in t.pairs} | {(x.a, x.b): x.n_used for x in t.pairs}
        better = {(x.a, x.b): x.mean_diff > 0 for x in t.pairs} | {(x.b, x.a): x.mean_diff < 0 for x in t.pairs}
        where = f"{short_name(t.metric)}, {t.dataset} G={t.n_genes}"
        # the matrix for the sort metric; every metric gets its table and CD diagram
        if t.metric == c.lb.metric and any(x.enough for x in t.pairs):
            fig = F.pvalue_matrix(labs, p, n, better, f"{where}: paired Wilcoxon {t.over}, Holm-adjusted p",
                                  S.MIN_PAIRS)
            _add(c, fig, stat_key("wilcoxon", t), "significance", f"{where}: pairwise tests",
                 f"Pairs {t.over}; n = {t.unit}s with a non-zero difference.", kind)
        if t.friedman.ran:
            fig = F.cd_diagram(t.friedman.mean_ranks, t.friedman.cd,
                               f"{where}: mean ranks over {S.units(t.friedman.n_units, t.unit)}, seeds averaged "
                               f"(Friedman p={t.friedman.p:.2g})", colors)
            _add(c, fig, stat_key("cd", t), "significance", f"{where}: critical difference",
                 "Nemenyi critical difference at alpha 0.05: configurations joined by a bar are not told apart.", kind)


# -- spatial maps -------------------------------------------------------------------------------
def choose_cells(frame, map_cells: Sequence[str]) -> list[str]:
    """The cells to map: ``map_cells`` (id prefixes), else each configuration's best-PCC cell at the largest G."""
    if map_cells:
        out = []
        for prefix in map_cells:
            hits = [cid for cid in frame["cell_id"] if cid.startswith(prefix)]
            if len(hits) != 1:
                what = "no finished cell" if not hits else f"{len(hits)} cells"
                raise UserError(f"--map-cells {prefix}: {what} of these results has an id starting so; "
                                "give a longer prefix of a cell id (results/cells/<id>.json)")
            out += hits
        return out
    out = []
    for _key, d in frame.groupby(["dataset", "method", "config_hash"], sort=True):
        top = d[d["n_genes"] == d["n_genes"].max()]
        scores = top["pcc_mean"].to_numpy(float) if "pcc_mean" in top else np.zeros(len(top))
        if len(top):
            out.append(top["cell_id"].iloc[int(np.nanargmax(np.where(np.isfinite(scores), scores, -np.inf)))])
    return out


def _map_figures(c: Content, res, frame, colors, kind, genes_to_plot, map_cells, thumbnail: Thumbnail | None) -> None:
    chosen = choose_cells(frame, map_cells)
    row_of = frame.set_index("cell_id")
    found_named: set[str] = set()
    per_ds_moran: dict[str, dict] = {}
    for cid in chosen:
        r = row_of.loc[cid]
        label = c.labels[(r["method"], r["config_hash"])]
        adata = res.predictions(cid)
        per_gene = res.per_gene(cid)
        slide = str(adata.obs["slide"].iloc[0])
        pcc = per_gene.groupby("gene", sort=False)["pcc"].mean() if "pcc" in per_gene else None
        ranked = list(pcc.dropna().sort_values(ascending=False).index) if pcc is not None else list(adata.var_names)
        genes = ranked[:TOP_BOTTOM] + [g for g in ranked[-TOP_BOTTOM:] if g not in ranked[:TOP_BOTTOM]]
        for g in genes_to_plot:
            if g in adata.var_names:
                found_named.add(g)
                if g not in genes:
                    genes.append(g)
        mask = (adata.obs["slide"] == slide).to_numpy()
        idx = [list(adata.var_names).index(g) for g in genes]
        x = adata.X[mask][:, idx]
        truth = np.asarray(adata.layers["truth"][mask][:, idx])
        coords = np.asarray(adata.obsm["spatial"])[mask]
        notes = [f"PCC {pcc[g]:.2f}" + (" (named)" if g in genes_to_plot else "") if pcc is not None and g in pcc
                 else "" for g in genes]
        underlay, extent, why = (thumbnail(str(r["dataset_spec"]), slide, coords) if thumbnail is not None
                                 else (None, None, NO_THUMBNAIL))
        ds = str(r["dataset"])
        title = f"{ds} G={int(r['n_genes'])} {label} {r['fold']} seed={int(r['seed'])}: slide {slide}"
        fig = F.spatial_maps(coords, truth, np.asarray(x), genes, notes, title, underlay, extent)
        _add(c, fig, f"map-{cid}", "maps", title,
             f"Cell {cid}: true (top) vs predicted (bottom) expression, the {TOP_BOTTOM} best and worst genes by "
             f"per-gene PCC{' and the named genes' if genes_to_plot else ''}; " +
             ("over the H&E thumbnail composed from the slide's tiles." if underlay is not None else f"no H&E underlay: {why}."),
             kind)
        if {"moran_i_true", "moran_i_pred"} <= set(per_gene.columns):
            per_ds_moran.setdefault(ds, {})[label] = (per_gene["moran_i_true"].to_numpy(float),
                                                      per_gene["moran_i_pred"].to_numpy(float))
    missing = [g for g in genes_to_plot if g not in found_named]
    if missing:
        raise UserError(f"--genes-to-plot {','.join(missing)}: not in the panel of any mapped cell; "
                        "name genes of the panels (artifacts/<cell_id>/genes.txt) or choose cells with --map-cells")
    for ds, pts in sorted(per_ds_moran.items()):
        fig = F.moran_scatter(pts, colors, f"{ds}: per-gene Moran's I")
        flat = sorted(lab for lab, (_, p) in pts.items() if not np.isfinite(p).any())
        _add(c, fig, f"moran-{slug(ds)}", "maps", f"{ds}: Moran's I of truth vs prediction",
             "One point per gene of each mapped cell; on the diagonal a prediction is as spatially structured "
             "as the truth, below it spatial structure is lost, above it the prediction is smoother than the truth."
             + (f" No points for {', '.join(flat)}: a constant prediction has no Moran's I." if flat else ""), kind)
    for ds, d in frame.groupby("dataset", sort=True):
        gmax = int(d["n_genes"].max())
        vals = {}
        for (method, ch), sub in d[d["n_genes"] == gmax].groupby(["method", "config_hash"], sort=True):
            parts = [res.per_gene(cid)["pcc"].to_numpy(float) for cid in sub["cell_id"]]
            vals[c.labels[(method, ch)]] = np.concatenate(parts) if parts else np.array([])
        fig = F.pcc_distribution(vals, colors, f"{ds}, G={gmax}: per-gene PCC over every fold and seed")
        _add(c, fig, f"pcc-genes-{slug(ds)}", "maps", f"{ds}: distribution of per-gene PCC",
             f"Per-gene PCC of every gene x test slide of the G={gmax} cells, per configuration (violin and quartile box).",
             kind)


def slug(text: str) -> str:
    """A file-name-safe stem for a figure key."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in str(text)).strip("-") or "x"


def fmt_p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")
