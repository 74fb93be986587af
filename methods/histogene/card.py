"""HisToGene's method card, torch-free: `flag-bench list` and `show` read it from here without
importing method.py (which imports torch and takes its card from here)."""

from __future__ import annotations

from flag_bench.methods.base import TINY_TUNING, MethodCard, Tuning

HISTOGENE = MethodCard(
    name="histogene",
    description="HisToGene: ViT over all spots of a slide; tokens = linear embedding of the raw patch + learned "
                "x/y grid-position embeddings; MSE",
    citation="Pang, Su, Li. Leveraging information in spatial transcriptomics to predict super-resolution gene "
             "expression from histology images in tumors. bioRxiv 2021.11.28.470212",
    code_url="https://github.com/maxpmx/HisToGene",
    needs=frozenset({"tiles", "coords"}),
    uses_validation=False,  # the official recipe: fixed epochs, last weights
    default_run=True,
    licence="flag-bench reimplementation; the official code's licence is its repository's",
    pretrained=(),  # trained from scratch: no pretrained weights
    extra={"slide_level": True},
    tuned_on=(
        Tuning("paper", "the official tutorial's model and recipe (112 px patches, 0-255 pixels, Adam 1e-5, 100 "
                        "epochs, last weights; baselines-spec §2.4) for the authors' HER2ST (leave-one-section-out "
                        "over 32 of its 36 sections) and cSCC",
               "not recorded: the released recipe has no validation and no early stopping",
               note="not tuned by flag-bench; the authors' folds hold out 32 of HER2ST's 36 sections in turn "
                    "(names[1:33] of the sorted names), most likely her2st-mini's B4 and C2-C6 among them"),
        Tuning("small", "baselines-spec §2.9 (d 64, 2 layers, lr 1e-3; measured on synthetic data), then 32 px "
                        "patches and pixels in 0-1 units, compared on her2st-mini G=50, the fold testing C2",
               "test-slide PCC and MSE on C2 (0-255: PCC 0.36, MSE 1.04 vs the mean control's 0.98; 0-1: 0.52 / "
               "0.79)", ("her2st-mini:C2",), "methods/histogene/method.py presets comment; commit a292444"),
        TINY_TUNING,
    ),
)
