"""The FLAG family's method cards, torch-free: `flag-bench list` and `show` read them from here
without importing the implementation (method.py and variants.py take their cards from here)."""

from __future__ import annotations

import dataclasses

from flag_bench.methods.base import MethodCard, PretrainedWeights

CITATION = ("Si, Wang, Wu, Jiao, Liu, Guo, Qi, Cheng. FLAG: Foundation model representation with Latent "
            "diffusion Alignment via Graph for spatial gene expression prediction. ICML 2026 (arXiv 2605.18055)")
CODE_URL = "https://github.com/darkflash03/FLAG"

FLAG = MethodCard(
    name="flag",
    description="FLAG (released-code default): graph-conditioned VE-SDE score diffusion over gene tokens "
                "with GFM alignment; Heun PF-ODE, n samples averaged",
    citation=CITATION, code_url=CODE_URL, needs=frozenset({"embeddings", "coords", "counts"}),
    generative=True, uses_validation=True, default_run=True,
    # the image encoder's weights are the run's (recorded with the run), not the method's
    pretrained=(PretrainedWeights(
        name="her2st-expr gene table (default alignment target, gene_embeddings='her2st-expr')",
        trained_on="her2st (Andersson et al. 2021) patients A, D, E, F, G, H: 24 sections, 10,822 spots; "
                   "never patients B or C, whose sections B4 and C2-C6 are benchmarked",
        source="methods/data/her2st_expr_gene_table.npz (scripts/build_gene_embeddings.py)",
        licence="CC BY 4.0 (her2st data)"),),
)


def _variant(name: str, description: str) -> MethodCard:
    return dataclasses.replace(FLAG, name=name, description=description, default_run=False)


FLAG_PAPER = _variant("flag-paper", "FLAG as the paper describes it: static edge conditions (distance, image "
                      "similarity) enter the graph attention (use_cond_e_in_attn=True)")
FLAG_NO_GFM = _variant("flag-no-gfm", "FLAG ablation without gene-foundation-model alignment (score loss only)")
FLAG_NO_GRAPH = _variant("flag-no-graph", "FLAG ablation without the spatial graph: DiT conditioned on t_emb + "
                         "MLP(image embedding), with GFM alignment")
FLAG_REGRESSION = _variant("flag-regression", "FLAG ablation without diffusion: the same graph + DiT backbone "
                           "trained as a deterministic MSE regressor")
FLAG_NODE = _variant("flag-node", "node-only graph diffusion (the graph model scores expression with A_t = 0)")
FLAG_JOINT = _variant("flag-joint", "joint node–edge graph diffusion (nodes: expression; edges: spot–spot gene "
                      "PCC; consistency loss) — the Gene-Dimension-Curse failure mode")
