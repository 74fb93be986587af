"""Moran's I for all genes at once, with esda's analytic moments and optional permutations.

Statistic, per column x of X (N, G) with z = x - mean(x):
    I = (N / S0) * (z' W z) / (z' z)
computed for every gene with one sparse x dense product L = W Z (cost nnz(W) * G), in float64.

Conventions (tested against esda 2.9 in tests/test_moran.py):
- E[I] = -1 / (N - 1); ``var_norm`` (normality) and ``var_rand`` (randomisation, uses each
  gene's kurtosis) are esda's ``VI_norm`` / ``VI_rand``; z = (I - E[I]) / sqrt(var).
- Analytic p-values take the normal tail on the side of z and are doubled when ``two_tailed``.
  The default is two-tailed, as in ``esda.Moran``; squidpy's ``spatial_autocorr`` defaults to
  one-tailed, i.e. exactly half of our value (``two_tailed=False`` reproduces it).
- Permutations, ``null="values"`` (default, esda semantics): each draw permutes the centred values
  and recomputes I, so both factors of z'Wz move. ``p_sim`` is esda's folded ("directed") pseudo
  p-value: c = #{sim >= I}, c = min(c, P - c), p = (c + 1) / (P + 1). ``null="rows"`` reproduces
  squidpy's scheme, which permutes only the rows of W (I' ~ sum_i z_pi(i) (Wz)_i): that null has
  mean 0 rather than -1/(N-1) and a gene-dependent variance, so its ``p_sim`` is not esda's.
- One permutation is shared by all genes in a draw (as in squidpy): valid per gene, but p-values
  of different genes are then correlated. Draws come from ``np.random.default_rng(seed)``; pass
  an explicit (P, N) index array as ``permutations`` to reproduce another tool's draws.
- A gene constant over the spots (``kernels.constant_columns``: max - min == 0) has no defined I:
  NaN in every field, counted in ``n_constant``.
- Results keep the input gene order (squidpy sorts by I; we do not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from flag_bench.metrics.kernels import constant_columns
from flag_bench.metrics.spatial_weights import SpatialWeights

Null = Literal["values", "rows"]

# cap on the (N, batch * G) float64 block a permutation batch materialises
_DEFAULT_BATCH_BYTES = 64 * 2**20


@dataclass
class MoranResult:
    """Per-gene Moran statistics; every array is (G,) in input gene order.

    I, var_rand, z_norm, z_rand, p_norm, p_rand: analytic results (NaN for constant genes).
    expected, var_norm: E[I] and the normality variance (the same for every gene).
    p_sim, expected_sim, var_sim, z_sim, p_z_sim: permutation results (None without permutations);
    var_sim uses ddof = 0 and p_z_sim is one-tailed, as in esda.
    """

    I: np.ndarray  # noqa: E741  (Moran's I: the statistic's name, and esda's attribute)
    expected: float
    var_norm: float
    var_rand: np.ndarray
    z_norm: np.ndarray
    z_rand: np.ndarray
    p_norm: np.ndarray
    p_rand: np.ndarray
    constant: np.ndarray  # (G,) bool
    p_sim: np.ndarray | None = None
    expected_sim: np.ndarray | None = None
    var_sim: np.ndarray | None = None
    z_sim: np.ndarray | None = None
    p_z_sim: np.ndarray | None = None
    sim: np.ndarray | None = None  # (P, G) only with keep_sim=True
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def n_constant(self) -> int:
        return int(self.constant.sum())


def _as_matrix(x: np.ndarray, n: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] != n:
        raise ValueError(f"expected values of shape (N={n}, G), got {np.shape(x)}")
    if not np.isfinite(a).all():
        raise ValueError(f"values contain {int((~np.isfinite(a)).sum())} non-finite entries")
    return a


def _centre(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (Z (N, G) centred, z'z (G,), constant (G,) bool)."""
    constant = constant_columns(x)
    z = x - x.mean(axis=0)
    # an exactly constant column can centre to rounding noise; force it to zero
    z[:, constant] = 0.0
    return z, np.einsum("ij,ij->j", z, z), constant


def _gene_blocks(n: int, g: int) -> list[slice]:
    """Gene slices whose (N, block) float64 copies stay under the byte cap (memory bound)."""
    step = max(1, int(_DEFAULT_BATCH_BYTES // max(1, 8 * n)))
    return [slice(a, min(a + step, g)) for a in range(0, g, step)] or [slice(0, 0)]


def morans_i_values(x: np.ndarray, weights: SpatialWeights, *, check_finite: bool = True) -> np.ndarray:
    """Moran's I only, per column: x (N, G) -> (G,) float64, NaN for constant columns.

    Works through gene blocks, so extra memory stays at a few (N, block) arrays.
    ``check_finite=False`` skips the scan when the caller has already validated x.
    """
    if check_finite:
        xx = _as_matrix(x, weights.n)
    else:
        xx = np.asarray(x, dtype=np.float64)
        if xx.ndim != 2 or xx.shape[0] != weights.n:
            raise ValueError(f"expected values of shape (N={weights.n}, G), got {xx.shape}")
    out = np.full(xx.shape[1], np.nan)
    if weights.s0 <= 0:
        return out
    for blk in _gene_blocks(*xx.shape):
        z, ss, constant = _centre(xx[:, blk])
        num = np.einsum("ij,ij->j", z, weights.matrix @ z)
        ok = ~constant
        part = np.full(z.shape[1], np.nan)
        part[ok] = (weights.n / weights.s0) * num[ok] / ss[ok]
        out[blk] = part
    return out


def _tail(zval: np.ndarray, two_tailed: bool) -> np.ndarray:
    from scipy import stats  # scipy.stats costs 0.3 s to import: `flag-bench list` reads this module

    p = np.where(zval > 0, stats.norm.sf(zval), stats.norm.cdf(zval))
    return p * 2.0 if two_tailed else p


def morans_i(
    x: np.ndarray,
    weights: SpatialWeights,
    *,
    two_tailed: bool = True,
    permutations: int | np.ndarray = 0,
    null: Null = "values",
    seed: int = 0,
    batch_size: int | None = None,
    keep_sim: bool = False,
) -> MoranResult:
    """Moran's I with analytic (and optionally permutation) inference for every column.

    x : (N, G) values (a 1-D (N,) array is one gene); weights : SpatialWeights of size N.
    permutations : number of draws P, or a (P, N) integer array of explicit permutations.
    batch_size : permutations per batch (default: as many as fit in ~64 MiB of (N, G_block)
        blocks). Genes are processed in blocks of ~64 MiB too, and generated permutations are
        replayed per block from the seed rather than stored, so extra memory is a few
        (N, block) arrays whatever N, G and P are.
    Returns a MoranResult with (G,) arrays in input gene order.
    """
    if null not in ("values", "rows"):
        raise ValueError(f"null must be 'values' (esda) or 'rows' (squidpy), got {null!r}")
    n = weights.n
    xx = _as_matrix(x, n)
    g = xx.shape[1]
    explicit, p = _permutation_spec(permutations, n)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    scale = n / weights.s0 if weights.s0 > 0 else np.nan
    num, ss, sum4 = np.empty(g), np.empty(g), np.empty(g)
    constant = np.empty(g, dtype=bool)
    sim = np.full((p, g), np.nan)  # (0, G) without permutations
    plan = _PermutationPlan(explicit, p, seed, batch_size, null)
    for blk in _gene_blocks(n, g):
        z, ss[blk], constant[blk] = _centre(xx[:, blk])
        num[blk], sum4[blk] = _cross_and_fourth(z, weights.matrix)
        if p:
            sim[:, blk] = _permutation_block(z, ss[blk], constant[blk], weights.matrix, scale, plan)
    res = _analytic(num, ss, sum4, constant, weights, two_tailed)
    if p:
        _add_permutation_inference(res, sim, keep_sim)
        res.notes.update({"permutations": int(p), "null": null, "seed": int(seed), "p_sim": "directed"})
    return res


def _cross_and_fourth(z: np.ndarray, w) -> tuple[np.ndarray, np.ndarray]:
    """Centred block Z (N, Gb) -> (z'Wz (Gb,), sum z^4 (Gb,))."""
    lag = w @ z
    num = np.einsum("ij,ij->j", z, lag)
    np.square(z, out=lag)  # reuse the lag buffer for z^2 (kurtosis)
    return num, np.einsum("ij,ij->j", lag, lag)


def _analytic(
    num: np.ndarray, ss: np.ndarray, sum4: np.ndarray, constant: np.ndarray, weights: SpatialWeights, two_tailed: bool
) -> MoranResult:
    """Per-gene sums -> MoranResult with I and esda's normality / randomisation inference."""
    n, s0, s1, s2 = weights.n, weights.s0, weights.s1, weights.s2
    scale = n / s0 if s0 > 0 else np.nan
    ok = ~constant
    nan_g = np.full(num.shape[0], np.nan)
    i_stat = nan_g.copy()
    i_stat[ok] = scale * num[ok] / ss[ok]
    ei = -1.0 / (n - 1) if n > 1 else np.nan
    s02 = s0 * s0
    with np.errstate(divide="ignore", invalid="ignore"):
        var_norm = (n * n * s1 - n * s2 + 3 * s02) / ((n - 1) * (n + 1) * s02) - ei * ei
        kurt = nan_g.copy()
        kurt[ok] = (sum4[ok] / n) / (ss[ok] / n) ** 2
        a = n * ((n * n - 3 * n + 3) * s1 - n * s2 + 3 * s02)
        b_ = kurt * ((n * n - n) * s1 - 2 * n * s2 + 6 * s02)
        # the randomisation variance divides by (n - 2)(n - 3): undefined below 4 spots
        var_rand = (a - b_) / ((n - 1) * (n - 2) * (n - 3) * s02) - ei * ei if n >= 4 else nan_g.copy()
        z_norm = (i_stat - ei) / np.sqrt(var_norm)
        z_rand = (i_stat - ei) / np.sqrt(var_rand)
    return MoranResult(
        I=i_stat,
        expected=float(ei),
        var_norm=float(var_norm),
        var_rand=np.asarray(var_rand, dtype=np.float64),
        z_norm=z_norm,
        z_rand=z_rand,
        p_norm=_tail(z_norm, two_tailed),
        p_rand=_tail(z_rand, two_tailed),
        constant=constant,
        notes={**weights.notes(), "two_tailed": bool(two_tailed), "n_constant": int(constant.sum())},
    )


@dataclass(frozen=True)
class _PermutationPlan:
    """How draws are made: explicit (P, N) indices or P draws from ``seed``, in batches."""

    explicit: np.ndarray | None
    p: int
    seed: int
    batch_size: int | None
    null: Null


def _permutation_block(
    z: np.ndarray, ss: np.ndarray, constant: np.ndarray, w, scale: float, plan: _PermutationPlan
) -> np.ndarray:
    """Centred block Z (N, Gb) -> simulated I (P, Gb), NaN for constant genes."""
    n = z.shape[0]
    out = np.full((plan.p, z.shape[1]), np.nan)
    ok = ~constant
    zo = z[:, ok]
    lag_o = (w @ zo) if plan.null == "rows" else None
    bsz = plan.batch_size or max(1, int(_DEFAULT_BATCH_BYTES // max(1, 8 * n * max(zo.shape[1], 1))))
    cols = np.flatnonzero(ok)
    for start, idx in _permutation_batches(plan.explicit, plan.p, n, plan.seed, bsz):
        zp = zo[idx]  # (B, N, Gb)
        if plan.null == "values":
            b, gb = idx.shape[0], zo.shape[1]
            block = zp.transpose(1, 0, 2).reshape(n, b * gb)
            lagp = (w @ block).reshape(n, b, gb).transpose(1, 0, 2)
            nums = np.einsum("bij,bij->bj", zp, lagp)
        else:
            assert lag_o is not None  # null == "rows"
            nums = np.einsum("bij,ij->bj", zp, lag_o)
        out[start : start + idx.shape[0], cols] = scale * nums / ss[ok]
    return out


def _add_permutation_inference(res: MoranResult, sim: np.ndarray, keep_sim: bool) -> None:
    """Fill the permutation fields of ``res`` from simulated I (P, G), esda's folded p_sim."""
    p = sim.shape[0]
    larger = (sim >= res.I).sum(axis=0).astype(np.float64)
    larger = np.minimum(larger, p - larger)
    p_sim = (larger + 1.0) / (p + 1.0)
    p_sim[res.constant] = np.nan
    e_sim = sim.sum(axis=0) / p
    sd_sim = sim.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_sim = (res.I - e_sim) / sd_sim
    res.p_sim = p_sim
    res.expected_sim = e_sim
    res.var_sim = sd_sim**2
    res.z_sim = z_sim
    res.p_z_sim = _tail(z_sim, False)
    res.sim = sim if keep_sim else None


def _permutation_spec(permutations: int | np.ndarray, n: int) -> tuple[np.ndarray | None, int]:
    """-> (explicit (P, N) indices or None, P)."""
    if isinstance(permutations, np.ndarray):
        perms = np.asarray(permutations)
        if perms.ndim != 2 or perms.shape[1] != n or not np.issubdtype(perms.dtype, np.integer):
            raise ValueError(f"explicit permutations must be an integer (P, N={n}) array, got {perms.shape}")
        return perms, perms.shape[0]
    p = int(permutations)
    if p < 0:
        raise ValueError(f"permutations must be >= 0, got {permutations}")
    return None, p


def _permutation_batches(explicit: np.ndarray | None, p: int, n: int, seed: int, batch: int):
    """Yield (start, (B, N) indices); generated draws are replayed identically on every call."""
    rng = np.random.default_rng(seed)  # unused (and cheap) when the draws are explicit
    for start in range(0, p, batch):
        stop = min(start + batch, p)
        if explicit is not None:
            yield start, explicit[start:stop]
        else:
            yield start, np.stack([rng.permutation(n) for _ in range(stop - start)])
