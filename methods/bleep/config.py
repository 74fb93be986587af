"""BLEEP's Config, presets and resource check, torch-free: method.py, nets.py and retrieval.py take
them from here, and planning (`flag-bench run --dry-run`, `flag-bench show bleep`) reads them
without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flag_bench.errors import UserError
from flag_bench.methods.config_home import ConfigHome

ENCODERS = ("resnet50", "efficientnet-lite0", "frozen")
RETRIEVALS = ("simple", "average", "weighted")


def missing_weights_message(path: str | None) -> str:
    what = "no encoder_weights set" if not path else f"encoder_weights {path} does not exist"
    return (f"method 'bleep': image_encoder 'resnet50' needs local ImageNet weights ({what}); set "
            "[methods.bleep] encoder_weights = '/path/to/resnet50.pth' (torchvision or timm layout) or "
            "image_encoder = 'efficientnet-lite0'")


@dataclass(frozen=True)
class BleepConfig:
    image_encoder: str = "resnet50"  # trained end to end; "frozen": heads on the run's embeddings
    encoder_weights: str | None = None  # local ImageNet ResNet-50 state dict (resnet50 only)
    tile_px: int = 224
    tile_um: float | None = None  # None: the run's patch field
    augment: bool = True  # flips and right-angle rotations (trained encoders only)
    feature_pca: int | None = None  # frozen encoder: PCA of the standardised embeddings
    projection_dim: int = 256
    dropout: float = 0.1
    temperature: float = 1.0
    batch_size: int = 128  # the contrastive batch: logits are never gathered across micro-batches
    grad_accum: int = 4  # the paper's 4 GPUs x 128 with averaged gradients
    lr: float = 1e-3
    weight_decay: float = 1e-3
    epochs: int = 50
    top_k: int = 50
    retrieval: str = "average"
    bank_includes_val: bool = True  # the validation slide is a training slide of the fold
    query_chunk: int = 1024
    bank_chunk: int = 16384
    encode_batch: int = 128  # tiles per forward outside training
    amp: bool = False

    def __post_init__(self):
        if self.image_encoder not in ENCODERS:
            raise ValueError(f"image_encoder must be one of {ENCODERS}, got {self.image_encoder!r}")
        if self.retrieval not in RETRIEVALS:
            raise ValueError(f"retrieval must be one of {RETRIEVALS}, got {self.retrieval!r}")
        if min(self.batch_size, self.grad_accum, self.top_k, self.epochs, self.tile_px, self.projection_dim,
               self.query_chunk, self.bank_chunk, self.encode_batch) < 1:
            raise ValueError("batch_size, grad_accum, top_k, epochs, tile_px, projection_dim and chunk sizes must be >= 1")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (a contrastive batch needs negatives)")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        # a path that is given but absent fails when the grid is planned, not in a cell
        if self.image_encoder == "resnet50" and self.encoder_weights and not Path(self.encoder_weights).is_file():
            raise ValueError(missing_weights_message(self.encoder_weights))


# what each preset was chosen on: the card's tuned_on (card.py); keep it in step with this table
PRESETS = {
    "paper": {},
    # CPU: the encoder is not fine-tuned (ResNet-50/EfficientNet on 224 px tiles costs minutes
    # per epoch on 2 cores); heads train on the run's frozen embeddings. her2st-mini folds have
    # ~550 training spots, so one contrastive batch of 128 per step, no accumulation. PCA 64
    # and the paper's 256-d projection: her2st-mini G=50, C6 fold MSE 0.63 vs 0.77 with
    # PCA 256 / 64-d, where the mean control scores 0.785.
    "small": dict(image_encoder="frozen", feature_pca=64, projection_dim=256, batch_size=128, grad_accum=1,
                  epochs=60),
    "tiny": dict(image_encoder="frozen", feature_pca=16, projection_dim=16, batch_size=16, grad_accum=1,
                 epochs=3, top_k=5),
}


def check_resources(config: BleepConfig) -> None:
    """Fails with a one-line UserError when the config needs files that are not there."""
    if config.image_encoder == "resnet50" and (not config.encoder_weights
                                               or not Path(config.encoder_weights).is_file()):
        raise UserError(missing_weights_message(config.encoder_weights))


HOMES = {"bleep": ConfigHome(BleepConfig, PRESETS, check_resources)}
