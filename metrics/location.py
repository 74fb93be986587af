"""Location-sensitive structure metrics: spot-similarity SSC and Lee's L of truth with prediction.

GSC and the Moran-based SSC compare properties of the genes (their co-expression, their spatial
autocorrelation), which a prediction can reproduce with every value in the wrong place: the truth
rotated 180 degrees keeps both (``../shared/docs/metric-validity.md`` sections 1.3-1.4 and 4).
The two metrics here compare the spots themselves, so a prediction must put expression where it is.

- ``ssc_spot`` (spot-similarity SSC, the GSC construction transposed): S and S^ are the (N, N)
  Pearson correlations between spots across the panel genes (each spot's row centred and scaled
  across genes), of the truth and of the prediction; the score is the Pearson correlation of their
  strict upper triangles. Up to ``exact_max_spots`` spots it is exact; beyond, a seeded uniform
  sample of spot pairs estimates it, with a 95% CI over batches of the sample in ``notes``.
  It compares which spots resemble which, not values at a spot, so a rearrangement that keeps
  those relations keeps part of the score: a rotation keeps every distance, hence the part of S
  that is distance decay, and a pattern whose rotation is its own negative keeps all of S. On
  her2st-mini the rotated truth scores 0.01 (metric-validity.md 4); on synthetic fields of six plane
  waves with wavelengths 0.3-0.7 of the slide width it scored 0.27-0.68 (five seeds), and 0.03-0.08
  for sums of 40 waves with wavelengths 0.12-0.3 of the width, the field the tests use. ``lee_l``
  compares values at each spot's neighbourhood and does not share this.
- ``lee_l``: per gene, Lee's (2001) bivariate spatial association of truth x and prediction y,
  ``L(x, y) = n / sum_i (sum_j w_ij)^2 * sum_i (Wz_x)_i (Wz_y)_i / (|z_x| |z_y|)`` (z = centred
  values; Lee's eq. 18, which ``esda.Spatial_Pearson`` computes as ``Z'(W'W)Z / 1'(W'W)1`` on
  standardised Z: tests/test_location_metrics.py checks ours against it), reported normalised by
  the two spatial smoothing scalars SSS_x = L(x, x) and SSS_y = L(y, y):
  ``lee_l = L(x, y) / sqrt(L(x, x) L(y, y)) = cos(Wz_x, Wz_y)``, the correlation between the two
  spatially smoothed fields that Lee's decomposition ``L = sqrt(SSS_x) sqrt(SSS_y) r(x~, y~)``
  isolates (exactly his r(x~, y~) when W's column sums are 1). Why normalised: raw L of the
  perfect prediction is SSS_x < 1, a gene-dependent ceiling, and raw L is not maximised by the
  truth: among predictions of unit spread, L(x, .) is largest for y ~ W'W x, an over-smoothed copy
  (the test shows it beating the truth). The normalised form is 1 exactly for the truth, in
  [-1, 1] by Cauchy-Schwarz, and invariant to the prediction's scale. Raw L is kept per gene
  (``lee_l_raw``). ``lee_l`` averages the per-gene values over the genes that vary in the truth.

  Weights: the SSC graph (``structure.DEFAULT_WEIGHTS``: symmetric binary kNN, k = 6, on the
  spot coordinates) *with each spot added as its own neighbour*, then row-standardised, so the lag
  (Wz)_i is the mean of the spot and its neighbours. Lee (2001) builds L on such a self-inclusive
  spatial moving average (his x~_i includes x_i), and ArcGIS's Lee's L tool (Bivariate Spatial
  Association) always includes each feature in its own neighbourhood, weight 1 before
  standardisation; esda and spdep take W as given (esda's default, the identity,
  makes L Pearson's r). We include the spot because L is meant to sit between Pearson's r (W = I)
  and Moran's I: with a zero diagonal, (Wz)_i is the mean of the neighbours only, so the score
  compares neighbour averages and never asks whether spot i itself is right; and the lag scales
  each spatial pattern by its eigenvalue of W (exactly so on a regular graph of degree d), which
  for the zero-diagonal row-standardised graph is near -1 on strongly alternating
  (neighbour-against-neighbour) patterns, so W'W weights them nearly like a smooth pattern, while
  the self-inclusive mean maps an eigenvalue lambda to (1 + d lambda) / (1 + d), shrinking those
  towards 0 and keeping smooth patterns near 1.

Degenerate input (the constancy rule of ``metrics.kernels``: max - min == 0):
- ssc_spot: a spot constant across genes in the truth has no defined correlation with any spot:
  it is excluded from both sides and counted (``n_const_true_spots``); a spot constant in the
  prediction is a zero row (correlation 0 with every other spot), counted as
  ``n_const_pred_spots``, as ``structure.gene_correlation`` does for genes. Fewer than 3 valid
  spots, or a truth triangle with no spread, is NaN with the reason; a prediction triangle with
  no spread (every spot predicted with the same profile: the ``mean`` control) scores 0. Spread
  is judged from the pair sums, whose rounding cannot resolve a variance below ``_FLAT`` times
  the mean square; anything below that counts as no spread.
- lee_l: a gene constant in the truth is excluded and counted (``n_const_true``), NaN per gene;
  a gene constant in the prediction, or whose smoothed prediction is 0, scores 0 (``n_const_pred``).
  A truth gene whose smoothed field is exactly 0 (possible only on a degenerate graph) has no
  SSS and is excluded like a constant one (``n_flat_lag_true``).
- no coordinates, or too few spots for the kNN graph: ``lee_l`` is NaN with the reason.
- non-finite predictions: ``CellFailure`` (``kernels.validate_pair``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flag_bench.metrics.base import Metric, Output, Scores, SlideContext
from flag_bench.metrics.kernels import constant_columns, single_threaded, validate_pair
from flag_bench.metrics.spatial_weights import SpatialWeights
from flag_bench.metrics.structure import DEFAULT_WEIGHTS

# cap on the working arrays of one block (Gram tiles, sampled-pair gathers, lag blocks)
_BLOCK_BYTES = 64 * 2**20
# spot pairs drawn per call to the generator: fixed, so the sample depends only on (seed, N, n_pairs)
_DRAW_BLOCK = 1 << 16
# a triangle whose variance, from the five pair sums, is below this fraction of its mean square has
# no spread the sums can resolve (float64 rounding of n^2-term sums sits ~1e-13 below it)
_FLAT = 1e-10


# ----------------------------------------------------------------------------- spot similarity


def unit_rows(x: np.ndarray, constant: np.ndarray | None = None) -> np.ndarray:
    """(N, G) -> (N, G) float64 rows centred across genes and scaled to unit norm, so that
    ``a @ a.T`` is the spot x spot Pearson correlation; rows in ``constant`` (default: the kernels
    rule on each row) are 0."""
    xx = np.asarray(x, dtype=np.float64)
    const = constant_columns(xx.T) if constant is None else constant
    z = xx - xx.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("ij,ij->i", z, z))
    ok = ~const & (norm > 0)  # norm > 0 also guards a varying row whose squares underflow
    z[~ok] = 0.0
    z[ok] /= norm[ok, None]
    return z


def gram_pair_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unit rows a, b (n, G) -> (5,) sums over spot pairs i < j of u = a_i.a_j, v = b_i.b_j:
    [sum u, sum v, sum u^2, sum v^2, sum uv], exactly, without any (n, n) array.

    Uses sum_ij u_ij v_ij = ||A'B||_F^2 (and the like) minus the diagonal, halved: time n G^2,
    memory three (G, G) arrays."""
    na = np.einsum("ij,ij->i", a, a)  # u_ii (1, or 0 for a zero row)
    nb = np.einsum("ij,ij->i", b, b)
    ca, cb = a.sum(axis=0), b.sum(axis=0)
    aa, bb, ab = a.T @ a, b.T @ b, a.T @ b
    full = np.array([ca @ ca, cb @ cb, np.einsum("ij,ij->", aa, aa), np.einsum("ij,ij->", bb, bb),
                     np.einsum("ij,ij->", ab, ab)])
    diag = np.array([na.sum(), nb.sum(), na @ na, nb @ nb, na @ nb])
    return (full - diag) / 2.0


def block_pair_sums(a: np.ndarray, b: np.ndarray, block_bytes: int | None = None) -> np.ndarray:
    """The same five sums as ``gram_pair_sums`` from row blocks of the (n, n) Gram matrices: block
    rows r0:r1 against columns r0:n, the lower part of the square tile zeroed. Time n^2 G, memory
    two (b, n) tiles, b = block_bytes (default ``_BLOCK_BYTES``) / (16 n) rows (at least 1)."""
    n = a.shape[0]
    step = max(1, int((block_bytes or _BLOCK_BYTES) // (16 * max(n, 1))))
    s = np.zeros(5)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        u = a[r0:r1] @ a[r0:].T  # (b, n - r0): row r, column c is the pair (r0 + r, r0 + c)
        v = b[r0:r1] @ b[r0:].T
        low = np.tril_indices(r1 - r0)  # c <= r: the diagonal and pairs already counted
        u[low] = 0.0
        v[low] = 0.0
        s += [u.sum(), v.sum(), np.einsum("ij,ij->", u, u), np.einsum("ij,ij->", v, v), np.einsum("ij,ij->", u, v)]
    return s


def exact_pair_sums(a: np.ndarray, b: np.ndarray, block_bytes: int | None = None) -> np.ndarray:
    """Five pair sums over all i < j, by whichever exact route is cheaper and fits the cap:
    the (G, G) identity when G <= n and three (G, G) arrays fit, else (n, n) row blocks."""
    n, g = a.shape
    block_bytes = block_bytes or _BLOCK_BYTES
    if g <= n and 3 * 8 * g * g <= block_bytes:
        return gram_pair_sums(a, b)
    return block_pair_sums(a, b, block_bytes)


def sampled_pair_sums(
    a: np.ndarray, b: np.ndarray, n_pairs: int, n_batches: int, seed: int, block_bytes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """-> (five pair sums per batch (n_batches, 5), pairs per batch (n_batches,)) over ``n_pairs``
    spot pairs drawn uniformly, with replacement, among the n (n - 1) / 2 pairs of distinct spots;
    pair k belongs to batch floor(k n_batches / n_pairs). Draws come from
    ``np.random.default_rng(seed)`` in fixed blocks of ``_DRAW_BLOCK`` pairs (i uniform, j uniform among the others; u is symmetric, so the unordered
    pair is what counts), so the sample depends on (seed, n, n_pairs) only. Pairs are processed in
    chunks whose four (chunk, G) gathers stay under ``block_bytes`` (default ``_BLOCK_BYTES``)."""
    n, g = a.shape
    rng = np.random.default_rng(seed)
    chunk = max(1, min(_DRAW_BLOCK, int((block_bytes or _BLOCK_BYTES) // (32 * max(g, 1)))))
    sums = np.zeros((n_batches, 5))
    counts = np.zeros(n_batches, dtype=np.int64)
    for start in range(0, n_pairs, _DRAW_BLOCK):
        d = min(_DRAW_BLOCK, n_pairs - start)
        i = rng.integers(0, n, d)
        j = rng.integers(0, n - 1, d)
        j += j >= i  # uniform over the other n - 1 spots
        batch = (np.arange(start, start + d, dtype=np.int64) * n_batches) // n_pairs
        counts += np.bincount(batch, minlength=n_batches)
        for c0 in range(0, d, chunk):
            ii, jj, bt = i[c0 : c0 + chunk], j[c0 : c0 + chunk], batch[c0 : c0 + chunk]
            u = np.einsum("ij,ij->i", a[ii], a[jj])
            v = np.einsum("ij,ij->i", b[ii], b[jj])
            for k, w in enumerate((u, v, u * u, v * v, u * v)):
                sums[:, k] += np.bincount(bt, weights=w, minlength=n_batches)
    return sums, counts


def pearson_from_sums(s: np.ndarray, m: float) -> tuple[float, str | None]:
    """Five pair sums over m pairs -> (Pearson r of u with v, reason or None), the kernels rule:
    NaN when the truth side has no spread, 0 when only the prediction side has none."""
    if m < 2:
        return float("nan"), f"needs at least 2 spot pairs, got {int(m)}"
    su, sv, suu, svv, suv = (float(t) for t in s)
    mu, mv = su / m, sv / m
    var_u, var_v = suu / m - mu * mu, svv / m - mv * mv
    if not var_u > _FLAT * (suu / m):
        return float("nan"), "the truth side is constant (every valid spot pair equally correlated)"
    if not var_v > _FLAT * (svv / m):
        return 0.0, "the prediction side is constant (scored 0)"
    return float(np.clip((suv / m - mu * mv) / np.sqrt(var_u * var_v), -1.0, 1.0)), None


def ssc_spot_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    exact_max_spots: int = 5000,
    n_pairs: int = 1_000_000,
    n_batches: int = 20,
    seed: int = 0,
) -> Scores:
    """Spot-similarity SSC for one slide: y_true, y_pred (N, G) -> Scores(values ssc_spot; notes).

    Exact (``ssc_spot_method`` = "exact") when at most ``exact_max_spots`` spots vary in the truth:
    the five pair sums come from ``exact_pair_sums``, never an (N, N) array. Peak extra memory:
    a few (N, G) float64 copies (the validated inputs, their valid rows, the two unit-row arrays)
    plus at most ``_BLOCK_BYTES`` = 64 MiB of tiles, whatever N and G. Beyond: ``n_pairs`` pairs
    sampled with ``seed`` (``sampled_pair_sums``: the same copies plus at most 64 MiB of gathers
    and O(_DRAW_BLOCK) index vectors), split into ``n_batches`` batches; the value is the Pearson over
    all sampled pairs and ``ssc_spot_ci_low``/``_high`` a 95% t-interval around it from the batch
    estimates (their sd / sqrt(n_batches)). That CI covers only the pair sampling, i.e. how far the
    estimate may sit from the exact value of this slide, not slide-to-slide variation; for the
    exact path both bounds equal the value.
    """
    if int(exact_max_spots) < 3:
        raise ValueError(f"exact_max_spots must be >= 3, got {exact_max_spots}")
    if int(n_batches) < 2 or int(n_pairs) < 2 * int(n_batches):
        raise ValueError(f"need n_batches >= 2 and n_pairs >= 2 * n_batches, got {n_pairs} pairs, {n_batches} batches")
    yt, yp = validate_pair(y_true, y_pred)
    ct, cp = constant_columns(yt.T), constant_columns(yp.T)
    keep = ~ct
    n = int(keep.sum())
    notes: dict[str, Any] = {
        "n_valid_spots": n,
        "n_const_true_spots": int(ct.sum()),
        "n_const_pred_spots": int((cp & keep).sum()),
    }
    if n < 3:
        notes["ssc_spot_reason"] = f"ssc_spot needs at least 3 spots that vary across genes in the truth, got {n}"
        return Scores(values={"ssc_spot": float("nan")}, notes=notes)
    with single_threaded():
        a = unit_rows(yt[keep], ct[keep])
        b = unit_rows(yp[keep], cp[keep])
        if n <= exact_max_spots:
            m = n * (n - 1) / 2.0
            r, why = pearson_from_sums(exact_pair_sums(a, b), m)
            notes.update({"ssc_spot_method": "exact", "ssc_spot_n_pairs": int(m),
                          "ssc_spot_ci_low": r, "ssc_spot_ci_high": r})
        else:
            per_batch, counts = sampled_pair_sums(a, b, int(n_pairs), int(n_batches), int(seed))
            r, why = pearson_from_sums(per_batch.sum(axis=0), float(n_pairs))
            rb = np.array([pearson_from_sums(per_batch[k], float(counts[k]))[0] for k in range(n_batches)])
            lo, hi = _t_interval(r, rb)
            notes.update({"ssc_spot_method": "sampled", "ssc_spot_n_pairs": int(n_pairs), "ssc_spot_ci_low": lo,
                          "ssc_spot_ci_high": hi, "ssc_spot_n_batches": int(n_batches), "ssc_spot_seed": int(seed)})
    if why:
        notes["ssc_spot_reason"] = why
    return Scores(values={"ssc_spot": r}, notes=notes)


def _t_interval(value: float, batch_estimates: np.ndarray) -> tuple[float, float]:
    """95% t-interval around ``value`` with the standard error of the batch means."""
    if not np.isfinite(value) or not np.isfinite(batch_estimates).all():
        return float("nan"), float("nan")
    from scipy import stats  # 0.3 s to import: `flag-bench list` reads this module

    k = batch_estimates.size
    half = stats.t.ppf(0.975, k - 1) * batch_estimates.std(ddof=1) / np.sqrt(k)
    return float(value - half), float(value + half)


# ----------------------------------------------------------------------------- Lee's L


def lee_weights(w: SpatialWeights):
    """SpatialWeights (any transform) -> (N, N) CSR: its binary graph plus each spot as its own
    neighbour, row-standardised (row i averages spot i and its neighbours)."""
    import scipy.sparse as sp

    a = w.matrix.tocsr(copy=True)
    a.data[:] = 1.0
    a = (a + sp.identity(a.shape[0], format="csr")).tocsr()
    a.sort_indices()
    deg = np.diff(a.indptr)
    a.data /= np.repeat(deg, deg).astype(np.float64)
    return a


def _gene_blocks(n: int, g: int) -> list[slice]:
    step = max(1, int(_BLOCK_BYTES // max(1, 8 * n)))
    return [slice(s, min(s + step, g)) for s in range(0, g, step)] or [slice(0, 0)]


def lee_statistics(x: np.ndarray, y: np.ndarray, w) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lee's statistics per column of x, y (N, G) with weights w (N, N) sparse, used as given.

    -> (L_xy, L_xx, L_yy, cos) each (G,) float64: Lee's L of x with y (eq. 18), the two spatial
    smoothing scalars, and cos(W z_x, W z_y) = L_xy / sqrt(L_xx L_yy). NaN where x is constant;
    where only y is constant (or W z_y = 0) L_xy and cos are 0 and L_yy is 0.
    One sparse x dense product per side per gene block of <= 64 MiB.
    """
    xx, yy = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, g = xx.shape
    rows = np.asarray(w.sum(axis=1)).ravel()
    scale = n / float(rows @ rows)  # n / sum_i (sum_j w_ij)^2 (= 1 when rows sum to 1)
    out = [np.full(g, np.nan) for _ in range(4)]
    for blk in _gene_blocks(n, g):
        zx, zy = xx[:, blk] - xx[:, blk].mean(axis=0), yy[:, blk] - yy[:, blk].mean(axis=0)
        cx, cy = constant_columns(xx[:, blk]), constant_columns(yy[:, blk])
        zx[:, cx] = 0.0  # an exactly constant column can centre to rounding noise
        zy[:, cy] = 0.0
        lx, ly = w @ zx, w @ zy
        sx, sy = np.einsum("ij,ij->j", zx, zx), np.einsum("ij,ij->j", zy, zy)
        qx, qy, qxy = np.einsum("ij,ij->j", lx, lx), np.einsum("ij,ij->j", ly, ly), np.einsum("ij,ij->j", lx, ly)
        ok = ~cx & (sx > 0)
        both = ok & ~cy & (sy > 0)
        l_xy, l_xx, l_yy, cos = (np.full(zx.shape[1], np.nan) for _ in range(4))
        l_xx[ok] = scale * qx[ok] / sx[ok]
        l_yy[both] = scale * qy[both] / sy[both]
        l_yy[ok & ~both] = 0.0
        l_xy[both] = scale * qxy[both] / np.sqrt(sx[both] * sy[both])
        l_xy[ok & ~both] = 0.0
        lag = both & (qx > 0) & (qy > 0)
        cos[lag] = qxy[lag] / np.sqrt(qx[lag] * qy[lag])
        cos[ok & (qx > 0) & ~lag] = 0.0
        for dst, src in zip(out, (l_xy, l_xx, l_yy, np.clip(cos, -1.0, 1.0))):
            dst[blk] = src
    return out[0], out[1], out[2], out[3]


def lee_scores(y_true: np.ndarray, y_pred: np.ndarray, coords: np.ndarray | None, *, weights=None) -> Scores:
    """Lee's L of truth with prediction for one slide.

    y_true, y_pred (N, G); coords (N, 2); weights: a builder with ``build(coords)`` (default
    ``structure.DEFAULT_WEIGHTS``), turned self-inclusive and row-standardised by ``lee_weights``.
    Returns Scores(values lee_l; per_gene lee_l (normalised, scored), lee_l_raw (Lee's L)).
    """
    yt, yp = validate_pair(y_true, y_pred)
    g = yt.shape[1]
    builder = weights if weights is not None else DEFAULT_WEIGHTS

    def nan_scores(reason: str) -> Scores:
        return Scores(values={"lee_l": float("nan")},
                      per_gene={"lee_l": np.full(g, np.nan), "lee_l_raw": np.full(g, np.nan)},
                      notes={"lee_l_reason": reason})

    if coords is None:
        return nan_scores("the slide has no spot coordinates")
    try:
        base = builder.build(coords)  # built once per call; never cached across slides
    except ValueError as exc:
        return nan_scores(str(exc))
    l_xy, l_xx, _, cos = lee_statistics(yt, yp, lee_weights(base))
    const_t = constant_columns(yt)
    flat = ~const_t & ~(l_xx > 0)
    valid = ~const_t & ~flat
    per = np.where(valid, cos, np.nan)
    notes: dict[str, Any] = {
        **base.notes(),
        "lee_self_loops": True,
        "n_valid_genes": int(valid.sum()),
        "n_const_true": int(const_t.sum()),
        "n_flat_lag_true": int(flat.sum()),
        "n_const_pred": int((constant_columns(yp) & valid).sum()),
    }
    if valid.any():
        value = float(per[valid].mean())
    else:
        value = float("nan")
        notes["lee_l_reason"] = "no gene varies in the truth"
    raw = np.where(valid, l_xy, np.nan)
    return Scores(values={"lee_l": value}, per_gene={"lee_l": per, "lee_l_raw": raw}, notes=notes)


# ----------------------------------------------------------------------------- Metric objects

_CORR = (-1.0, 1.0)


class _SSCSpotCompute:
    """Picklable compute callable holding the ssc_spot sampling configuration; uses ``ctx.seed``."""

    def __init__(self, exact_max_spots: int, n_pairs: int, n_batches: int):
        self.exact_max_spots = int(exact_max_spots)
        self.n_pairs = int(n_pairs)
        self.n_batches = int(n_batches)

    def __call__(self, yt: np.ndarray, yp: np.ndarray, ctx: SlideContext) -> Scores:
        return ssc_spot_scores(yt, yp, exact_max_spots=self.exact_max_spots, n_pairs=self.n_pairs,
                               n_batches=self.n_batches, seed=ctx.seed)


class _LeeCompute:
    """Picklable compute callable holding the Lee's L weights builder."""

    def __init__(self, weights):
        self.weights = weights

    def __call__(self, yt: np.ndarray, yp: np.ndarray, ctx: SlideContext) -> Scores:
        return lee_scores(yt, yp, ctx.coords_um, weights=self.weights)


def make_ssc_spot(exact_max_spots: int = 5000, n_pairs: int = 1_000_000, n_batches: int = 20) -> Metric:
    return Metric(
        name="ssc_spot",
        compute=_SSCSpotCompute(exact_max_spots, n_pairs, n_batches),
        outputs=(
            Output("ssc_spot", True, _CORR,
                   "location-sensitive SSC: Pearson of the upper triangles of spot-spot correlation "
                   "across genes (truth vs prediction); a prediction in the wrong place scores ~0"),
        ),
        references="metric-validity.md 1.4 (spot-similarity reading of SSC; FLAG spec 2.3 spot-spot gene-PCC)",
    )


def make_lee_l(weights=None) -> Metric:
    """Lee's L Metric with a configurable weights builder (default: the SSC kNN graph, k = 6)."""
    return Metric(
        name="lee_l",
        compute=_LeeCompute(weights if weights is not None else DEFAULT_WEIGHTS),
        outputs=(
            Output("lee_l", True, _CORR,
                   "location-sensitive: Lee's L of truth with prediction per gene, normalised by both "
                   "smoothing scalars (correlation of the kNN-smoothed fields), mean over genes"),
        ),
        needs_coords=True,
        references="Lee (2001) J Geogr Syst 3:369-385, eq. 18; L_xy matches esda.Spatial_Pearson",
    )


SSC_SPOT = make_ssc_spot()
LEE_L = make_lee_l()
