"""Stem (Zhu, Zhu, Tao, Qiu; ICLR 2025): a conditional DDPM over each spot's gene vector.

A gene-token DiT (dit.py) conditioned by adaLN-Zero on t_emb + MLP(image embedding) predicts the
noise and a learned-range variance; training minimises MSE(eps) + L_vb; prediction is the mean of
``n_samples`` ancestral samples (baselines-spec §4). Spots are independent: no spatial context.

Deviations (recorded in ``summary``): the condition is the harness's image embedding (not
UNI||CONCH) standardised with training statistics (optionally PCA-reduced); no dihedral-transpose
augmentation (the harness hands methods one embedding per spot); the t = 0 decoder term is a
continuous Gaussian NLL; predictions are clipped at 0 (FLAG protocol; Stem's notebook does not).
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch
import torch.nn as nn

from flag_bench.methods.common import training
from flag_bench.methods.common.dit import GeneDiT, TimestepEmbedder, auto_genes_per_token
from flag_bench.methods.common.inputs import require_embeddings, stack_embeddings, stack_targets
from flag_bench.methods.common.samplers import ddpm_ancestral, randn
from flag_bench.methods.common.sde import GaussianDiffusion, linear_betas
from flag_bench.methods.common.torch_method import PREDICT, TorchMethod
from flag_bench.methods.stem_card import STEM
from flag_bench.methods.stem_config import PRESETS, StemConfig


class StemNet(nn.Module):
    def __init__(self, cond_dim: int, n_genes: int, cfg: StemConfig):
        super().__init__()
        gpt = auto_genes_per_token(n_genes, cfg.max_gene_tokens, cfg.max_genes_per_token)
        self.t_embed = TimestepEmbedder(cfg.hidden)
        self.cond = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cfg.hidden))
        self.dit = GeneDiT(n_genes, cfg.hidden, cfg.depth, cfg.heads, cfg.mlp_ratio, out_channels=2,
                           genes_per_token=gpt)
        # cast: indexing a Sequential is typed Module; these are its Linear layers
        for lin in cast("tuple[nn.Linear, ...]", (self.t_embed.mlp[0], self.t_embed.mlp[2], self.cond[0], self.cond[2])):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, G) noisy, t (B,) step index, y (B, Dc) condition -> (B, G, 2) (eps_hat, v)."""
        out, _ = self.dit(x, self.t_embed(t) + self.cond(y))
        return out


class Stem(TorchMethod):
    card = STEM
    Config = StemConfig
    presets = PRESETS  # what each was chosen on: the card's tuned_on (stem_card.py)

    def fit(self, train, val=None):
        cfg = self.config
        dev, gen = self.start_fit(train, cfg.cond_pca)
        y = torch.as_tensor(self.norm_(stack_embeddings(train, np.float32)), device=dev)
        x0 = torch.tensor(stack_targets(train), device=dev)
        n, G = x0.shape
        self.n_genes_ = G
        net = StemNet(y.shape[1], G, cfg).to(dev)
        self.diffusion_ = GaussianDiffusion(linear_betas(cfg.diffusion_steps))
        fwd = torch.compile(net) if cfg.compile and dev.type == "cuda" else net
        bs = min(cfg.batch_size, n)
        steps = cfg.steps if cfg.steps is not None else cfg.epochs * math.ceil(n / bs)

        def micro_step(step, micro):
            idx = torch.randint(0, n, (bs,), generator=gen).to(dev)
            t = torch.randint(0, cfg.diffusion_steps, (bs,), generator=gen).to(dev)
            noise = randn((bs, G), gen, dev)
            xb = x0[idx]
            x_t = self.diffusion_.q_sample(xb, t, noise)
            with training.autocast(self.device, cfg.amp):
                out = fwd(x_t, t.float(), y[idx])
            return self.diffusion_.loss(out.float(), xb, x_t, t, noise)

        settings = training.LoopSettings(steps=steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                         grad_clip=cfg.grad_clip, ema_decay=cfg.ema_decay,
                                         ema_warmup=cfg.ema_warmup, max_seconds=cfg.max_seconds)
        self.ema_, loop = training.train(self, net, micro_step, settings, description="train")
        self.net_ = net
        self.summary = {
            "trained": True, **loop, "n_train_spots": n, "batch_size": bs,
            "epochs": round(loop["optimizer_steps"] * bs / n, 2),
            "genes_per_token": net.dit.k, "n_tokens": net.dit.n_tokens,
            "condition": self.norm_.describe(), "diffusion_steps": cfg.diffusion_steps,
            "sampling_steps": cfg.sampling_steps, "respaced": cfg.sampling_steps < cfg.diffusion_steps,
            "n_samples": cfg.n_samples, "clip_at_zero": cfg.clip_at_zero, "augmentation": "none",
            "t0_decoder": "continuous Gaussian NLL", "amp": cfg.amp and dev.type == "cuda",
        }
        return self

    @torch.no_grad()
    def predict(self, test):
        return [x.mean(axis=0) for x in self.predict_samples(test)]

    def predict_samples(self, test):
        cfg = self.config
        require_embeddings(test, self.card.name)
        dev = torch.device(self.device)
        gen = self.generator(PREDICT)
        diff = self.diffusion_.respaced(cfg.sampling_steps)
        model = self.ema_

        def model_fn(x, t, y):
            with training.autocast(self.device, cfg.amp):
                return model(x, t, y).float()

        out = []
        for s in test.slides:
            y = torch.as_tensor(self.norm_(s.embeddings), device=dev)
            # every spot's condition repeated n_samples times, sampled in chunks of whole spots
            rep = y.repeat_interleave(cfg.n_samples, dim=0)
            per = max(cfg.n_samples, (cfg.predict_batch // cfg.n_samples) * cfg.n_samples)
            chunks = []
            for a in range(0, len(rep), per):
                yc = rep[a:a + per]
                x = ddpm_ancestral(lambda x, t, yc=yc: model_fn(x, t, yc), diff, (len(yc), self.n_genes_), gen, dev)
                chunks.append(x)
            samples = torch.cat(chunks).view(s.n_spots, cfg.n_samples, self.n_genes_).transpose(0, 1)
            out.append((samples.clamp_min(0) if cfg.clip_at_zero else samples).cpu().numpy())
        return out
