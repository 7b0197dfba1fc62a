"""``segment_with_references``: a query volume and a support set in, a ``LabelVolume`` out.

Modes:

* ``"baseline"``: support-then-propagate with the supports before the query (FS-MedSAM2).
* ``"baseline-middle"``: the supports inserted at the query's middle, propagation both ways.
* ``"revsam2"``: forward (the baseline) -> reverse scores -> selection -> re-prompt.

Each label is its own object with its own trackers; all trackers of a run share one
``FeatureCache`` holding every slice's encoder features, so each query and support slice is
encoded once whatever the number of passes and small reverse states. Overlaps between labels
are settled per pixel by the highest logit; conditioning masks on query slices (supports
drawn on the query itself, selected slices) are painted exactly as given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medseg.errors import ConfigError
from medseg.preprocess import IntensityPreset, default_preset, get_preset
from medseg.revsam2.baseline import ObjectTrack, track_object
from medseg.revsam2.reverse import (
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
    auto_min_spacing,
    check_selection,
    reverse_scores,
    select_slices,
)
from medseg.revsam2.support import SupportSet
from medseg.sam2.engine import FeatureCache
from medseg.sam2.frames import Frame, VolumeFrames
from medseg.sam2.model import Sam2Model, load_model
from medseg.sam2.predictor import Sam2VolumePredictor
from medseg.volume import LabelVolume, Volume

logger = logging.getLogger(__name__)

MODES = ("revsam2", "baseline", "baseline-middle")

Progress = Callable[[int, int], None]


def segment_with_references(
    query: Volume,
    support: SupportSet,
    *,
    mode: str = "revsam2",
    model: Sam2Model | Sam2VolumePredictor | str | Path = "sam2.1-tiny",
    preset: str | IntensityPreset | None = None,
    top_k: int | None = DEFAULT_TOP_K,
    threshold: float | None = DEFAULT_THRESHOLD,
    min_spacing: int | None = None,
    include_supports: bool = True,
    offload_state_to_cpu: bool = False,
    progress: bool | Progress = True,
) -> LabelVolume:
    """Segment every label of ``support`` through ``query`` with frozen SAM2.

    Parameters
    ----------
    query
        The volume to segment.
    support
        Annotated reference slices (``SupportSet.from_volumes``); a reference may be ``query``
        itself (slices annotated on the query), whose slices are then conditioning frames at
        their own place and come back exactly as drawn.
    mode
        ``"revsam2"`` (default), ``"baseline"`` or ``"baseline-middle"``; see the module docstring.
    model
        A loaded ``Sam2Model``, a ``Sam2VolumePredictor`` (its model and preset), a registry
        name or a checkpoint path (loaded with its default image size on the best device).
    preset
        Intensity preset of query *and* references (default: the predictor's, else by the
        query's modality).
    top_k, threshold, min_spacing
        Selection of re-prompt slices (``revsam2`` only): at most ``top_k`` slices (None: no
        limit), none with a reverse score below ``threshold`` (None: no floor), none closer
        than ``min_spacing`` slices (None: the label's candidate z-extent over ``2 * top_k``).
        Provisional defaults, see the package docstring.
    include_supports
        ``revsam2`` only: keep the supports from other volumes as conditioning frames in the
        re-prompt pass (False: the selected query slices alone, plus supports drawn on the query).
    offload_state_to_cpu
        Keep encoder features and SAM2 memory in CPU memory (long volumes on small GPUs).
    progress
        True for a tqdm bar, False for none, or ``callback(done, total)``; ``total`` grows once
        per label when the number of reverse candidates becomes known.

    Returns
    -------
    LabelVolume
        On ``query``'s geometry with ``label_names``; ``slice_scores`` (SAM2's P(present) x
        predicted IoU where the label is painted, NaN elsewhere); ``scores`` per label (mean
        reverse score of the selected slices for ``revsam2``, the area-weighted mean slice
        score for the baselines); ``untrained``; ``provenance`` with the mode, model,
        supports, settings, and for ``revsam2`` per label the reverse score of every slice
        (None where not a candidate), the selected slices and the spacing used.

    Examples
    --------
    >>> support = SupportSet.from_volumes([(ref, ref_labels)], k=3, labels={1: "liver"})  # doctest: +SKIP
    >>> labels = segment_with_references(case, support, model="medsam2")                   # doctest: +SKIP
    >>> labels.provenance["labels"]["1"]["selected_slices"]                                 # doctest: +SKIP
    [41, 52, 63]
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    check_selection(top_k=top_k, threshold=threshold, min_spacing=min_spacing)
    support.check_query(query)
    sam, predictor_preset = _resolve_model(model)
    frames_preset = get_preset(preset) if preset is not None else predictor_preset or default_preset(query)
    if callable(progress):
        return _Run(query, support, sam, frames_preset, offload_state_to_cpu, progress).segment(
            mode, top_k, threshold, min_spacing, include_supports
        )
    with tqdm(total=None, unit="step", desc=f"reference prompting ({mode})", disable=not progress) as bar:
        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return _Run(query, support, sam, frames_preset, offload_state_to_cpu, advance).segment(
            mode, top_k, threshold, min_spacing, include_supports
        )


def _resolve_model(model: Sam2Model | Sam2VolumePredictor | str | Path) -> tuple[Sam2Model, IntensityPreset | None]:
    if isinstance(model, Sam2Model):
        return model, None
    if isinstance(model, Sam2VolumePredictor):
        return model.model, None if model.preset is None else get_preset(model.preset)
    return load_model(model), None


class _Run:
    """One call of ``segment_with_references``: frames, the shared cache and progress counting."""

    def __init__(self, query: Volume, support: SupportSet, model: Sam2Model, preset: IntensityPreset,
                 offload: bool, progress: Progress) -> None:
        self.query, self.support, self.model, self.preset = query, support, model, preset
        self.query_frames = VolumeFrames(query, preset)
        # a reference that is the query itself shares its frames, so its slices are the query's
        self.reference_frames = [
            self.query_frames if reference.volume is query else VolumeFrames(reference.volume, preset)
            for reference in support.references
        ]
        self.cache = FeatureCache(model, device="cpu" if offload else None)
        self._progress = progress
        self.done = 0
        self.total = 0

    def step(self) -> None:
        self.done += 1
        self._progress(self.done, self.total)

    def supports_of(self, label: int) -> tuple[dict[int, np.ndarray], list[tuple[Frame, np.ndarray]]]:
        """The label's supports: drawn on the query (slice -> mask) and from other volumes."""
        in_query, external = {}, []
        for s in self.support.for_label(label):
            mask = self.support.mask(s)
            if self.reference_frames[s.reference] is self.query_frames:
                in_query[s.z] = mask
            else:
                external.append((self.reference_frames[s.reference][s.z], mask))
        return in_query, external

    def segment(self, mode: str, top_k: int | None, threshold: float | None, min_spacing: int | None,
                include_supports: bool) -> LabelVolume:
        n, labels = self.query.shape[0], self.support.labels
        self.total = n * len(labels) * (2 if mode == "revsam2" else 1)
        placement = "middle" if mode == "baseline-middle" else "before"
        tracks: dict[int, ObjectTrack] = {}
        details: dict[str, dict] = {}
        for label in labels:
            in_query, external = self.supports_of(label)
            forward = track_object(self.model, self.cache, self.query_frames, label, in_query=in_query,
                                   external=external, placement=placement, progress=self.step)
            if mode == "revsam2":
                tracks[label], details[str(label)] = self.revsam2(
                    label, forward, in_query, external, top_k, threshold, min_spacing, include_supports
                )
            else:
                tracks[label] = forward
        return self.result(mode, tracks, details, settings={
            "top_k": top_k, "threshold": threshold, "min_spacing": min_spacing, "include_supports": include_supports,
        } if mode == "revsam2" else {})

    def revsam2(self, label: int, forward: ObjectTrack, in_query: dict[int, np.ndarray],
                external: list[tuple[Frame, np.ndarray]], top_k: int | None, threshold: float | None,
                min_spacing: int | None, include_supports: bool) -> tuple[ObjectTrack, dict]:
        """Steps b-d for one label: reverse scores, selection, re-prompt."""
        n = len(forward)
        candidates = [z for z in range(n) if forward.mask(z).any()]
        self.total += len(candidates)
        supports = [(self.query_frames[z], mask) for z, mask in sorted(in_query.items())] + external
        scores = reverse_scores(self.model, self.cache, self.query_frames, forward, label, supports,
                                candidates=candidates, progress=self.step)
        # slices drawn on the query condition the re-prompt anyway: selection picks among the rest
        selectable = scores.copy()
        selectable[list(in_query)] = np.nan
        selectable_slices = np.flatnonzero(~np.isnan(selectable)).tolist()
        spacing = auto_min_spacing(selectable_slices, top_k) if min_spacing is None else min_spacing
        selected = select_slices(selectable, top_k=top_k, threshold=threshold, min_spacing=spacing)
        detail = {
            "reverse_scores": [None if np.isnan(s) else round(float(s), 6) for s in scores],
            "candidates": len(candidates),
            "selected_slices": selected,
            "min_spacing": spacing,
            "fell_back_to_forward": not selected,
        }
        if not selected:
            best = np.nanmax(selectable) if selectable_slices else float("nan")
            logger.warning(
                "label %d: no slice reaches reverse score %s (best %.3f of %d candidates); keeping the forward prediction",
                label, threshold, best, len(selectable_slices),
            )
            self.total -= n
            detail["object_score"] = 0.0 if np.isnan(best) else float(best)
            return forward, detail
        prompts = {**{z: forward.mask(z) for z in selected}, **in_query}
        final = track_object(self.model, self.cache, self.query_frames, label, in_query=prompts,
                             external=external if include_supports else [], progress=self.step)
        detail["object_score"] = float(np.mean(scores[selected]))
        return final, detail

    def result(self, mode: str, tracks: dict[int, ObjectTrack], details: dict[str, dict], settings: dict) -> LabelVolume:
        n = self.query.shape[0]
        labels = np.asarray(list(tracks))
        array = np.zeros(self.query.shape, dtype=np.int32)
        for z in range(n):
            logits = np.stack([tracks[label].slice_logits(z) for label in labels])
            painted = logits.max(axis=0) > 0
            array[z][painted] = labels[logits.argmax(axis=0)][painted]
        slice_scores, scores = {}, {}
        for label, track in tracks.items():
            area = (array == label).sum(axis=(1, 2))
            slice_scores[label] = np.where(area > 0, track.scores, np.nan).astype(np.float32)
            if mode == "revsam2":
                scores[label] = details[str(label)].pop("object_score")
            else:
                scores[label] = float(np.sum(track.scores * area) / area.sum()) if area.sum() else 0.0
        provenance = {
            "method": f"reference-prompting-{mode}",
            **self.model.provenance(),
            "preset": self.preset.to_dict(),
            "support": self.support.to_dict(),
            **settings,
            "labels": details,
            "encoder_calls": self.cache.encoder_calls,
        }
        logger.info("reference prompting (%s): %d label(s), %d encoder calls", mode, len(tracks), self.cache.encoder_calls)
        return LabelVolume.like(self.query, array, label_names=dict(self.support.label_names), scores=scores,
                                slice_scores=slice_scores, untrained=self.model.untrained, provenance=provenance)
