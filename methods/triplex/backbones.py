"""TRIPLEX's image networks: the trainable target-tile trunks and the frozen Ciga ResNet-18 encoder.

The ResNet-18 is written here (no torchvision in the environment) with torchvision's parameter
names, so Ciga et al.'s "tenpercent" checkpoint loads into it once its Lightning prefixes are
stripped. It is read from a local path only: the official code downloads it at run time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from flag_bench.datasets.encoders import Encoder
from flag_bench.errors import UserError
from flag_bench.methods.triplex.config import missing_weights_message
from flag_bench.safeload import load_weights
from flag_bench.methods.common.images import normalise, tiles_to_tensor


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18 trunk up to layer4: (B, 3, 224, 224) -> (B, 512, 7, 7)."""

    channels = 512

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, layers = 64, []
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(_Basic(cin, cout, stride), _Basic(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class SmallConv(nn.Module):
    """A CPU-sized trunk: three stride-2 stages, (B, 3, px, px) -> (B, 4w, px/8, px/8); 56 px
    tiles give the paper's 7 x 7 = 49 tokens."""

    def __init__(self, width: int):
        super().__init__()

        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        w = width
        self.channels = 4 * w
        self.net = nn.Sequential(*block(3, w, 2), *block(w, 2 * w, 2), *block(2 * w, 2 * w, 1),
                                 *block(2 * w, 4 * w, 2), *block(4 * w, 4 * w, 1))

    def forward(self, x):
        return self.net(x)


def load_ciga_resnet18(path: str | None) -> ResNet18:
    """ResNet-18 with Ciga et al.'s weights from a local file; never a silent random init."""
    if not path or not Path(path).is_file():
        raise UserError(missing_weights_message(path))
    state = load_weights(path)  # .safetensors, or torch.load(weights_only=True) on a safe torch
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    # the checkpoint is a Lightning module holding the torchvision net as model.resnet.*
    clean = {}
    for k, v in state.items():
        for prefix in ("module.", "model.", "resnet."):
            k = k.removeprefix(prefix)
        if not k.startswith("fc."):
            clean[k] = v
    model = ResNet18()
    try:
        missing, unexpected = model.load_state_dict(clean, strict=False)
    except RuntimeError:
        missing, unexpected = ["(shapes differ)"], []
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"method 'triplex': {path} is not a ResNet-18 checkpoint (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return model


def build_target_trunk(name: str, width: int, weights: str | None) -> nn.Module:
    if name == "resnet18":
        return load_ciga_resnet18(weights)
    return SmallConv(width)


class CigaResNet18(Encoder):
    """The frozen Ciga ResNet-18 as a harness encoder, so its features go through the embedding
    cache: global-average-pooled layer4, 512-d. ``version`` is the weights file's hash, so other
    weights never reuse cached numbers."""

    name = "ciga-resnet18"
    dim = 512
    batch_size = 64

    def __init__(self, path: str):
        self.path = path
        self.version = "w" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
        self._net: nn.Module | None = None

    def _encode_batch(self, tiles: np.ndarray, device: str) -> np.ndarray:
        if self._net is None:
            self._net = load_ciga_resnet18(self.path).eval().to(device)
        with torch.no_grad():
            x = normalise(tiles_to_tensor(tiles).to(device))
            return self._net(x).mean(dim=(2, 3)).float().cpu().numpy()
