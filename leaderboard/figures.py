"""The report's figures, drawn with matplotlib's object API (``matplotlib.figure.Figure``, Agg
canvas, no pyplot state), each returned as a Figure; ``encode`` turns one into PNG bytes or SVG text.

Every function takes plain data (arrays, dicts) prepared by ``content.py``, so what a figure
shows is decided there and the drawing stays here.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Mapping, Sequence

import numpy as np

DPI = 100
NO_DATA = "#bbbbbb"


def palette(labels: Sequence[str]) -> dict[str, tuple]:
    """One colour per configuration label, stable across every figure of a report."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(sorted(labels))}


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def encode(fig, kind: str = "png") -> bytes:
    """A Figure -> PNG bytes or SVG bytes (text, no embedded fonts: glyphs as paths)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=kind, dpi=DPI, metadata={"Date": None} if kind == "svg" else None)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# -- Gene-Dimension-Curse curves ----------------------------------------------------------------
def gdc_curves(panels: Sequence[dict], colors: Mapping[str, tuple], title: str):
    """One axis per metric: x = G on a log axis, one line per configuration (mean), its 95% CI as
    a band and every fold x seed value as a point.

    panels: [{"metric": header, "lower_better": bool, optional "units": the target transform of a score
    in its units ("log1p", "mixed: log1p, log2p1"), "lines": {label: {"G": (m,), "mean": (m,),
    "low": (m,), "high": (m,), "points_G": (n,), "points": (n,)}}, optional "bands": {"null" | "ceiling":
    {"G": (m,), "low": (m,), "high": (m,)}}}]: the null and the noise ceiling as grey and green bands.
    """
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig = _figure(4.2 * ncol, 3.2 * nrow + 0.6)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, p in zip(axes, panels):
        genes = sorted({int(g) for line in p["lines"].values() for g in line["G"]})
        for what, color in (("null", "#8a8a8a"), ("ceiling", "#2e7d32")):
            band = (p.get("bands") or {}).get(what)
            if band and len(band["G"]):
                bg = np.asarray(band["G"], float)
                ax.fill_between(bg, band["low"], band["high"], color=color, alpha=0.22, lw=0, step=None,
                                label=f"{what} ({'best image-free control' if what == 'null' else 'split-half'})")
                ax.plot(bg, (np.asarray(band["low"], float) + np.asarray(band["high"], float)) / 2, "--",
                        color=color, lw=1)
        for label, line in sorted(p["lines"].items()):
            c = colors[label]
            g = np.asarray(line["G"], dtype=float)
            ax.plot(g, line["mean"], "-o", color=c, label=label, lw=1.6, ms=4)
            low, high = np.asarray(line["low"], float), np.asarray(line["high"], float)
            ok = np.isfinite(low) & np.isfinite(high)
            if ok.any():
                ax.fill_between(g[ok], low[ok], high[ok], color=c, alpha=0.18, lw=0)
            pg = np.asarray(line["points_G"], dtype=float)
            # a small multiplicative jitter keeps the folds of neighbouring methods apart on a log axis
            jitter = np.exp(np.random.default_rng(len(label)).uniform(-0.04, 0.04, pg.size))
            ax.scatter(pg * jitter, line["points"], s=9, color=c, alpha=0.6, lw=0)
        ax.set_xscale("log")
        ax.set_xticks(genes, [str(g) for g in genes])
        ax.minorticks_off()
        ax.set_xlabel("G (panel size, log scale)")
        means = np.array([v for line in p["lines"].values() for v in line["mean"]], dtype=float)
        means = means[np.isfinite(means)]
        # one diverging method (an MSE of thousands) would flatten every other line onto the axis
        # (errors only: a correlation near 0 would make a log axis of noise)
        logy = p["lower_better"] and means.size and (means > 0).all() and means.max() / means.min() > 50
        if logy:
            ax.set_yscale("log")
        units = [p["units"]] if p.get("units") else []
        qualifiers = units + ["lower is better"] * bool(p["lower_better"]) + ["log"] * bool(logy)
        ax.set_ylabel(p["metric"] + (f" ({'; '.join(qualifiers)})" if qualifiers else ""))
        ax.set_title(p["metric"] + (f" ({units[0]})" if units else ""), fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


# -- which differences are real -----------------------------------------------------------------
def pvalue_matrix(labels: Sequence[str], p: Mapping[tuple[str, str], float], n: Mapping[tuple[str, str], int],
                  better: Mapping[tuple[str, str], bool], title: str, min_pairs: int):
    """Holm-adjusted Wilcoxon p of every pair as a lower-triangle matrix; each cell says n and,
    where p < 0.05, which of the two is better; "too few" where n < min_pairs (no p printed)."""
    from matplotlib.colors import LogNorm

    k = len(labels)
    fig = _figure(1.3 + 0.9 * k, 1.0 + 0.75 * k)
    ax = fig.subplots()
    m = np.full((k, k), np.nan)
    for i in range(k):
        for j in range(i):
            v = p.get((labels[i], labels[j]), math.nan)
            m[i, j] = max(v, 1e-6) if math.isfinite(v) else math.nan
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", norm=LogNorm(1e-4, 1), origin="upper")
    for i in range(k):
        for j in range(i):
            key = (labels[i], labels[j])
            nn = n.get(key, 0)
            if nn < min_pairs:
                ax.add_patch(_rect(j, i, NO_DATA, ax))
                ax.text(j, i, f"too few\npairs\n(n={nn})", ha="center", va="center", fontsize=7)
            else:
                v = p[key]
                star = ("\n" + (labels[i] if better[key] else labels[j]) + " better") if v < 0.05 else ""
                ax.text(j, i, f"p={v:.2g}\nn={nn}{star}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.05 else "black")
    ax.set_xticks(range(k), labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="Holm-adjusted p")
    return fig


def _rect(x: int, y: int, color: str, ax):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, color=color, zorder=0)


def cd_diagram(mean_ranks: Mapping[str, float], cd: float, title: str, colors: Mapping[str, tuple]):
    """Critical-difference diagram: mean ranks on an axis (1 = best, left), a CD bar, and a thick
    line joining the configurations whose mean ranks differ by less than the CD (not different)."""
    items = sorted(mean_ranks.items(), key=lambda kv: kv[1])
    k = len(items)
    fig = _figure(7.5, 1.6 + 0.32 * k)
    ax = fig.subplots()
    ax.set_xlim(k + 0.3, 0.7)  # rank 1 on the left, as Demšar draws it
    ax.set_ylim(-(k + 1.5), 1.6)
    ax.axhline(0, color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, 0.15], color="black", lw=1)
        ax.text(r, 0.3, str(r), ha="center", fontsize=8)
    ax.plot([1, 1 + cd], [1.1, 1.1], color="black", lw=2)
    ax.text(1 + cd / 2, 1.25, f"CD = {cd:.2f}", ha="center", fontsize=8)
    for i, (label, rank) in enumerate(items):
        y = -(i + 1) * 0.9
        ax.plot([rank, rank], [0, y], color=colors.get(label, "black"), lw=1)
        ax.text(rank, y - 0.25, f"{label} ({rank:.2f})", ha="center", va="top", fontsize=8, color=colors.get(label, "black"))
    # groups not told apart: maximal runs of rank-adjacent configurations within one CD
    cliques = _cliques([r for _, r in items], cd)
    ranks = [r for _, r in items]
    for level, (i, j) in enumerate(c for c in cliques if not any(o != c and o[0] <= c[0] and c[1] <= o[1] for o in cliques)):
        y = -0.35 - 0.2 * level
        ax.plot([ranks[i] - 0.03, ranks[j] + 0.03], [y, y], color="black", lw=4, solid_capstyle="round")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return fig


def _cliques(ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    out = []
    for i in range(len(ranks)):
        j = max(jj for jj in range(i, len(ranks)) if ranks[jj] - ranks[i] < cd)
        if j > i:
            out.append((i, j))
    return out


# -- spatial maps -------------------------------------------------------------------------------
def spatial_maps(coords: np.ndarray, truth: np.ndarray, pred: np.ndarray, genes: Sequence[str],
                 notes: Sequence[str], title: str, underlay: np.ndarray | None = None,
                 extent: Sequence[float] | None = None):
    """Truth (top row) vs prediction (bottom row) for each gene, on the slide's coordinates (um).

    coords (n, 2) x, y in um; truth, pred (n, len(genes)); notes one line per gene (its PCC);
    underlay an (h, w, 3) uint8 H&E thumbnail covering ``extent`` (x0, x1, y1, y0) in um, shown
    alone in the first column and under the spots. Truth and prediction of one gene share a
    colour scale (the truth's 1st-99th percentile), so a flat prediction looks flat.
    """
    k = len(genes)
    lead = 1 if underlay is not None else 0
    fig = _figure(2.6 * (k + lead) + 0.4, 5.6)
    axes = fig.subplots(2, k + lead, squeeze=False)
    size = float(np.clip(12000.0 / max(len(coords), 1), 3.0, 60.0))  # spots about touch at this figure size
    if lead:
        axes[0, 0].imshow(underlay, extent=extent)
        axes[0, 0].set_title("H&E (spot tiles)", fontsize=8)
        axes[1, 0].set_visible(False)
        for ax in axes[0, :1]:
            ax.set_xticks([])
            ax.set_yticks([])
    for j, gene in enumerate(genes):
        lo, hi = np.nanpercentile(truth[:, j], [1, 99]) if len(truth) else (0, 1)
        hi = hi if hi > lo else lo + 1e-9
        for i, (vals, what) in enumerate(((truth[:, j], "true"), (pred[:, j], "predicted"))):
            ax = axes[i, j + lead]
            if underlay is not None:
                ax.imshow(underlay, extent=extent, zorder=0)
            sc = ax.scatter(coords[:, 0], coords[:, 1], c=vals, s=size * (0.45 if lead else 1.0), cmap="magma",
                            vmin=lo, vmax=hi, lw=0, zorder=1)
            ax.set_aspect("equal")
            if underlay is None:
                ax.invert_yaxis()  # image convention: y grows downwards, as over an H&E
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{gene} {what}" + (f"\n{notes[j]}" if i == 0 and notes[j] else ""), fontsize=8)
        fig.colorbar(sc, ax=axes[:, j + lead], shrink=0.6, location="bottom")
    fig.suptitle(title, fontsize=10)
    return fig


def moran_scatter(points: Mapping[str, tuple[np.ndarray, np.ndarray]], colors: Mapping[str, tuple], title: str):
    """Per-gene Moran's I of the truth (x) vs of the prediction (y), one colour per configuration;
    the diagonal is a prediction as spatially structured as the truth."""
    fig = _figure(4.8, 4.4)
    ax = fig.subplots()
    allv = [v for t, p in points.values() for v in (*t, *p) if np.isfinite(v)]
    lo, hi = (min(allv), max(allv)) if allv else (-0.1, 1.0)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="prediction = truth")
    for label, (t, p) in sorted(points.items()):
        ax.scatter(t, p, s=12, color=colors[label], alpha=0.7, lw=0, label=label)
    ax.set_xlabel("Moran's I of the truth")
    ax.set_ylabel("Moran's I of the prediction")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def pcc_distribution(values: Mapping[str, np.ndarray], colors: Mapping[str, tuple], title: str):
    """Per-gene PCC distribution per configuration: a violin with a box of the quartiles inside."""
    labels = sorted(values, key=lambda lab: -np.nanmedian(values[lab]) if np.isfinite(values[lab]).any() else 0)
    data = [np.asarray(values[lab], float)[np.isfinite(values[lab])] for lab in labels]
    keep = [i for i, d in enumerate(data) if d.size]
    fig = _figure(1.2 + 1.1 * max(len(labels), 2), 3.6)
    ax = fig.subplots()
    if keep:
        parts = ax.violinplot([data[i] for i in keep], positions=keep, showextrema=False, widths=0.8)
        for body, i in zip(parts["bodies"], keep):
            body.set_facecolor(colors[labels[i]])
            body.set_alpha(0.45)
        ax.boxplot([data[i] for i in keep], positions=keep, widths=0.18, showfliers=False,
                   medianprops={"color": "black"})
    ax.set_xticks(range(len(labels)), [f"{lab}\n({d.size} genes)" for lab, d in zip(labels, data)], fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("per-gene PCC")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig
