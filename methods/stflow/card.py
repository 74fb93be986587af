"""STFlow's method card, torch-free: `flag-bench list` and `show` read it from here without
importing method.py (which imports torch and takes its card from here)."""

from __future__ import annotations

from flag_bench.methods.base import TINY_TUNING, MethodCard, Tuning

STFLOW = MethodCard(
    name="stflow",
    description="STFlow: flow matching from a ZINB prior over a whole slide's expression; local spatial "
                "Transformer (kNN, frame-averaged edges, expression-difference attention); 4 NFE",
    citation="Huang, Liu, Babadi, Jin, Ying. Scalable generation of spatial transcriptomics from histology "
             "images via whole-slide flow matching. ICML 2025",
    code_url="https://github.com/Graph-and-Geometric-Learning/STFlow",
    needs=frozenset({"embeddings", "coords"}),
    generative=True,
    uses_validation=True,  # checkpoint chosen on a training slide, never the test fold
    default_run=True,
    licence="flag-bench reimplementation; the official code's licence is its repository's",
    # no weights of its own: it trains on the run's frozen encoder embeddings (the paper used UNI
    # v1 features, ViT-L/16 trained on Mass-100K; the run records which encoder was used)
    pretrained=(),
    extra={"slide_level": True, "prior": "ZINB(total_count 1, logits 0.1, zero-inflation 0.5), log1p",
           "sampling": "x1-prediction Euler on linspace(0.01, 1, 5): 4 evaluations, 1 sample",
           "official_commit": "880c2eeaa64aaf64ffcd30f3c3278bdab4ab1dbe"},
    tuned_on=(
        Tuning("paper", "upstream defaults (d 128, 4 layers, SwiGLU, k 8, Adam 5e-4, batch 2 sub-slides, 10 per slide "
                        "per epoch, 100 epochs, patience 20; baselines-spec §5.5) for the authors' HEST-Benchmark "
                        "tasks on UNI v1 features",
               "the authors' validation PCC, which on HEST-Benchmark splits is the test fold (baselines-spec §5.5)",
               note="not tuned by flag-bench"),
        Tuning("small", "baselines-spec §5.10 (measured on synthetic data: d 64, 2 layers, GELU, Adam 1e-3, 4 "
                        "sub-slides per slide per epoch, 30 epochs), batch 2 as upstream for fit time on "
                        "her2st-mini's ~90-spot items, items capped at 4,096 spots for memory",
               "not recorded beyond fit time and memory: no her2st-mini score is named",
               note="methods/stflow/method.py presets comment; commit 4954820"),
        TINY_TUNING,
    ),
)
