"""Tile tensors for methods that train image encoders (BLEEP, TRIPLEX): layout, ImageNet
normalisation and the flip/right-angle-rotation augmentation, drawn from a seeded generator."""

from __future__ import annotations

import numpy as np
import torch

# the statistics the ImageNet weights were trained with (RGB order)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tiles_to_tensor(tiles: np.ndarray) -> torch.Tensor:
    """uint8 (n, px, px, 3) RGB -> uint8 (n, 3, px, px); normalised per batch on the device."""
    return torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).contiguous()


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, h, w) -> ImageNet-normalised float (RGB order, as the weights expect)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips and a rotation by a multiple of 90 degrees, per tile
    (BLEEP's intended training augmentation; draws from ``gen`` so runs repeat)."""
    n = x.shape[0]
    draws = torch.randint(0, 2, (n, 2), generator=gen)
    rot = torch.randint(0, 4, (n,), generator=gen)
    out = []
    for i in range(n):
        t = x[i]
        if draws[i, 0]:
            t = t.flip(-1)
        if draws[i, 1]:
            t = t.flip(-2)
        out.append(torch.rot90(t, int(rot[i]), dims=(-2, -1)))
    return torch.stack(out)
