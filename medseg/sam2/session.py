"""Interactive SAM2 segmentation of one volume: prompt, preview a slice, propagate, correct, undo.

``Sam2Session`` is what the napari plugin drives and what ``Sam2VolumePredictor.segment``
runs in one go. Every prompted slice is a conditioning frame. ``propagate`` tracks each object
from each of its prompted slices towards the next one (meeting half-way) and outwards to both
ends of the volume, so every slice gets exactly one prediction per object, taken from its
nearest prompted slice (bidirectional propagation, Dong et al. 2024).

Corrections: a point added on a slice the object was propagated to is applied *on top of*
the propagated mask there (that mask becomes the slice's mask prompt and the points refine
it, as SAM2 does with its previous logits), and the slice becomes a conditioning frame. The
next ``propagate`` starts from the conditioning frames only, so the correction reaches the
neighbouring slices instead of being outvoted by stale memory (sam2 issues #546/#719). The
seed mask is recorded in ``prompts``, so replaying ``session.prompts`` reproduces the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

import numpy as np

from medseg.errors import InputError
from medseg.preprocess import IntensityPreset, choose_preset
from medseg.runtime import Progress, ShouldStop, check_stop, report
from medseg.prompts import BoxPrompt, MaskPrompt, ObjectPrompts, PointPrompt, Prompt, Prompts, ScribblePrompt
from medseg.sam2.embeddings import EmbeddingStore
from medseg.sam2.engine import FeatureCache, FrameOutput, Tracker
from medseg.sam2.frames import VolumeFrames
from medseg.sam2.model import Sam2Model
from medseg.volume import LabelVolume, Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Action:
    """One user action (what ``undo`` takes back): prompts it added to and removed from one object."""

    obj_id: int
    z: int
    added: tuple[Prompt, ...]
    removed: tuple[BoxPrompt, ...] = ()


def plan_runs(prompted: list[int], n_slices: int) -> list[tuple[int, int]]:
    """``(start, end)`` propagation runs covering ``0..n_slices-1`` from the prompted slices.

    Each run starts on a prompted slice; between two prompted slices the gap is split at its
    middle, so each slice is reached from the nearest prompted slice.

    >>> plan_runs([3, 9], 12)
    [(3, 0), (3, 6), (9, 7), (9, 11)]
    """
    runs = [(prompted[0], 0)]
    for a, b in zip(prompted, prompted[1:]):
        middle = (a + b) // 2
        runs += [(a, middle), (b, middle + 1)]
    runs.append((prompted[-1], n_slices - 1))
    return runs


class Sam2Session:
    """Prompts and results for one volume, with the model loaded once.

    Build it with ``Sam2VolumePredictor.session(volume)``. Prompts are voxel indices
    ``(z, y, x)`` of the volume. Each ``add_*`` call returns the label slice it changed.
    A session is not thread-safe: make one call at a time (in napari, take no prompts while
    ``propagate`` runs in its worker; ``should_stop`` ends it early with ``Cancelled``).

    Parameters
    ----------
    model
        A loaded SAM2 model.
    volume
        The image to segment.
    preset
        Intensity preset for the model's input frames; None: the one the model was trained with,
        else by modality or content (``medseg.preprocess.choose_preset``).
    offload_state_to_cpu
        Keep SAM2's memory in CPU memory (GPU memory stays flat on long stacks).
    cache_bytes
        In-memory budget of encoder features (default: a quarter of the available RAM), so a
        re-propagation after a correction re-runs only memory attention and the decoder.
    store
        On-disk embedding store: True for the user's (``EmbeddingStore.default()``), False for
        none, or a store.
    """

    def __init__(
        self,
        model: Sam2Model,
        volume: Volume,
        *,
        preset: str | IntensityPreset | None = None,
        offload_state_to_cpu: bool = False,
        cache_bytes: int | None = None,
        store: EmbeddingStore | bool = True,
    ) -> None:
        self.model = model
        self.volume = volume
        self.preset_choice = choose_preset(volume, preset=preset, trained=model.preset)
        self.frames = VolumeFrames(volume, self.preset_choice.preset)
        self.cache = FeatureCache(model, max_bytes=cache_bytes,
                                  device="cpu" if offload_state_to_cpu else None, store=store)
        self.tracker = Tracker(model, self.frames, self.cache, offload_state_to_cpu=offload_state_to_cpu)
        self.prompts = Prompts()
        self._actions: list[_Action] = []
        self._labels = np.zeros(volume.shape, dtype=np.int32)
        self._labels_handed_out = False  # copy on the next edit: a returned LabelVolume shares it
        self._confidence: dict[int, np.ndarray] = {}
        self._slice_outputs: dict[tuple[int, int], FrameOutput] = {}
        self._exact_masks: dict[tuple[int, int], np.ndarray] = {}

    # --- prompts --------------------------------------------------------------------------
    def add_point(self, obj_id: int, z: int, y: float, x: float, *, positive: bool = True,
                  name: str = "") -> np.ndarray:
        """Add a positive (or negative) click; refines the propagated mask if the slice has one."""
        point = PointPrompt(int(z), float(y), float(x), bool(positive))
        self._check(lambda p: p.add_point(obj_id, z, y, x, positive=positive))
        obj = self.prompts.object(obj_id, name)
        return self._record(obj, point.z, (*self._seed(obj, point.z), point))

    def add_scribble(self, obj_id: int, z: int, mask: np.ndarray, *, positive: bool = True,
                     name: str = "") -> np.ndarray:
        """Add a brush stroke ``(y, x)`` (SAM2 gets points spread along it); refines like a click."""
        self._check(lambda p: p.add_scribble(obj_id, z, mask, positive=positive))
        obj = self.prompts.object(obj_id, name)
        scribble = ScribblePrompt(int(z), np.asarray(mask, dtype=bool).copy(), bool(positive))
        return self._record(obj, int(z), (*self._seed(obj, int(z)), scribble))

    def add_box(self, obj_id: int, z: int, y0: float, x0: float, y1: float, x1: float, *, name: str = "") -> np.ndarray:
        """Add a box (inclusive voxel corners); replaces an earlier box of the object on that slice."""
        self._check(lambda p: p.add_box(obj_id, z, y0, x0, y1, x1))
        obj = self.prompts.object(obj_id, name)
        replaced = tuple(b for b in obj.boxes if b.z == int(z))
        box = BoxPrompt(int(z), float(y0), float(x0), float(y1), float(x1))
        return self._record(obj, int(z), (box,), replaced)

    def add_mask(self, obj_id: int, z: int, mask: np.ndarray, *, name: str = "") -> np.ndarray:
        """Add a painted mask ``(y, x)``; on a slice with only a mask, the result is that mask exactly."""
        self._check(lambda p: p.add_mask(obj_id, z, mask))
        obj = self.prompts.object(obj_id, name)
        return self._record(obj, int(z), (MaskPrompt(int(z), np.asarray(mask, dtype=bool).copy()),))

    def set_prompts(self, prompts: Prompts) -> None:
        """Add every prompt of ``prompts`` (all validated against the volume before any is applied)."""
        prompts.validate(self.volume.shape)
        for obj in prompts.objects.values():
            record = self.prompts.object(obj.obj_id, obj.name, label=obj.label)
            for z in obj.slices:
                self._record(record, z, tuple(obj.on_slice(z)))

    def undo(self) -> int | None:
        """Take back the last ``add_*`` call; returns the slice it changed (None: nothing to undo)."""
        if not self._actions:
            return None
        action = self._actions.pop()
        obj = self.prompts.objects[action.obj_id]
        obj.take(action.added)
        obj.put(action.removed)
        self._apply(obj, action.z)
        if obj.is_empty():
            del self.prompts.objects[action.obj_id]
        self.predict_slice(action.z)
        return action.z

    def remove_object(self, obj_id: int) -> None:
        """Forget an object: its prompts, its labels and its undo history."""
        obj = self.prompts.objects.pop(obj_id, None)
        if obj is None:
            return
        for z in obj.slices:
            self.tracker.clear_prompts(z, obj_id)
            self._slice_outputs.pop((obj_id, z), None)
            self._exact_masks.pop((obj_id, z), None)
        self._actions = [a for a in self._actions if a.obj_id != obj_id]
        labels = self._editable_labels()
        labels[labels == obj_id] = 0
        self._confidence.pop(obj_id, None)

    # --- results --------------------------------------------------------------------------
    def predict_slice(self, z: int) -> np.ndarray:
        """Label slice ``(y, x)`` with every object prompted on ``z`` as its prompts give it.

        Objects not prompted on ``z`` keep what the last propagation gave them. No model work
        happens here: prompts are applied when added (with the slice's features cached).
        """
        labels = self._editable_labels()[z]
        prompted = [o for (o, zz) in self._slice_outputs if zz == z]
        for obj_id in prompted:
            labels[labels == obj_id] = 0
        if prompted:
            outputs = [self._slice_outputs[(o, z)] for o in prompted]
            logits = np.concatenate([out.mask_logits() for out in outputs])
            for i, obj_id in enumerate(prompted):
                exact = self._exact_masks.get((obj_id, z))
                if exact is not None:
                    logits[i] = np.where(exact, np.float32(1e4), np.float32(-1e4))
            winner = np.asarray(prompted)[logits.argmax(axis=0)]
            painted = logits.max(axis=0) > 0  # an object prompted here wins over propagated ones
            labels[painted] = winner[painted]
            for out in outputs:
                self._confidence.setdefault(out.obj_ids[0], self._empty_confidence())[z] = out.scores[0]
        return labels.copy()

    @property
    def labels(self) -> np.ndarray:
        """The current label array ``(z, y, x)``, read-only (prompted slices and the last propagation)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    def propagate(
        self,
        *,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
        on_slice: Callable[[int, np.ndarray], None] | None = None,
    ) -> LabelVolume:
        """Propagate every object through the volume from all its prompted slices.

        ``progress(done, total)`` is called after each slice (and object group); ``should_stop()``
        is asked before each, and when True the session's labels are left as they were and
        ``medseg.errors.Cancelled`` is raised (the session stays usable). ``on_slice(z, labels)``
        gets each slice as soon as it is written (for live display; copy it, later passes may
        still change it).
        """
        if not self.prompts.objects:
            raise InputError("no prompts given: add at least one point, box or mask")
        nz = self.volume.shape[0]
        groups: dict[tuple[int, ...], list[int]] = {}
        for obj in sorted(self.prompts.objects.values(), key=lambda o: o.obj_id):
            groups.setdefault(tuple(obj.slices), []).append(obj.obj_id)
        total, done = nz * len(groups), 0
        labels = np.zeros_like(self._labels)
        best = np.full(self.volume.shape, -np.inf, dtype=np.float16)  # the logit each voxel's label won with
        confidence = {o: self._empty_confidence() for o in self.prompts.objects}
        for slices, obj_ids in groups.items():
            seen: set[int] = set()
            for start, end in plan_runs(list(slices), nz):
                with closing(self.tracker.propagate(start, end, obj_ids=obj_ids)) as run:
                    for out in run:
                        if out.frame_idx in seen:
                            continue
                        check_stop(should_stop, f"SAM2 propagation (after {done} of {total} slices; labels unchanged)")
                        self._write(labels, best, confidence, out)
                        if on_slice is not None:
                            on_slice(out.frame_idx, labels[out.frame_idx])
                        seen.add(out.frame_idx)
                        done += 1
                        report(progress, done, total)
        self._labels, self._confidence, self._labels_handed_out = labels, confidence, False
        log.debug("propagated %d object(s) over %d slices; encoder runs so far %d, slices read from the store %d",
                  len(self.prompts.objects), nz, self.cache.encoder_calls, self.cache.disk_hits)
        return self.result()

    def precompute(self, *, progress: Progress | None = None, should_stop: ShouldStop | None = None) -> int:
        """Encode every slice not encoded yet (into the store and the memory budget); returns how many.

        Run it while the user reads the scan: afterwards every prompt and propagation skips the
        image encoder. ``progress(done, total)`` counts slices; ``should_stop()`` is asked
        between batches and raises ``Cancelled`` (slices stored so far stay and count next time).
        """
        return self.cache.precompute(self.frames, progress=progress, should_stop=should_stop)

    def result(self) -> LabelVolume:
        """The current labels as a ``LabelVolume`` with names, scores and provenance.

        Objects that are parts of one label (``ObjectPrompts.label``) come back merged into it.
        Otherwise the array is shared with the session until the session's next edit, which
        copies it first: the returned object never changes, and ``segment`` holds one label array.
        """
        slice_scores, areas = {}, {}
        for obj_id in sorted(self.prompts.objects):
            areas[obj_id] = (self._labels == obj_id).sum(axis=(1, 2))
            conf = self._confidence.get(obj_id, self._empty_confidence())
            slice_scores[obj_id] = np.where(areas[obj_id] > 0, conf, np.nan)
        label_of = self.prompts.label_of()
        array, slice_scores, areas = merge_parts(self._labels, slice_scores, areas, label_of)
        self._labels_handed_out = array is self._labels
        scores = {}
        for label, per_slice in slice_scores.items():
            weights = np.where(np.isfinite(per_slice), areas[label], 0)
            scores[label] = float(np.nansum(per_slice * weights) / weights.sum()) if weights.sum() else 0.0
        names = {}
        for obj_id, obj in sorted(self.prompts.objects.items()):
            names.setdefault(label_of[obj_id], obj.name)
        return LabelVolume.like(
            self.volume,
            array,
            label_names=names,
            scores=scores,
            slice_scores=slice_scores,
            untrained=self.model.untrained,
            provenance={
                "method": "sam2-propagation",
                **self.model.provenance(),
                "preset": self.frames.preset.to_dict(),
                "preset_reason": self.preset_choice.reason,
                "prompts": self.prompts.to_dict(),
            },
        )

    # --- internals ------------------------------------------------------------------------
    def _check(self, add: Callable[[Prompts], object]) -> None:
        """Validate one new prompt against the volume before anything changes."""
        probe = Prompts()
        add(probe)
        probe.validate(self.volume.shape)

    def _seed(self, obj: ObjectPrompts, z: int) -> tuple[MaskPrompt, ...]:
        """A correction on a slice the object was only propagated to starts from the propagated mask there."""
        propagated = self._labels[z] == obj.obj_id
        return (MaskPrompt(z, propagated),) if z not in obj.slices and propagated.any() else ()

    def _record(self, obj: ObjectPrompts, z: int, added: tuple, removed: tuple = ()) -> np.ndarray:
        obj.take(removed)
        obj.put(added)
        try:
            self._apply(obj, z)
        except Exception:
            obj.take(added)
            obj.put(removed)
            self._apply(obj, z)
            if obj.is_empty():
                del self.prompts.objects[obj.obj_id]
            raise
        self._actions.append(_Action(obj.obj_id, z, added, removed))
        return self.predict_slice(z)

    def _apply(self, obj: ObjectPrompts, z: int) -> None:
        """Hand the object's prompts on slice ``z`` to the tracker (replacing earlier ones).

        Clicks refine step by step, as SAM2 refines a frame and trains its corrections: the
        slice's mask (with its box) or its box comes first, then each scribble and each click in
        turn, each step given the mask of the step before. The chain is rebuilt from the slice's
        prompts every time, so a live session and a replay of its prompts give the same masks.
        """
        key = (obj.obj_id, z)
        masks = [m.mask for m in obj.masks if m.z == z]
        boxes = [b for b in obj.boxes if b.z == z]
        steps = [[(y, x, int(sc.positive)) for y, x in sc.points()] for sc in obj.scribbles if sc.z == z]
        steps += [[(p.y, p.x, int(p.positive))] for p in obj.points if p.z == z]
        self._exact_masks.pop(key, None)
        if not (masks or boxes or steps):
            self.tracker.clear_prompts(z, obj.obj_id)
            self._slice_outputs.pop(key, None)
            labels = self._editable_labels()[z]
            labels[labels == obj.obj_id] = 0
            return
        if len(boxes) > 1:
            raise InputError(f"object {obj.obj_id}: SAM2 takes one box per object per slice; slice {z} has "
                             f"{len(boxes)}")
        mask = np.logical_or.reduce(masks) if masks else None
        box = (boxes[0].y0, boxes[0].x0, boxes[0].y1, boxes[0].x1) if boxes else None
        out = self.tracker.set_prompts(z, obj.obj_id, mask=mask, box_yxyx=box) if masks or boxes else None
        points: list[tuple[float, float, int]] = []
        for step in steps:
            points += step
            out = self.tracker.set_prompts(z, obj.obj_id, points_yx=[(y, x) for y, x, _ in points],
                                           labels=[positive for _, _, positive in points], box_yxyx=box, previous=out)
        self._slice_outputs[key] = out
        if mask is not None and not (boxes or steps):
            self._exact_masks[key] = mask

    def _write(self, labels: np.ndarray, best: np.ndarray, confidence: dict[int, np.ndarray], out: FrameOutput) -> None:
        """Paint one frame's objects into ``labels`` (see ``paint``); a mask prompt is painted as given."""
        z = out.frame_idx
        logits = out.mask_logits()
        for i, obj_id in enumerate(out.obj_ids):
            exact = self._exact_masks.get((obj_id, z))
            if exact is not None:
                logits[i] = np.where(exact, np.float32(1e4), np.float32(-1e4))
            confidence[obj_id][z] = out.scores[i]
        paint(labels[z], best[z], logits, out.obj_ids)

    def _editable_labels(self) -> np.ndarray:
        if self._labels_handed_out:
            self._labels, self._labels_handed_out = self._labels.copy(), False
        return self._labels

    def _empty_confidence(self) -> np.ndarray:
        return np.full(self.volume.shape[0], np.nan, dtype=np.float32)


def merge_parts(labels: np.ndarray, slice_scores: dict[int, np.ndarray], areas: dict[int, np.ndarray],
                label_of: dict[int, int]) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Object ids to label values: the label array, per-slice scores and per-slice areas of each label.

    A label made of several parts scores each slice with its parts' scores weighted by their
    areas on it (NaN where none is painted), as ``result`` weights slices for the whole object.

    >>> labels = np.array([[[1, 1, 4]]], np.int32)
    >>> array, scores, areas = merge_parts(labels, {1: np.array([0.9]), 4: np.array([0.6])},
    ...                                    {1: np.array([2]), 4: np.array([1])}, {1: 1, 4: 1})
    >>> array.tolist(), scores[1].round(2).tolist(), areas[1].tolist()
    ([[[1, 1, 1]]], [0.8], [3])
    """
    if all(obj_id == label for obj_id, label in label_of.items()):
        return labels, slice_scores, areas
    lookup = np.arange(max(max(label_of), int(labels.max())) + 1, dtype=labels.dtype)
    for obj_id, label in label_of.items():
        lookup[obj_id] = label
    merged_scores, merged_areas = {}, {}
    for label in sorted(set(label_of.values())):
        parts = [obj_id for obj_id, value in label_of.items() if value == label]
        scored = [np.where(np.isfinite(slice_scores[p]), areas[p], 0) for p in parts]
        weighted = np.sum([np.nan_to_num(slice_scores[p]) * w for p, w in zip(parts, scored)], axis=0)
        weight = np.sum(scored, axis=0)
        merged_scores[label] = np.where(weight > 0, weighted / np.maximum(weight, 1), np.nan)
        merged_areas[label] = np.sum([areas[p] for p in parts], axis=0)
    return lookup[labels], merged_scores, merged_areas


def paint(labels: np.ndarray, best: np.ndarray, logits: np.ndarray, obj_ids: tuple[int, ...]) -> None:
    """Paint ``obj_ids``' ``(n, H, W)`` logits into one label slice, in place.

    A pixel goes to the object with the highest positive logit, whichever propagation run (objects
    prompted on other slices run separately) wrote it first: ``best`` keeps the logit each pixel's
    label won with. So a lesion prompted on another slice than the organ around it takes its pixels
    from the organ where SAM2 is surer of the lesion, instead of the first run keeping them.

    >>> labels, best = np.zeros((1, 3), np.int32), np.full((1, 3), -np.inf, np.float16)
    >>> paint(labels, best, np.array([[[2.0, 2.0, -1.0]]]), (1,))
    >>> paint(labels, best, np.array([[[1.0, 3.0, 1.0]]]), (2,))
    >>> labels.tolist()
    [[1, 2, 2]]
    """
    top = logits.max(axis=0)
    winner = np.asarray(obj_ids)[logits.argmax(axis=0)]
    painted = (top > 0) & (top > best)
    labels[painted] = winner[painted]
    best[painted] = top[painted]

