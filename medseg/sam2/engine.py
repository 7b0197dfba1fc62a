"""Low-level SAM2 engine over lazy frames: a shared encoder cache and a bounded-memory tracker.

Building blocks (used by ``medseg.sam2`` and ``medseg.revsam2``):

``FeatureCache(model, *, max_frames=None)``
    Image-encoder outputs keyed by ``Frame.key``; share one cache between many trackers so
    that each distinct slice is encoded once. ``encoder_calls`` counts real encoder runs.
    Frames with prompts are pinned; other entries are kept least-recently-used up to
    ``max_frames`` (``None``: keep everything). The positional encoding, identical for every
    frame, is stored once.
``Tracker(model, frames, cache=None, *, offload_state_to_cpu=False)``
    One SAM2 inference state over any sequence of ``Frame`` objects (slices of one volume,
    or support slices of other volumes followed by query slices).

    * ``set_prompts(i, obj_id, mask=, points_yx=, labels=, box_yxyx=)``: the prompts of one
      object on frame ``i``, in that frame's pixel coordinates, replacing earlier ones there.
      A mask alone is taken as the output (SAM 2.1), stored at ``image_size / 4`` like every
      output (``Sam2Session`` gives it back exactly); points/box given with a mask refine
      it. Every prompted frame is a *conditioning* frame.
    * ``propagate(start, end, obj_ids=None)``: track frames ``start..end`` inclusive (backwards
      when ``end < start``), yielding one ``FrameOutput`` per frame.
    * ``clear_prompts(i, obj_id)``, ``obj_ids``, ``memory_frames()``.

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

from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sam2.sam2_video_predictor import SAM2VideoPredictor

from medseg.errors import InputError
from medseg.sam2.frames import Frame, model_input, to_model_xy, upsample_logits
from medseg.sam2.model import Sam2Model


class VolumeVideoPredictor(SAM2VideoPredictor):
    """``SAM2VideoPredictor`` reading frame features from ``inference_state["feature_cache"]``.

    Built by ``medseg.sam2.model.load_model``; inference states come from ``Tracker``.
    """

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        frame = inference_state["frames"][frame_idx]
        fpn, pos = inference_state["feature_cache"].features(frame)
        device = inference_state["device"]
        backbone_out = {
            "backbone_fpn": [f.to(device, non_blocking=True).expand(batch_size, -1, -1, -1) for f in fpn],
            "vision_pos_enc": [p.to(device, non_blocking=True).expand(batch_size, -1, -1, -1) for p in pos],
        }
        # SAM2 returns the input image first; no caller uses it, so it is not kept.
        return (None, *self._prepare_backbone_features(backbone_out))

    def _track_step(self, *args, **kwargs):
        current_out, sam_outputs, high_res_features, pix_feat = super()._track_step(*args, **kwargs)
        # SAM2 drops the predicted IoU; keep the one of the mask it picked (the highest).
        current_out["pred_iou"] = sam_outputs[2].float().max(dim=-1).values
        return current_out, sam_outputs, high_res_features, pix_feat

    def _get_maskmem_pos_enc(self, inference_state, current_out):
        # The one hook that sees a frame's full output inside _run_single_frame_inference:
        # pass the predicted IoU to the Tracker, which stores it with the compact output.
        if "pred_iou" in current_out:
            inference_state["last_pred_iou"] = current_out["pred_iou"]
        return super()._get_maskmem_pos_enc(inference_state, current_out)


class FeatureCache:
    """Image-encoder features of frames, keyed by ``Frame.key``; see the module docstring.

    Parameters
    ----------
    model
        The model whose encoder fills the cache (features are only valid for it).
    max_frames
        Unpinned frames kept (least recently used first out); ``None`` keeps every frame.
    device
        Where features are stored; the model's device by default (``"cpu"`` to offload).
    """

    def __init__(self, model: Sam2Model, *, max_frames: int | None = None, device: str | torch.device | None = None) -> None:
        if max_frames is not None and max_frames < 1:
            raise InputError(f"max_frames must be at least 1 or None, got {max_frames}")
        self.model = model
        self.max_frames = max_frames
        self.device = torch.device(device) if device is not None else model.device
        self.encoder_calls = 0
        self.hits = 0
        self._entries: OrderedDict[Hashable, list[torch.Tensor]] = OrderedDict()
        self._pins: Counter = Counter()
        self._pos_enc: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def features(self, frame: Frame) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(backbone_fpn, vision_pos_enc)`` of ``frame``, running the encoder on a miss."""
        fpn = self._entries.get(frame.key)
        if fpn is None:
            fpn = self._encode(frame)
            self._entries[frame.key] = fpn
            self._evict()
        else:
            self.hits += 1
            self._entries.move_to_end(frame.key)
        return fpn, self._pos_enc

    def pin(self, key: Hashable) -> None:
        """Keep ``key`` cached until as many ``unpin`` calls (pins are counted)."""
        self._pins[key] += 1

    def unpin(self, key: Hashable) -> None:
        self._pins[key] -= 1
        if self._pins[key] <= 0:
            del self._pins[key]
            self._evict()

    def clear(self) -> None:
        """Drop every cached feature (pins stay, and are re-filled on demand)."""
        self._entries.clear()

    def _encode(self, frame: Frame) -> list[torch.Tensor]:
        image = frame.load()
        if image.shape != (3, *frame.shape):
            raise InputError(f"frame {frame.key!r} loaded with shape {image.shape}, expected {(3, *frame.shape)}")
        with self.model.inference():
            out = self.model.net.forward_image(model_input(image, self.model.image_size, self.model.device))
        self.encoder_calls += 1
        if self._pos_enc is None:
            self._pos_enc = [p[:1].to(self.device) for p in out["vision_pos_enc"]]
        return [f.to(self.device) for f in out["backbone_fpn"]]

    def _evict(self) -> None:
        if self.max_frames is None:
            return
        unpinned = [k for k in self._entries if k not in self._pins]
        for key in unpinned[: max(0, len(unpinned) - self.max_frames)]:
            del self._entries[key]


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
        Shared ``FeatureCache`` of the same model; a private 2-frame one by default.
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
            cache = FeatureCache(model, max_frames=2)
        if cache.model is not model:
            raise InputError("the FeatureCache belongs to another model; features are only valid for their model")
        if len(frames) == 0:
            raise InputError("a Tracker needs at least one frame")
        self.model = model
        self.frames = frames
        self.cache = cache
        self._pinned_frames: dict[int, set[int]] = {}  # frame index -> object ids with prompts there
        size = model.image_size
        self._state = {
            "frames": frames,
            "feature_cache": cache,
            "num_frames": len(frames),
            # outputs stay in the model frame; FrameOutput resizes them per frame
            "video_height": size,
            "video_width": size,
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": offload_state_to_cpu,
            "device": model.device,
            "storage_device": torch.device("cpu") if offload_state_to_cpu else model.device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }

    @property
    def obj_ids(self) -> list[int]:
        """Objects with prompts, in the order SAM2 batches them."""
        return list(self._state["obj_ids"])

    def set_prompts(
        self,
        frame_idx: int,
        obj_id: int,
        *,
        mask: np.ndarray | None = None,
        points_yx: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box_yxyx: tuple[float, float, float, float] | None = None,
    ) -> FrameOutput:
        """Set the prompts of ``obj_id`` on frame ``frame_idx``, replacing any earlier ones there.

        Coordinates are pixel indices ``(y, x)`` of the frame (converted to the model frame
        here, once). ``labels``: 1 positive, 0 negative, one per point. ``box_yxyx``: inclusive
        corners ``(y0, x0, y1, x1)``. Returns the object's output on that frame.
        """
        frame = self.frames[frame_idx]
        has_points = points_yx is not None and len(points_yx) > 0
        if mask is None and not has_points and box_yxyx is None:
            raise InputError(f"object {obj_id} on frame {frame_idx}: give a mask, points or a box")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != frame.shape:
                raise InputError(f"object {obj_id}: mask of shape {mask.shape} on frame {frame_idx} of shape {frame.shape}")
            if not mask.any():
                raise InputError(f"object {obj_id}: the mask on frame {frame_idx} is empty")
        self._forget_prompts(frame_idx, obj_id)
        net, size = self.model.net, self.model.image_size
        with self.model.inference():
            if mask is not None:
                net.add_new_mask(self._state, frame_idx, obj_id, torch.from_numpy(mask))
            if has_points or box_yxyx is not None:
                points = labels_t = box = None
                if has_points:
                    points = torch.as_tensor(to_model_xy(points_yx, frame.shape, size) / size, dtype=torch.float32)
                    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int32).reshape(-1))
                    if len(labels_t) != len(points):
                        raise InputError(f"object {obj_id} on frame {frame_idx}: {len(points)} points but {len(labels_t)} labels")
                if box_yxyx is not None:
                    y0, x0, y1, x1 = box_yxyx
                    corners = to_model_xy([(y0, x0), (y1, x1)], frame.shape, size) / size
                    box = torch.as_tensor(corners.reshape(-1), dtype=torch.float32)
                net.add_new_points_or_box(
                    self._state, frame_idx, obj_id, points=points, labels=labels_t, box=box, normalize_coords=False
                )
        obj_idx = self._state["obj_id_to_idx"][obj_id]
        out = self._state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"][frame_idx]
        out["pred_iou"] = self._state.pop("last_pred_iou")
        holders = self._pinned_frames.setdefault(frame_idx, set())
        if not holders:
            self.cache.pin(frame.key)
        holders.add(obj_id)
        return self._frame_output(frame_idx, [obj_id], [out])

    def clear_prompts(self, frame_idx: int, obj_id: int) -> None:
        """Remove the prompts of ``obj_id`` on ``frame_idx``; an object left with none is dropped."""
        self._forget_prompts(frame_idx, obj_id)
        obj_idx = self._state["obj_id_to_idx"].get(obj_id)
        if obj_idx is None:
            return
        has_inputs = self._state["point_inputs_per_obj"][obj_idx] or self._state["mask_inputs_per_obj"][obj_idx]
        if not has_inputs:
            with self.model.inference():
                self.model.net.remove_object(self._state, obj_id, need_output=False)

    def propagate(self, start: int, end: int, *, obj_ids: Sequence[int] | None = None) -> Iterator[FrameOutput]:
        """Track ``obj_ids`` (all by default) over frames ``start..end`` inclusive.

        Runs backwards when ``end < start``. Prompted frames on the way yield their prompt
        output unchanged. Memory of earlier ``propagate`` calls is not used: every call starts
        from the conditioning frames only.
        """
        n = self._state["num_frames"]
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
        net = self.model.net
        obj_dicts = [self._state["output_dict_per_obj"][self._state["obj_id_to_idx"][o]] for o in obj_ids]
        with self.model.inference():
            net.propagate_in_video_preflight(self._state)
        for od in obj_dicts:
            od["non_cond_frame_outputs"].clear()
        try:
            for t in order:
                outs = []
                with self.model.inference():
                    for od in obj_dicts:
                        out = od["cond_frame_outputs"].get(t)
                        if out is None:
                            out, _ = net._run_single_frame_inference(
                                inference_state=self._state, output_dict=od, frame_idx=t, batch_size=1,
                                is_init_cond_frame=False, point_inputs=None, mask_inputs=None,
                                reverse=reverse, run_mem_encoder=True,
                            )
                            out["pred_iou"] = self._state.pop("last_pred_iou")
                            od["non_cond_frame_outputs"][t] = out
                            self._forget_far(od["non_cond_frame_outputs"], t, reverse)
                        outs.append(out)
                    result = self._frame_output(t, obj_ids, outs)
                yield result
        finally:
            for od in obj_dicts:
                od["non_cond_frame_outputs"].clear()

    def memory_frames(self) -> dict[str, int]:
        """How many frames the state holds something for (all objects together).

        ``conditioning``: prompted frames; ``spatial``: non-conditioning frames with memory
        features; ``pointers``: non-conditioning frames kept (pointer or more);
        ``cached_features``: entries of the feature cache.
        """
        cond, spatial, pointers = set(), set(), set()
        for od in self._state["output_dict_per_obj"].values():
            cond |= set(od["cond_frame_outputs"])
            pointers |= set(od["non_cond_frame_outputs"])
            spatial |= {t for t, o in od["non_cond_frame_outputs"].items() if o.get("maskmem_features") is not None}
        for od in self._state["temp_output_dict_per_obj"].values():
            cond |= set(od["cond_frame_outputs"])
        return {"conditioning": len(cond), "spatial": len(spatial), "pointers": len(pointers), "cached_features": len(self.cache)}

    def _frame_output(self, frame_idx: int, obj_ids: Sequence[int], outs: list[dict]) -> FrameOutput:
        logits = torch.cat([o["pred_masks"][:, 0] for o in outs]).float().cpu()
        object_scores = torch.cat([o["object_score_logits"].reshape(-1) for o in outs]).float().sigmoid().cpu().numpy()
        ious = torch.cat([o["pred_iou"].reshape(-1) for o in outs]).float().clamp(0, 1).cpu().numpy()
        return FrameOutput(frame_idx, tuple(obj_ids), logits, object_scores, ious, self.frames[frame_idx].shape)

    def _forget_prompts(self, frame_idx: int, obj_id: int) -> None:
        obj_idx = self._state["obj_id_to_idx"].get(obj_id)
        if obj_idx is not None:
            self._state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
            self._state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
            for dicts in (self._state["temp_output_dict_per_obj"], self._state["output_dict_per_obj"]):
                dicts[obj_idx]["cond_frame_outputs"].pop(frame_idx, None)
                dicts[obj_idx]["non_cond_frame_outputs"].pop(frame_idx, None)
        holders = self._pinned_frames.get(frame_idx)
        if holders and obj_id in holders:
            holders.discard(obj_id)
            if not holders:
                del self._pinned_frames[frame_idx]
                self.cache.unpin(self.frames[frame_idx].key)

    def _forget_far(self, outputs: dict[int, dict], t: int, reverse: bool) -> None:
        """Drop what the memory attention can no longer reach from the frames after ``t``.

        The next frame reads spatial memory from at most ``stride * (num_maskmem - 2)``
        frames behind ``t`` (SAM2's ``_prepare_memory_conditioned_features``) and object
        pointers from ``max_obj_ptrs_in_encoder - 2`` behind ``t``.
        """
        net = self.model.net
        spatial_reach = net.memory_temporal_stride_for_eval * (net.num_maskmem - 2)
        pointer_reach = net.max_obj_ptrs_in_encoder - 2
        for s in list(outputs):
            distance = s - t if reverse else t - s
            if distance > pointer_reach:
                del outputs[s]
            elif distance > spatial_reach and outputs[s].get("maskmem_features") is not None:
                outputs[s] = {"obj_ptr": outputs[s]["obj_ptr"], "maskmem_features": None, "pred_masks": None}
