"""The published pathology foundation models as data: one ``FMSpec`` per model (architecture,
preprocessing, magnification, pooling, pretraining corpus, licence, and where each fact was read).
``fm_encoders`` turns each entry into a registry encoder; the table lives apart from that code so
that adding or checking a model is reading one entry against its sources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from flag_bench.datasets.encoders import IMAGENET_MEAN, IMAGENET_STD


def _rgb(values) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return (r, g, b)


_IMAGENET = (_rgb(IMAGENET_MEAN), _rgb(IMAGENET_STD))


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
