"""Lazy frames for SAM2, and the one place where voxel coordinates become model coordinates.

A ``Frame`` is a slice that has not been computed yet: a hashable ``key`` (so an encoder
cache can recognise the same slice in several frame sequences), its pixel ``shape``, a
``load`` callable giving ``(3, H, W)`` float32 in [0, 1] and, where its content is known, a
``source`` ``(volume content key, z)`` under which the embedding store keeps its features.
``VolumeFrames`` makes one per slice of a ``Volume`` through ``medseg.preprocess.SliceFrames``
(intensity window applied per volume), keyed by the volume's content and preset. ``model_input``
turns a loaded frame into the network's input: resize to ``image_size`` squared, ImageNet
normalisation. Nothing is written to disk and no stack of resized frames is ever built.

SAM2 resizes every frame to a square without keeping the aspect ratio; the coordinate
functions below map pixel *centres* exactly through that resize (the prompt encoder adds
half a pixel to model coordinates, so pixel index ``i`` of an ``n``-pixel axis goes to model
index ``(i + 0.5) * S / n - 0.5``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from medseg.preprocess import IntensityPreset, SliceFrames
from medseg.sam2.embeddings import volume_key
from medseg.volume import Volume

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, eq=False)
class Frame:
    """One lazily computed frame: ``load()`` gives ``(3, *shape)`` float32 in [0, 1].

    ``source``: ``(content key, z)`` when ``load`` is slice ``z`` of a volume whose voxels and
    preset hash to the content key (the embedding store's key); None keeps it out of the store.
    """

    key: Hashable
    shape: tuple[int, int]
    load: Callable[[], np.ndarray]
    source: tuple[str, int] | None = None


class VolumeFrames(Sequence[Frame]):
    """The slices of ``volume`` as ``Frame`` objects keyed ``(self.key, z)``, with ``source`` ``(self.content_key, z)``.

    Parameters
    ----------
    volume
        The image; slices are taken along z.
    preset
        Intensity preset (name or object) for ``SliceFrames``; the modality default if None.
    key
        Identifies this volume in in-memory feature caches; ``content_key`` by default (hashed
        on first use). Give the same key to two ``VolumeFrames`` only when they hold the same
        voxels and preset.
    """

    def __init__(self, volume: Volume, preset: str | IntensityPreset | None = None, *,
                 key: Hashable | None = None) -> None:
        self.slices = SliceFrames(volume, preset)
        self._key = key
        self.shape: tuple[int, int] = tuple(volume.shape[1:])

    @cached_property
    def content_key(self) -> str:
        """Hash of the voxels and the preset (``medseg.sam2.embeddings.volume_key``)."""
        return volume_key(self.slices.volume, self.preset)

    @property
    def key(self) -> Hashable:
        return self._key if self._key is not None else self.content_key

    @property
    def preset(self) -> IntensityPreset:
        return self.slices.preset

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, z):
        if isinstance(z, slice):
            return [self[i] for i in range(*z.indices(len(self)))]
        z = range(len(self))[z]  # normalises negative indices, raises IndexError outside
        return Frame((self.key, z), self.shape, lambda: self.slices[z], (self.content_key, z))


def model_input(image: np.ndarray, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(1, 3, S, S)`` float32 network input from a ``(3, H, W)`` [0, 1] frame: ``resize_frame`` then ``normalise``."""
    return normalise(resize_frame(image, image_size, device)[None])


def resize_frame(image: np.ndarray, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A ``(3, H, W)`` [0, 1] frame resized to ``(3, S, S)``: bilinear with antialiasing (as SAM2's image
    transforms)."""
    tensor = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=device)[None]
    return F.interpolate(tensor, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)[0]


def normalise(frames: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std of ``(N, 3, S, S)`` [0, 1] frames."""
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=frames.device).view(1, 3, 1, 1)
    return (frames - mean) / std


def to_model_xy(yx: np.ndarray, shape: tuple[int, int], image_size: int) -> np.ndarray:
    """Model-frame pixel coordinates ``(x, y)`` (SAM2's order) of frame pixels given as ``(y, x)`` rows."""
    yx = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    scale = image_size / np.asarray(shape, dtype=np.float64)
    model_yx = (yx + 0.5) * scale - 0.5
    return model_yx[:, ::-1].copy()


def upsample_logits(logits: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(n, h, w)`` model-frame logits back to the frame's ``shape``."""
    return F.interpolate(logits[:, None].float(), size=shape, mode="bilinear", align_corners=False)[:, 0]
