"""Which metrics can tell right from wrong on a dataset: the location-sensitivity verdict.

A metric is called location-sensitive on a dataset only if the noisy truth (``oracle-noise``,
sigma 0.5, the default config) beats each of the four controls that are wrong about location or
ignore the image (``null-rotate``, ``null-shuffle``, ``random-spot``, ``gene-prior``) on every
fold where they were run, by the metric's own direction (seeds averaged within a fold first). A
tie counts as a failure: GSC gives the shuffled truth exactly 1.

Verdicts come from the results being reported when they hold those controls; otherwise from the
table shipped in ``leaderboard/data/validity.json``, written by ``scripts/metric_validity.py``
(the run behind ``docs/metrics.md``) for the embedded datasets; otherwise "not assessed".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Mapping, Sequence

CONTROLS = ("null-rotate", "null-shuffle", "random-spot", "gene-prior")
NOISY = "oracle-noise"
NOISY_SIGMA = 0.5
# every metric the validity table covers, in the order docs/metrics.md lists them
METRICS = ("pcc_mean", "pcc_pooled", "mse", "gsc", "gsc_frobenius", "gsc_cpm", "ssc", "ssc@32", "ssc_spot",
           "lee_l", "ari")
FOLD = ("n_genes", "split", "fold", "target_transform", "panel_selector")
SHIPPED = "validity.json"


@dataclass(frozen=True)
class Verdict:
    metric: str
    sensitive: bool | None  # None: not assessed
    failed_by: tuple[str, ...] = ()  # controls the noisy truth did not beat on some fold
    folds: int = 0
    source: str = ""  # "these results" or where the shipped verdict was measured


def noise_config_hash(sigma: float = NOISY_SIGMA) -> str:
    """The config hash of oracle-noise at ``sigma`` (default: the noisy truth of the verdict)."""
    from flag_bench.catalog import METHODS

    cls = METHODS.get(NOISY)
    return cls.config_hash(cls.make_config("small", {"sigma": sigma}))


def verdicts_from_frame(frame, direction: Mapping[str, bool | None], source: str = "these results"
                        ) -> dict[str, Verdict]:
    """One dataset's results frame -> metric -> Verdict (only metrics the frame can judge)."""
    if frame.empty or NOISY not in set(frame["method"]) or not set(CONTROLS) <= set(frame["method"]):
        return {}
    noisy = frame[(frame["method"] == NOISY) & (frame["config_hash"] == noise_config_hash())]
    if noisy.empty:
        return {}
    keys = [k for k in FOLD if k in frame.columns]
    metrics = [m for m in METRICS if m in frame.columns and direction.get(m) is not None]
    # seeds (and configurations of a control) averaged within each fold, once for every metric
    ref = noisy.groupby(keys)[metrics].mean()
    ctrl = frame[frame["method"].isin(CONTROLS)].groupby([*keys, "method"])[metrics].mean()
    out = {}
    for m in metrics:
        higher = direction[m] is not False
        failed: set[str] = set()
        judged = 0
        complete = True
        for fold, v in ref[m].items():
            fold = fold if isinstance(fold, tuple) else (fold,)
            if not math.isfinite(v):
                continue
            for c in CONTROLS:
                c_mean = ctrl[m].get((*fold, c), math.nan)
                if not math.isfinite(c_mean):
                    complete = False
                    continue
                if not (v > c_mean if higher else v < c_mean):
                    failed.add(c)
            judged += 1
        if judged and complete:
            out[m] = Verdict(m, not failed, tuple(c for c in CONTROLS if c in failed), judged, source)
    return out


def shipped() -> dict:
    """The shipped verdicts: dataset spec -> {"target_transform", "source", "metrics": {...}}."""
    try:
        text = resources.files("flag_bench.leaderboard").joinpath("data", SHIPPED).read_text()
    except (FileNotFoundError, ModuleNotFoundError):
        return {}
    return json.loads(text)


def shipped_verdicts(dataset_specs: Sequence[str], transforms: Sequence[str]) -> dict[str, Verdict]:
    """Shipped verdicts for a board whose rows all share one dataset spec and one target transform."""
    if len(set(dataset_specs)) != 1 or len(set(transforms)) != 1:
        return {}
    entry = shipped().get(next(iter(dataset_specs)))
    if not entry or entry.get("target_transform") != next(iter(transforms)):
        return {}
    return {m: Verdict(m, v.get("sensitive"), tuple(v.get("failed_by", ())), int(v.get("folds", 0)),
                       entry.get("source", "docs/metrics.md"))
            for m, v in entry.get("metrics", {}).items()}


def board_verdicts(frame, direction: Mapping[str, bool | None]) -> dict[str, Verdict]:
    """The verdicts for one dataset's board: its own results first, else the shipped table."""
    live = verdicts_from_frame(frame, direction)
    if live:
        return live
    return shipped_verdicts(list(frame["dataset_spec"].unique()), list(frame["target_transform"].unique()))


def summary_line(verdicts: Mapping[str, Verdict], header) -> str:
    """One sentence for a legend: which metrics are location-sensitive here and which fail, by what."""
    if not verdicts:
        return ("location sensitivity: not assessed on this dataset (run oracle-noise, null-rotate, null-shuffle, "
                "random-spot and gene-prior beside the methods; see docs/metrics.md)")
    source = next(iter(verdicts.values())).source
    good = [header(m) for m, v in verdicts.items() if v.sensitive]
    bad = [f"{header(m)} ({', '.join(v.failed_by)})" for m, v in verdicts.items() if v.sensitive is False]
    text = (f"location-sensitive here (noisy truth beats rotated, shuffled, random-spot and gene-prior on every "
            f"fold; {source}): {', '.join(good) or 'none'}")
    if bad:
        text += f". NOT location-sensitive here (not beaten): {'; '.join(bad)}"
    return text
