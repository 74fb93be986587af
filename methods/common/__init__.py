"""The methods toolkit: pieces that FLAG and Stem use and the next methods can stand on.

- ``inputs``: embedding checks, stacking of training slides, the one embedding normaliser.
- ``windows`` / ``batching``: groups of spots, and pad-and-mask collation of those groups.
- ``training`` / ``ema``: the optimiser loop with early stopping and an optional EMA.
- ``sde`` / ``samplers``: noise processes and their losses; PF-ODE, DDPM and flow-matching samplers.
- ``dit``: the gene-token diffusion transformer.
- ``torch_method``: what every torch method repeats (device, seeded generators, normaliser,
  parameter count).
"""
