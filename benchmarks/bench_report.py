"""The HTML report over a large grid (issue 14 acceptance: 500 cells in <= 10 s, file < 10 MB).

    python benchmarks/bench_report.py                 # 500 cells: 5 methods x G 20,50,100,200 x 25 folds
    python benchmarks/bench_report.py --cells-dir D   # reuse a store written by an earlier run
    python benchmarks/bench_report.py --mlflow        # also log the cells to MLflow and time that source

The cells are written straight into a results store (``tests/report_demo.py: write_demo_store``: real
records and artifacts, no training), which is setup and not timed. Then it times, best of
``--repeats``: reading the results, the leaderboard model, the statistics and figures
(``content.build_content``), the HTML text; and the whole ``flag-bench report --format html``
command in a fresh process (imports included). Prints the HTML size. Timings are wall clock; on
a shared machine run it twice.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("mean", "ridge", "knn", "flag", "stem")
GENES = (20, 50, 100, 200)


def _log_to_mlflow(root: Path) -> None:
    from flag_bench.store import ResultsStore
    from flag_bench.tracking import Tracker, default_tracking_uri

    store, uri = ResultsStore(root), default_tracking_uri(root)
    with store.creation_lock():
        tracker = Tracker(uri, root, "default")
    parent = tracker.start_parent({"genes": list(GENES)}, {"git_commit": "bench", "packages": {}})
    for rec in store.records():
        tracker.log_record(rec, store.artifact_dir(rec.cell_id), parent)


def _timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=25, help="folds per method x G (default 25: 500 cells)")
    ap.add_argument("--side", type=int, default=16, help="spots per slide = side^2 (default 16: 256 spots)")
    ap.add_argument("--cells-dir", type=Path, default=None, help="reuse (or create) the store here")
    ap.add_argument("--mlflow", action="store_true", help="also log to MLflow and time --source mlflow")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from flag_bench.leaderboard.content import build_content
    from flag_bench.thumbnails import thumbnail
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from report_demo import write_demo_store
    from flag_bench.leaderboard.html import render_html
    from flag_bench.leaderboard.model import build
    from flag_bench.leaderboard.notes import gather
    from flag_bench.leaderboard.results import load_results

    tmp = tempfile.TemporaryDirectory(prefix="bench-report-")
    root = args.cells_dir or Path(tmp.name) / "res"
    if not (root / "cells").is_dir():
        t = time.perf_counter()
        ids = write_demo_store(root, methods=METHODS, genes=GENES, folds=args.folds, side=args.side)
        print(f"setup: wrote {len(ids)} cells with artifacts in {time.perf_counter() - t:.1f} s (not timed)")
    if args.mlflow and not (root / "mlflow.db").exists():
        t = time.perf_counter()
        _log_to_mlflow(root)
        print(f"setup: logged to MLflow in {time.perf_counter() - t:.1f} s (not timed)")

    for source in ("store", *(("mlflow",) if args.mlflow else ())):
        t_load, res = _timed(lambda: load_results(root, source=source), args.repeats)
        frame = res.frame()
        t_model, lb = _timed(lambda: build(frame, columns=("pcc_mean", "pcc_pooled", "mse", "gsc", "ssc",
                                                            "moran_abs_err"), costs=True,
                                           notes=gather(res, root)), args.repeats)
        t_content, content = _timed(lambda: build_content(res, lb, thumbnail=thumbnail), args.repeats)
        t_html, text = _timed(lambda: render_html(content), args.repeats)
        size = len(text.encode("utf-8"))
        print(f"[{source}] {len(frame)} cells, {len(content.figures)} figures: read {t_load:.2f} s, model "
              f"{t_model:.2f} s, statistics + figures {t_content:.2f} s, html {t_html:.2f} s; "
              f"in-process total {t_load + t_model + t_content + t_html:.2f} s; HTML {size / 1e6:.2f} MB")
        out = Path(tmp.name) / f"report-{source}.html"
        cmd = [str(Path(sys.executable).parent / "flag-bench"), "report", "--results-dir", str(root), "--source",
               source, "--format", "html", "--output", str(out)]
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            best = min(best, time.perf_counter() - t)
        print(f"[{source}] `flag-bench report --format html` end to end (fresh process): {best:.2f} s, "
              f"file {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
