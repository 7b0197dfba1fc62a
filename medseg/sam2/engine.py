"""Low-level SAM2 engine over lazy frames: a shared encoder cache and a bounded-memory tracker.

Building blocks (used by ``medseg.sam2`` and ``medseg.revsam2``):

``FeatureCache(model, *, max_bytes=None, store=True)`` (``medseg.sam2.features``)
    Image-encoder outputs keyed by ``Frame.key``, in memory within a byte budget and in the
    on-disk embedding store; share one cache between many trackers so that each distinct
    slice is encoded once. ``encoder_calls`` counts slices encoded. Frames with prompts are
    pinned.
``Tracker(model, frames, cache=None, *, offload_state_to_cpu=False)``
    One SAM2 inference state over any sequence of ``Frame`` objects (slices of one volume,
    or support slices of other volumes followed by query slices).

    * ``set_prompts(i, obj_id, mask=, points_yx=, labels=, box_yxyx=, previous=)``: the prompts of
      one object on frame ``i``, in that frame's pixel coordinates, replacing earlier ones there.
      A mask alone is taken as the output (SAM 2.1), stored at ``image_size / 4`` like every
      output (``Sam2Session`` gives it back exactly); points/box given with a mask refine
      it, and so do points given with ``previous``, an earlier output on the frame (a
      correction click). Every prompted frame is a *conditioning* frame.
    * ``propagate(start, end, obj_ids=None)``: track frames ``start..end`` inclusive (backwards
      when ``end < start``), yielding one ``FrameOutput`` per frame.
    * ``clear_prompts(i, obj_id)``, ``obj_ids``, ``memory_frames()``.
``carry_mask_prompts(model, cache, prompts, targets)``
    For many objects at once, each prompted only by a mask on its own frame: every target frame's
    output, tracked from that frame alone. The same as one ``Tracker`` per object over
    ``[its frame, *targets]`` with one ``propagate(i, i)`` per target, in one SAM2 batch
    (reverse scoring in ``medseg.revsam2`` runs it for its candidate slices).

Memory: SAM2's own loop keeps every frame's outputs. Here each ``propagate`` call starts
and ends with no non-conditioning memory, and while it runs keeps full outputs only for the
frames the memory attention can reach (``num_maskmem - 1`` frames back, times the memory
stride) and object pointers for ``max_obj_ptrs_in_encoder - 1`` frames back. So the state
holds the conditioning frames plus a fixed window, whatever the number of slices, and old
memory cannot linger to mask a correction (sam2 issues #546/#719).

``FrameOutput`` carries low-resolution logits (``image_size / 4`` square) per object,
P(object present) from SAM2's object-score head and the decoder's predicted IoU;
``mask_logits()`` / ``masks()`` resize them to the frame's own shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medseg.errors import InputError
from medseg.sam2.features import FeatureCache
from medseg.sam2.frames import Frame, to_model_xy, upsample_logits
from medseg.sam2.meta_internals import Sam2State, carry_masks, output_tensors
from medseg.sam2.model import Sam2Model


@dataclass(frozen=True, eq=False)
class FrameOutput:
    """SAM2's output for some objects on one frame.

    ``logits``: ``(n_obj, S/4, S/4)`` float32 mask logits in the model frame;
    ``object_scores``: P(object present) per object; ``ious``: predicted IoU per object
    (1 for a mask prompt); ``frame_shape``: the frame's own ``(H, W)``.
    """

    frame_idx: int
    obj_ids: tuple[int, ...]
    logits: torch.Tensor
    object_scores: np.ndarray
    ious: np.ndarray
    frame_shape: tuple[int, int]

    @property
    def scores(self) -> np.ndarray:
        """Per-object confidence on this frame: P(present) times predicted IoU."""
        return self.object_scores * self.ious

    def mask_logits(self) -> np.ndarray:
        """``(n_obj, H, W)`` float32 logits at the frame's shape."""
        return upsample_logits(self.logits, self.frame_shape).numpy()

    def masks(self) -> np.ndarray:
        """``(n_obj, H, W)`` bool masks at the frame's shape (each object on its own)."""
        return self.mask_logits() > 0


class Tracker:
    """One SAM2 inference state over ``frames``; see the module docstring.

    Parameters
    ----------
    model
        From ``medseg.sam2.load_model``.
    frames
        Any sequence of ``Frame``; frame ``i`` of the state is ``frames[i]``.
    cache
        Shared ``FeatureCache`` of the same model; by default a private one holding the
        current and the prompted frames, without the disk store.
    offload_state_to_cpu
        Keep memory features and masks in CPU memory (saves GPU memory on long stacks).
    """

    def __init__(
        self,
        model: Sam2Model,
        frames: Sequence[Frame],
        cache: FeatureCache | None = None,
        *,
        offload_state_to_cpu: bool = False,
    ) -> None:
        if cache is None:
            cache = FeatureCache(model, max_bytes=0, store=False)
        if cache.model is not model:
            raise InputError("the FeatureCache belongs to another model; features are only valid for their model")
        if len(frames) == 0:
            raise InputError("a Tracker needs at least one frame")
        self.model = model
        self.frames = frames
        self.cache = cache
        self._pinned_frames: dict[int, set[int]] = {}  # frame index -> object ids with prompts there
        self._state = Sam2State(model.net, frames, cache, image_size=model.image_size, device=model.device,
                                offload_state_to_cpu=offload_state_to_cpu)

    @property
    def obj_ids(self) -> list[int]:
        """Objects with prompts, in the order SAM2 batches them."""
        return self._state.obj_ids

    def set_prompts(
        self,
        frame_idx: int,
        obj_id: int,
        *,
        mask: np.ndarray | None = None,
        points_yx: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box_yxyx: tuple[float, float, float, float] | None = None,
        previous: FrameOutput | None = None,
    ) -> FrameOutput:
        """Set the prompts of ``obj_id`` on frame ``frame_idx``, replacing any earlier ones there.

        Coordinates are pixel indices ``(y, x)`` of the frame (converted to the model frame
        here, once). ``labels``: 1 positive, 0 negative, one per point. ``box_yxyx``: inclusive
        corners ``(y0, x0, y1, x1)``. ``previous``: the object's output on this frame before the
        newest points, fed to the decoder with them (points or a box only, not with a mask):
        SAM2 refines a frame's mask click by click this way, and trains its corrections so.
        Returns the object's output on that frame.
        """
        frame = self.frames[frame_idx]
        has_points = points_yx is not None and len(points_yx) > 0
        if mask is None and not has_points and box_yxyx is None:
            raise InputError(f"object {obj_id} on frame {frame_idx}: give a mask, points or a box")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != frame.shape:
                raise InputError(f"object {obj_id}: mask of shape {mask.shape} on frame {frame_idx} of shape "
                                 f"{frame.shape}")
            if not mask.any():
                raise InputError(f"object {obj_id}: the mask on frame {frame_idx} is empty")
        size = self.model.image_size
        points = labels_t = box = None
        if has_points:
            points = torch.as_tensor(to_model_xy(points_yx, frame.shape, size) / size, dtype=torch.float32)
            labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int32).reshape(-1))
            if len(labels_t) != len(points):
                raise InputError(f"object {obj_id} on frame {frame_idx}: {len(points)} points but "
                                 f"{len(labels_t)} labels")
        if box_yxyx is not None:
            y0, x0, y1, x1 = box_yxyx
            corners = to_model_xy([(y0, x0), (y1, x1)], frame.shape, size) / size
            box = torch.as_tensor(corners.reshape(-1), dtype=torch.float32)
        self._forget_prompts(frame_idx, obj_id)
        with self.model.inference():
            previous_logits = None if previous is None else previous.logits[list(previous.obj_ids).index(obj_id)]
            out = self._state.prompt(frame_idx, obj_id, mask=None if mask is None else torch.from_numpy(mask),
                                     points=points, labels=labels_t, box=box, previous_logits=previous_logits)
        holders = self._pinned_frames.setdefault(frame_idx, set())
        if not holders:
            self.cache.pin(frame.key)
        holders.add(obj_id)
        return self._frame_output(frame_idx, [obj_id], [out])

    def clear_prompts(self, frame_idx: int, obj_id: int) -> None:
        """Remove the prompts of ``obj_id`` on ``frame_idx``; an object left with none is dropped."""
        self._forget_prompts(frame_idx, obj_id)
        with self.model.inference():
            self._state.drop_if_unprompted(obj_id)

    def propagate(self, start: int, end: int, *, obj_ids: Sequence[int] | None = None) -> Iterator[FrameOutput]:
        """Track ``obj_ids`` (all by default) over frames ``start..end`` inclusive.

        Runs backwards when ``end < start``. Prompted frames on the way yield their prompt
        output unchanged. Memory of earlier ``propagate`` calls is not used: every call starts
        from the conditioning frames only.
        """
        n = len(self.frames)
        if not (0 <= start < n and 0 <= end < n):
            raise InputError(f"propagation range {start}..{end} is outside the {n} frames")
        known = self.obj_ids
        obj_ids = list(known if obj_ids is None else obj_ids)
        if not obj_ids:
            raise InputError("nothing to propagate: add a mask, points or a box first")
        unknown = [o for o in obj_ids if o not in known]
        if unknown:
            raise InputError(f"objects {unknown} have no prompts; add a mask, points or a box first")
        reverse = end < start
        order = range(start, end - 1, -1) if reverse else range(start, end + 1)
        with self.model.inference():
            handles = self._state.start_run(obj_ids)
        try:
            for t in order:
                with self.model.inference():
                    outs = [self._state.track(handle, t, reverse=reverse) for handle in handles]
                    result = self._frame_output(t, obj_ids, outs)
                yield result
        finally:
            self._state.end_run(handles)

    def memory_frames(self) -> dict[str, int]:
        """How many frames the state holds something for (all objects together).

        ``conditioning``: prompted frames; ``spatial``: non-conditioning frames with memory
        features; ``pointers``: non-conditioning frames kept (pointer or more);
        ``cached_features``: entries of the feature cache.
        """
        return {**self._state.memory_frames(), "cached_features": len(self.cache)}

    def _frame_output(self, frame_idx: int, obj_ids: Sequence[int], outs: list[dict]) -> FrameOutput:
        return _frame_output(frame_idx, obj_ids, outs, self.frames[frame_idx].shape)

    def _forget_prompts(self, frame_idx: int, obj_id: int) -> None:
        self._state.forget_prompts(frame_idx, obj_id)
        holders = self._pinned_frames.get(frame_idx)
        if holders and obj_id in holders:
            holders.discard(obj_id)
            if not holders:
                del self._pinned_frames[frame_idx]
                self.cache.unpin(self.frames[frame_idx].key)


def carry_mask_prompts(model: Sam2Model, cache: FeatureCache, prompts: Sequence[tuple[Frame, np.ndarray]],
                       targets: Sequence[Frame]) -> list[FrameOutput]:
    """Each target frame's output for objects ``0..len(prompts)-1``, object ``b`` prompted only by the mask
    ``prompts[b][1]`` on the frame ``prompts[b][0]`` and tracked from there alone (``FrameOutput.obj_ids``
    are the prompts' indices; target ``j`` is frame ``j + 1`` after the prompted one).

    Equal, up to float rounding, to a ``Tracker`` over ``[prompts[b][0], *targets]`` per object, with
    ``set_prompts(0, b, mask=...)`` and one ``propagate(i, i)`` per target; but one SAM2 batch does
    the work of all those trackers (memory attention and decoder run once per target for all
    objects, no memory is encoded for the targets).
    """
    if not prompts or not targets:
        raise InputError("carrying mask prompts needs at least one prompt and one target frame")
    masks = []
    for b, (frame, mask) in enumerate(prompts):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != frame.shape or not mask.any():
            raise InputError(f"mask prompt {b}: {'empty' if mask.shape == frame.shape else f'shape {mask.shape}'} "
                             f"on a frame of shape {frame.shape}")
        masks.append(torch.from_numpy(mask))
    frames = [tuple(frame for frame, _ in prompts), *targets]
    with model.inference():
        outs = carry_masks(model.net, frames, cache, masks, image_size=model.image_size, device=model.device)
        ids = list(range(len(prompts)))
        return [_frame_output(j + 1, ids, [out], frame.shape) for j, (frame, out) in enumerate(zip(targets, outs))]


def _frame_output(frame_idx: int, obj_ids: Sequence[int], outs: list[dict], shape: tuple[int, int]) -> FrameOutput:
    logits, object_logits, ious = output_tensors(outs)
    logits = logits.float().cpu()
    object_scores = object_logits.float().sigmoid().cpu().numpy()
    ious = ious.float().clamp(0, 1).cpu().numpy()
    return FrameOutput(frame_idx, tuple(obj_ids), logits, object_scores, ious, shape)
