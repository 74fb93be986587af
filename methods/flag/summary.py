"""What a FLAG fit records next to its scores: the loop, the windows and every protocol switch."""

from __future__ import annotations

from typing import Any

import numpy as np


def fit_summary(method, loop: dict, slides, steps_per_epoch: int, provider_info: dict | None,
                validated: bool) -> dict[str, Any]:
    cfg, net = method.config, method.net_
    win_sizes = [len(w) for sl in slides for w in sl.windows]
    graph = method.uses_graph
    return {
        "trained": True, "graph_role": method.graph_role, "graph_mode": method.graph_mode, "head": method.head,
        **loop,
        "epochs": round(loop["optimizer_steps"] / steps_per_epoch, 2), "steps_per_epoch": steps_per_epoch,
        "n_train_windows": len(win_sizes), "window_spots_mean": float(np.mean(win_sizes)),
        "window_spots_max": int(np.max(win_sizes)), "window_um": cfg.window_um if graph else None,
        "use_cond_e_in_attn": method.reads_cond_e if graph else None,
        "graph_input": ("x_t" if net.graph_sees_xt else "cond (C_v, C_e only)") if graph else None,
        "t_per": method.t_per,
        "gene_embeddings": provider_info, "align_weight": cfg.align_weight if method.uses_alignment else 0.0,
        "genes_per_token": net.dit.k if net.dit is not None else None,
        "condition": method.norm_.describe(), "val_metric": cfg.val_metric if validated else None,
        "sampler": method.sampler_description(), "n_samples": method.draws_per_window(cfg.n_samples),
        "standardize_targets": cfg.standardize_targets, "time_scale": cfg.time_scale,
        "clip_at_zero": cfg.clip_at_zero, "score_output": cfg.score_output,
        "amp": cfg.amp and str(method.device).startswith("cuda"),
    }
