"""``synthetic``: a generated spatial-transcriptomics dataset with a known image -> expression link.

Generative story, per slide:

1. Spots on a hex (or square) grid, 100 um pitch, 55 um spots (Visium-like), 0.5 um/px.
2. A hidden state ``h`` (n_spots, n_modules): a spatial *domain* mean (domains are the argmax
   of ``n_domains`` smooth random fields) plus smooth random fields with length scale
   ``smoothness`` spot pitches (0 = independent per spot).
3. Expression: each gene belongs to one co-expression module (loading on that module, small
   loadings on the rest, some genes nearly flat); log rates = gene base level + ``h @ W`` + a
   small per-patient offset; counts are Poisson-Gamma (negative binomial with overdispersion
   ``noise``; 0 = Poisson) around a spot library size of about ``depth`` UMIs.
4. Images: each spot's tile is rendered procedurally from an *image state*
   ``u = image_signal * P h~ + sqrt(1 - image_signal^2) * e`` (``h~`` standardised hidden state,
   ``P`` a fixed random projection to 5 appearance parameters, ``e`` an independent smooth field).
   The parameters set the stroma tint (eosin vs haematoxylin), nuclear density, nuclear size,
   brightness and a red/blue cast, so at ``image_signal = 1`` colour and texture statistics
   carry the hidden state and at 0 they carry nothing about expression.

Everything is a pure function of the parameters (and ``GENERATOR_VERSION``), which is what the
dataset version hashes. Tiles are rendered on request at any ``PatchSpec``.

Image-only mode (``load(image_only=True)``): the same slides and tiles; the counts are generated
(the image states come from the same draws) and then dropped (``base.drop_counts``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from flag_bench.datasets.base import PatchSpec, Slide, SpatialDataset, drop_counts
from flag_bench.errors import UserError

GENERATOR_VERSION = "1"
NAME = "synthetic"
PITCH_UM = 100.0
SPOT_DIAMETER_UM = 55.0
PIXEL_SIZE_UM = 0.5
N_APPEARANCE = 5  # tint, nuclear density, nuclear size, brightness, colour cast

# name -> (default, kind, check, description). kind "int" accepts ints only; "float" accepts
# ints and floats (the CLI parses "image_signal=1" as an int).
PARAMS: dict[str, tuple[Any, str, Any, str]] = {
    "n_slides": (4, "int", lambda v: v >= 1, ">= 1"),
    "n_patients": (None, "int", lambda v: v >= 1, ">= 1 and <= n_slides (default n_slides)"),
    "spots_per_slide": (200, "int", lambda v: v >= 4, ">= 4"),
    "grid": ("hex", "str", lambda v: v in ("hex", "square"), "'hex' or 'square'"),
    "n_genes": (300, "int", lambda v: v >= 2, ">= 2"),
    "n_domains": (4, "int", lambda v: v >= 1, ">= 1"),
    "n_modules": (5, "int", lambda v: v >= 1, ">= 1"),
    "smoothness": (3.0, "float", lambda v: v >= 0, ">= 0 (length scale in spot pitches; 0 = none)"),
    "image_signal": (0.8, "float", lambda v: 0 <= v <= 1, "between 0 and 1"),
    "noise": (0.2, "float", lambda v: v >= 0, ">= 0 (negative-binomial overdispersion; 0 = Poisson)"),
    "depth": (3000.0, "float", lambda v: v > 0, "> 0 (mean UMIs per spot)"),
    "seed": (0, "int", lambda v: True, "an integer"),
}


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check every parameter; bad input -> UserError naming the key."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise UserError(
            f"synthetic dataset: unknown parameter(s) {', '.join(unknown)}; valid keys: {', '.join(PARAMS)}"
        )
    out: dict[str, Any] = {}
    for key, (default, kind, check, desc) in PARAMS.items():
        v = params.get(key, default)
        if v is None:
            out[key] = None
            continue
        ok_type = {
            "int": isinstance(v, (int, np.integer)) and not isinstance(v, bool),
            "float": isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool),
            "str": isinstance(v, str),
        }[kind]
        if not ok_type or (kind == "float" and not np.isfinite(v)) or not check(v):
            raise UserError(f"synthetic dataset: {key}={v!r} is invalid; it must be {desc}")
        out[key] = int(v) if kind == "int" else float(v) if kind == "float" else v
    if out["n_patients"] is None:
        out["n_patients"] = out["n_slides"]
    if out["n_patients"] > out["n_slides"]:
        raise UserError(
            f"synthetic dataset: n_patients={out['n_patients']} exceeds n_slides={out['n_slides']}; "
            "use n_patients <= n_slides"
        )
    return out


def version_of(p: dict[str, Any]) -> str:
    blob = json.dumps({"generator": GENERATOR_VERSION, **p}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# geometry and fields
# ---------------------------------------------------------------------------------------------

def grid_positions(n: int, kind: str) -> np.ndarray:
    """(n, 2) float64 positions in units of the spot pitch, a near-square patch of the grid."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    r, c = np.divmod(np.arange(rows * cols), cols)
    if kind == "hex":
        x = c + 0.5 * (r % 2)
        y = r * np.sqrt(3) / 2
    else:
        x, y = c.astype(float), r.astype(float)
    return np.stack([x, y], axis=1)[:n].astype(np.float64)


def smooth_fields(rng: np.random.Generator, xy: np.ndarray, k: int, length: float, n_features: int = 128) -> np.ndarray:
    """(n, k) approximately standard-normal fields with a squared-exponential covariance of
    length scale ``length`` (random Fourier features); independent noise when ``length == 0``."""
    n = len(xy)
    if length <= 0:
        return rng.standard_normal((n, k))
    omega = rng.standard_normal((k, n_features, 2)) / length
    phase = rng.uniform(0, 2 * np.pi, size=(k, n_features))
    f = np.cos(np.einsum("nd,kfd->nkf", xy, omega) + phase[None]).sum(axis=2) * np.sqrt(2.0 / n_features)
    return f


# ---------------------------------------------------------------------------------------------
# tiles
# ---------------------------------------------------------------------------------------------

_EOSIN = np.array([0.94, 0.66, 0.80], dtype=np.float32)
_HAEM_STROMA = np.array([0.62, 0.48, 0.78], dtype=np.float32)
_NUCLEUS = np.array([0.28, 0.16, 0.46], dtype=np.float32)
_CAST = np.array([0.08, 0.0, -0.08], dtype=np.float32)


class SyntheticTileReader:
    """Renders uint8 (N, size_px, size_px, 3) tiles from per-spot appearance states.

    A spot's tile depends only on (seed, slide, spot index, patch spec, its state), so it is
    deterministic and independent of which other tiles are requested. Picklable.
    """

    max_field_um = None  # rendered at any size

    def __init__(self, states: dict[str, np.ndarray], stain: dict[str, np.ndarray], seed: int):
        self.states = states  # slide id -> (N, 5) image state
        self.stain = stain  # slide id -> (3,) per-patient multiplicative stain factor
        self.seed = seed

    def fingerprint(self, slide_id: str) -> str:
        """The embedding cache's identity of a slide's tiles: everything they are rendered from."""
        h = hashlib.sha256(f"synthetic-tiles|{GENERATOR_VERSION}|{self.seed}|{slide_id}".encode())
        h.update(np.ascontiguousarray(self.states[slide_id]).tobytes())
        h.update(np.ascontiguousarray(self.stain[slide_id]).tobytes())
        return h.hexdigest()

    def __call__(self, slide_id: str, patch: PatchSpec, spots: np.ndarray | None = None) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        if patch.size_px < 1 or patch.size_um <= 0:
            raise UserError(f"patch {patch.key()}: size_um and size_px must be positive")
        u = self.states[slide_id]
        index = np.arange(len(u)) if spots is None else np.asarray(spots, dtype=np.int64)
        px = int(patch.size_px)
        um_per_px = patch.size_um / px
        slide_key = int.from_bytes(hashlib.sha256(slide_id.encode()).digest()[:4], "little")
        out = np.empty((len(index), px, px, 3), dtype=np.uint8)
        for k, i in enumerate(index):
            tint, dens, size, bright, cast = u[i]
            rng = np.random.default_rng([self.seed, slide_key, int(i), px, int(round(patch.size_um * 1000))])
            # gentle, near-linear responses over +-2 sd so a linear probe on colour statistics
            # can follow the state (saturating maps would hide slide-level shifts)
            frac = 0.5 + 0.4 * np.tanh(0.6 * tint)
            bg = (1 - frac) * _EOSIN + frac * _HAEM_STROMA
            bg = bg * (0.88 + 0.08 * np.tanh(0.5 * bright)) + _CAST * np.tanh(0.5 * cast)
            # nuclei: Poisson count in the field, Gaussian blobs thresholded to discs
            density = 0.004 * np.exp(0.4 * dens)  # nuclei per um^2
            n_nuc = rng.poisson(density * patch.size_um**2)
            radius_px = max(3.5 * np.exp(0.2 * size) / um_per_px, 0.35)
            img = np.zeros((px, px), dtype=np.float32)
            if n_nuc:
                pos = rng.integers(0, px, size=(n_nuc, 2))
                np.add.at(img, (pos[:, 1], pos[:, 0]), 1.0)
                sigma = radius_px / 1.5
                img = gaussian_filter(img, sigma, mode="constant") * (2 * np.pi * sigma**2)
            mask = np.clip(2.0 * img - 0.4, 0.0, 1.0)[..., None]
            tile = bg[None, None, :] * (1 - mask) + _NUCLEUS[None, None, :] * mask
            tile = tile * self.stain[slide_id] + rng.normal(0.0, 0.025, size=(px, px, 3)).astype(np.float32)
            out[k] = np.clip(tile * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return out


# ---------------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Programmes:
    """What all slides share: gene programmes, domain profiles, the image projection."""

    base: np.ndarray  # (G,) gene base log rate
    W: np.ndarray  # (K, G) module loadings
    domain_means: np.ndarray  # (D, K)
    proj: np.ndarray  # (K, N_APPEARANCE) unit-norm columns
    h_mean: np.ndarray  # (K,) population mean of the hidden state
    h_sd: np.ndarray  # (K,)
    patient_gene: np.ndarray  # (n_patients, G) per-patient log-rate offsets
    patient_stain: np.ndarray  # (n_patients, 3)


def _programmes(p: dict[str, Any]) -> _Programmes:
    rng = np.random.default_rng([p["seed"], 0x5EED])
    G, K, D = p["n_genes"], p["n_modules"], p["n_domains"]
    base = rng.normal(0.0, 1.2, size=G)
    module_of = rng.integers(0, K, size=G)
    strength = np.where(rng.random(G) < 0.25, 0.05, rng.uniform(0.5, 1.2, size=G))  # 25% near-flat
    W = rng.normal(0.0, 0.1, size=(K, G))
    W[module_of, np.arange(G)] += strength * rng.choice([-1.0, 1.0], size=G)
    domain_means = rng.normal(0.0, 1.0, size=(D, K))
    proj = rng.normal(size=(K, N_APPEARANCE))
    proj /= np.linalg.norm(proj, axis=0, keepdims=True)  # unit-variance appearance parameters
    patient_gene = rng.normal(0.0, 0.15, size=(p["n_patients"], G))
    # a mild per-patient stain difference (a batch effect), small next to the state's colour range
    patient_stain = 1.0 + rng.normal(0.0, 0.01, size=(p["n_patients"], 3))
    # population moments of h over equally likely domains (h = domain mean + 0.8 * field)
    h_sd = np.sqrt(domain_means.var(axis=0) + 0.64)
    return _Programmes(base, W, domain_means, proj, domain_means.mean(axis=0), h_sd, patient_gene, patient_stain)


def _slide(p: dict[str, Any], prog: _Programmes, xy: np.ndarray, s: int) -> tuple[dict[str, Any], np.ndarray]:
    """Slide ``s``: Slide fields and its (n_spots, N_APPEARANCE) image state."""
    sid = f"S{s + 1:0{max(2, len(str(p['n_slides'])))}d}"
    patient = s % p["n_patients"]
    srng = np.random.default_rng([p["seed"], 0x511DE, s])
    K, D = p["n_modules"], p["n_domains"]
    # domains from smooth fields with a longer length scale than the modules
    dom_fields = smooth_fields(srng, xy, D, 2.0 * p["smoothness"]) if D > 1 else np.zeros((len(xy), 1))
    domain = dom_fields.argmax(axis=1)
    h = prog.domain_means[domain] + 0.8 * smooth_fields(srng, xy, K, p["smoothness"])
    logit = prog.base[None, :] + h @ prog.W + prog.patient_gene[patient][None, :]
    rate = np.exp(logit - logit.max(axis=1, keepdims=True))
    rate /= rate.sum(axis=1, keepdims=True)
    library = p["depth"] * np.exp(srng.normal(0.0, 0.3, size=(len(xy), 1)))
    mu = library * rate
    if p["noise"] > 0:
        shape = 1.0 / p["noise"]
        mu = srng.gamma(shape, mu / shape)
    counts = sp.csr_matrix(srng.poisson(mu).astype(np.int32))
    # fixed (population) scaling, not per-slide standardisation: slide-level differences in
    # the hidden state must stay visible in the images, as they are in the expression
    signal = (h - prog.h_mean) / prog.h_sd @ prog.proj
    nuisance = smooth_fields(srng, xy, N_APPEARANCE, p["smoothness"])
    a = p["image_signal"]
    state = (a * signal + np.sqrt(max(0.0, 1.0 - a * a)) * nuisance).astype(np.float32)
    fields = dict(
        id=sid, patient=f"P{patient + 1}", counts=counts,
        barcodes=np.array([f"{sid}_{i:05d}" for i in range(len(xy))]),
        coords=(xy + 1.0) * (PITCH_UM / PIXEL_SIZE_UM),  # a one-pitch margin from the image origin
        meta={"annotations": domain.astype(np.int64), "hidden": h.astype(np.float32),
              "annotations_source": "true spatial domain"},
    )
    return fields, state


def load(*, image_only: Any = False, **params: Any) -> SpatialDataset:
    """Generate the dataset. Parameters (all keyword): see ``PARAMS``; unknown -> UserError.
    ``image_only`` (a bool, typed Any so that callers may splat a dict of int parameters):
    without counts (module docstring)."""
    p = validate(params)
    prog = _programmes(p)
    xy = grid_positions(p["spots_per_slide"], p["grid"])
    slides, states, stains = [], {}, {}
    for s in range(p["n_slides"]):
        fields, state = _slide(p, prog, xy, s)
        slides.append(fields)
        states[fields["id"]] = state
        stains[fields["id"]] = prog.patient_stain[s % p["n_patients"]].astype(np.float32)
    reader = SyntheticTileReader(states, stains, p["seed"])
    G = p["n_genes"]
    gwidth = max(4, len(str(G)))
    ds = SpatialDataset(
        name=NAME,
        version=version_of(p),
        slides=tuple(
            Slide(pixel_size_um=PIXEL_SIZE_UM, spot_diameter_um=SPOT_DIAMETER_UM, tile_reader=reader, **s)
            for s in slides
        ),
        genes=tuple(f"SYN{g + 1:0{gwidth}d}" for g in range(G)),
        gene_ids=("",) * G,
        organism="synthetic",
        platform="synthetic",
        licence="generated data; no restrictions",
        citation="flag-bench synthetic generator v" + GENERATOR_VERSION,
        default_split="slide",
        meta={"params": p, "generator_version": GENERATOR_VERSION},
    )
    return drop_counts(ds) if bool(image_only) else ds
