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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np

from flag_bench.datasets.encoders import IMAGENET_MEAN, IMAGENET_STD, TorchEncoder, file_sha256
from flag_bench.errors import UserError
from flag_bench.hashing import short_hash

# Bumped when preprocessing or pooling code changes what the same weights produce.
SPEC_REVISION = "1"
_IMAGENET = (tuple(float(v) for v in IMAGENET_MEAN), tuple(float(v) for v in IMAGENET_STD))
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass(frozen=True)
class FMSpec:
    """One published model. ``arch_kwargs`` is JSON-able: layer classes are dotted names."""

    name: str
    title: str
    hf_repo: str
    weight_files: tuple[str, ...]  # the model card's file name first
    builder: str  # "timm" or "transformers-vit"
    arch: str  # timm model name, or "ViTModel"
    arch_kwargs: Mapping[str, Any]
    dim: int
    pooling: str  # "cls" or "cls+mean_patch"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained_on: tuple[str, ...]  # corpus names, matched case-insensitively with dataset corpora
    pretrained_description: str
    citation: str
    licence: str
    sources: tuple[str, ...]
    input_px: int = 224
    resize_px: int = 224  # the tile is resized to resize_px x resize_px ...
    crop_px: int = 224  # ... then centre-cropped to crop_px (== input_px)
    interpolation: str = "bilinear"
    um_per_px: float = 0.5
    # checkpoint keys the model card's own loading discards (transformers' optional pooler)
    ignore_prefixes: tuple[str, ...] = ()
    batch_size: int = 16

    @property
    def env_var(self) -> str:
        return "FLAG_BENCH_" + self.name.upper().replace("-", "_") + "_WEIGHTS"

    @property
    def field_um(self) -> float:
        """Tissue width the model sees out of a tile of ``input_px * um_per_px`` (crop included)."""
        return self.input_px * self.um_per_px * self.crop_px / self.resize_px


SPECS: dict[str, FMSpec] = {
    "uni": FMSpec(
        name="uni", title="UNI (ViT-L/16)", hf_repo="MahmoodLab/UNI", weight_files=("pytorch_model.bin",),
        builder="timm", arch="vit_large_patch16_224",
        arch_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                     "dynamic_img_size": True},
        dim=1024, pooling="cls", mean=_IMAGENET[0], std=_IMAGENET[1],
        pretrained_on=("Mass-100K", "GTEx"),
        pretrained_description="Mass-100K: ~100M tiles from ~100k H&E WSIs (MGH, BWH and GTEx), DINOv2, 20x",
        citation="Chen et al., Towards a general-purpose foundation model for computational pathology, "
                 "Nat Med 2024",
        licence="CC-BY-NC-ND-4.0, gated on Hugging Face (non-commercial academic use)",
        # timm kwargs and file name: the MahmoodLab/UNI model card ("timm.create_model(
        # 'vit_large_patch16_224', img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
        # dynamic_img_size=True)", hf_hub_download(filename="pytorch_model.bin")), the same kwargs
        # in kaiko-ai/eva backbones/pathology/mahmood.py; transform Resize(224) + ImageNet mean/std
        sources=("https://huggingface.co/MahmoodLab/UNI",
                 "kaiko-ai/eva src/eva/vision/models/networks/backbones/pathology/mahmood.py"),
    ),
    "uni2-h": FMSpec(
        name="uni2-h", title="UNI2-h (ViT-H/14, 8 registers)", hf_repo="MahmoodLab/UNI2-h",
        weight_files=("pytorch_model.bin",), builder="timm", arch="vit_giant_patch14_224",
        arch_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                     "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
                     "mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU", "reg_tokens": 8,
                     "dynamic_img_size": True},
        dim=1536, pooling="cls", mean=_IMAGENET[0], std=_IMAGENET[1],
        pretrained_on=("Mass General Brigham WSIs (private)",),
        pretrained_description="over 200M H&E and IHC tiles from 350k+ WSIs of Mass General Brigham, 20x",
        citation="Chen et al., Nat Med 2024 (UNI); UNI2-h model card, MahmoodLab 2025",
        licence="CC-BY-NC-ND-4.0, gated on Hugging Face (non-commercial academic use)",
        # timm_kwargs verbatim from the MahmoodLab/UNI2-h model card (also kaiko-ai/eva
        # mahmood.py mahmood_uni2_h); CLS output (num_classes=0, global_pool token)
        sources=("https://huggingface.co/MahmoodLab/UNI2-h",
                 "kaiko-ai/eva src/eva/vision/models/networks/backbones/pathology/mahmood.py"),
    ),
    "h-optimus-0": FMSpec(
        name="h-optimus-0", title="H-optimus-0 (ViT-g/14, 4 registers)", hf_repo="bioptimus/H-optimus-0",
        weight_files=("model.safetensors", "pytorch_model.bin"), builder="timm",
        arch="vit_giant_patch14_reg4_dinov2",
        arch_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "global_pool": "token",
                     "dynamic_img_size": False},
        dim=1536, pooling="cls",
        # mean/std and input size from the repo's config.json pretrained_cfg
        mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
        pretrained_on=("Bioptimus WSIs (private)",),
        pretrained_description="over 500k H&E WSIs from a proprietary multi-centre collection, 224 px at 0.5 um/px",
        citation="Saillard et al., H-optimus-0, Bioptimus 2024 (github.com/bioptimus/releases)",
        licence="Apache-2.0, gated on Hugging Face (accept the conditions)",
        # config.json: architecture vit_giant_patch14_reg4_dinov2, global_pool token, 224 px,
        # the mean/std above; model card: create_model(..., init_values=1e-5,
        # dynamic_img_size=False), tiles of 224 px at 0.5 um/px
        sources=("https://huggingface.co/bioptimus/H-optimus-0/blob/main/config.json",
                 "kaiko-ai/eva src/eva/vision/models/networks/backbones/pathology/bioptimus.py"),
    ),
    "virchow2": FMSpec(
        name="virchow2", title="Virchow2 (ViT-H/14, 4 registers)", hf_repo="paige-ai/Virchow2",
        weight_files=("model.safetensors", "pytorch_model.bin"), builder="timm", arch="vit_huge_patch14_224",
        arch_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375,
                     "global_pool": "", "dynamic_img_size": True, "mlp_layer": "timm.layers.SwiGLUPacked",
                     "act_layer": "torch.nn.SiLU"},
        dim=2560, pooling="cls+mean_patch", mean=_IMAGENET[0], std=_IMAGENET[1], interpolation="bicubic",
        pretrained_on=("MSKCC WSIs (private)",),
        pretrained_description="3.1M H&E and IHC WSIs from Memorial Sloan Kettering, mixed magnifications "
                               "(5x-40x), DINOv2 variant",
        citation="Zimmermann et al., Virchow2: Scaling self-supervised mixed magnification models in "
                 "pathology, arXiv:2408.00738",
        licence="CC-BY-NC-ND-4.0, gated on Hugging Face (non-commercial)",
        # config.json model_args (vit_huge_patch14_224, reg_tokens 4, mlp_ratio 5.3375,
        # global_pool "") + model card's mlp_layer=SwiGLUPacked, act_layer=SiLU; pretrained_cfg
        # bicubic, crop_pct 1.0, ImageNet mean/std; embedding = CLS concatenated with the mean of
        # the patch tokens (tokens after the CLS and 4 registers), 2560-d, as on the model card
        sources=("https://huggingface.co/paige-ai/Virchow2",
                 "kaiko-ai/eva src/eva/vision/models/networks/backbones/pathology/paige.py"),
    ),
    "phikon": FMSpec(
        name="phikon", title="Phikon (ViT-B/16, iBOT)", hf_repo="owkin/phikon",
        weight_files=("model.safetensors", "pytorch_model.bin"), builder="transformers-vit", arch="ViTModel",
        # config.json of owkin/phikon (ViTModel, hidden 768, 12 layers, 12 heads, patch 16, 224 px)
        arch_kwargs={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072, "hidden_act": "gelu", "image_size": 224, "patch_size": 16,
                     "num_channels": 3, "qkv_bias": True, "layer_norm_eps": 1e-12,
                     "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        dim=768, pooling="cls", mean=_IMAGENET[0], std=_IMAGENET[1],
        pretrained_on=("TCGA",),
        pretrained_description="PanCancer40M: 40M tiles from 6,093 TCGA WSIs (16 cancer types), iBOT, 20x",
        citation="Filiot et al., Scaling self-supervised learning for histopathology with masked image "
                 "modeling, medRxiv 2023.07.21.23292757",
        licence="Owkin non-commercial licence",
        # model card: ViTModel.from_pretrained("owkin/phikon", add_pooling_layer=False),
        # last_hidden_state[:, 0, :] (768-d); its image processor: 224 px, ImageNet mean/std
        ignore_prefixes=("pooler.",),
        sources=("https://huggingface.co/owkin/phikon",
                 "https://huggingface.co/owkin/phikon/blob/main/config.json"),
        batch_size=32,
    ),
    "gigapath": FMSpec(
        name="gigapath", title="Prov-GigaPath tile encoder (ViT-g/16)", hf_repo="prov-gigapath/prov-gigapath",
        weight_files=("pytorch_model.bin",), builder="timm", arch="vit_giant_patch14_dinov2",
        arch_kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                     "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0},
        dim=1536, pooling="cls", mean=_IMAGENET[0], std=_IMAGENET[1],
        resize_px=256, crop_px=224, interpolation="bicubic",
        pretrained_on=("Prov-Path (private)",),
        pretrained_description="Prov-Path: 1.3B tiles from 171k H&E and IHC WSIs of Providence Health, "
                               "DINOv2, 0.5 um/px",
        citation="Xu et al., A whole-slide foundation model for digital pathology from real-world data, "
                 "Nature 2024",
        licence="Apache-2.0 with the model card's research-only terms, gated on Hugging Face",
        # config.json model_args (vit_giant_patch14_dinov2 with patch_size 16, depth 40,
        # mlp_ratio 5.33334, init_values 1e-5); prov-gigapath demo/3_load_tile_encoder.py:
        # Resize(256, bicubic) + CenterCrop(224) + ImageNet mean/std; CLS output
        sources=("https://huggingface.co/prov-gigapath/prov-gigapath",
                 "prov-gigapath/prov-gigapath demo/3_load_tile_encoder.py"),
    ),
}

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


# -- weights: where, and which -------------------------------------------------------------------

def hf_hub_dir() -> Path:
    """The Hugging Face hub cache folder, resolved as huggingface_hub does (read-only use)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _from_hf_cache(spec: FMSpec) -> Path | None:
    repo = hf_hub_dir() / ("models--" + spec.hf_repo.replace("/", "--"))
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo / "refs" / "main"
    order: list[Path] = []
    if ref.is_file():
        order.append(snaps / ref.read_text().strip())
    # other snapshots newest first: a pinned revision without refs/main still counts
    others = sorted((p for p in snaps.iterdir() if p.is_dir() and p not in order),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for snap in order + others:
        for fname in spec.weight_files:
            f = snap / fname
            if f.is_file():  # follows the blob symlink
                return f
    return None


def resolve_weights(spec: FMSpec) -> Path:
    """The weights file of ``spec``: the env var's path, else the local HF cache; else UserError."""
    env = spec.env_var
    given = os.environ.get(env)
    files = " or ".join(spec.weight_files)
    if given:
        p = Path(given).expanduser()
        if p.is_dir():
            for fname in spec.weight_files:
                if (p / fname).is_file():
                    return p / fname
            raise UserError(f"{env}={given}: the folder holds no {files}; point {env} to the weights file of "
                            f"{spec.hf_repo}")
        if not p.is_file():
            raise UserError(f"{env}={given}: no such file; point {env} to the {files} of {spec.hf_repo}")
        if p.suffix not in _WEIGHT_SUFFIXES:
            raise UserError(f"{env}={given}: weights must be .safetensors, .bin, .pth or .pt; point {env} to the "
                            f"{files} of {spec.hf_repo}")
        return p
    found = _from_hf_cache(spec)
    if found is not None:
        return found
    raise UserError(f"encoder {spec.name}: no weights found; set {env} to the {files} of the Hugging Face repo "
                    f"{spec.hf_repo} (gated: accept its terms there), or place that repo's snapshot in the local "
                    f"Hugging Face cache ({hf_hub_dir()}); nothing is downloaded")


# -- building and loading ------------------------------------------------------------------------

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


def read_state_dict(path: Path) -> dict:
    from flag_bench.safeload import load_weights

    try:
        sd = load_weights(path)  # .safetensors, or torch.load(weights_only=True) on a safe torch
    except UserError:
        raise  # a pickled file on a torch too old to read it safely: already names the file and fix
    except Exception as exc:  # a truncated or foreign file: say which, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: cannot read it as a weights file ({first[:160]}); give the .safetensors or "
                        ".bin file of the model's Hugging Face repo") from None
    if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
        raise UserError(f"{path}: not a flat state dict of tensors; give the .safetensors or .bin file of the "
                        "model's Hugging Face repo")
    return sd


def first_mismatch(expected: Mapping[str, Any], got: Mapping[str, Any]) -> str | None:
    """The first key (in the model's order) that strict loading would reject, described; None if all fit."""
    for k, v in expected.items():
        if k not in got:
            return f"key '{k}' is missing from the file"
        if tuple(got[k].shape) != tuple(v.shape):
            return f"key '{k}' has shape {tuple(got[k].shape)} in the file, {tuple(v.shape)} in the model"
    for k in got:
        if k not in expected:
            return f"key '{k}' in the file is not in the model"
    return None


def load_weights(spec: FMSpec, model, path: Path) -> None:
    sd = read_state_dict(path)
    sd = {k: v for k, v in sd.items() if not k.startswith(spec.ignore_prefixes)}
    problem = first_mismatch(model.state_dict(), sd)
    if problem:
        raise UserError(f"{path}: not weights of encoder {spec.name} ({spec.title}, {spec.arch}): {problem}; "
                        f"point {spec.env_var} to the weights of {spec.hf_repo}")
    model.load_state_dict(sd, strict=True)


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
