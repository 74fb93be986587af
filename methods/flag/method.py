"""FLAG (flag-spec §3–4): graph-conditioned score diffusion over gene tokens.

FLAG = spatial graph encoder over a window of spots (image embeddings, static edge conditions)
-> per-spot condition -> gene-token DiT (adaLN-Zero) predicting the VE-SDE score, trained by
sigma^2-weighted denoising score matching plus a REPA-style alignment of DiT layer k to frozen
per-gene embeddings from a gene foundation model; sampled with a Heun probability-flow ODE and a
Tweedie step, n samples clipped at 0 and averaged.

The variants (``variants.py``) differ through three class attributes: ``graph_role`` (what the
graph encoder does, ``net.GraphRole``), ``head`` ("score": a diffusion model sampled with the
PF-ODE; "regression": a deterministic regressor) and ``aligns`` (whether the GFM alignment loss
can apply), which the properties below resolve against the config, plus small overrides where
the mechanism itself differs.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch

from flag_bench.methods.common import training
from flag_bench.methods.common.batching import WindowBatch, WindowedSlide, all_picks, collate, scatter_windows
from flag_bench.methods.common.inputs import require_embeddings, stack_targets
from flag_bench.methods.common.samplers import heun_pf_ode, randn
from flag_bench.methods.common.sde import VESDE, dsm_loss
from flag_bench.methods.common.torch_method import PREDICT, VALIDATE, TorchMethod
from flag_bench.methods.common.windows import pair_mask, windows
from flag_bench.methods.flag import cards
from flag_bench.methods.flag.config import PRESETS, FlagConfig
from flag_bench.methods.flag.edges import static_edge_conditions
from flag_bench.methods.flag.net import GRAPH_SCORE_ROLES, FlagNet, GraphRole
from flag_bench.methods.flag.objectives import alignment_loss, output_to_score, val_score
from flag_bench.methods.flag.summary import fit_summary

TRAIN_FIELDS = dict(padded=("cond", "x0"), packed=("align", "align_mask"))


class Flag(TorchMethod):
    card = cards.FLAG
    Config = FlagConfig
    presets = PRESETS["flag"]
    graph_role: ClassVar[GraphRole] = "condition"
    head: ClassVar[Literal["score", "regression"]] = "score"
    aligns: ClassVar[bool] = True

    # -- capabilities, resolved with the config --------------------------------------------
    @property
    def graph_mode(self) -> str:
        """"none" | "cond" | "x_t" (what the conditioning graph reads) | "node" | "joint"."""
        return self.config.graph_input if self.graph_role == "condition" else self.graph_role

    @property
    def uses_graph(self) -> bool:
        return self.graph_role != "none"

    @property
    def reads_cond_e(self) -> bool:
        """Whether the static edge conditions enter the graph attention (mode 1 always uses them)."""
        return self.uses_graph and (self.graph_role in GRAPH_SCORE_ROLES or self.config.use_cond_e_in_attn)

    @property
    def t_per(self) -> str:
        """One diffusion time per "spot" or per "window"; graph diffusion (mode 1) always uses "window"."""
        return "window" if self.graph_role in GRAPH_SCORE_ROLES else self.config.t_per

    @property
    def uses_alignment(self) -> bool:
        return self.aligns and self.config.align_weight > 0 and self.config.align_layer > 0

    def _sde(self) -> VESDE:
        c = self.config
        return VESDE(c.sigma_min, c.sigma_max, c.t_min)

    # -- data --------------------------------------------------------------------------------
    def _windows(self, slide, cond: torch.Tensor) -> tuple[list[np.ndarray], list[torch.Tensor | None]]:
        """The slide's windows and, where attention reads them, their static edge conditions."""
        cfg = self.config
        coords = np.asarray(slide.coords_um, dtype=np.float64)
        wins = [np.asarray(w, dtype=np.int64) for w in windows(coords, cfg.window_um, cfg.max_window_spots)]
        if not self.reads_cond_e:
            return wins, [None] * len(wins)
        return wins, [torch.as_tensor(static_edge_conditions(coords[w], cond[w].numpy(), cfg.sigma_dist_um),
                                      dtype=torch.float32) for w in wins]

    def _prepare(self, data, with_targets: bool) -> list[WindowedSlide]:
        out = []
        for s in data.slides:
            cond = torch.as_tensor(self.norm_(s.embeddings))
            wins, pairs = self._windows(s, cond)
            spots = {"cond": cond}
            if with_targets:
                z = (np.asarray(s.targets, dtype=np.float32) - self.mu_) / self.sd_
                spots["x0"] = torch.tensor(z, dtype=torch.float32)
            out.append(WindowedSlide(spots, wins, pairs))
        return out

    def _attach_alignment(self, slides: list[WindowedSlide], train) -> dict:
        from flag_bench.methods.flag.gene_embeddings import get_provider

        cfg = self.config
        provider = get_provider(cfg.gene_embeddings, **dict(cfg.gene_embedding_options))
        for sl, s in zip(slides, train.slides):
            emb, m = provider.embed(np.asarray(s.counts), train.genes, train.gene_ids)
            # float16 keeps G=800 x D targets for a few thousand spots within CPU memory
            sl.spots["align"] = torch.as_tensor(np.asarray(emb), dtype=torch.float16)
            sl.spots["align_mask"] = torch.as_tensor(np.asarray(m, dtype=bool))
        self.provider_ = provider
        return provider.describe()

    def _fit_target_scale(self, train) -> None:
        """Per-gene mean and sd of the training targets when standardising (else 0 and 1)."""
        cfg, G = self.config, train.n_genes
        y = stack_targets(train, np.float64)
        self.mu_ = (y.mean(0) if cfg.standardize_targets else np.zeros(G)).astype(np.float32)
        sd = y.std(0) if cfg.standardize_targets else np.ones(G)
        self.sd_ = np.where(sd > 1e-6, sd, 1.0).astype(np.float32)

    def _to_target(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> target space (undo the optional per-gene standardisation)."""
        mu = torch.as_tensor(self.mu_, device=x.device)
        sd = torch.as_tensor(self.sd_, device=x.device)
        return x * sd + mu

    # -- losses ------------------------------------------------------------------------------
    def _noised_edges(self, batch: WindowBatch, sigma: torch.Tensor, gen, dev):
        """The noised edge state for joint diffusion (``variants.NoisedEdges``); None here."""
        return None

    def _loss(self, net, batch: WindowBatch, gen, dev) -> tuple[torch.Tensor, dict]:
        cfg, sde = self.config, self._sde()
        x0 = batch.padded["x0"]
        B, N, G = x0.shape
        m3 = batch.mask[..., None]
        per_spot = self.t_per == "spot"
        t = sde.sample_t(B * N, gen, dev).view(B, N) if per_spot else sde.sample_t(B, gen, dev)
        noise = randn((B, N, G), gen, dev) * m3
        if per_spot:
            sigma = sde.sigma(t)[..., None]  # (B, N, 1)
            x_t = x0 + sigma * noise
        else:
            x_t, sigma = sde.perturb(x0, t, noise)
        edges = self._noised_edges(batch, sigma, gen, dev)
        capture = self.uses_alignment
        s_x, s_a, z = self._score(net, x_t, t, sigma, batch.padded["cond"], batch.pairs, batch.mask,
                                  None if edges is None else edges.a_t, capture)
        loss = dsm_loss(s_x, noise, sigma, m3)
        logs = {"score": float(loss.detach())}
        if edges is not None:
            loss = edges.add_loss(loss, logs, x_t, sigma, s_x, s_a, batch.mask, cfg)
        if capture and z is not None:
            align = alignment_loss(z.float(), batch.packed["align"].float(), batch.packed["align_mask"])
            loss = loss + cfg.align_weight * align
            logs["align"] = float(align.detach())
        return loss, logs

    def _score(self, net, x_t, t, sigma, cond_v, cond_e, mask, a_t=None, capture=False, ctx=None):
        """Network call in score space -> (s_x (B,N,G), s_a (B,N,N,1)|None, aligned tokens|None).

        sigma broadcasts against x_t: (B,1,1) or (B,N,1). The edge state A_t shares sigma.
        """
        mode = self.config.score_output
        x_in, a_in = x_t, a_t
        if mode == "edm":
            c_in = torch.rsqrt(1 + sigma ** 2)
            x_in = x_t * c_in
            a_in = None if a_t is None else a_t * c_in[..., None]
        with training.autocast(self.device, self.config.amp):
            out_x, out_a, z = net(x_in, t, cond_v, cond_e, mask, a_in, capture, ctx=ctx)
        s_x = output_to_score(out_x, x_t, sigma, mode)
        s_a = None if out_a is None else output_to_score(out_a, a_t, sigma[..., None], mode)
        return s_x, s_a, z

    # -- sampling ----------------------------------------------------------------------------
    def _initial_states(self, n: int, n_spots: int, gen, dev) -> list[torch.Tensor]:
        """PF-ODE states at t = 1, drawn from N(0, sigma_max^2): node expression (n, N, G)."""
        return [randn((n, n_spots, self.n_genes_), gen, dev) * self._sde().sigma_max]

    def _post(self, states: list[torch.Tensor], m3: torch.Tensor, pm: torch.Tensor) -> list[torch.Tensor]:
        """Re-impose structure after every ODE update: padded spots stay zero."""
        states = list(states)
        states[0] = states[0] * m3
        return states

    def _sampling_context(self, net, batch: WindowBatch, n_samples: int, rep_mask: torch.Tensor):
        """When the condition does not depend on X_t or t: one graph pass per window, reused by
        every ODE step and every sample; else None."""
        if net.graph_sees_xt:
            return None
        with training.autocast(self.device, self.config.amp):
            one = net.spot_context(batch.padded["cond"], batch.pairs, batch.mask)
        full = one.new_zeros(*batch.mask.shape, one.shape[-1])
        full[batch.mask] = one
        return full.repeat_interleave(n_samples, dim=0)[rep_mask]

    @torch.no_grad()
    def _sample_batch(self, net, batch: WindowBatch, n_samples: int, steps: int, gen, dev) -> torch.Tensor:
        """-> (B, n_samples, N, G) samples, each clipped at 0 when configured."""
        cfg, sde = self.config, self._sde()
        B, N = batch.mask.shape
        rb = batch.repeat(n_samples)
        m3 = rb.mask[..., None]
        pm = pair_mask(rb.mask)[..., None].float()
        ctx = self._sampling_context(net, batch, n_samples, rb.mask)

        def score_fn(states, t):
            a_t = states[1] if len(states) > 1 else None
            sig = sde.sigma(t).view(-1, 1, 1)
            s_x, s_a, _ = self._score(net, states[0], t, sig, rb.padded["cond"], rb.pairs, rb.mask, a_t, ctx=ctx)
            return [s_x * m3] + ([] if s_a is None else [s_a * pm])

        def post(states):
            return self._post(states, m3, pm)

        xs = heun_pf_ode(score_fn, post(self._initial_states(B * n_samples, N, gen, dev)), sde, steps, post=post)
        x = self._to_target(xs[0].view(B, n_samples, N, self.n_genes_))
        return x.clamp_min(0) if cfg.clip_at_zero else x

    def draws_per_window(self, n_samples: int) -> int:
        """Samples actually drawn per window when ``n_samples`` are asked for."""
        return n_samples

    def _windows_per_sampling_batch(self, n_samples: int) -> int:
        return max(1, self.config.predict_windows // self.draws_per_window(n_samples))

    def _predict_slides(self, net, slides: list[WindowedSlide], n_spots: list[int], n_samples: int, steps: int,
                        gen, dev, max_windows: int | None = None, keep_samples: bool = False) -> list[np.ndarray]:
        """Mean of n samples per spot (N, G) per slide, or with ``keep_samples`` the draws
        themselves (n, N, G); each spot belongs to exactly one window."""
        picks = all_picks(slides)
        if max_windows is not None and max_windows < len(picks):
            sel = torch.randperm(len(picks), generator=gen)[:max_windows].sort().values.tolist()
            picks = [picks[i] for i in sel]
        n_draws = self.draws_per_window(n_samples)
        shape = (lambda n: (n, n_draws, self.n_genes_)) if keep_samples else (lambda n: (n, self.n_genes_))
        out = [np.full(shape(n), np.nan, dtype=np.float32) for n in n_spots]
        per = self._windows_per_sampling_batch(n_samples)
        for a in range(0, len(picks), per):
            batch = collate(slides, picks[a:a + per], dev, padded=("cond",))
            x = self._sample_batch(net, batch, n_samples, steps, gen, dev)  # (B, n, N, G)
            x = x.transpose(1, 2) if keep_samples else x.mean(1)  # spot-major, so windows scatter by spot
            scatter_windows(x.cpu().numpy(), batch.where, out)
        return [o.transpose(1, 0, 2) for o in out] if keep_samples else out

    def sampler_description(self) -> str:
        return f"Heun PF-ODE {self.config.sampling_steps} steps + Tweedie"

    # -- contract ----------------------------------------------------------------------------
    def _validator(self, val, steps_per_epoch: int, dev):
        """-> (validate(model) -> score, optimiser steps between validations), or (None, 0)."""
        cfg = self.config
        if val is None or not val.slides or not (cfg.eval_every_steps or cfg.eval_every_epochs):
            return None, 0
        require_embeddings(val, self.card.name)
        vslides = self._prepare(val, False)  # validate() scores against val.slides' targets
        vgen = self.generator(VALIDATE)
        truths = [np.asarray(s.targets) for s in val.slides]
        n_spots = [s.n_spots for s in val.slides]

        def validate(model):
            preds = self._predict_slides(model, vslides, n_spots, cfg.val_samples, cfg.val_sampling_steps, vgen,
                                         dev, cfg.val_windows)
            return val_score(preds, truths, cfg.val_metric)

        return validate, cfg.eval_every_steps or max(1, round(cfg.eval_every_epochs * steps_per_epoch))

    def fit(self, train, val=None):
        cfg = self.config
        dev, gen = self.start_fit(train, cfg.cond_pca)
        self.n_genes_ = train.n_genes
        self._fit_target_scale(train)
        slides = self._prepare(train, True)
        provider_info = self._attach_alignment(slides, train) if self.uses_alignment else None
        z_dim = self.provider_.dim if self.uses_alignment else None
        net = FlagNet(self.graph_role, self.n_genes_, self.norm_.dim, cfg, z_dim).to(dev)
        fwd = torch.compile(net) if cfg.compile and dev.type == "cuda" else net

        picks = all_picks(slides)
        per_batch = min(cfg.windows_per_batch, len(picks))
        steps_per_epoch = max(1, math.ceil(len(picks) / (per_batch * cfg.grad_accum)))

        def micro_step(step, micro):
            sel = torch.randperm(len(picks), generator=gen)[:per_batch].tolist()
            return self._loss(fwd, collate(slides, [picks[i] for i in sel], dev, **TRAIN_FIELDS), gen, dev)

        validate, eval_every = self._validator(val, steps_per_epoch, dev)
        settings = training.LoopSettings(
            steps=cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch, lr=cfg.lr,
            weight_decay=cfg.weight_decay, grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip,
            ema_decay=cfg.ema_decay, ema_warmup=cfg.ema_warmup, eval_every=eval_every, patience=cfg.patience,
            max_seconds=cfg.max_seconds)
        self.ema_, loop = training.train(self, net, micro_step, settings, validate, description="train")
        self.net_ = net
        self.summary = fit_summary(self, loop, slides, steps_per_epoch, provider_info, validated=validate is not None)
        return self

    def predict(self, test):
        return [x.mean(axis=0) for x in self._draws(test)]

    def predict_samples(self, test):
        return self._draws(test) if self.card.generative else None

    def _draws(self, test) -> list[np.ndarray]:
        """(n_draws, N, G) per test slide."""
        cfg = self.config
        require_embeddings(test, self.card.name)
        dev = torch.device(self.device)
        gen = self.generator(PREDICT)
        slides = self._prepare(test, False)
        draws = self._predict_slides(self.ema_, slides, [s.n_spots for s in test.slides], cfg.n_samples,
                                     cfg.sampling_steps, gen, dev, keep_samples=True)
        for x, s in zip(draws, test.slides):
            if np.isnan(x).any():
                raise RuntimeError(f"windows of slide {s.slide_id} did not cover every spot")
        return draws
