"""Prompts simulated from the ground truth: one definition of a click, a box and a support slice.

Model-free, below the engines: the pipeline's prompt policy, SAM2 training (first-frame prompts,
correction clicks) and reference prompting (support slices) all draw prompts here, so training
and evaluation agree on what a click or a box means.

``PromptPolicy`` turns a case's truth into ``Prompts``. Each label value present in the truth is
one object. Its prompts follow ``PromptSettings``:

* point ``centroid``: on the slice where the object has the most voxels (the lowest such z on
  ties), the voxel nearest the centroid of the object's voxels on that slice (the centroid
  itself when it lies inside the object, which it may not for a C-shaped cross-section);
* point ``random``: a uniformly drawn object voxel on that slice, from a generator seeded
  with (pipeline seed, case id, label), so a re-run or a replay draws the same voxel;
* box ``middle``: the inclusive bounding box of the object on the middle slice of its
  z-extent (the nearest drawn slice when the object has a gap there); ``largest``: on the
  largest slice.

With ``parts``, a label made of several 3D connected parts (26-connectivity, as mask AP's
``components``: two kidneys under one ``kidney`` label) gets one object per part, each with its own
click and box, as a user prompts each kidney: SAM2 tracks an object, and one box around both
kidneys holds the spine between them. The first part (raster order) keeps the label value as its
object id; the others are numbered on from the highest label value, and each says which label it
is a part of (``ObjectPrompts.label``), so the result comes back per label.

Labels absent from a case's truth get no prompt: an interactive method is not asked to
find them, and scores nothing for them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from medseg.prompts import Prompts
from medseg.volume import LabelVolume


@dataclass(frozen=True)
class PromptSettings:
    """The prompt budget every interactive method gets, simulated from the ground truth.

    ``point``: one positive point per object on the slice where it is largest, at its
    centroid (``centroid``, moved to the nearest object voxel when the centroid falls
    outside) or at a seeded random object voxel (``random``), or none. ``box``: the bounding
    box of the object on the middle slice of its z-extent (``middle``), on its largest slice
    (``largest``), or none. ``reference_slices``: k annotated slices per object for
    reference prompting (RevSAM2). ``parts``: prompt each 3D connected part of a label as its
    own object (see the module docstring).
    """

    point: Literal["centroid", "random", "none"] = "centroid"
    box: Literal["middle", "largest", "none"] = "none"
    reference_slices: int = 3
    parts: bool = False


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


def random_voxel(plane: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """A uniformly drawn ``(y, x)`` voxel of the 2D boolean ``plane``."""
    yx = np.argwhere(plane)
    return tuple(int(v) for v in yx[rng.integers(len(yx))])


def bounding_box(plane: np.ndarray) -> tuple[int, int, int, int]:
    """The inclusive ``(y0, x0, y1, x1)`` bounding box of the 2D boolean ``plane``."""
    yx = np.argwhere(plane)
    (y0, x0), (y1, x1) = yx.min(axis=0), yx.max(axis=0)
    return int(y0), int(x0), int(y1), int(x1)


def jittered_box(plane: np.ndarray, rng: np.random.Generator, *, jitter: float) -> np.ndarray:
    """``bounding_box`` as ``[[y0, x0], [y1, x1]]`` floats, each corner moved by up to ``jitter``
    of the box side (as SAM2 trains with noisy boxes), kept inside the plane."""
    y0, x0, y1, x1 = bounding_box(plane)
    low, high = np.array([y0, x0], float), np.array([y1, x1], float)
    noise = rng.uniform(-jitter, jitter, size=(2, 2)) * (high - low + 1)
    return np.clip(np.stack([low, high]) + np.round(noise), 0, np.array(plane.shape) - 1)


def connected_parts(mask: np.ndarray) -> list[np.ndarray]:
    """The 3D connected parts (26-connectivity, as mask AP's ``components``) of a boolean ``mask``, in raster order."""
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    return [components == index for index in range(1, n + 1)]


def sample_slices(mask: np.ndarray, *, k: int) -> list[int]:
    """``k`` slice indices spread over the z-extent of a 3D boolean ``mask``, each drawn on.

    The targets are the centres of ``k`` equal chunks of the extent (the chunk-centre rule of
    the SSL-ALPNet few-shot protocol that FS-MedSAM2 evaluates with); each moves to the nearest
    slice where the mask is non-empty. When that leaves duplicates (gaps in the annotation),
    the slices farthest from those already chosen fill up to ``k``. Fewer than ``k`` come back
    only when fewer slices are drawn on.

    >>> m = np.zeros((10, 2, 2), bool); m[2:8] = True
    >>> sample_slices(m, k=3)
    [2, 4, 6]
    """
    drawn = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if drawn.size <= k:
        return drawn.tolist()
    first, extent = int(drawn[0]), int(drawn[-1] - drawn[0] + 1)
    targets = first + (np.arange(k) + 0.5) * extent / k - 0.5
    chosen: list[int] = []
    for target in targets:
        z = int(drawn[np.argmin(np.abs(drawn - target))])
        if z not in chosen:
            chosen.append(z)
    while len(chosen) < k:
        distance = np.min(np.abs(drawn[:, None] - np.array(chosen)[None, :]), axis=1)
        chosen.append(int(drawn[np.argmax(distance)]))
    return sorted(chosen)


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
        next_id = max(names, default=0) + 1
        for label in sorted(names):
            if label not in present:
                continue
            for index, mask in enumerate(self._parts(truth.array == label)):
                if index == 0:
                    obj_id = label
                else:
                    obj_id, next_id = next_id, next_id + 1
                prompts.object(obj_id, names[label], label=label)
                if self.settings.point != "none":
                    z = largest_slice(mask)
                    y, x = (centroid_voxel(mask[z]) if self.settings.point == "centroid"
                            else self._random_voxel(mask[z], case_id, obj_id))
                    prompts.add_point(obj_id, z, y, x)
                if self.settings.box != "none":
                    z = middle_slice(mask) if self.settings.box == "middle" else largest_slice(mask)
                    prompts.add_box(obj_id, z, *bounding_box(mask[z]))
        return prompts

    def _parts(self, mask: np.ndarray) -> list[np.ndarray]:
        return connected_parts(mask) if self.settings.parts else [mask]

    def _random_voxel(self, plane: np.ndarray, case_id: str, label: int) -> tuple[int, int]:
        return random_voxel(plane, np.random.default_rng([self.seed, zlib.crc32(case_id.encode()), label]))
