"""Reference prompting of one query volume: ``ReferenceSession`` and ``segment_with_references``.

Modes:

* ``"baseline"``: support-then-propagate with the supports before the query (FS-MedSAM2).
* ``"baseline-middle"``: the supports inserted at the query's middle, propagation both ways.
* ``"revsam2"``: forward (the baseline) -> reverse scores -> selection -> re-prompt.

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
from medseg.revsam2.defaults import DEFAULT_THRESHOLD, DEFAULT_TOP_K, MODES
from medseg.revsam2.reverse import (
    auto_min_spacing,
    check_selection,
    reverse_scores,
    select_slices,
)
from medseg.revsam2.support import SupportSet
from medseg.runtime import Progress, ShouldStop, check_stop, report
from medseg.sam2.engine import FeatureCache
from medseg.sam2.frames import Frame, VolumeFrames
from medseg.sam2.model import Sam2Model, load_model
from medseg.sam2.predictor import Sam2VolumePredictor
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
    include_supports: bool = True,
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
    session = ReferenceSession(query, support, model=model, preset=preset, offload_state_to_cpu=offload_state_to_cpu)
    return session.segment(mode=mode, top_k=top_k, threshold=threshold, min_spacing=min_spacing,
                           include_supports=include_supports, progress=progress, should_stop=should_stop)


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
        self._reverse: dict[int, np.ndarray] = {}

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
        include_supports: bool = True,
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
            the re-prompt (False: the selected query slices alone, plus supports drawn on the query).
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
        placement: Placement = "middle" if mode == "baseline-middle" else "before"
        to_forward = sum((placement, label) not in self._forward for label in self.support.labels)
        tracks: dict[int, ObjectTrack] = {}
        details: dict[str, dict] = {}
        work = _Work(self.query.shape[0] * to_forward, progress)
        for label in self.support.labels:
            check_stop(should_stop, "reference prompting")
            forward = self.forward(label, placement, progress=work.part(self.query.shape[0]), should_stop=should_stop)
            if mode == "revsam2":
                tracks[label], details[str(label)] = self._revsam2(
                    label, forward, top_k, threshold, min_spacing, include_supports, work, should_stop
                )
            else:
                tracks[label] = forward
        settings = {"top_k": top_k, "threshold": threshold, "min_spacing": min_spacing,
                    "include_supports": include_supports} if mode == "revsam2" else {}
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
                                              external=external, placement=placement, progress=progress,
                                              should_stop=should_stop)
        return self._forward[key]

    def reverse_scores(self, label: int, *, progress: Progress | None = None, should_stop: ShouldStop | None = None) -> np.ndarray:
        """Reverse score of every query slice for one label (NaN: empty forward mask); computed once.

        Needs the label's forward prediction (``forward``), computed first when missing.
        """
        if label not in self._reverse:
            forward = self.forward(label, should_stop=should_stop)
            candidates = [z for z in range(len(forward)) if forward.mask(z).any()]
            in_query, external = self._supports_of(label)
            supports = [(self.query_frames[z], mask) for z, mask in sorted(in_query.items())] + external
            self._reverse[label] = reverse_scores(self.model, self.cache, self.query_frames, forward, label, supports,
                                                  candidates=candidates, progress=progress, should_stop=should_stop)
        return self._reverse[label]

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

    def _revsam2(self, label: int, forward: ObjectTrack, top_k: int | None, threshold: float | None,
                 min_spacing: int | None, include_supports: bool, work: _Work,
                 should_stop: ShouldStop | None) -> tuple[ObjectTrack, dict]:
        """Steps b-d for one label: reverse scores, selection, re-prompt."""
        scores = self.reverse_scores(label, progress=work.part(), should_stop=should_stop)
        in_query, external = self._supports_of(label)
        # slices drawn on the query condition the re-prompt anyway: selection picks among the rest
        selectable = scores.copy()
        selectable[list(in_query)] = np.nan
        selectable_slices = np.flatnonzero(~np.isnan(selectable)).tolist()
        spacing = auto_min_spacing(selectable_slices, top_k) if min_spacing is None else min_spacing
        selected = select_slices(selectable, top_k=top_k, threshold=threshold, min_spacing=spacing)
        detail = {
            "reverse_scores": [None if np.isnan(s) else round(float(s), 6) for s in scores],
            "candidates": int(np.count_nonzero(~np.isnan(scores))),
            "selected_slices": selected,
            "min_spacing": spacing,
            "fell_back_to_forward": not selected,
        }
        if not selected:
            best = float(np.nanmax(selectable)) if selectable_slices else 0.0
            log.warning("label %d: no slice reaches reverse score %s (best %.3f of %d candidates); keeping the forward "
                           "prediction", label, threshold, best, len(selectable_slices))
            detail["object_score"] = best
            return forward, detail
        prompts = {**{z: forward.mask(z) for z in selected}, **in_query}
        final = track_object(self.model, self.cache, self.query_frames, label, in_query=prompts,
                             external=external if include_supports else [], progress=work.part(),
                             should_stop=should_stop)
        detail["object_score"] = float(np.mean(scores[selected]))
        return final, detail

    def _result(self, mode: str, tracks: dict[int, ObjectTrack], details: dict[str, dict], settings: dict) -> LabelVolume:
        labels = np.asarray(list(tracks))
        array = np.zeros(self.query.shape, dtype=np.int32)
        for z in range(self.query.shape[0]):
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
            "preset_reason": self.preset_choice.reason,
            "support": self.support.to_dict(),
            **settings,
            "labels": details,
            "encoder_calls": self.cache.encoder_calls,
        }
        log.info("reference prompting (%s): %d label(s), %d encoder calls", mode, len(tracks), self.cache.encoder_calls)
        return LabelVolume.like(self.query, array, label_names=dict(self.support.label_names), scores=scores,
                                slice_scores=slice_scores, untrained=self.model.untrained, provenance=provenance)


class _Work:
    """The units of one ``segment`` call (query slices predicted, candidates scored) as one
    ``progress(done, total)`` stream; each pass reports through its own ``part``."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def part(self, counted: int = 0) -> Progress | None:
        """A pass's ``progress``, added to the call's; ``counted``: its units already in the total."""
        if self.progress is None:
            return None
        start = self.done

        def progress(done: int, total: int) -> None:
            nonlocal counted
            if total > counted:  # the pass is larger than planned: the call's total grows
                self.total += total - counted
                counted = total
            self.done = start + done
            report(self.progress, self.done, self.total)

        return progress


def _resolve_model(model: ModelLike) -> tuple[Sam2Model, str | IntensityPreset | None]:
    """The loaded model, and the preset a predictor was given (None: none given)."""
    if isinstance(model, Sam2Model):
        return model, None
    if isinstance(model, Sam2VolumePredictor):
        return model.model, model.preset
    return load_model(model), None
