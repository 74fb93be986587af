"""Stem's method card, torch-free: `flag-bench list` and `show` read it from here without
importing stem.py (which imports torch at module level and takes its card from here)."""

from __future__ import annotations

from flag_bench.methods.base import TINY_TUNING, MethodCard, Tuning

STEM = MethodCard(
    name="stem",
    description="Stem: conditional DDPM over gene tokens (DiT, adaLN-Zero) on the spot's image embedding; "
                "mean of n samples",
    citation="Zhu, Zhu, Tao, Qiu. Diffusion generative modeling for spatially resolved gene expression "
             "inference from histology images. ICLR 2025",
    code_url="https://github.com/SichenZhu/Stem",
    needs=frozenset({"embeddings"}),
    generative=True,
    uses_validation=False,
    default_run=True,
    tuned_on=(
        Tuning("paper", "Stem's stem_train.py / stem_sample.py defaults (D 384, 12 blocks, AdamW 1e-4, batch 256, "
                        "4,000 epochs, EMA 0.9999, 1,000 steps, 20 samples; baselines-spec §4.5) for the authors' "
                        "HEST-1k benchmarks, one held-out test slide each (HER2ST SPA148 = B1 or SPA123 = G2, PRAD "
                        "MEND145, kidney NCBI697, mouse brain NCBI667)",
               "not recorded: the released recipe has no validation set and no early stopping",
               note="not tuned by flag-bench; the authors' HER2ST test sections (B1, G2) are not her2st-mini's"),
        Tuning("small", "baselines-spec §4.10, measured on synthetic data (4 slides x 506 spots); then, for the 35 s "
                        "budget per her2st-mini fold, genes grouped into <= 16 tokens of <= 16 genes, lr 2e-3 and "
                        "800 steps, compared on her2st-mini G=50, the fold testing C2",
               "test-slide PCC on C2 (0.544 vs 0.542 with 64 tokens / lr 1e-3 / 1,200 steps) and fit time",
               ("her2st-mini:C2",), "methods/stem.py presets comment; commit 6ddfd40"),
        TINY_TUNING,
    ),
)
