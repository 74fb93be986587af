"""STFlow's method card, torch-free: `flag-bench list` and `show` read it from here without
importing method.py (which imports torch and takes its card from here)."""

from __future__ import annotations

from flag_bench.methods.base import MethodCard

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
)
