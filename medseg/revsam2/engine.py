"""Reference prompting of one query volume: ``ReferenceSession`` and ``segment_with_references``.

Modes:

* ``"baseline"``: support-then-propagate with the supports before the query (FS-MedSAM2).
* ``"baseline-middle"``: the supports inserted at the query's middle, propagation both ways.
* ``"revsam2"``: forward (supports at their ``placement``) -> reverse scores -> selection
  -> re-prompt.

Every mode can be restricted to each label's *z-gate* (``gate_margin``; ``zmatch``): the query
slices at the relative z-positions where the references have the label.

Each label is its own object with its own trackers; all trackers of a session share one
``FeatureCache`` holding every slice's encoder features, so each query and support slice is
encoded once whatever the number of passes and small reverse states. A session also keeps
the forward predictions and reverse scores, so ``segment`` called again with other selection
settings (a napari slider, an ablation) only re-runs the re-prompt pass. Overlaps between
labels are settled per pixel by the highest logit; conditioning masks on query slices
(supports drawn on the query itself, selected slices) are painted exactly as given.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medseg.errors import ConfigError
from medseg.preprocess import IntensityPreset, choose_preset
from medseg.revsam2.baseline import ObjectTrack, Placement, track_object
from medseg.revsam2.refine import Reprompt, check_reprompt, reprompt_mask
from medseg.revsam2.defaults import (
    DEFAULT_GATE_MARGIN,
    DEFAULT_INCLUDE_SUPPORTS,
    DEFAULT_PLACEMENT,
    DEFAULT_REJECT_RIVALS,
    DEFAULT_REPROMPT,
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
    MODES,
)
from medseg.revsam2.reverse import (
    ReverseScores,
    auto_min_spacing,
    check_selection,
    reverse_scores,
    select_slices,
)
from medseg.revsam2.support import SupportSet
from medseg.revsam2.zmatch import gated, matched_slice, z_gate
from medseg.runtime import Progress, ProgressParts, ShouldStop, check_stop
from medseg.sam2.engine import FeatureCache
from medseg.sam2.frames import Frame, VolumeFrames
from medseg.sam2.model import Sam2Model, load_model
from medseg.sam2.predictor import Sam2VolumePredictor
from medseg.sam2.session import merge_parts
from medseg.volume import LabelVolume, Volume

log = logging.getLogger(__name__)

ModelLike = Sam2Model | Sam2VolumePredictor | str | Path


def segment_with_references(
    query: Volume,
    support: SupportSet,
    *,
    mode: str = "revsam2",
    model: ModelLike = "sam2.1-tiny",
    preset: str | IntensityPreset | None = None,
    top_k: int | None = DEFAULT_TOP_K,
    threshold: float | None = DEFAULT_THRESHOLD,
    min_spacing: int | None = None,
    include_supports: bool = DEFAULT_INCLUDE_SUPPORTS,
    placement: Placement = DEFAULT_PLACEMENT,
    gate_margin: int | None = DEFAULT_GATE_MARGIN,
    reject_rivals: bool = DEFAULT_REJECT_RIVALS,
    reprompt: Reprompt = DEFAULT_REPROMPT,
    offload_state_to_cpu: bool = False,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> LabelVolume:
    """Segment every label of ``support`` through ``query`` with frozen SAM2.

    One-shot form of ``ReferenceSession(query, support, ...).segment(...)``; see both for
    the parameters.

    Examples
    --------
    >>> support = SupportSet.from_volumes([(ref, ref_labels)], k=3, labels={1: "liver"})  # doctest: +SKIP
    >>> labels = segment_with_references(case, support, model="medsam2")                   # doctest: +SKIP
    >>> labels.provenance["labels"]["1"]["selected_slices"]                                 # doctest: +SKIP
    [41, 52, 63]
    """
    check_mode(mode)
    check_selection(top_k=top_k, threshold=threshold, min_spacing=min_spacing)
    check_reprompt(reprompt)
    session = ReferenceSession(query, support, model=model, preset=preset, offload_state_to_cpu=offload_state_to_cpu)
    return session.segment(mode=mode, top_k=top_k, threshold=threshold, min_spacing=min_spacing,
                           include_supports=include_supports, placement=placement, gate_margin=gate_margin,
                           reject_rivals=reject_rivals, reprompt=reprompt, progress=progress,
                           should_stop=should_stop)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")


class ReferenceSession:
    """Reference prompting of one query volume, with the model loaded and features cached once.

    Parameters
    ----------
    query
        The volume to segment.
    support
        Annotated reference slices (``SupportSet.from_volumes``), put on the query's in-plane
        grid here (``SupportSet.for_query``). References marked ``from_query`` (slices drawn on
        the query) are conditioning frames at their own place in every pass and come back
        exactly as drawn.
    model
        A loaded ``Sam2Model``, a ``Sam2VolumePredictor`` (its model and preset), a registry
        name or a checkpoint path (loaded at its default image size on the best device).
    preset
        Intensity preset of query *and* references (default: the predictor's, else the one the
        model was trained with, else by the query's modality or content: ``choose_preset``).
    offload_state_to_cpu
        Keep encoder features in CPU memory (long volumes on small GPUs).

    Raises
    ------
    InputError
        A reference's modality contradicts the query's (checked before the model loads).
    GeometryError
        Labels marked as drawn on the query are not on its grid, or a reference's slices are
        not parallel to the query's (checked before the model loads).
    """

    def __init__(
        self,
        query: Volume,
        support: SupportSet,
        *,
        model: ModelLike = "sam2.1-tiny",
        preset: str | IntensityPreset | None = None,
        offload_state_to_cpu: bool = False,
    ) -> None:
        self.query, self.support = query, support.for_query(query)
        self.model, predictor_preset = _resolve_model(model)
        self.preset_choice = choose_preset(query, preset=preset if preset is not None else predictor_preset,
                                           trained=self.model.preset)
        self.preset = self.preset_choice.preset
        self.query_frames = VolumeFrames(query, self.preset)
        # a reference drawn on the query shares its frames, so its slices are the query's
        self.reference_frames = [
            self.query_frames if reference.from_query else VolumeFrames(reference.volume, self.preset)
            for reference in self.support.references
        ]
        self.cache = FeatureCache(self.model, device="cpu" if offload_state_to_cpu else None)
        self._forward: dict[tuple[str, int], ObjectTrack] = {}
        self._reverse: dict[tuple[str, int | None, int], ReverseScores] = {}

    @property
    def encoder_calls(self) -> int:
        """Image-encoder runs so far (each distinct query and support slice at most once)."""
        return self.cache.encoder_calls

    def segment(
        self,
        *,
        mode: str = "revsam2",
        top_k: int | None = DEFAULT_TOP_K,
        threshold: float | None = DEFAULT_THRESHOLD,
        min_spacing: int | None = None,
        include_supports: bool = DEFAULT_INCLUDE_SUPPORTS,
        placement: Placement = DEFAULT_PLACEMENT,
        gate_margin: int | None = DEFAULT_GATE_MARGIN,
        reject_rivals: bool = DEFAULT_REJECT_RIVALS,
        reprompt: Reprompt = DEFAULT_REPROMPT,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> LabelVolume:
        """Segment every label of the support set through the query.

        Parameters
        ----------
        mode
            ``"revsam2"`` (default), ``"baseline"`` or ``"baseline-middle"``; see the module docstring.
        top_k, threshold, min_spacing
            Selection of re-prompt slices (``revsam2`` only): at most ``top_k`` slices (None:
            no limit), none with a reverse score below ``threshold`` (None: no floor), none
            closer than ``min_spacing`` slices (None: the label's candidate z-extent over
            ``2 * top_k``). Provisional defaults, see the package docstring.
        include_supports
            ``revsam2`` only: keep the supports from other volumes as conditioning frames in
            the re-prompt (False, the default: the selected query slices alone, plus supports drawn
            on the query; another patient's supports pull the re-prompt towards their object's size).
        placement
            ``revsam2`` only: where the supports from other volumes sit in the forward and
            re-prompt passes: ``"matched"`` (each next to its query slice at the same relative
            z-position), ``"before"`` or ``"middle"`` (``baseline``'s and ``baseline-middle``'s).
        gate_margin
            Every mode: no label outside its z-gate widened by this many slices (None: no gate).
        reject_rivals
            ``revsam2`` only: a candidate that segments another label's supports better than
            its own label's is not selectable.
        reprompt
            ``revsam2`` only: how a selected slice conditions the re-prompt: ``"mask"``, its forward
            mask (RevSAM2 as published), or ``"box"``, that mask segmented again from its parts' boxes
            on the query slice alone (``medseg.revsam2.refine``).
        progress
            ``progress(done, total)`` over query slices predicted and candidates scored;
            ``total`` grows when the number of reverse candidates of a label becomes known.
        should_stop
            Asked between slices and candidates; True raises ``medseg.errors.Cancelled`` and
            nothing is returned. Passes that finished stay in the session (a later call
            reuses them); a pass that was stopped is dropped whole.

        Returns
        -------
        LabelVolume
            On the query's geometry with ``label_names``; ``slice_scores`` (SAM2's P(present)
            x predicted IoU where the label is painted, NaN elsewhere); ``scores`` per label
            (``revsam2``: mean reverse score of the selected slices; baselines: area-weighted
            mean slice score); ``untrained``; ``provenance``: mode, model, preset, supports,
            settings, encoder calls and, for ``revsam2``, per label the reverse score of every
            slice (None where not a candidate), the selected slices and the spacing used.
        """
        check_mode(mode)
        check_selection(top_k=top_k, threshold=threshold, min_spacing=min_spacing)
        check_reprompt(reprompt)
        if mode != "revsam2":
            placement = "middle" if mode == "baseline-middle" else "before"
        to_forward = sum((placement, label) not in self._forward for label in self.support.labels)
        tracks: dict[int, ObjectTrack] = {}
        details: dict[str, dict] = {}
        work = ProgressParts(self.query.shape[0] * to_forward, progress)
        for label in self.support.labels:
            check_stop(should_stop, "reference prompting")
            forward = self.forward(label, placement, progress=work.part(self.query.shape[0]), should_stop=should_stop)
            gate = self.gate(label, gate_margin)
            if mode == "revsam2":
                track, details[str(label)] = self._revsam2(
                    label, placement, gate_margin, top_k, threshold, min_spacing, include_supports, reject_rivals,
                    reprompt, work, should_stop
                )
            else:
                track = forward
            tracks[label] = track if gate is None else gated(track, gate)
        settings = {"placement": placement, "gate_margin": gate_margin}
        if mode == "revsam2":
            settings |= {"top_k": top_k, "threshold": threshold, "min_spacing": min_spacing,
                         "include_supports": include_supports, "reject_rivals": reject_rivals, "reprompt": reprompt}
        return self._result(mode, tracks, details, settings)

    def forward(
        self, label: int, placement: Placement = "before", *, progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> ObjectTrack:
        """The support-then-propagate prediction of one label (computed once per placement)."""
        key = (placement, label)
        if key not in self._forward:
            in_query, external = self._supports_of(label)
            self._forward[key] = track_object(self.model, self.cache, self.query_frames, label, in_query=in_query,
                                              external=external, placement=placement, anchors=self._anchors(label),
                                              progress=progress, should_stop=should_stop)
        return self._forward[key]

    def gate(self, label: int, margin: int | None = DEFAULT_GATE_MARGIN) -> np.ndarray | None:
        """The query slices ``label`` may occupy (``zmatch.z_gate``); None without a gate
        (``margin`` None, or the label drawn only on the query itself)."""
        if margin is None:
            return None
        extents = []
        for reference in self.support.references:
            z = np.flatnonzero((reference.labels.array == label).any(axis=(1, 2)))
            if not reference.from_query and z.size:
                extents.append((int(z[0]), int(z[-1]), reference.labels.array.shape[0]))
        return z_gate(extents, self.query.shape[0], margin) if extents else None

    def reverse_scores(
        self, label: int, placement: Placement = DEFAULT_PLACEMENT, gate_margin: int | None = DEFAULT_GATE_MARGIN, *,
        progress: Progress | None = None, should_stop: ShouldStop | None = None,
    ) -> ReverseScores:
        """Reverse score of every query slice for one label (NaN: not a candidate: empty forward
        mask, or outside the gate) and the candidates that show another label; computed once.

        Needs the label's forward prediction (``forward``), computed first when missing.
        """
        key = (placement, gate_margin, label)
        if key not in self._reverse:
            forward = self.forward(label, placement, should_stop=should_stop)
            gate = self.gate(label, gate_margin)
            candidates = [z for z in range(len(forward)) if (gate is None or gate[z]) and forward.mask(z).any()]
            in_query, external = self._supports_of(label)
            supports = [(self.query_frames[z], mask) for z, mask in sorted(in_query.items())] + external
            rivals = self._rivals_of(label)
            self._reverse[key] = reverse_scores(self.model, self.cache, self.query_frames, forward, label, supports,
                                                candidates=candidates, rivals=rivals, progress=progress,
                                                should_stop=should_stop)
        return self._reverse[key]

    # --- internals ------------------------------------------------------------------------
    def _supports_of(self, label: int) -> tuple[dict[int, np.ndarray], list[tuple[Frame, np.ndarray]]]:
        """The label's supports: drawn on the query (slice -> mask) and from other volumes."""
        in_query, external = {}, []
        for s in self.support.for_label(label):
            mask = self.support.mask(s)
            if self.reference_frames[s.reference] is self.query_frames:
                in_query[s.z] = mask
            else:
                external.append((self.reference_frames[s.reference][s.z], mask))
        return in_query, external

    def _anchors(self, label: int) -> list[int]:
        """The query slice at the relative z-position of each external support of ``label``."""
        n = self.query.shape[0]
        return [matched_slice(s.z, self.support.references[s.reference].labels.array.shape[0], n)
                for s in self.support.for_label(label) if not self.support.references[s.reference].from_query]

    def _rivals_of(self, label: int) -> list[dict[int, np.ndarray]]:
        """Per support of ``label`` (in query, then external order, as ``_supports_of``): the other
        labels of the support set drawn on that slice."""
        in_query, external = {}, []
        for s in self.support.for_label(label):
            array = self.support.references[s.reference].labels.array[s.z]
            masks = {v: array == v for v in self.support.labels if v != label and (array == v).any()}
            if self.support.references[s.reference].from_query:
                in_query[s.z] = masks
            else:
                external.append(masks)
        return [masks for _, masks in sorted(in_query.items())] + external

    def _revsam2(self, label: int, placement: Placement, gate_margin: int | None, top_k: int | None,
                 threshold: float | None, min_spacing: int | None, include_supports: bool, reject_rivals: bool,
                 reprompt: Reprompt, work: ProgressParts, should_stop: ShouldStop | None) -> tuple[ObjectTrack, dict]:
        """Steps b-d for one label: reverse scores, selection, re-prompt."""
        forward = self.forward(label, placement)
        scores, rejected = self.reverse_scores(label, placement, gate_margin, progress=work.part(),
                                               should_stop=should_stop)
        in_query, external = self._supports_of(label)
        # slices drawn on the query condition the re-prompt anyway: selection picks among the rest
        selectable = scores.copy()
        selectable[list(in_query)] = np.nan
        if reject_rivals:
            selectable[list(rejected)] = np.nan
        if gate_margin is not None and (within := self.gate(label, 0)) is not None:
            selectable[~within] = np.nan  # the margin lets the track paint further, not re-prompt from there
        selectable_slices = np.flatnonzero(~np.isnan(selectable)).tolist()
        spacing = auto_min_spacing(selectable_slices, top_k) if min_spacing is None else min_spacing
        selected = select_slices(selectable, top_k=top_k, threshold=threshold, min_spacing=spacing)
        detail = {
            "reverse_scores": [None if np.isnan(s) else round(float(s), 6) for s in scores],
            "candidates": int(np.count_nonzero(~np.isnan(scores))),
            "rejected": {str(z): self.support.label_names.get(v, str(v)) for z, v in sorted(rejected.items())},
            "selected_slices": selected,
            "min_spacing": spacing,
            "fell_back_to_forward": not selected,
        }
        if not selected:
            best = float(np.nanmax(selectable)) if selectable_slices else 0.0
            log.warning("object %d (%s): no slice reaches reverse score %s (best %.3f of %d candidates); keeping the "
                        "forward prediction", label, self.support.label_names[label], threshold, best,
                        len(selectable_slices))
            detail["object_score"] = best
            return forward, detail
        prompts = {**{z: reprompt_mask(self.model, self.cache, self.query_frames[z], forward.mask(z), reprompt)
                      for z in selected}, **in_query}
        final = track_object(self.model, self.cache, self.query_frames, label, in_query=prompts,
                             external=external if include_supports else [], placement=placement,
                             anchors=self._anchors(label) if include_supports else [], progress=work.part(),
                             should_stop=should_stop)
        detail["object_score"] = float(np.mean(scores[selected]))
        return final, detail

    def _result(self, mode: str, tracks: dict[int, ObjectTrack], details: dict[str, dict],
                settings: dict) -> LabelVolume:
        objects = np.asarray(list(tracks))
        array = np.zeros(self.query.shape, dtype=np.int32)
        for z in range(self.query.shape[0]):
            logits = np.stack([tracks[obj].slice_logits(z) for obj in objects])
            painted = logits.max(axis=0) > 0
            array[z][painted] = objects[logits.argmax(axis=0)][painted]
        slice_scores, scores, areas = {}, {}, {}
        for obj, track in tracks.items():
            areas[obj] = (array == obj).sum(axis=(1, 2))
            slice_scores[obj] = np.where(areas[obj] > 0, track.scores, np.nan).astype(np.float32)
            if mode == "revsam2":
                scores[obj] = details[str(obj)].pop("object_score")
            else:
                scores[obj] = float(np.sum(track.scores * areas[obj]) / areas[obj].sum()) if areas[obj].sum() else 0.0
        label_of = self.support.label_of
        array, slice_scores, _ = merge_parts(array, slice_scores, areas, label_of)
        provenance = {
            "method": f"reference-prompting-{mode}",
            **self.model.provenance(),
            "preset": self.preset.to_dict(),
            "preset_reason": self.preset_choice.reason,
            "support": self.support.to_dict(),
            **settings,
            "labels": details,
            "encoder_calls": self.cache.encoder_calls,
        }
        log.info("reference prompting (%s): %d object(s), %d encoder calls", mode, len(tracks),
                 self.cache.encoder_calls)
        names = {label_of[obj]: self.support.label_names[obj] for obj in tracks}
        return LabelVolume.like(self.query, array, label_names=names, scores=_label_scores(scores, areas, label_of),
                                slice_scores=slice_scores, untrained=self.model.untrained, provenance=provenance)


def _label_scores(scores: dict[int, float], areas: dict[int, np.ndarray], label_of: dict[int, int]) -> dict[int, float]:
    """Each label's score: its objects' (parts') scores weighted by their painted voxels (plain mean when none is)."""
    merged = {}
    for label in sorted({label_of[obj] for obj in scores}):
        parts = [obj for obj in scores if label_of[obj] == label]
        weights = np.array([areas[obj].sum() for obj in parts], dtype=np.float64)
        values = np.array([scores[obj] for obj in parts])
        merged[label] = float(np.average(values, weights=weights) if weights.sum() else values.mean())
    return merged


def _resolve_model(model: ModelLike) -> tuple[Sam2Model, str | IntensityPreset | None]:
    """The loaded model, and the preset a predictor was given (None: none given)."""
    if isinstance(model, Sam2Model):
        return model, None
    if isinstance(model, Sam2VolumePredictor):
        return model.model, model.preset
    return load_model(model), None
