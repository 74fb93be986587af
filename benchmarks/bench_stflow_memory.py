"""STFlow peak memory and time on a large slide (issue 11 acceptance: ``small`` < 4 GB at 20,000
spots in a slide, no N x N allocation).

  python benchmarks/bench_stflow_memory.py                        # synthetic 3 x 20,000 spots, G=100
  python benchmarks/bench_stflow_memory.py --spots 5000 --preset paper --epochs 1

Peak RSS of this process during fit + predict (flag_bench.measure.PeakRSS) after the data are
loaded and embedded (color-stats on 32 px tiles: the encoder does not matter for memory). For
scale: one dense float32 N x N distance matrix, as the official graph builder allocates, is
N^2 x 4 B = 1.6 GB at N = 20,000 (and the mask it builds beside it as much again).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("FLAG_BENCH_CACHE", "/tmp/flag-bench-bench-cache")

from flag_bench.datasets import synthetic  # noqa: E402
from flag_bench.datasets.base import PatchSpec  # noqa: E402
from flag_bench.datasets.encoders import ColorStats  # noqa: E402
from flag_bench.datasets.fold import FoldBuilder, FoldSpec  # noqa: E402
from flag_bench.datasets.panels import HMHVG  # noqa: E402
from flag_bench.datasets.splits import carve_validation, make_split  # noqa: E402
from flag_bench.measure import PeakRSS  # noqa: E402
from flag_bench.methods.base import seed_everything  # noqa: E402
from flag_bench.methods.stflow.method import STFlow  # noqa: E402
from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform  # noqa: E402


def views(slides: int, spots: int, genes: int):
    ds = synthetic.load(n_slides=slides, spots_per_slide=spots, n_genes=max(genes, 100), seed=0)
    plan = make_split(ds, SplitSpec("slide"), allow_patient_overlap=True)
    fold = carve_validation(plan, plan.folds[0]) if slides >= 3 else plan.folds[0]
    builder = FoldBuilder(ds, patch=PatchSpec(112, 32), encoder=ColorStats(), device="cpu", cache_dir=None)
    return builder.build(FoldSpec(PanelSpec("hmhvg"), genes, fold, TargetTransform.LOG1P), HMHVG(), embeddings=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=3)
    ap.add_argument("--spots", type=int, default=20000)
    ap.add_argument("--genes", type=int, default=100)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--epochs", type=int, default=None, help="cut epochs (memory does not grow with them)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    t0 = time.perf_counter()
    v = views(a.slides, a.spots, a.genes)
    print(f"data: {[s.n_spots for s in v.train.slides]} train, {[s.n_spots for s in v.test.slides]} test spots, "
          f"G {v.train.n_genes}, built in {time.perf_counter() - t0:.0f} s")
    overrides = {} if a.epochs is None else {"epochs": a.epochs}
    seed_everything(0)
    m = STFlow(STFlow.make_config(a.preset, overrides), seed=0, device=a.device)
    with PeakRSS() as mem:
        t = time.perf_counter()
        m.fit(v.train, v.val)
        fit_s = time.perf_counter() - t
        m.predict(v.test)
        total = time.perf_counter() - t
    s = m.summary
    print(f"preset {a.preset}: peak RSS {mem.peak_mb:,.0f} MB; fit {fit_s:.1f} s ({s['optimizer_steps']} steps, "
          f"mean sub-slide {s['subslide_spots_mean']:.0f} spots, {s['subslides_capped']} capped), "
          f"fit + predict {total:.1f} s")


if __name__ == "__main__":
    main()
