"""The query slices a reference-prompting result was conditioned on: its objects' anchors.

``medseg.objects.clean_objects`` keeps the components a user marked as the object. For
reference prompting those are, per label, the supports drawn on the query (all of what was
drawn) and the re-prompt slices ``revsam2`` selected. A selected slice's mask is SAM2's own
forward prediction, stray pixels included, so only its largest region (8-connected) anchors:
a speck on that slice is not what the selection chose. Read from the result's provenance, so a
saved result and a fresh one give the same anchors (no model needed).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg.prompts import Prompts
from medseg.volume import LabelVolume


def anchor_prompts(labels: LabelVolume) -> Prompts:
    """Mask prompts per label on the query slices ``labels`` was conditioned on (see the module docstring).

    Drawn supports come from ``provenance["support"]``, selected slices from ``provenance["labels"]``;
    the baselines without supports on the query have none, and ``clean_objects`` then anchors
    on each label's largest component.
    """
    provenance = labels.provenance
    drawn_on_query = set(provenance["support"]["drawn_on_query"])
    drawn: dict[int, set[int]] = {}
    for s in provenance["support"]["slices"]:
        if s["reference"] in drawn_on_query:
            drawn.setdefault(int(s["label"]), set()).add(int(s["z"]))
    selected = {int(label): set(detail.get("selected_slices", []))
                for label, detail in provenance.get("labels", {}).items()}
    prompts = Prompts()
    for label in sorted(set(drawn) | set(selected)):
        for z in sorted(drawn.get(label, set()) | selected.get(label, set())):
            mask = labels.array[z] == label
            if z not in drawn.get(label, set()):
                mask = _largest_region(mask)
            if mask.any():
                prompts.add_mask(label, z, mask)
    return prompts


def _largest_region(mask: np.ndarray) -> np.ndarray:
    regions, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask
    return regions == 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))
