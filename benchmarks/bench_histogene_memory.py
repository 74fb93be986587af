"""HisToGene peak memory under a preset (issue 10 acceptance: ``small`` < 4 GB).

  python benchmarks/bench_histogene_memory.py                  # synthetic G=800 + a her2st-mini fold
  python benchmarks/bench_histogene_memory.py --preset paper --epochs 1   # the paper model's memory

Peak RSS of this process during fit + predict (flag_bench.measure.PeakRSS), the model's own
estimate of one training sequence (``summary["sequence_memory_mb"]``), and wall time. Data
loading happens before measuring. Epochs can be cut: memory does not grow with them.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("FLAG_BENCH_CACHE", "/tmp/flag-bench-bench-cache")

from flag_bench.datasets import her2st_mini, synthetic  # noqa: E402
from flag_bench.datasets.base import PatchSpec  # noqa: E402
from flag_bench.datasets.encoders import ColorStats  # noqa: E402
from flag_bench.datasets.fold import FoldBuilder, FoldSpec  # noqa: E402
from flag_bench.datasets.panels import HMHVG  # noqa: E402
from flag_bench.datasets.splits import make_split  # noqa: E402
from flag_bench.measure import PeakRSS  # noqa: E402
from flag_bench.methods.base import seed_everything  # noqa: E402
from flag_bench.methods.histogene.method import HisToGene  # noqa: E402
from flag_bench.spec import PanelSpec, SplitSpec, TargetTransform  # noqa: E402


def views(ds, genes: int):
    plan = make_split(ds, SplitSpec("slide"), allow_patient_overlap=True)
    builder = FoldBuilder(ds, patch=PatchSpec(), encoder=ColorStats(), device="cpu", cache_dir=None)
    return builder.build(FoldSpec(PanelSpec("hmhvg"), genes, plan.folds[0], TargetTransform.LOG1P), HMHVG(),
                         embeddings=False)


def measure(name: str, v, preset: str, epochs: int | None) -> None:
    overrides = {} if epochs is None else {"epochs": epochs}
    seed_everything(0)
    m = HisToGene(HisToGene.make_config(preset, overrides), seed=0, device="cpu")
    with PeakRSS() as mem:
        t = time.perf_counter()
        m.fit(v.train)
        m.predict(v.test)
        dt = time.perf_counter() - t
    s = m.summary
    sizes = [sl.n_spots for sl in v.train.slides]
    print(f"{name}: preset {preset}, G {v.train.n_genes}, training slides {sizes}, epochs {s['epochs']}: "
          f"peak RSS {mem.peak_mb:,.0f} MB, longest sequence {s['longest_sequence']} "
          f"(estimate {s['sequence_memory_mb']:,.0f} MB), {m.n_parameters():,} parameters, {dt:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--spots", type=int, default=1200, help="spots per synthetic slide")
    a = ap.parse_args()
    syn = synthetic.load(n_slides=4, spots_per_slide=a.spots, n_genes=2000, seed=0)
    measure("synthetic", views(syn, 800), a.preset, 20 if a.epochs is None else a.epochs)
    measure("her2st-mini (test C2)", views(her2st_mini.load(), 50), a.preset, a.epochs)


if __name__ == "__main__":
    main()
