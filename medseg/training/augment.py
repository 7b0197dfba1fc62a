"""Augmentation of training clips, the same for every slice of a clip (as SAM2's video training does).

A clip is a few consecutive slices; a flip, rotation or deformation that differed from slice to
slice would teach the tracker that objects jump. So the slices (and the object masks) are stacked
as channels of one 2D image and go through MONAI's dictionary transforms together: flips on both
in-plane axes, an affine (rotation by any angle, anisotropic scale, translation, with zero padding),
an elastic deformation; then, on the image only, a window jitter (contrast and level), gamma,
blur and noise. Masks are resampled with nearest neighbour, images bilinearly.

Randomness: each call takes a seed (drawn by the caller from its per-step generator), so a clip
and its augmentation depend only on the training step (resuming reproduces them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from medseg.errors import ConfigError
from medseg.settings import Settings


@dataclass(frozen=True)
class AugmentConfig(Settings):
    """Probabilities and ranges of the augmentations; checked when built.

    ``flip``: probability of a flip, per in-plane axis. ``affine``: probability of the affine,
    which rotates by up to ``rotate`` degrees either way, scales each axis by up to ``scale``
    (0.3: 0.7x to 1.3x) and shifts by up to ``translate`` of the frame. ``elastic``: probability
    of an elastic deformation of up to ``elastic_magnitude`` (MONAI's magnitude, on a grid of 32
    pixels). Image only: ``window`` (probability) scales contrast by up to ``contrast`` and shifts
    the level by up to ``level`` (grey values are in [0, 1]); ``gamma``: probability of a gamma in
    ``gamma_range``; ``blur``: probability of a Gaussian blur of sigma up to ``blur_sigma`` pixels;
    ``noise``: probability of Gaussian noise of sigma up to ``noise_sigma``.
    """

    WHAT = "augment settings"

    flip: float = 0.5
    affine: float = 0.8
    rotate: float = 180.0
    scale: float = 0.3
    translate: float = 0.15
    elastic: float = 0.2
    elastic_magnitude: float = 2.0
    window: float = 0.5
    contrast: float = 0.3
    level: float = 0.1
    gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    blur: float = 0.2
    blur_sigma: float = 1.0
    noise: float = 0.3
    noise_sigma: float = 0.03

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma_range", tuple(self.gamma_range))
        for name in ("flip", "affine", "elastic", "window", "gamma", "blur", "noise"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name} is a probability in [0, 1], got {getattr(self, name)}")
        bounds = {"rotate": (0, 180), "scale": (0, 0.9), "translate": (0, 0.5), "elastic_magnitude": (0, 10),
                  "contrast": (0, 0.9), "level": (0, 0.5), "blur_sigma": (0, 5), "noise_sigma": (0, 0.5)}
        for name, (low, high) in bounds.items():
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"augment.{name} must lie in [{low}, {high}], got {getattr(self, name)}")
        low, high = self.gamma_range
        if not 0 < low <= high:
            raise ConfigError("augment.gamma_range must be (low, high) with 0 < low <= high, got "
                              f"{list(self.gamma_range)}")



class ClipAugmentation:
    """``augment(images, masks, seed)``: one random draw applied to every slice of a clip.

    ``images`` ``(T, C, S, S)`` in [0, 1] and ``masks`` ``(B, T, S, S)`` (0/1) in, the same shapes out.
    """

    def __init__(self, config: AugmentConfig, *, size: int) -> None:
        from monai import transforms as mt  # imports MONAI only where training needs it

        keys, modes = ("image", "mask"), ("bilinear", "nearest")
        shift = config.translate * size
        self.config = config
        self._spatial = mt.Compose([
            mt.RandFlipd(keys, prob=config.flip, spatial_axis=0),
            mt.RandFlipd(keys, prob=config.flip, spatial_axis=1),
            mt.RandAffined(keys, prob=config.affine, rotate_range=math.radians(config.rotate),
                           scale_range=(config.scale, config.scale), translate_range=(shift, shift), mode=modes,
                           padding_mode="zeros"),
            mt.Rand2DElasticd(keys, spacing=32, magnitude_range=(0.0, config.elastic_magnitude), prob=config.elastic,
                              mode=modes, padding_mode="zeros"),
        ])
        self._intensity = mt.Compose([
            mt.RandScaleIntensityd("image", factors=config.contrast, prob=config.window),
            mt.RandShiftIntensityd("image", offsets=config.level, prob=config.window),
            mt.RandAdjustContrastd("image", gamma=config.gamma_range, prob=config.gamma),
            mt.RandGaussianSmoothd("image", sigma_x=(0.0, config.blur_sigma), sigma_y=(0.0, config.blur_sigma),
                                   prob=config.blur),
            mt.RandGaussianNoised("image", std=config.noise_sigma, prob=config.noise),
        ])

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_frames, channels, size = images.shape[0], images.shape[1], images.shape[-1]
        n_obj = masks.shape[0]
        data = {"image": images.reshape(n_frames * channels, size, size).float(),
                "mask": masks.reshape(n_obj * n_frames, size, size).float()}
        self._spatial.set_random_state(seed=seed)
        self._intensity.set_random_state(seed=(seed + 1) % 2**32)
        data = self._intensity(self._spatial(data))
        image = _plain(data["image"]).clamp(0.0, 1.0).reshape(n_frames, channels, size, size)
        mask = (_plain(data["mask"]) > 0.5).float().reshape(n_obj, n_frames, size, size)
        return image, mask


def _plain(x) -> torch.Tensor:
    """A plain tensor of a MONAI output: a ``MetaTensor`` would route every later torch call, the
    network's forward and backward included, through its metadata handling (8x slower training)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
