"""How concentrated spot–spot gene correlations are: the model-free side of the Gene Dimension Curse.

FLAG's joint node–edge diffusion (method ``flag-joint``, flag-spec §3.6) diffuses, beside the
expression X (n_spots, G), the matrix A of spot–spot Pearson correlations computed across the G
genes (flag-spec §2.3). The paper's explanation of its collapse at large G is that these
correlations *concentrate* as G grows (their spread over spot pairs shrinks, "roughly like 1/G"
in variance), so the edge targets carry less and less information. ``spot_correlation_spread``
measures that spread on any expression matrix, so the claim can be checked on real data against
a null with no spot structure (``scripts/gdc_concentration.py``).

Reference point: for two spots whose G values are independent draws with no shared structure,
the Pearson correlation has mean 0 and variance 1 / (G - 1), so its sd is ~ 1 / sqrt(G - 1).

This is a diagnostic, not a benchmark score: it is not registered in ``flag_bench.catalog``.
"""

from __future__ import annotations

import numpy as np

from flag_bench.metrics.kernels import constant_columns


def spot_correlation_spread(x: np.ndarray) -> dict:
    """Spread of the off-diagonal spot–spot Pearson correlations, computed across genes.

    x: (n_spots, G) expression of one slide (any transform; rows are spots, columns genes),
    finite, G >= 2. For every pair of spots i < j, r_ij is the Pearson correlation of the rows
    x[i] and x[j] (the A_ij of flag-spec §2.3 without its clamping). A spot whose row is constant
    across the G genes (zero variance, max - min == 0 as in ``metrics.kernels``: r undefined) is
    left out of every pair and counted.

    Returns a dict of plain Python numbers:

    - ``n_spots``: rows given; ``n_constant``: rows left out (zero variance);
      ``n_used`` = n_spots - n_constant; ``n_genes``: G; ``n_pairs`` = n_used (n_used - 1) / 2.
    - over the n_pairs values r_ij: ``mean``, ``sd`` (population sd, ddof 0), ``iqr`` (75% - 25%
      quantile), ``mean_abs`` (mean of |r_ij|), ``q05`` and ``q95`` (5% and 95% quantiles, numpy's
      linear interpolation).

    With fewer than two usable spots there is no pair: every statistic is NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be (n_spots, G), got shape {x.shape}")
    n_spots, g = x.shape
    if g < 2:
        raise ValueError(f"a correlation across genes needs G >= 2 genes, got {g}")
    if not np.isfinite(x).all():
        raise ValueError("x has non-finite values")
    constant = constant_columns(x.T)  # the project's one constancy rule (max - min == 0), per spot
    keep = x[~constant]
    n = keep.shape[0]
    out = {"n_spots": int(n_spots), "n_constant": int(constant.sum()), "n_used": int(n), "n_genes": int(g),
           "n_pairs": int(n * (n - 1) // 2)}
    if n < 2:
        return {**out, **dict.fromkeys(("mean", "sd", "iqr", "mean_abs", "q05", "q95"), float("nan"))}
    z = keep - keep.mean(axis=1, keepdims=True)
    z /= np.sqrt((z * z).sum(axis=1, keepdims=True))
    iu = np.triu_indices(n, k=1)
    r = np.clip((z @ z.T)[iu], -1.0, 1.0)
    q05, q25, q75, q95 = np.quantile(r, [0.05, 0.25, 0.75, 0.95])
    return {**out, "mean": float(r.mean()), "sd": float(r.std()), "iqr": float(q75 - q25),
            "mean_abs": float(np.abs(r).mean()), "q05": float(q05), "q95": float(q95)}
