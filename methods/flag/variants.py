"""FLAG's registered variants: each sets its capabilities and overrides only what differs.

- ``flag-paper``: the paper's description (``use_cond_e_in_attn=True``): only the presets differ.
- ``flag-no-gfm``: FLAG without the alignment loss: only the presets differ.
- ``flag-no-graph``: DiT conditioned on t_emb + MLP(image embedding), with alignment (§3.7);
  every spot is its own window.
- ``flag-regression``: FLAG's backbone trained as a deterministic MSE regressor (§3.7 [R]).
- ``flag-node``: node-only graph diffusion (the graph model is the score network, A_t ≡ 0).
- ``flag-joint``: joint node–edge graph diffusion (node and edge scores; edge target = spot–spot
  gene PCC; consistency loss), flag-spec §3.6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flag_bench.methods.common import training
from flag_bench.methods.common.batching import WindowBatch
from flag_bench.methods.common.samplers import randn
from flag_bench.methods.common.sde import dsm_loss, masked_mean
from flag_bench.methods.common.windows import pair_mask, single_spot_windows
from flag_bench.methods.flag import cards
from flag_bench.methods.flag.config import PRESETS, FlagConfig
from flag_bench.methods.flag.edges import spot_pcc
from flag_bench.methods.flag.method import Flag


class FlagPaper(Flag):
    card = cards.FLAG_PAPER
    presets = PRESETS["flag-paper"]


class FlagNoGFM(Flag):
    card = cards.FLAG_NO_GFM
    presets = PRESETS["flag-no-gfm"]


class FlagNoGraph(Flag):
    card = cards.FLAG_NO_GRAPH
    presets = PRESETS["flag-no-graph"]
    graph_role = "none"

    def _windows(self, slide, cond):
        return single_spot_windows(slide.n_spots), [None] * slide.n_spots

    def _windows_per_sampling_batch(self, n_samples: int) -> int:
        # one-spot windows are tiny: fill a batch with ~1024 sequences instead
        return max(super()._windows_per_sampling_batch(n_samples), 1024 // max(1, n_samples))


class FlagRegression(Flag):
    card = cards.FLAG_REGRESSION
    presets = PRESETS["flag-regression"]
    head = "regression"
    aligns = False

    def _regress(self, net, batch: WindowBatch, dev) -> torch.Tensor:
        """The deterministic forward: zero input, fixed t = 1 -> (B, N, G) expression."""
        B, N = batch.mask.shape
        zeros = torch.zeros(B, N, self.n_genes_, device=dev)
        with training.autocast(self.device, self.config.amp):
            pred, _, _ = net(zeros, torch.ones(B, device=dev), batch.padded["cond"], batch.pairs, batch.mask)
        return pred.float()

    def _loss(self, net, batch: WindowBatch, gen, dev):
        loss = masked_mean((self._regress(net, batch, dev) - batch.padded["x0"]) ** 2, batch.mask[..., None])
        return loss, {"mse": float(loss.detach())}

    @torch.no_grad()
    def _sample_batch(self, net, batch: WindowBatch, n_samples: int, steps: int, gen, dev) -> torch.Tensor:
        out = self._to_target(self._regress(net, batch, dev)[:, None])
        return out.clamp_min(0) if self.config.clip_at_zero else out

    def draws_per_window(self, n_samples: int) -> int:
        return 1

    def predict_samples(self, test):
        return None  # one deterministic output: no draws to score apart from the prediction

    def sampler_description(self) -> str:
        return "deterministic regressor"


class FlagNodeOnly(Flag):
    card = cards.FLAG_NODE
    presets = PRESETS["flag-node"]
    graph_role = "node"
    aligns = False


@dataclass
class NoisedEdges:
    """The edge state of joint diffusion: A_t = A_0 + sigma * noise on valid off-diagonal pairs,
    A_0 = the spot–spot gene PCC of the window's targets."""

    a_t: torch.Tensor  # (B, N, N, 1)
    noise: torch.Tensor
    pairs: torch.Tensor  # (B, N, N, 1) bool, valid off-diagonal pairs

    def add_loss(self, loss, logs: dict, x_t, sigma, s_x, s_a, mask, cfg: FlagConfig) -> torch.Tensor:
        """loss + lambda_edge * edge DSM + lambda_cons * |Â_0 - PCC(X̂_0)| (§3.6)."""
        loss_a = dsm_loss(s_a, self.noise, sigma[..., None], self.pairs)
        a_hat = self.a_t + sigma[..., None] ** 2 * s_a
        with torch.no_grad():  # as in the reference: the gradient reaches only the edge branch
            p_pred = spot_pcc(x_t + sigma ** 2 * s_x, mask)
        loss_c = masked_mean((a_hat - p_pred).abs(), self.pairs)
        logs.update(edge=float(loss_a.detach()), consistency=float(loss_c.detach()))
        return loss + cfg.lambda_edge * loss_a + cfg.lambda_cons * loss_c


class FlagJoint(Flag):
    card = cards.FLAG_JOINT
    presets = PRESETS["flag-joint"]
    graph_role = "joint"
    aligns = False

    def _noised_edges(self, batch: WindowBatch, sigma, gen, dev) -> NoisedEdges:
        pm = pair_mask(batch.mask)[..., None]
        a0 = spot_pcc(batch.padded["x0"], batch.mask)
        noise = randn(a0.shape, gen, dev) * pm
        return NoisedEdges(a0 + sigma[..., None] * noise, noise, pm)

    def _initial_states(self, n: int, n_spots: int, gen, dev) -> list[torch.Tensor]:
        nodes = super()._initial_states(n, n_spots, gen, dev)  # drawn first: the generator's order matters
        return nodes + [randn((n, n_spots, n_spots, 1), gen, dev) * self._sde().sigma_max]

    def _post(self, states, m3, pm):
        states = super()._post(states, m3, pm)
        a = states[1]
        states[1] = 0.5 * (a + a.transpose(1, 2)) * pm  # symmetric, zero on the diagonal and padding
        return states

