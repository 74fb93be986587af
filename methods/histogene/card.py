"""HisToGene's method card, torch-free: `flag-bench list` and `show` read it from here without
importing method.py (which imports torch and takes its card from here)."""

from __future__ import annotations

from flag_bench.methods.base import MethodCard

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
)
