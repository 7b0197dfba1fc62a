"""Settings of SAM2 training (``Sam2TrainConfig``), validated before any work starts."""

from __future__ import annotations

from dataclasses import dataclass

from medseg.errors import ConfigError
from medseg.settings import Settings
from medseg.synthetic import SyntheticConfig
from medseg.training.augment import AugmentConfig

BOOKKEEPING = ("val_every", "checkpoint_every", "device", "threads", "snapshot_every")
"""Settings that do not change the model a training run makes (a run may resume with other values)."""
PARTS = ("image_encoder", "memory", "decoder")
"""What can be trained: the Hiera image encoder, the memory attention + memory encoder (+
object-pointer projections), the prompt encoder + mask decoder."""


@dataclass(frozen=True)
class Sam2TrainConfig(Settings):
    """How to train SAM2 on a cohort's ``train`` split and on synthetic scenes.

    ``start``: ``medseg-micro`` (default: the base model that ships with medseg, pretrained on
    synthetic scenes to follow prompts; ``medseg.training.sam2.pretrain``), ``untrained`` (random
    initialisation), another registry name (``sam2.1-tiny``, ``medsam2``: fine-tuning) or a
    checkpoint path or model directory. ``architecture``: ``hiera-micro`` (small,
    trains on a CPU) or ``sam2.1-tiny`` (what registry checkpoints fit). ``train``: the parts
    that learn (``PARTS``); freeze the image encoder to fine-tune a real checkpoint cheaply.
    ``lr``: learning rate of the trained parts; the image encoder uses ``lr_image_encoder`` and
    the memory (attention, encoder, object pointers) ``lr_memory`` instead when they are set.
    From scratch on the demo phantoms (batch 1), 1e-3 collapsed into one mask whatever the
    prompt, 2e-4 lost the spleen from a click, and 1e-4 learned to follow clicks and boxes
    (``benchmarks/sam2_training.py``, README). A step is ``batch_size`` clips of
    ``clip_length`` consecutive slices, in either direction. Prompts on a clip's first frame:
    a point with probability ``p_point``, a box with ``p_box``, otherwise the mask;
    after a point prompt, half the clips get 1 to ``correction_clicks`` extra clicks (evenly) drawn
    from the error region (positive on a miss, negative on a false positive), as SAM2 trains
    interactive correction; the clips left with one click teach the tracker to follow a single click.
    ``dice_weight``: the dice loss's weight next to the focal loss's 20 (SAM2: 1). With 1, from
    random initialisation, the small organs were lost on some seeds while the liver was learned;
    with 5 the same seeds learned all three (README).
    ``p_reference``: the probability that a clip is a *reference clip* (another train case's
    annotated slices of one object, 1 to ``references`` of them, condition a clip of the query
    with no prompt on it: how reference prompting uses SAM2); 0 trains within-volume tracking
    only and needs no second case.
    ``image_prompts``: also prompt every object on every frame alone, without memory (SAM2's
    joint image training; it teaches the decoder to follow prompts far sooner).
    Objects (``medseg.training.sam2.clips``): ``p_synthetic`` of the clips come from synthetic
    scenes of generic objects (``synthetic``: ``medseg.synthetic.SyntheticConfig`` fields; 1 when
    there is no cohort: pretraining); the others from the cohort, class-agnostic: every label, a
    label's connected parts alone with probability ``p_parts``, and with ``structures`` the
    unlabelled compartments found from the intensities. At most ``max_objects`` per clip.
    ``augment``: ``medseg.training.augment.AugmentConfig`` fields, one draw per clip.
    ``threads``: CPU threads torch uses while training (restored afterwards; None: as they are).
    Default 1: on a CPU shared with other work, more threads spin-wait and a step took about 10x
    longer with 2 than with 1; on a quiet 2-core machine 2 were only 15% faster (README, "CPU
    threads"); and with one thread every run trains the same weights.
    ``snapshot_every``: keep the weights every that many steps in ``training/snapshots/`` (0: none),
    to evaluate a long run along the way.
    ``prompt_prior``: the network also takes each click and box as a dense mask
    (``medseg.sam2.prompt_prior``; a small network trained from scratch learns prompts far sooner).
    None follows the start weights: on for medseg's base model, off for Meta's and for ``untrained``.
    ``single_mask_tracking``: tracked frames take the decoder's single-mask output instead of the best
    of three candidates (``medseg.sam2.model_dir.Architecture``). None follows the start weights, as
    ``prompt_prior``; unlike it, either value may continue any start weights (no weight changes shape).
    """

    WHAT = "SAM2 training settings"

    start: str = "medseg-micro"
    architecture: str = "hiera-micro"
    image_size: int = 128
    steps: int = 800
    batch_size: int = 1
    clip_length: int = 4
    train: tuple[str, ...] = PARTS
    lr: float = 1e-4
    lr_image_encoder: float | None = None
    lr_memory: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int = 30
    grad_clip: float = 1.0
    p_point: float = 0.5
    p_box: float = 0.35
    correction_clicks: int = 1
    dice_weight: float = 5.0
    p_reference: float = 0.0
    references: int = 3
    image_prompts: bool = True
    p_synthetic: float = 0.5
    synthetic: SyntheticConfig = SyntheticConfig()
    p_parts: float = 0.3
    structures: bool = True
    max_objects: int = 6
    augment: AugmentConfig = AugmentConfig()
    prompt_prior: bool | None = None
    single_mask_tracking: bool | None = None
    preset: str | None = None
    seed: int = 0
    val_every: int = 0
    checkpoint_every: int = 50
    device: str = "cpu"
    threads: int | None = 1
    snapshot_every: int = 0

    def __post_init__(self) -> None:
        flags = {"image_prompts": self.image_prompts, "structures": self.structures, "prompt_prior": self.prompt_prior,
                 "single_mask_tracking": self.single_mask_tracking}
        optional = ("prompt_prior", "single_mask_tracking")  # None: as the start weights
        wrong = {k: v for k, v in flags.items() if not isinstance(v, bool) and not (v is None and k in optional)}
        if wrong:
            raise ConfigError("; ".join(f"{k} must be true or false{' (or unset)' if k in optional else ''}, got {v!r}"
                                        for k, v in wrong.items()))
        if self.image_size % 32 or self.image_size < 64:
            raise ConfigError(f"image_size must be a multiple of 32 and at least 64, got {self.image_size}")
        positive = {"steps": self.steps, "batch_size": self.batch_size, "checkpoint_every": self.checkpoint_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.clip_length < 2:
            raise ConfigError("clip_length must be at least 2 (a prompted frame and one to track), got "
                              f"{self.clip_length}")
        if not self.train or set(self.train) - set(PARTS):
            raise ConfigError(f"train must name some of {list(PARTS)}, got {list(self.train)}")
        if not (0 <= self.p_point and 0 <= self.p_box and self.p_point + self.p_box <= 1):
            raise ConfigError(f"p_point and p_box must be probabilities summing to at most 1, got {self.p_point}, "
                              f"{self.p_box}")
        if not 0 <= self.p_reference <= 1 or self.references < 1:
            raise ConfigError(f"p_reference must be a probability and references at least 1, got {self.p_reference}, "
                              f"{self.references}")
        if self.dice_weight < 0:
            raise ConfigError(f"dice_weight must be >= 0, got {self.dice_weight}")
        if self.lr <= 0 or any(lr is not None and lr <= 0 for lr in (self.lr_image_encoder, self.lr_memory)):
            raise ConfigError(f"learning rates must be positive, got lr {self.lr}, lr_image_encoder "
                              f"{self.lr_image_encoder}, lr_memory {self.lr_memory}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 or unset, got {self.threads}")
        if not 0 <= self.p_synthetic <= 1 or not 0 <= self.p_parts <= 1 or self.max_objects < 1:
            raise ConfigError(f"p_synthetic and p_parts must be probabilities and max_objects at least 1, got "
                              f"{self.p_synthetic}, {self.p_parts}, {self.max_objects}")
        if self.p_synthetic + self.p_reference > 1:
            raise ConfigError(f"p_synthetic + p_reference must be at most 1, got {self.p_synthetic} + "
                              f"{self.p_reference}")
        if self.snapshot_every < 0:
            raise ConfigError(f"snapshot_every must be >= 0, got {self.snapshot_every}")
        if self.warmup_steps < 0 or self.val_every < 0 or self.correction_clicks < 0 or self.grad_clip <= 0:
            raise ConfigError("warmup_steps, val_every and correction_clicks must be >= 0 and grad_clip > 0")

    def same_model(self, other: Sam2TrainConfig) -> bool:
        """Whether ``other`` trains the same model (only bookkeeping settings may differ)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return all(mine[k] == theirs[k] for k in mine if k not in BOOKKEEPING)
