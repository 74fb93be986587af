"""The Gene Dimension Curse tables, from the results folder of scripts/gdc_sweep.sh.

    python scripts/gdc_tables.py RESULTS_DIR [--write FILE] [--genes 10,50,200,800] [--seeds 0,1,2]
                                 [--n-folds 5] [--digits 3]

Reads the finished cells through the public API (``load_results``, the results store) and keeps
those of the sweep's protocol: dataset her2st-mini, ``--split slide``, ``--target-transform
log2p1``, panel hmhvg, preset small, the current PROTOCOL_VERSION, methods flag-joint and
flag-node (each filter is an option). A configuration is a method with one head: its
``score_output``, read from the cell's config label (an override ``score_output=X``) or, without
one, the preset's default (small: ``edm``); configurations that override anything else are
listed and left out.

Statistics. Folds (test slides) are the units; seeds are not independent units: each fold's
value is the mean over its seeds, and every mean and interval is over folds.

- per method x head x G and score: the mean over folds of the seed-averaged values, a 95%
  t-interval over folds (``scipy.stats.t.interval(0.95, n - 1, loc=mean, scale=sd / sqrt(n))``,
  sd with ddof 1), and the seed sd (the square root of the mean over folds of the within-fold
  variance across seeds, ddof 1; folds with one seed do not enter it);
- per method x head: the change from the smallest to the largest G, paired by fold (the fold's
  value at the largest G minus its value at the smallest), with its t-interval over folds;
- per head and G: flag-joint minus flag-node, paired by fold, with its t-interval over folds.

A quantity with fewer folds than expected is "n/a (k of N folds)": the folds are different
slides, so a mean over some of them is not comparable with one over all.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from flag_bench import PROTOCOL_VERSION
from flag_bench.errors import UserError
from flag_bench.leaderboard.results import load_results

SCORES = {"pcc_mean": "PCC", "mse": "MSE", "gsc": "GSC", "ssc": "SSC"}
GENES = (10, 50, 200, 800)
SEEDS = (0, 1, 2)
METHODS = ("flag-joint", "flag-node")
HEAD_ORDER = ("edm", "raw", "over_sigma")


def parse_ints(text: str) -> list[int]:
    return sorted({int(v) for v in text.split(",") if v.strip()})


def default_head(method: str, preset: str) -> str | None:
    """The score head a preset of ``method`` runs without an override (None: unknown preset)."""
    from flag_bench.methods.flag.config import PRESETS, FlagConfig

    table = PRESETS.get(method, {}).get(preset)
    if table is None:
        return None
    return str(table.get("score_output", FlagConfig.score_output))


def head_of(method: str, preset: str, config_label: str) -> str | None:
    """The head of a configuration whose only override is ``score_output`` (None: other overrides).

    The label is MethodInfo.label: the preset, then each overridden key as key=value."""
    m = re.fullmatch(re.escape(preset) + r"(?: score_output=(\w+))?", str(config_label).strip())
    if m is None:
        return None
    return m.group(1) or default_head(method, preset)


def t_interval(values, level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values; the t-interval needs n >= 2 (else NaN bounds)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    sem = float(v.std(ddof=1)) / math.sqrt(n)
    if sem == 0:
        return mean, mean, mean, n
    lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=sem)
    return mean, float(lo), float(hi), n


class Sweep:
    """The sweep's cells as one frame with a ``head`` column, and the tables over it."""

    def __init__(self, rd: Path, *, genes=None, seeds=None, n_folds: int = 5, methods=METHODS,
                 dataset="her2st-mini", split="slide", transform="log2p1", panel="hmhvg", preset="small",
                 suite=None, digits=3):
        """``genes`` / ``seeds``: what the sweep ran (None: the defaults GENES / SEEDS and any found)."""
        self.methods, self.digits = list(methods), digits
        res = load_results(rd, source="store", suite=suite)
        f = res.frame()
        self.notes: list[str] = []
        self.protocol = (f"dataset {dataset}, split {split}, target {transform}, panel {panel}, preset {preset}, "
                         f"protocol {PROTOCOL_VERSION}, methods {', '.join(self.methods)}")
        keep = ((f["dataset"] == dataset) & (f["split"] == split) & (f["target_transform"] == transform)
                & (f["panel_selector"] == panel) & (f["preset"] == preset) & f["method"].isin(self.methods))
        if (~keep).any():
            self.notes.append(f"{int((~keep).sum())} cells of other datasets, splits, targets, panels, presets "
                              "or methods left out")
        old = keep & (f["protocol_version"] != PROTOCOL_VERSION)
        if old.any():
            self.notes.append(f"{int(old.sum())} cells of another protocol version "
                              f"({', '.join(sorted(f.loc[old, 'protocol_version'].unique()))}) left out")
        f = f[keep & ~old].copy()
        f["head"] = [head_of(m, p, lab) for m, p, lab in zip(f["method"], f["preset"], f["config_label"])]
        other = f[f["head"].isna()]
        for (m, lab), g in other.groupby(["method", "config_label"]):
            self.notes.append(f"{len(g)} cells of {m} ({lab}) left out: overrides other than score_output")
        f = f[f["head"].notna()]
        self.genes = sorted(genes) if genes else sorted(set(GENES) | set(map(int, f["n_genes"])))
        self.seeds = sorted(seeds) if seeds else sorted(set(SEEDS) | set(map(int, f["seed"])))
        encoders = sorted(f["encoder"].unique())
        if len(encoders) > 1:
            self.notes.append(f"cells of several encoders ({', '.join(encoders)}) are pooled")
        outside = f[~f["n_genes"].isin(self.genes) | ~f["seed"].isin(self.seeds)]
        if len(outside):
            self.notes.append(f"{len(outside)} cells at a G or seed outside --genes/--seeds left out")
        f = f[f["n_genes"].isin(self.genes) & f["seed"].isin(self.seeds)]
        key = ["method", "head", "n_genes", "fold", "seed"]
        dup = f.duplicated(key, keep=False)
        if dup.any():
            self.notes.append(f"{int(dup.sum())} cells share a method, head, G, fold and seed (other config "
                              "hashes): averaged")
        self.f = f.groupby(key, as_index=False)[list(SCORES)].mean()
        self.heads = sorted(set(self.f["head"]) | {"edm", "raw"},
                            key=lambda h: (HEAD_ORDER.index(h) if h in HEAD_ORDER else len(HEAD_ORDER), h))
        self.folds = sorted(self.f["fold"].unique())
        self.n_folds = max(n_folds, len(self.folds))
        if len(self.folds) > n_folds:
            self.notes.append(f"{len(self.folds)} folds found, more than the {n_folds} expected")
        self.failed = res.failed()
        self.failed = self.failed[self.failed["method"].isin(self.methods)
                                  & ~self.failed["cell_id"].isin(res.all_finished())]

    # -- numbers ---------------------------------------------------------------------------------
    def fold_values(self, method: str, head: str, g: int, score: str) -> pd.Series:
        """fold -> the mean over its seeds of ``score`` (finite values only; folds with none dropped)."""
        h = self.f[(self.f["method"] == method) & (self.f["head"] == head) & (self.f["n_genes"] == g)]
        v = h[np.isfinite(h[score])].groupby("fold")[score].mean()
        return v

    def seed_sd(self, method: str, head: str, g: int, score: str) -> float:
        h = self.f[(self.f["method"] == method) & (self.f["head"] == head) & (self.f["n_genes"] == g)]
        h = h[np.isfinite(h[score])]
        var = h.groupby("fold")[score].var(ddof=1).dropna()
        return float(math.sqrt(var.mean())) if len(var) else math.nan

    def seeds_per_fold(self, method: str, head: str, g: int) -> list[int]:
        h = self.f[(self.f["method"] == method) & (self.f["head"] == head) & (self.f["n_genes"] == g)]
        return list(h.groupby("fold")["seed"].nunique())

    # -- text ------------------------------------------------------------------------------------
    def fmt(self, x: float) -> str:
        return "n/a" if x is None or not np.isfinite(x) else f"{x:.{self.digits}f}"

    def ci_text(self, values: pd.Series) -> str:
        mean, lo, hi, n = t_interval(values)
        if n < self.n_folds:
            return f"n/a ({n} of {self.n_folds} folds)"
        if n < 2:
            return f"{self.fmt(mean)} (1 fold: no interval)"
        return f"{self.fmt(mean)} [{self.fmt(lo)}, {self.fmt(hi)}]"

    def main_table(self) -> str:
        rows = []
        for method in self.methods:
            for head in self.heads:
                for g in self.genes:
                    spf = self.seeds_per_fold(method, head, g)
                    seeds = "0" if not spf else (str(spf[0]) if min(spf) == max(spf) else f"{min(spf)}-{max(spf)}")
                    cells = []
                    for score in SCORES:
                        v = self.fold_values(method, head, g, score)
                        text = self.ci_text(v)
                        if len(v) >= self.n_folds:
                            text += f"; seed sd {self.fmt(self.seed_sd(method, head, g, score))}"
                        cells.append(text)
                    rows.append([method, head, str(g), f"{len(spf)} of {self.n_folds}", seeds, *cells])
        return md(["method", "head", "G", "folds", "seeds per fold", *SCORES.values()], rows)

    def change_table(self) -> str:
        g0, g1 = self.genes[0], self.genes[-1]
        rows = []
        for method in self.methods:
            for head in self.heads:
                cells, n = [], 0
                for score in SCORES:
                    a, b = self.fold_values(method, head, g0, score), self.fold_values(method, head, g1, score)
                    d = (b - a).dropna()
                    n = max(n, len(d))
                    cells.append(self.ci_text(d))
                rows.append([method, head, f"{g0} -> {g1}", f"{n} of {self.n_folds}", *cells])
        return md(["method", "head", "G", "paired folds", *(f"change in {s}" for s in SCORES.values())], rows)

    def contrast_table(self, a: str = "flag-joint", b: str = "flag-node") -> str:
        rows = []
        for head in self.heads:
            for g in self.genes:
                cells, n = [], 0
                for score in SCORES:
                    d = (self.fold_values(a, head, g, score) - self.fold_values(b, head, g, score)).dropna()
                    n = max(n, len(d))
                    cells.append(self.ci_text(d))
                rows.append([head, str(g), f"{n} of {self.n_folds}", *cells])
        return md(["head", "G", "paired folds", *(f"{s}: {a} - {b}" for s in SCORES.values())], rows)

    def render(self) -> str:
        expected = len(self.methods) * len(self.heads) * len(self.genes) * self.n_folds * len(self.seeds)
        found = len(self.f[self.f["head"].isin(self.heads)])
        out = ["## Gene Dimension Curse: flag-joint vs flag-node against G\n",
               f"Cells: {self.protocol}; G {', '.join(map(str, self.genes))}; seeds "
               f"{', '.join(map(str, self.seeds))}; {self.n_folds} folds; heads {', '.join(self.heads)}.\n",
               f"**{found} of {expected} expected cells found** ({len(self.failed)} failed and not finished)."
               + "".join(f"\n- {n}" for n in self.notes) + "\n",
               "Each value: the mean over folds of the seed-averaged score, [95% t-interval over folds]; "
               "seed sd = the within-fold sd across seeds (pooled over folds). Seeds are averaged within a "
               "fold before anything else: they are not independent units. Higher is better except MSE.\n",
               "### Scores per method, head and G\n", self.main_table() + "\n"]
        if len(self.genes) >= 2:
            out += [f"### Change from G = {self.genes[0]} to G = {self.genes[-1]} (paired by fold)\n",
                    self.change_table() + "\n"]
        if {"flag-joint", "flag-node"} <= set(self.methods):
            out += ["### flag-joint minus flag-node at each G (paired by fold; > 0: joint higher)\n",
                    self.contrast_table() + "\n"]
        return "\n".join(out)


def md(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_dir", type=Path)
    ap.add_argument("--write", type=Path, help="also write the markdown to FILE")
    ap.add_argument("--genes", help="G expected, comma-separated (default: 10,50,200,800 and any G found)")
    ap.add_argument("--seeds", help="seeds expected (default: 0,1,2 and any seed found)")
    ap.add_argument("--n-folds", type=int, default=5, help="folds expected (default 5: C2-C6)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--dataset", default="her2st-mini")
    ap.add_argument("--split", default="slide")
    ap.add_argument("--target-transform", default="log2p1")
    ap.add_argument("--panel", default="hmhvg")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--suite", default=None, help="only this suite's cells (default: every cell of the folder)")
    ap.add_argument("--digits", type=int, default=3)
    a = ap.parse_args(argv)

    try:
        sweep = Sweep(a.results_dir, genes=parse_ints(a.genes) if a.genes else None,
                      seeds=parse_ints(a.seeds) if a.seeds else None, n_folds=a.n_folds,
                      methods=[m for m in a.methods.split(",") if m], dataset=a.dataset, split=a.split,
                      transform=a.target_transform, panel=a.panel, preset=a.preset, suite=a.suite,
                      digits=a.digits)
    except UserError as exc:
        sys.stderr.write(f"gdc_tables: {exc}\n")
        return 1
    text = sweep.render()
    if a.write:
        a.write.write_text(text)
    sys.stdout.write(text + (f"\n(written to {a.write})\n" if a.write else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
