"""Prompts simulated from the ground truth, identical for every interactive method.

Each label value present in the truth is one object. Its prompts follow ``PromptSettings``:

* point ``centroid``: on the slice where the object has the most voxels (the lowest such z on
  ties), the voxel nearest the centroid of the object's voxels on that slice (the centroid
  itself when it lies inside the object, which it may not for a C-shaped cross-section);
* point ``random``: a uniformly drawn object voxel on that slice, from a generator seeded
  with (pipeline seed, case id, label), so a re-run or a replay draws the same voxel;
* box ``middle``: the inclusive bounding box of the object on the middle slice of its
  z-extent (the nearest drawn slice when the object has a gap there); ``largest``: on the
  largest slice.

Labels absent from a case's truth get no prompt: an interactive method is not asked to
find them, and scores nothing for them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping

import numpy as np

from medseg.pipeline.config import PromptSettings
from medseg.prompts import Prompts
from medseg.volume import LabelVolume


def largest_slice(mask: np.ndarray) -> int:
    """The z index where the 3D boolean ``mask`` has the most voxels (lowest z on ties)."""
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


def middle_slice(mask: np.ndarray) -> int:
    """The drawn slice nearest the middle of the z-extent of the 3D boolean ``mask``."""
    drawn = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    middle = (drawn[0] + drawn[-1]) / 2
    return int(drawn[np.argmin(np.abs(drawn - middle))])


def centroid_voxel(plane: np.ndarray) -> tuple[int, int]:
    """The ``(y, x)`` voxel of the 2D boolean ``plane`` nearest its centroid."""
    yx = np.argwhere(plane)
    centroid = yx.mean(axis=0)
    return tuple(int(v) for v in yx[np.argmin(((yx - centroid) ** 2).sum(axis=1))])


class PromptPolicy:
    """Turns a case's ground truth into ``Prompts`` under ``settings`` and ``seed``."""

    def __init__(self, settings: PromptSettings, *, seed: int) -> None:
        self.settings = settings
        self.seed = seed

    def prompts(self, truth: LabelVolume, *, labels: Iterable[int] | Mapping[int, str], case_id: str) -> Prompts:
        """The prompts of every label of ``labels`` drawn in ``truth`` (maybe none)."""
        names = dict(labels) if isinstance(labels, Mapping) else {int(v): "" for v in labels}
        prompts = Prompts()
        present = set(truth.labels)
        for label in sorted(names):
            if label not in present:
                continue
            mask = truth.array == label
            prompts.object(label, names[label])
            if self.settings.point != "none":
                z = largest_slice(mask)
                y, x = centroid_voxel(mask[z]) if self.settings.point == "centroid" else self._random_voxel(mask[z], case_id, label)
                prompts.add_point(label, z, y, x)
            if self.settings.box != "none":
                z = middle_slice(mask) if self.settings.box == "middle" else largest_slice(mask)
                yx = np.argwhere(mask[z])
                (y0, x0), (y1, x1) = yx.min(axis=0), yx.max(axis=0)
                prompts.add_box(label, z, y0, x0, y1, x1)
        return prompts

    def _random_voxel(self, plane: np.ndarray, case_id: str, label: int) -> tuple[int, int]:
        rng = np.random.default_rng([self.seed, zlib.crc32(case_id.encode()), label])
        yx = np.argwhere(plane)
        return tuple(int(v) for v in yx[rng.integers(len(yx))])
