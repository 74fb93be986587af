"""Cells -> leaderboard: one row per dataset x G x method (x preset), mean ± std over folds and
seeds with a bootstrap 95% CI, sorted by the primary metric; a protocol line per dataset; and a
metric-vs-G table (Gene-Dimension-Curse curve) when several panel sizes were run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from flag_bench.errors import UserError

DEFAULT_COLUMNS = ("pcc_mean", "mse", "gsc", "ssc", "ssc@32", "ari")
GROUP = ["dataset", "n_genes", "method", "preset"]


def metric_direction() -> dict[str, bool | None]:
    from flag_bench.catalog import METRICS

    out: dict[str, bool | None] = {}
    for m in METRICS.load_all().values():
        for o in m.outputs:
            out[o.name] = o.higher_is_better
    return out


@dataclass
class Leaderboard:
    table: "object"  # pandas DataFrame, one row per group
    columns: list[str]
    sort_metric: str
    protocols: dict[str, str]  # dataset -> protocol line
    curves: dict[str, "object"]  # dataset -> DataFrame (method x G) of the sort metric


def protocol_line(protocol_json: str) -> str:
    p = json.loads(protocol_json or "{}")
    if not p:
        return ""
    overlap = " (test patient also in train)" if p.get("patient_overlap") else ""
    return (f"protocol {p.get('protocol_version')}: target {p.get('target_transform')} | split "
            f"{p.get('split_description', p.get('split'))}{overlap} | panel {p.get('panel_selector')} | "
            f"encoder {p.get('encoder')} | patch {p.get('patch')} | PCC {p.get('pcc_aggregation')}")


def build(df, *, metric: str = "pcc_mean", columns: tuple[str, ...] | None = None) -> Leaderboard:
    import pandas as pd

    if df.empty:
        raise UserError("no finished cells to report; run `flag-bench run` first")
    direction = metric_direction()
    if metric not in df.columns:
        known = [c for c in df.columns if c in direction]
        raise UserError(f"--metric {metric}: no such score in these results (scores: {', '.join(sorted(known))})")
    cols = [c for c in (columns or DEFAULT_COLUMNS) if c in df.columns]
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise UserError(f"--columns: {', '.join(missing)} not in these results")
    if metric not in cols:
        cols = [metric, *cols]
    from flag_bench.metrics.stats import summarize

    rows = []
    for key, g in df.groupby(GROUP, sort=True):
        row = dict(zip(GROUP, key))
        row["cells"] = len(g)
        for c in cols:
            s = summarize(g[c].to_numpy(dtype=float), level=0.95, seed=0)
            row[c], row[f"{c}_std"], row[f"{c}_ci_low"], row[f"{c}_ci_high"] = s.mean, s.std, s.ci_low, s.ci_high
        rows.append(row)
    table = pd.DataFrame(rows)
    hib = direction.get(metric, True)
    table = table.sort_values(["dataset", "n_genes", metric], ascending=[True, True, not bool(hib)],
                              na_position="last", kind="stable").reset_index(drop=True)
    protocols = {}
    for ds, g in df.groupby("dataset"):
        lines = sorted({protocol_line(p) for p in g["protocol"]})
        protocols[ds] = " / ".join(l for l in lines if l)
    curves = {}
    for ds, g in df.groupby("dataset"):
        if g["n_genes"].nunique() > 1:
            curves[ds] = g.pivot_table(index="method", columns="n_genes", values=metric, aggfunc="mean")
    return Leaderboard(table, cols, metric, protocols, curves)


def _fmt(row, c: str, with_ci: bool = True, sep: str = " ") -> str:
    m, s = row[c], row[f"{c}_std"]
    if not np.isfinite(m):
        return "n/a"
    txt = f"{m:.3f}" + (f" ± {s:.3f}" if np.isfinite(s) else "")
    lo, hi = row[f"{c}_ci_low"], row[f"{c}_ci_high"]
    if with_ci and np.isfinite(lo):
        txt += f"{sep}[{lo:.3f}, {hi:.3f}]"
    return txt


def to_markdown(lb: Leaderboard) -> str:
    out = []
    for ds, g in lb.table.groupby("dataset", sort=False):
        out.append(f"## {ds}\n\n{lb.protocols.get(ds, '')}\n")
        head = ["G", "method", "preset", "cells", *lb.columns]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for _, r in g.iterrows():
            out.append("| " + " | ".join([str(r.n_genes), r.method, r.preset, str(r.cells),
                                          *[_fmt(r, c) for c in lb.columns]]) + " |")
        out.append("")
        if ds in lb.curves:
            cur = lb.curves[ds]
            out.append(f"Gene-Dimension-Curse curve ({lb.sort_metric} vs G)\n")
            out.append("| method | " + " | ".join(str(c) for c in cur.columns) + " |")
            out.append("|---|" + "---|" * len(cur.columns))
            for m, r in cur.iterrows():
                out.append(f"| {m} | " + " | ".join("n/a" if not np.isfinite(v) else f"{v:.3f}" for v in r) + " |")
            out.append("")
    out.append("mean ± std over folds and seeds [95% bootstrap CI of the mean]")
    return "\n".join(out) + "\n"


def to_csv(lb: Leaderboard) -> str:
    return lb.table.to_csv(index=False)


def print_table(lb: Leaderboard, console) -> None:
    from rich.table import Table

    for ds, g in lb.table.groupby("dataset", sort=False):
        t = Table(title=f"{ds}: sorted by {lb.sort_metric}", caption=lb.protocols.get(ds, ""),
                  caption_justify="left")
        for h in ["G", "method", "preset", "cells", *lb.columns]:
            t.add_column(h, justify="right" if h not in ("method", "preset") else "left")
        for _, r in g.iterrows():
            t.add_row(str(r.n_genes), r.method, r.preset, str(r.cells),
                      *[_fmt(r, c, sep="\n") for c in lb.columns])
        console.print(t)
        if ds in lb.curves:
            cur = lb.curves[ds]
            ct = Table(title=f"{ds}: Gene-Dimension-Curse curve, {lb.sort_metric} vs G")
            ct.add_column("method")
            for c in cur.columns:
                ct.add_column(f"G={c}", justify="right")
            for m, r in cur.iterrows():
                ct.add_row(m, *["n/a" if not np.isfinite(v) else f"{v:.3f}" for v in r])
            console.print(ct)
    console.print("mean ± std over folds and seeds [95% bootstrap CI of the mean]")
