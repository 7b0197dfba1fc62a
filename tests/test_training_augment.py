"""medseg.training.augment: one draw for every slice of a clip, masks moved with their images,
reproducible from the seed, and bad settings refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.training.augment import AugmentConfig, ClipAugmentation

SIZE = 64
NONE = AugmentConfig(flip=0, affine=0, elastic=0, window=0, gamma=0, blur=0, noise=0)


def _clip(frames: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A square object in the upper-left quadrant of every frame, as image and mask."""
    images = torch.zeros(frames, 3, SIZE, SIZE)
    masks = torch.zeros(2, frames, SIZE, SIZE)
    images[:, :, 8:24, 10:30] = 0.8
    masks[0, :, 8:24, 10:30] = 1
    masks[1, :, 40:50, 40:60] = 1  # a second object, not drawn in the image
    return images, masks


def test_every_slice_gets_the_same_spatial_draw():
    images, masks = _clip()
    augment = ClipAugmentation(replace(NONE, flip=0.5, affine=1.0, elastic=1.0), size=SIZE)
    for seed in range(5):
        out_images, out_masks = augment(images, masks, seed)
        for t in range(1, 3):  # identical input slices stay identical: one transform for the whole clip
            torch.testing.assert_close(out_images[t], out_images[0])
            torch.testing.assert_close(out_masks[:, t], out_masks[:, 0])
        # the mask still covers the bright object (moved together, nearest-neighbour for masks)
        inside = out_images[0, 0][out_masks[0, 0] > 0]
        assert inside.numel() > 0 and float(inside.mean()) > 0.6
        assert set(torch.unique(out_masks).tolist()) <= {0.0, 1.0}


def test_a_flip_mirrors_image_and_masks_exactly():
    images, masks = _clip()
    flipped = ClipAugmentation(replace(NONE, flip=1.0), size=SIZE)(images, masks, 0)
    torch.testing.assert_close(flipped[0], images.flip(-1).flip(-2))
    torch.testing.assert_close(flipped[1], masks.flip(-1).flip(-2))


def test_the_seed_decides_and_nothing_else():
    images, masks = _clip()
    augment = ClipAugmentation(AugmentConfig(), size=SIZE)
    a, b = augment(images, masks, 11), augment(images, masks, 11)
    torch.testing.assert_close(a[0], b[0]) and torch.testing.assert_close(a[1], b[1])
    others = [augment(images, masks, s)[0] for s in range(12, 18)]
    assert any(not torch.equal(a[0], o) for o in others)


def test_intensity_changes_leave_masks_alone_and_stay_in_range():
    images, masks = _clip()
    out_images, out_masks = ClipAugmentation(replace(NONE, window=1.0, gamma=1.0, blur=1.0, noise=1.0), size=SIZE)(
        images, masks, 3)
    torch.testing.assert_close(out_masks, masks)
    assert float(out_images.min()) >= 0 and float(out_images.max()) <= 1 and not torch.equal(out_images, images)
    assert type(out_images) is torch.Tensor  # not MONAI's MetaTensor, which slows every later torch call


@pytest.mark.parametrize(("field", "value", "message"), [
    ("flip", 1.5, "augment.flip is a probability"),
    ("rotate", 270.0, r"augment.rotate must lie in \[0, 180\]"),
    ("scale", 1.0, r"augment.scale must lie in \[0, 0.9\]"),
    ("gamma_range", (0.0, 2.0), "gamma_range must be"),
    ("noise_sigma", -0.1, "noise_sigma must lie in"),
])
def test_out_of_range_settings_are_refused_by_name(field, value, message):
    with pytest.raises(ConfigError, match=message):
        AugmentConfig(**{field: value})
    with pytest.raises(ConfigError, match=r"unknown augment settings \['rotation'\]"):
        AugmentConfig.from_dict({"rotation": 10})
    assert np.isfinite(AugmentConfig().rotate)
