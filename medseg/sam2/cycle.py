"""Stop a propagated object where it stops being the prompted object: ``cut_inconsistent``.

SAM2 rarely declares a tracked object absent. Where a kidney ends, its track runs on into the
liver next to it: on the demo's phantom_006, 6,844 of the kidney's 7,697 false voxels were liver,
and the slice scores there (0.57-0.84) did not set those slices apart. A forward-backward check
does: each propagated slice's mask, carried back alone to the object's nearest prompted slice
(SAM2 conditioned on that one mask, ``carry_mask_prompts``), should give the object's mask there
again; a track that has moved into the liver gives the liver. Walking outward from the
outermost prompted slices, the object is cut from the first slice whose Dice against the prompted
slice's mask falls below ``threshold`` (the slices between two prompted slices are anchored at
both ends and kept). A cut voxel becomes background, not the next object in line.

The cost is one SAM2 decoder pass per painted slice (batched ``CARRY_BATCH`` at a time), no
encoder pass: the session's features are reused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medseg.errors import ConfigError
from medseg.sam2.engine import FeatureCache, carry_mask_prompts
from medseg.sam2.frames import Frame
from medseg.sam2.model import Sam2Model

CARRY_BATCH = 16


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ConfigError(f"cycle_threshold must be between 0 and 1 (exclusive) or None, got {threshold!r}")


def cut_inconsistent(model: Sam2Model, cache: FeatureCache, frames: Sequence[Frame], labels: np.ndarray,
                     prompted: Mapping[int, Sequence[int]], threshold: float) -> dict[int, list[int]]:
    """Remove, in place, each object of ``labels`` beyond its first inconsistent slice (module docstring).

    ``prompted``: object id -> its prompted slices. Returns object id -> the slices it was cut
    from (sorted; objects not cut are left out).
    """
    check_threshold(threshold)
    cut: dict[int, list[int]] = {}
    for obj_id, slices in prompted.items():
        consistency = _consistency(model, cache, frames, labels == obj_id, sorted(slices))
        first, last = min(slices), max(slices)
        removed = (_beyond(consistency, range(first - 1, -1, -1), threshold)
                   + _beyond(consistency, range(last + 1, len(frames)), threshold))
        for z in removed:
            labels[z][labels[z] == obj_id] = 0
        if removed:
            cut[obj_id] = sorted(removed)
    return cut


def _consistency(model: Sam2Model, cache: FeatureCache, frames: Sequence[Frame], mask: np.ndarray,
                 prompted: list[int]) -> dict[int, float]:
    """Painted slice outside the prompted range -> Dice of its mask carried back to the nearest prompted slice."""
    nearest: dict[int, list[int]] = {}
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        if not prompted[0] <= z <= prompted[-1]:
            nearest.setdefault(prompted[0] if z < prompted[0] else prompted[-1], []).append(int(z))
    consistency = {}
    for anchor, zs in nearest.items():
        if not mask[anchor].any():  # nothing to compare with: the object is kept as it is
            continue
        for start in range(0, len(zs), CARRY_BATCH):
            batch = zs[start:start + CARRY_BATCH]
            [out] = carry_mask_prompts(model, cache, [(frames[z], mask[z]) for z in batch], [frames[anchor]])
            for carried, z in zip(out.masks(), batch):
                consistency[z] = _dice(carried, mask[anchor])
    return consistency


def _beyond(consistency: Mapping[int, float], order: range, threshold: float) -> list[int]:
    """The painted slices of ``order`` from the first below ``threshold`` on."""
    for i, z in enumerate(order):
        if z in consistency and consistency[z] < threshold:
            return [s for s in order[i:] if s in consistency]
    return []


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0
