"""The query slices a reference-prompting result was conditioned on: its objects' anchors.

``medseg.objects.clean_objects`` keeps the components a user marked as the object. For
reference prompting those are, per label, the supports drawn on the query (all of what was
drawn) and the re-prompt slices ``revsam2`` selected. A selected slice's mask is SAM2's own
forward prediction, stray pixels included, so only its largest region (8-connected) anchors:
a speck on that slice is not what the selection chose. A label segmented as several objects
(``SupportSet.from_volumes(parts=True)``: one per kidney) anchors on each of its objects'
slices with every region of at least ``MIN_PART_FRACTION`` of the slice's largest: the result
holds the label, no longer its parts, and the largest region there may be the other kidney.
Read from the result's provenance, so a saved result and a fresh one give the same anchors (no
model needed).
"""

from __future__ import annotations

import numpy as np

from medseg.prompts import Prompts
from medseg.revsam2.parts import labels_of_objects, significant_parts
from medseg.volume import LabelVolume


def anchor_prompts(labels: LabelVolume) -> Prompts:
    """Mask prompts per label on the query slices ``labels`` was conditioned on (see the module docstring).

    Drawn supports come from ``provenance["support"]``, selected slices from ``provenance["labels"]``;
    the baselines without supports on the query have none, and ``clean_objects`` then anchors
    on each label's largest component.
    """
    provenance = labels.provenance
    label_of = labels_of_objects(provenance)
    split = {label for obj, label in label_of.items() if obj != label}
    drawn_on_query = set(provenance["support"]["drawn_on_query"])
    drawn: dict[int, set[int]] = {}
    for s in provenance["support"]["slices"]:
        if s["reference"] in drawn_on_query:
            drawn.setdefault(label_of.get(int(s["label"]), int(s["label"])), set()).add(int(s["z"]))
    selected: dict[int, set[int]] = {}
    for obj, detail in provenance.get("labels", {}).items():
        selected.setdefault(label_of[int(obj)], set()).update(detail.get("selected_slices", []))
    prompts = Prompts()
    for label in sorted(set(drawn) | set(selected)):
        for z in sorted(drawn.get(label, set()) | selected.get(label, set())):
            mask = labels.array[z] == label
            if z not in drawn.get(label, set()):
                mask = _regions(mask, every=label in split)
            if mask.any():
                prompts.add_mask(label, z, mask)
    return prompts


def _regions(mask: np.ndarray, *, every: bool) -> np.ndarray:
    """The largest region (8-connected) of ``mask``; with ``every``, each of at least ``MIN_PART_FRACTION`` of it."""
    regions = significant_parts(mask)
    if not regions:
        return mask
    return np.logical_or.reduce(regions) if every else regions[0]
