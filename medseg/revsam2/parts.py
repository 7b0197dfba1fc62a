"""Each connected part of a reference label its own object: ``split_parts``.

One ``kidney`` label holds two kidneys. As one object, its supports show both, and the forward
pass of a query tracks whichever of the two SAM2 holds on to (on the demo, about half of the
kidney voxels). As two objects, each kidney is tracked from its own supports, as the prompt
policy's ``parts`` prompts each kidney alone (``medseg.prompt_simulation``), and the result
merges them back into their label.

Parts are the 3D connected parts of a label (26-connectivity, as mask AP's ``components``).
A part smaller than ``MIN_PART_FRACTION`` of the label's largest part is an annotation speck:
it stays with the largest part, never an object of its own. The same kidney must be the same
object in every reference: parts are matched between references by where their centroids lie in
the scan, one to one, by the smallest total distance. Where is measured in patient coordinates
(LPS: the left kidney lies on the patient's left whatever the grid or in-plane orientation of
the scan), from the centre of the scanned box and as a fraction of its extent along each patient
axis (as ``zmatch`` maps slices by relative z), so another field of view or body size moves it
little. The first reference that has the label fixes the objects: its largest part keeps the
label value, its other parts are numbered on from the highest value any reference or the label
map uses. A reference with more parts than the objects so far adds objects; one with fewer (one
kidney) gives supports to the objects its parts lie nearest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from medseg.volume import LabelVolume

MIN_PART_FRACTION = 0.1
"""As ``medseg.objects``' default ``min_fraction``: a smaller part is a speck of its label."""


def split_parts(labels: Sequence[LabelVolume], label_names: Mapping[int, str]
                ) -> tuple[list[LabelVolume], dict[int, str], dict[int, int]]:
    """The label maps with every part of the labels in ``label_names`` its own object value.

    Returns the relabelled maps (one per input, on the same grids), object value -> name (its
    label's, as the prompt policy names parts), and object value -> the label value it is part
    of, for every object (a label's own value maps to itself).
    """
    arrays = [volume.array.copy() for volume in labels]
    next_value = max([*label_names, *(int(volume.array.max()) for volume in labels)]) + 1
    names: dict[int, str] = {}
    label_of: dict[int, int] = {}
    for label, name in label_names.items():
        objects: list[tuple[int, np.ndarray]] = []  # (value, position of the part that made the object)
        for volume, array in zip(labels, arrays):
            parts = _parts(array == label)
            if not parts:
                continue
            positions = _positions(parts, volume)
            if not objects:
                objects.append((label, positions[0]))
            matched = _match(positions, [position for _, position in objects])
            for index, part in enumerate(parts):
                if index not in matched:
                    objects.append((next_value, positions[index]))
                    matched[index], next_value = len(objects) - 1, next_value + 1
                array[part] = objects[matched[index]][0]
        for value, _ in objects or [(label, None)]:
            names[value], label_of[value] = name, label
    relabelled = [replace(volume, array=array, label_names={**volume.label_names, **names})
                  for volume, array in zip(labels, arrays)]
    return relabelled, names, label_of


def labels_of_objects(provenance: dict) -> dict[int, int]:
    """Object value -> label value of a reference-prompting result, from its provenance: the
    objects of ``provenance["labels"]``, each its own label unless the support's ``parts`` say otherwise."""
    parts = {int(obj): int(label) for obj, label in provenance["support"].get("parts", {}).items()}
    return {int(obj): parts.get(int(obj), int(obj)) for obj in provenance.get("labels", {})} | parts


def significant_parts(mask: np.ndarray) -> list[np.ndarray]:
    """The connected parts of ``mask`` (every neighbour counts: 8 in 2D, 26 in 3D) of at least
    ``MIN_PART_FRACTION`` of the largest, largest first (ties in raster order)."""
    components, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n == 0:
        return []
    sizes = ndimage.sum_labels(mask, components, range(1, n + 1))
    order = np.argsort(-sizes, kind="stable")
    return [components == i + 1 for i in order if sizes[i] >= MIN_PART_FRACTION * sizes[order[0]]]


def _parts(mask: np.ndarray) -> list[np.ndarray]:
    """The label's parts, each speck added to the largest."""
    parts = significant_parts(mask)
    if parts:
        parts[0] |= mask & ~np.logical_or.reduce(parts)
    return parts


def _positions(parts: list[np.ndarray], volume: LabelVolume) -> list[np.ndarray]:
    """Each part's centroid in LPS, from the centre of the scanned box, as a fraction of the box's extent."""
    geometry = volume.geometry
    centre = geometry.index_to_world((np.array(geometry.shape) - 1) / 2)[0]
    extent = np.abs(geometry.direction) @ (np.array(geometry.shape[::-1]) * np.array(geometry.spacing[::-1]))
    return [(geometry.index_to_world(np.argwhere(part).mean(axis=0))[0] - centre) / extent for part in parts]


def _match(positions: list[np.ndarray], known: list[np.ndarray]) -> dict[int, int]:
    """Part index -> object index, one to one, by the smallest total distance."""
    cost = np.array([[np.linalg.norm(position - other) for other in known] for position in positions])
    rows, columns = linear_sum_assignment(cost)
    return {int(r): int(c) for r, c in zip(rows, columns)}
