"""Pathology foundation-model image encoders, built from their published configurations and
loaded from local weights only (no network, ever).

One ``FMSpec`` per model holds everything that defines its numbers: the architecture (a timm
model name plus the keyword arguments the model card passes, or a transformers ``ViTConfig``),
the preprocessing (resize, centre crop, interpolation, mean/std), the magnification it was
trained at, how the embedding is pooled, what it was pretrained on, its licence, and where each
of those facts was read (``sources``). ``FMEncoder`` subclasses are the registry entries
(``uni``, ``uni2-h``, ``h-optimus-0``, ``virchow2``, ``phikon``, ``gigapath``), instantiated with
no arguments; building one is free, the weights are found and hashed on first use of
``version`` / ``provenance()`` and loaded on the first ``encode``.

Weights: ``FLAG_BENCH_<NAME>_WEIGHTS`` (``NAME`` upper-cased, ``-`` -> ``_``, e.g.
``FLAG_BENCH_H_OPTIMUS_0_WEIGHTS``) names the file (or a folder holding the model card's file);
when it is unset, the local Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``) is searched for ``models--Org--Name/snapshots/*/<file>``. A set
variable that points nowhere is an error, never a silent fall-through to the cache. Weights are
loaded with ``load_state_dict(strict=True)`` semantics: any missing, unexpected or mis-shaped
key is a one-line error naming the file, the model and the first such key.

Magnification: every model here was trained on 224-px tiles at about 0.5 um/px (20x). The
encoder does not refuse another run patch: it resamples whatever tile the harness cuts to its
input size, and the provenance records both the model's expected um/px and the run's, so a
report can show a mismatch (the run's patch is a protocol choice, not the encoder's).

CONCH (MahmoodLab/CONCH) is left out: its image tower is an open_clip CoCa model (a timm ViT-B/16
trunk followed by CoCa's attentional poolers and projection, ``visual.trunk.*`` /
``visual.attn_pool_contrast.*`` keys), and the 512-d embedding the model card uses comes out of
those poolers; neither timm nor transformers builds them, and the ``conch`` package is not a
dependency here.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np

from flag_bench.datasets.encoders import TorchEncoder, file_sha256
from flag_bench.datasets.fm_table import SPECS, FMSpec
from flag_bench.datasets.fm_weights import (  # noqa: F401  (re-exported: tests and tools import them from here)
    first_mismatch,
    hf_hub_dir,
    load_weights,
    read_state_dict,
    resolve_weights,
)
from flag_bench.errors import UserError
from flag_bench.hashing import short_hash

# Bumped when preprocessing or pooling code changes what the same weights produce.
SPEC_REVISION = "1"


# name -> arch_kwargs overrides. Tests only: the same builder, block type and token layout at
# a small size. An override changes ``version``, so the embedding cache never mixes the two.
_ARCH_OVERRIDES: dict[str, dict[str, Any]] = {}


@contextlib.contextmanager
def architecture_override(name: str, **kwargs: Any) -> Iterator[None]:
    """Build ``name`` with ``kwargs`` merged over its published arch_kwargs (tests only)."""
    if name not in SPECS:
        raise KeyError(name)
    old = _ARCH_OVERRIDES.get(name)
    _ARCH_OVERRIDES[name] = dict(kwargs)
    try:
        yield
    finally:
        if old is None:
            _ARCH_OVERRIDES.pop(name, None)
        else:
            _ARCH_OVERRIDES[name] = old


def arch_kwargs(spec: FMSpec) -> dict[str, Any]:
    return {**spec.arch_kwargs, **_ARCH_OVERRIDES.get(spec.name, {})}


# -- building ------------------------------------------------------------------------------------

def _resolve_layers(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    for k in ("mlp_layer", "act_layer", "norm_layer"):
        if isinstance(out.get(k), str) and "." in out[k]:
            module, _, attr = out[k].rpartition(".")
            out[k] = getattr(importlib.import_module(module), attr)
    return out


def build_architecture(spec: FMSpec):
    """The randomly initialised torch module of ``spec`` (CPU, eval mode); needs timm or transformers."""
    kwargs = arch_kwargs(spec)
    try:
        if spec.builder == "timm":
            import timm

            return timm.create_model(spec.arch, pretrained=False, **_resolve_layers(kwargs)).eval()
        if spec.builder == "transformers-vit":
            from transformers import ViTConfig, ViTModel

            return ViTModel(ViTConfig(**kwargs), add_pooling_layer=False).eval()
    except ImportError as exc:
        raise UserError(f"encoder {spec.name} needs timm and transformers ({exc.name} is missing); "
                        "pip install 'flag-bench[encoders]'") from None
    raise ValueError(f"unknown builder {spec.builder!r}")

def pool_tokens(tokens, num_prefix: int, pooling: str):
    """(n, T, D) final-norm tokens -> (n, D) CLS, or (n, 2D) CLS ++ mean of the patch tokens
    (tokens after the ``num_prefix`` class and register tokens)."""
    import torch

    cls = tokens[:, 0]
    if pooling == "cls":
        return cls
    if pooling == "cls+mean_patch":
        return torch.cat([cls, tokens[:, num_prefix:].mean(dim=1)], dim=-1)
    raise ValueError(f"unknown pooling {pooling!r}")


# -- the encoders --------------------------------------------------------------------------------

class FMEncoder(TorchEncoder):
    """A foundation-model encoder of one ``FMSpec``. ``version`` = spec revision + the first 12
    hex digits of the weights file's sha256 (+ an architecture digest under a test override)."""

    spec: ClassVar[FMSpec]
    device_dependent = True

    def __init__(self) -> None:
        self._weights: Path | None = None

    # -- identity ----------------------------------------------------------------------------
    @property
    def dim(self) -> int:  # type: ignore[override]
        over = _ARCH_OVERRIDES.get(self.spec.name)
        width = over and (over.get("embed_dim") or over.get("hidden_size"))
        if not width:
            return self.spec.dim
        return int(width) * (2 if self.spec.pooling == "cls+mean_patch" else 1)

    @property
    def weights_path(self) -> Path:
        if self._weights is None:
            self._weights = resolve_weights(self.spec)
        return self._weights

    @property
    def weights_sha256(self) -> str:
        return file_sha256(self.weights_path)

    @property
    def version(self) -> str:  # type: ignore[override]
        v = f"{SPEC_REVISION}-{self.weights_sha256[:12]}"
        if self.spec.name in _ARCH_OVERRIDES:
            v += "-arch" + short_hash(arch_kwargs(self.spec), n=8)
        return v

    def identity(self) -> str:
        return f"{self.name}@{self.version}"

    def weights_file(self) -> Path | None:
        return self.weights_path

    def preferred_patch(self):
        """The PatchSpec the model was trained on (224 px at 0.5 um/px = 112 um for all of these).
        A run may cut another patch; the encoder resamples it and the protocol card records both."""
        from flag_bench.datasets.base import PatchSpec

        return PatchSpec(self.spec.input_px * self.spec.um_per_px, self.spec.input_px)

    def provenance(self) -> dict[str, Any]:
        s = self.spec
        return {**super().provenance(), "title": s.title, "hf_repo": s.hf_repo, "env_var": s.env_var,
                "architecture": f"{s.builder}:{s.arch}", "pooling": s.pooling,
                "preprocess": {"resize_px": s.resize_px, "crop_px": s.crop_px, "interpolation": s.interpolation,
                               "mean": list(s.mean), "std": list(s.std)},
                "field_um": s.field_um, "pretrained_description": s.pretrained_description,
                "citation": s.citation, "licence": s.licence, "sources": list(s.sources),
                "arch_override": dict(_ARCH_OVERRIDES[s.name]) if s.name in _ARCH_OVERRIDES else None}

    # -- computing ---------------------------------------------------------------------------
    def build(self):
        model = build_architecture(self.spec)
        load_weights(self.spec, model, self.weights_path)
        return model.eval()

    def model(self, device: str):
        # keyed by the version too: other weights or another architecture is another model
        key = (self.name, self.version, str(self.weights_path), device)
        if key not in TorchEncoder._models:
            TorchEncoder._models[key] = self.build().to(device).eval()
        return TorchEncoder._models[key]

    def preprocess(self, tiles: np.ndarray, device: str = "cpu"):
        """uint8 (n, H, W, 3) -> float (n, 3, input_px, input_px): [0, 1], resize to resize_px
        (antialiased), centre crop to crop_px, then (x - mean) / std."""
        import torch
        import torch.nn.functional as F

        s = self.spec
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (s.resize_px, s.resize_px):
            x = F.interpolate(x, size=(s.resize_px, s.resize_px), mode=s.interpolation, align_corners=False,
                              antialias=True)
            if s.interpolation == "bicubic":
                x = x.clamp_(0.0, 1.0)  # bicubic overshoots; PIL-based pipelines clip to the pixel range
        if s.crop_px != s.resize_px:
            o = (s.resize_px - s.crop_px) // 2
            x = x[..., o:o + s.crop_px, o:o + s.crop_px]
        mean = torch.tensor(s.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(s.std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std

    def features(self, model, x):
        s = self.spec
        if s.builder == "transformers-vit":
            tokens = model(pixel_values=x).last_hidden_state
            return pool_tokens(tokens, 1, s.pooling)
        tokens = model.forward_features(x)  # (n, T, D) after the final norm
        return pool_tokens(tokens, int(model.num_prefix_tokens), s.pooling)

    def _encode_batch(self, tiles: np.ndarray, device: str) -> np.ndarray:
        import torch

        model = self.model(device)
        x = self.preprocess(tiles, device)
        cuda = str(device).startswith("cuda")
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            f = self.features(model, x)
        return f.float().cpu().numpy()


def _encoder_class(key: str) -> type[FMEncoder]:
    spec = SPECS[key]
    doc = (f"{spec.title}: {spec.dim}-d ({spec.pooling}), {spec.input_px} px at {spec.um_per_px:g} um/px. "
           f"Pretrained on {spec.pretrained_description}. {spec.citation}. Licence: {spec.licence}. "
           f"Weights: ${spec.env_var} or the local HF cache of {spec.hf_repo}.")
    attrs = {"spec": spec, "name": spec.name, "input_px": spec.input_px,
             "um_per_px": spec.um_per_px, "batch_size": spec.batch_size, "pretrained_on": spec.pretrained_on,
             "pretrained_description": spec.pretrained_description, "__doc__": doc, "__module__": __name__}
    cls_name = "".join(p.capitalize() for p in key.replace("-", "_").split("_"))
    return type(cls_name, (FMEncoder,), attrs)


Uni = _encoder_class("uni")
Uni2H = _encoder_class("uni2-h")
HOptimus0 = _encoder_class("h-optimus-0")
Virchow2 = _encoder_class("virchow2")
Phikon = _encoder_class("phikon")
Gigapath = _encoder_class("gigapath")
