"""``TrainConfig``: every choice that defines a Mask R-CNN baseline model and its training."""

from __future__ import annotations

from dataclasses import dataclass

from medseg.errors import ConfigError
from medseg.maskrcnn.dataset import INSTANCE_MODES
from medseg.maskrcnn.model import BACKBONES, NORMS
from medseg.preprocess import get_preset
from medseg.settings import Settings

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Model and training settings; stored in the model directory, so a model says how it was made.

    Model: ``backbone``, ``norm`` (``"group"`` to train from scratch, ``"frozen-bn"`` to
    fine-tune a torchvision checkpoint), ``pretrained`` (a checkpoint path or None),
    ``image_size`` (longer side of a slice inside the network), ``preset`` (intensity preset
    name or spec; None: soft-tissue CT window for CT, percentiles otherwise),
    ``score_threshold`` (default for prediction).

    Data: ``instances`` (``"components"`` or ``"per_class"``), ``min_area`` (pixels),
    ``empty_ratio`` (slices without objects per slice with one, per epoch).

    Optimisation: ``steps``, ``batch_size`` (slices), ``optimizer`` (``"adamw"`` or ``"sgd"``
    with momentum 0.9), ``lr`` (peak), ``weight_decay``, ``warmup_steps`` (linear warm-up from
    1% of ``lr`` over at most a quarter of the steps, then cosine decay to 0), ``grad_clip``
    (gradient-norm clipping).

    Bookkeeping: ``val_every`` (steps; 0 = only at the end), ``checkpoint_every`` (steps),
    ``seed``, ``num_workers`` (data loader processes), ``device`` (``"auto"``, ``"cpu"``,
    ``"cuda"``, ``"cuda:1"``...), ``threads`` (torch CPU threads while training, restored
    afterwards; None leaves them: the weights a run makes depend on the count). Default 1, as in SAM2
    training: reproducible, and on a busy CPU faster (10 demo-recipe steps: 14.7 s with 1 thread,
    32.2 s with 2); a quiet machine trains faster with its cores (benchmarks/training_threads.py).
    """

    WHAT = "Mask R-CNN setting(s)"
    RENAMED = {"input_size": "image_size", "clip_grad_norm": "grad_clip"}  # the names SAM2 training uses

    backbone: str = "resnet50"
    norm: str = "group"
    pretrained: str | None = None
    image_size: int = 256
    preset: str | None = None
    score_threshold: float = 0.5
    instances: str = "components"
    min_area: int = 4
    empty_ratio: float = 0.25
    steps: int = 5000
    batch_size: int = 4
    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 5.0
    val_every: int = 500
    checkpoint_every: int = 100
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    threads: int | None = 1

    def __post_init__(self) -> None:
        choices = {"backbone": BACKBONES, "norm": NORMS, "instances": INSTANCE_MODES, "optimizer": OPTIMIZERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not one of {list(allowed)}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 or unset, got {self.threads}")
        for name in ("warmup_steps", "val_every", "num_workers", "min_area", "empty_ratio", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not self.grad_clip > 0:
            raise ConfigError(f"lr and grad_clip must be positive, got lr={self.lr}, grad_clip={self.grad_clip}")
        if not 0 <= self.score_threshold <= 1:
            raise ConfigError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"image_size must be a multiple of 32 and at least 32, got {self.image_size}")
        if self.preset is not None:
            get_preset(self.preset)
