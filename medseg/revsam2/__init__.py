"""Reference prompting: segment a query volume from a few annotated reference slices, frozen SAM2.

>>> support = SupportSet.from_volumes([(ref, ref_labels)], k=3, labels={1: "liver"})   # doctest: +SKIP
>>> labels = segment_with_references(case, support, mode="revsam2", model="medsam2")    # doctest: +SKIP

What the paper states (RevSAM2, Bai et al., arXiv 2409.04298 v2, 2024; v1: FS-MedSAM2)
---------------------------------------------------------------------------------------
* SAM2 stays frozen: no fine-tuning. A 3D query volume is segmented from a few support
  image-label pairs.
* Instead of relying on SAM2's FIFO memory of recent query slices, a *reverse propagation*
  uses the support images to judge the quality of each predicted query slice mask; the
  high-quality query masks are then used as prompts to propagate across the whole query.
* The FS-MedSAM2 baseline (v1 code): supports as conditioning masks placed before, or in the
  middle of, the query slices, then forward (and reverse) propagation.
* Not published: the v2 code, the similarity used to score, the top-k or threshold.

What medseg designs (our choices, not the paper's)
--------------------------------------------------
* Supports (``support``): ``k`` slices per label and reference at the centres of ``k`` equal
  chunks of the label's z-extent (the SSL-ALPNet protocol's chunk rule), or explicit slices;
  every label is its own object, or with ``parts`` every 3D connected part of a label (each
  kidney; ``parts``: matched between references by position in the scan, merged back into the
  label in the result); references are mapped with the query's intensity preset (a CT window
  in HU, never per-slice min-max).
* Forward pass: the supports from other volumes as conditioning frames, each right before the
  query slice at its relative z-position (``placement="matched"``, ``zmatch``; the baselines
  place them before the query or in its middle, as FS-MedSAM2), then propagation.
* z-gate (``zmatch``): each label only on the query slices where, mapped by relative z, the
  references have it (plus ``gate_margin`` slices); SAM2 rarely declares a tracked object absent.
  Re-prompt slices are selected inside the gate without its margin: there the forward track
  has often run on into the neighbouring organ (a kidney's into the liver past its end).
* Reverse score (``reverse``): for each query slice with a non-empty forward mask (in the gate), that
  (slice, mask) is the *only* conditioning prompt of a small tracker, and each support slice
  is predicted from it alone (one propagation call per support, so supports do not lean on
  each other). Score = mean Dice between those predictions and the supports' true labels.
  A candidate whose predictions match another label drawn on the supports better than its own
  is rejected (``reject_rivals``): no kidney selected as the spleen.
* Selection: greedy from the best score: at most ``top_k`` slices, none below ``threshold``,
  none closer than ``min_spacing`` slices (default: the candidates' z-extent over
  ``2 * top_k``) so that the prompts spread over the object. No slice passing -> the forward
  prediction is kept and the provenance says so.
* Re-prompt (``engine``): a fresh tracker per label with the selected query slices (and, with
  ``include_supports``, the supports) as conditioning frames; each query slice is reached
  from the nearest selected slice, both ways. A selected slice conditions with its forward
  mask (``reprompt="mask"``) or, by default, with that mask segmented again on the query
  slice alone from each of its parts' boxes (``"box"``, ``refine``): the forward pass copies
  the size of the references' object, the box lets SAM2 find the query's own edges. Selected
  slices come back exactly as their conditioning masks.
* Supports drawn on the query itself (``SupportEntry(..., from_query=True)``: an explicit
  flag, never guessed from identity or paths) are conditioning frames at their own slice in
  every pass and come back exactly as drawn; they are not competing for the ``top_k`` slots.
* Geometry: references come from other patients, so only their in-plane geometry matters;
  one whose pixel spacing, matrix or in-plane orientation differs from the query's is
  resampled onto the query's in-plane grid (``inplane``), and the provenance says so.
* Cost: every query and support slice is encoded once (one ``FeatureCache`` shared by all
  trackers of a session); the reverse pass adds candidates x supports decoder steps, the
  candidates run ``reverse.REVERSE_BATCH`` at a time as one SAM2 batch. A
  ``ReferenceSession`` keeps forward predictions and reverse scores, so trying other
  selection settings re-runs only the re-prompt pass.
* Defaults (``defaults``): matched placement, gate margin 2, rival check on, ``top_k=1``,
  ``threshold=0.5``, automatic ``min_spacing``, ``reprompt="box"``, no supports in the re-prompt
  pass, from the ablation (``benchmarks/revsam2.py --ablation``) with the shipped ``medseg-micro``
  on the demo phantoms: 0.565 mean Dice with one reference case (36 pairs; 0.593 with ``parts``)
  against 0.445 for the supports-before baseline and 0.488 for baseline-middle (README,
  "Reference prompting"). Another model or cohort may want other values, and the ablation is
  there to find them.
"""

import importlib

#: Where each public name lives. Submodules load on first use (PEP 562), so ``SupportSet`` and
#: the defaults come without torch and sam2 (the napari panel opens seconds sooner).
_PUBLIC = {
    "DEFAULT_INCLUDE_SUPPORTS": "defaults",
    "DEFAULT_REPROMPT": "defaults",
    "DEFAULT_THRESHOLD": "defaults",
    "DEFAULT_TOP_K": "defaults",
    "MODES": "defaults",
    "REPROMPTS": "defaults",
    "ObjectTrack": "baseline",
    "Reference": "support",
    "ReferenceSession": "engine",
    "SupportEntry": "support",
    "SupportSet": "support",
    "SupportSlice": "support",
    "anchor_prompts": "anchors",
    "reverse_score": "reverse",
    "reverse_scores": "reverse",
    "segment_with_references": "engine",
    "select_slices": "reverse",
    "track_object": "baseline",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'medseg.revsam2' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medseg.revsam2.{_PUBLIC[name]}"), name)
