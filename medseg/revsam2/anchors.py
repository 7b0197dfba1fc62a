"""The query slices a reference-prompting result holds exactly as given: its objects' anchors.

``medseg.objects.clean_objects`` keeps the components a user marked as the object; for
reference prompting those are the components on the re-prompt slices ``revsam2`` selected and
on the supports drawn on the query. Read from the result's provenance, so a saved result and a
fresh one give the same anchors (no model needed).
"""

from __future__ import annotations

from medseg.prompts import Prompts
from medseg.volume import LabelVolume


def anchor_prompts(labels: LabelVolume) -> Prompts:
    """The label's voxels on each query slice ``labels`` was conditioned on, as mask prompts per label.

    Those slices are the re-prompt slices ``revsam2`` selected (``provenance["labels"]``) and the
    supports drawn on the query (``provenance["support"]``); the baselines without supports on
    the query have none, and ``clean_objects`` then anchors on each label's largest component.
    """
    provenance = labels.provenance
    drawn = set(provenance["support"]["drawn_on_query"])
    slices: dict[int, set[int]] = {}
    for s in provenance["support"]["slices"]:
        if s["reference"] in drawn:
            slices.setdefault(int(s["label"]), set()).add(int(s["z"]))
    for label, detail in provenance.get("labels", {}).items():
        slices.setdefault(int(label), set()).update(detail.get("selected_slices", []))
    prompts = Prompts()
    for label, zs in sorted(slices.items()):
        for z in sorted(zs):
            mask = labels.array[z] == label
            if mask.any():
                prompts.add_mask(label, z, mask)
    return prompts
