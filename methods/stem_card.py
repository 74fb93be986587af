"""Stem's method card, torch-free: `flag-bench list` and `show` read it from here without
importing stem.py (which imports torch at module level and takes its card from here)."""

from __future__ import annotations

from flag_bench.methods.base import MethodCard

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
)
