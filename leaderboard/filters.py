"""What part of the results a report shows: --datasets, --methods, --genes, --split, --encoder, --since
(--suite is applied when the results are read, --metric is the sort key).

One ``Filter`` is applied to the results once (``Results.where``), before any renderer, so every
format (table, markdown, csv, html, png, svg) shows the same cells, and the failed and
planned-but-missing notes are narrowed the same way. A value that matches nothing is a user
error naming what the results hold, never an empty report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from flag_bench.errors import UserError


@dataclass(frozen=True)
class Filter:
    datasets: tuple[str, ...] = ()  # a dataset name (her2st-mini) or a full spec (synthetic:n_slides=3)
    methods: tuple[str, ...] = ()
    genes: tuple[int, ...] = ()
    since: datetime | None = None  # cells finished at or after this (UTC when no zone is given)
    # split kinds as cells record them (slide, patient, hest, file): a board pools the folds of
    # every split it holds, and within- and cross-patient folds do not belong in one mean
    splits: tuple[str, ...] = ()
    encoders: tuple[str, ...] = ()  # a row pools a configuration's cells of every encoder it holds

    @property
    def empty(self) -> bool:
        return not (self.datasets or self.methods or self.genes or self.since or self.splits or self.encoders)

    def describe(self) -> str:
        parts = [f"datasets {','.join(self.datasets)}" if self.datasets else "",
                 f"methods {','.join(self.methods)}" if self.methods else "",
                 f"G {','.join(map(str, self.genes))}" if self.genes else "",
                 f"split {','.join(self.splits)}" if self.splits else "",
                 f"encoder {','.join(self.encoders)}" if self.encoders else "",
                 f"finished since {self.since.isoformat()}" if self.since else ""]
        return "; ".join(p for p in parts if p)

    def keep(self, dataset: str, dataset_spec: str, method: str, n_genes: int, finished: str | None,
             split: str | None = None, encoder: str | None = None) -> bool:
        """One cell's identity -> whether the report shows it (finished None: a planned cell; split
        or encoder None: not known, as for a planned cell of a `--split default` grid)."""
        if self.datasets and dataset not in self.datasets and dataset_spec not in self.datasets:
            return False
        if self.methods and method not in self.methods:
            return False
        if self.genes and int(n_genes) not in self.genes:
            return False
        if self.splits and split is not None and split not in self.splits:
            return False
        if self.encoders and encoder is not None and encoder not in self.encoders:
            return False
        if self.since is not None and finished is not None:
            t = parse_time(finished, "record finish time")
            return t is not None and t >= self.since
        return True


def parse_time(text: str, what: str) -> datetime | None:
    """ISO date or date-time -> aware datetime (UTC when no zone); None for an empty text."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise UserError(f"{what} {text!r}: not an ISO date or time; use e.g. 2026-11-26 or 2026-11-26T03:00") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def make_filter(datasets: Sequence[str] | None = None, methods: Sequence[str] | None = None,
                genes: Sequence[str | int] | None = None, since: str | None = None,
                splits: Sequence[str] | None = None, encoders: Sequence[str] | None = None) -> Filter:
    """The command-line values -> a Filter; a G that is not a positive integer is a user error."""
    gs = []
    for g in genes or ():
        try:
            v = int(str(g).strip())
        except ValueError:
            v = 0
        if v < 1:
            raise UserError(f"--genes {g}: not a panel size; give positive integers, e.g. --genes 20,50")
        gs.append(v)
    return Filter(tuple(datasets or ()), tuple(methods or ()), tuple(gs),
                  parse_time(since, "--since") if since else None, tuple(splits or ()),
                  tuple(encoders or ()))


def check_matches(flt: Filter, frame, failed) -> None:
    """Every filter value must match some finished or failed cell: a typo is not an empty report."""
    for values, cols, flag in ((flt.datasets, ("dataset", "dataset_spec"), "--datasets"),
                               (flt.methods, ("method",), "--methods"), (flt.genes, ("n_genes",), "--genes"),
                               (flt.splits, ("split",), "--split"), (flt.encoders, ("encoder",), "--encoder")):
        have = set()
        for c in cols:
            for df in (frame, failed):
                if c in df.columns:
                    have |= {int(v) if c == "n_genes" else str(v) for v in df[c]}
        missing = [str(v) for v in values if v not in have]
        if missing:
            known = ", ".join(sorted({str(v) for v in have}, key=lambda s: (len(s), s))) or "none"
            raise UserError(f"{flag} {','.join(missing)}: not in these results (they hold: {known})")
