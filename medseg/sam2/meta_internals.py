"""Every use of SAM2's private internals, in one place, checked against the installed version.

medseg drives Meta's ``SAM2VideoPredictor`` without its ``init_state`` (which decodes every
frame of a video into memory up front): it builds the inference-state dict itself over lazy
frames, overrides three private hooks and calls private per-frame inference and memory
encoding. All of that depends on sam2's internal layout, which has no stability promise, so
this module is the only one that touches it, and it refuses to load against a sam2 version it
was not tested with.
``medseg.sam2.engine`` uses only the names below.

Tested with sam2 ``SUPPORTED_SAM2_VERSIONS``. To support another version: read the methods
named in each comment below in that version's ``sam2/sam2_video_predictor.py`` and
``sam2/modeling/sam2_base.py``, run ``tests/test_sam2.py`` (one test proves the bounded
tracker equals SAM2's own ``propagate_in_video``), and add the version.
"""

from __future__ import annotations

import importlib.metadata
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from medseg.errors import MedsegError

SUPPORTED_SAM2_VERSIONS = ("1.1.0",)


class Sam2VersionError(MedsegError):
    """The installed ``sam2`` package is missing or a version medseg was not tested with."""


def installed_sam2_version() -> str | None:
    """The installed ``sam2`` distribution's version (None when it is not installed)."""
    try:
        return importlib.metadata.version("sam2")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_sam2_version() -> None:
    """Raise ``Sam2VersionError`` unless the installed sam2 is one of ``SUPPORTED_SAM2_VERSIONS``."""
    version = installed_sam2_version()
    if version in SUPPORTED_SAM2_VERSIONS:
        return
    found = "is not installed" if version is None else f"{version} is installed"
    raise Sam2VersionError(
        f"medseg uses SAM2 internals tested with sam2 {', '.join(SUPPORTED_SAM2_VERSIONS)} only, and sam2 {found}. "
        f"Install a tested version: SAM2_BUILD_CUDA=0 pip install sam2=={SUPPORTED_SAM2_VERSIONS[-1]}"
    )


check_sam2_version()

import torch  # noqa: E402  (after the version check: the imports below are what it protects)
from sam2.sam2_video_predictor import SAM2VideoPredictor  # noqa: E402

from medseg.sam2.prompt_prior import prompt_prior  # noqa: E402

_IOU_KEY = "pred_iou"  # medseg's key in SAM2's per-frame output dicts
_LAST_IOU = "medseg_last_pred_iou"  # side channel in the inference state, set by the hook below


class VolumeVideoPredictor(SAM2VideoPredictor):
    """``SAM2VideoPredictor`` reading frame features from the state's ``FeatureCache``.

    Built by ``medseg.sam2.model.load_model`` (as the Hydra ``_target_``); states come from
    ``Sam2State``. ``prompt_prior``: give a frame's first point/box prompt also as a dense mask
    (``medseg.sam2.prompt_prior``); set for networks trained that way, never for Meta's.
    """

    prompt_prior = False

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        # SAM2: runs the image encoder on the preloaded frame tensor and keeps the last frame's
        # features in inference_state["cached_features"]. medseg: frames are lazy and features
        # come from a shared FeatureCache (one encoder run per distinct slice, across trackers
        # and objects); the rest is SAM2's own _prepare_backbone_features.
        # A frame given as a tuple holds one frame per object of the batch (``carry_masks``).
        frame = inference_state["frames"][frame_idx]
        cache = inference_state["feature_cache"]
        if isinstance(frame, tuple):
            per_object = [cache.features(f) for f in frame]
            fpn = [torch.cat(levels) for levels in zip(*(f for f, _ in per_object))]
            pos = per_object[0][1]  # the encoding depends on the levels' shapes only
        else:
            fpn, pos = cache.features(frame)
        device = inference_state["device"]
        backbone_out = {
            "backbone_fpn": [f.to(device, non_blocking=True).expand(batch_size, -1, -1, -1) for f in fpn],
            "vision_pos_enc": [p.to(device, non_blocking=True).expand(batch_size, -1, -1, -1) for p in pos],
        }
        # SAM2 returns the input image first; no caller uses it, so it is not kept.
        return (None, *self._prepare_backbone_features(backbone_out))

    def _track_step(self, frame_idx, is_init_cond_frame, current_vision_feats, current_vision_pos_embeds, feat_sizes,
                    point_inputs, mask_inputs, output_dict, num_frames, track_in_reverse=False,
                    prev_sam_mask_logits=None):
        # SAM2: returns (current_out, sam_outputs, ...) and drops the decoder's predicted IoU
        # (sam_outputs[2]). medseg reports it as a per-slice confidence: keep the IoU of the
        # mask SAM2 picked (the highest) in the frame's output dict.
        # SAM2 feeds prev_sam_mask_logits (an earlier mask on this frame) with the points; a network
        # trained with prompt priors gets the prior there when there is no earlier mask.
        if self.prompt_prior and point_inputs is not None and mask_inputs is None and prev_sam_mask_logits is None:
            prev_sam_mask_logits = prompt_prior(point_inputs["point_coords"], point_inputs["point_labels"],
                                                self.image_size)
        current_out, sam_outputs, high_res_features, pix_feat = super()._track_step(
            frame_idx, is_init_cond_frame, current_vision_feats, current_vision_pos_embeds, feat_sizes, point_inputs,
            mask_inputs, output_dict, num_frames, track_in_reverse, prev_sam_mask_logits)
        current_out[_IOU_KEY] = sam_outputs[2].float().max(dim=-1).values
        return current_out, sam_outputs, high_res_features, pix_feat

    def _get_maskmem_pos_enc(self, inference_state, current_out):
        # SAM2: caches the memory positional encoding. It is the one hook that sees a frame's full
        # output inside _run_single_frame_inference, which returns a compacted copy without
        # our IoU; pass the IoU on through the state so Sam2State can put it back.
        if _IOU_KEY in current_out:
            inference_state[_LAST_IOU] = current_out[_IOU_KEY]
        return super()._get_maskmem_pos_enc(inference_state, current_out)


def _take_iou(raw: dict, out: dict) -> dict:
    out[_IOU_KEY] = raw.pop(_LAST_IOU)
    return out


class Sam2State:
    """A hand-built SAM2 inference state over lazy frames, with the calls medseg makes on it.

    SAM2's ``init_state`` loads and resizes every frame of a video up front; this state holds
    a ``Frame`` sequence and a ``FeatureCache`` instead (read by ``VolumeVideoPredictor``).
    Outputs stay in the model frame (``video_height = video_width = image_size``); callers
    resize them per frame. ``raw`` is the dict SAM2's methods take.
    """

    def __init__(self, net: VolumeVideoPredictor, frames: Sequence, cache: Any, *, image_size: int,
                 device: torch.device, offload_state_to_cpu: bool) -> None:
        self.net = net
        self.raw: dict[str, Any] = {
            "frames": frames,
            "feature_cache": cache,
            "num_frames": len(frames),
            "video_height": image_size,
            "video_width": image_size,
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": offload_state_to_cpu,
            "device": device,
            "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
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
        return list(self.raw["obj_ids"])

    def prompt(self, frame_idx: int, obj_id: int, *, mask: torch.Tensor | None, points: torch.Tensor | None,
               labels: torch.Tensor | None, box: torch.Tensor | None,
               previous_logits: torch.Tensor | None = None) -> dict:
        """Add a mask and/or points/box (model-frame coordinates / image_size) and return the frame's output.

        SAM2's public ``add_new_mask`` / ``add_new_points_or_box`` on this hand-built state;
        their result sits in SAM2's temporary output dict until the next preflight.
        ``previous_logits`` (``(S/4, S/4)``, points or a box only): the object's earlier mask on
        this frame, which ``add_new_points_or_box`` feeds to the decoder with the points, as it
        does with whatever a frame held before a new click.
        """
        if mask is not None:
            self.net.add_new_mask(self.raw, frame_idx, obj_id, mask)
        elif previous_logits is not None:
            self._put_previous(frame_idx, obj_id, previous_logits)
        if points is not None or box is not None:
            self.net.add_new_points_or_box(self.raw, frame_idx, obj_id, points=points, labels=labels, box=box,
                                           normalize_coords=False)
        obj_idx = self.raw["obj_id_to_idx"][obj_id]
        return _take_iou(self.raw, self.raw["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"][frame_idx])

    def _put_previous(self, frame_idx: int, obj_id: int, logits: torch.Tensor) -> None:
        """Where ``add_new_points_or_box`` looks first for a frame's earlier mask (its temporary output
        under the storage key it will write), a stand-in holding only ``logits``; it replaces the
        stand-in with its own output."""
        obj_idx = self.net._obj_id_to_idx(self.raw, obj_id)
        tracked = self.raw["frames_tracked_per_obj"][obj_idx]
        is_cond = frame_idx not in tracked or self.net.add_all_frames_to_correct_as_cond
        key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        pred_masks = logits.reshape(1, 1, *logits.shape[-2:]).to(self.raw["storage_device"])
        self.raw["temp_output_dict_per_obj"][obj_idx][key][frame_idx] = {"pred_masks": pred_masks}

    def forget_prompts(self, frame_idx: int, obj_id: int) -> None:
        """Remove ``obj_id``'s inputs and outputs on ``frame_idx`` (SAM2 has no call for one frame)."""
        obj_idx = self.raw["obj_id_to_idx"].get(obj_id)
        if obj_idx is None:
            return
        self.raw["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        self.raw["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        for dicts in (self.raw["temp_output_dict_per_obj"], self.raw["output_dict_per_obj"]):
            dicts[obj_idx]["cond_frame_outputs"].pop(frame_idx, None)
            dicts[obj_idx]["non_cond_frame_outputs"].pop(frame_idx, None)

    def drop_if_unprompted(self, obj_id: int) -> None:
        """SAM2's ``remove_object`` for an object left without any input."""
        obj_idx = self.raw["obj_id_to_idx"].get(obj_id)
        if obj_idx is None or self.raw["point_inputs_per_obj"][obj_idx] or self.raw["mask_inputs_per_obj"][obj_idx]:
            return
        self.net.remove_object(self.raw, obj_id, need_output=False)

    def start_run(self, obj_ids: Sequence[int]) -> list[dict]:
        """Prepare a propagation of ``obj_ids``: SAM2's preflight, then no non-conditioning memory.

        SAM2's ``propagate_in_video_preflight`` consolidates the temporary (prompt) outputs into
        conditioning frames. SAM2 keeps every earlier run's outputs as memory; medseg clears
        them so that every run starts from the prompts only (stale memory outvotes corrections,
        sam2 issues #546/#719). Returns one handle per object for ``track``.
        """
        self.net.propagate_in_video_preflight(self.raw)
        handles = [self.raw["output_dict_per_obj"][self.raw["obj_id_to_idx"][o]] for o in obj_ids]
        self.end_run(handles)
        return handles

    @staticmethod
    def end_run(handles: list[dict]) -> None:
        """Drop the run's non-conditioning memory."""
        for od in handles:
            od["non_cond_frame_outputs"].clear()

    def track(self, handle: dict, t: int, *, reverse: bool) -> dict:
        """One object's output on frame ``t``: its prompt output there, or SAM2's per-frame tracking.

        SAM2's private ``_run_single_frame_inference`` is what ``propagate_in_video`` runs per
        frame and object. SAM2 then keeps the output for ever; here only what the memory
        attention of the following frames can still reach is kept (``_forget_far``).
        """
        out = handle["cond_frame_outputs"].get(t)
        if out is not None:
            return out
        out, _ = self.net._run_single_frame_inference(
            inference_state=self.raw, output_dict=handle, frame_idx=t, batch_size=1, is_init_cond_frame=False,
            point_inputs=None, mask_inputs=None, reverse=reverse, run_mem_encoder=True,
        )
        handle["non_cond_frame_outputs"][t] = _take_iou(self.raw, out)
        self._forget_far(handle["non_cond_frame_outputs"], t, reverse)
        return out

    def memory_frames(self) -> dict[str, int]:
        """Frames the state holds something for: ``conditioning``, ``spatial`` (memory features), ``pointers``."""
        cond, spatial, pointers = set(), set(), set()
        for od in self.raw["output_dict_per_obj"].values():
            cond |= set(od["cond_frame_outputs"])
            pointers |= set(od["non_cond_frame_outputs"])
            spatial |= {t for t, o in od["non_cond_frame_outputs"].items() if o.get("maskmem_features") is not None}
        for od in self.raw["temp_output_dict_per_obj"].values():
            cond |= set(od["cond_frame_outputs"])
        return {"conditioning": len(cond), "spatial": len(spatial), "pointers": len(pointers)}

    def _forget_far(self, outputs: dict[int, dict], t: int, reverse: bool) -> None:
        """Drop what the memory attention can no longer reach from the frames after ``t``.

        The next frame reads spatial memory from at most ``stride * (num_maskmem - 2)``
        frames behind ``t`` (SAM2's ``_prepare_memory_conditioned_features``) and object
        pointers from ``max_obj_ptrs_in_encoder - 2`` behind ``t``.
        """
        net = self.net
        spatial_reach = net.memory_temporal_stride_for_eval * (net.num_maskmem - 2)
        pointer_reach = net.max_obj_ptrs_in_encoder - 2
        for s in list(outputs):
            distance = s - t if reverse else t - s
            if distance > pointer_reach:
                del outputs[s]
            elif distance > spatial_reach and outputs[s].get("maskmem_features") is not None:
                outputs[s] = {"obj_ptr": outputs[s]["obj_ptr"], "maskmem_features": None, "pred_masks": None}


def carry_masks(net: VolumeVideoPredictor, frames: Sequence, cache: Any, masks: Sequence[torch.Tensor], *,
                image_size: int, device: torch.device) -> list[dict]:
    """SAM2's output on ``frames[1:]`` for a batch of objects, object ``b`` prompted only by ``masks[b]``
    on ``frames[0][b]``, each frame tracked from that conditioning frame alone.

    ``frames[0]``: a tuple of one frame per object; ``masks``: ``(H, W)`` bool, each at its frame's
    shape. This is what ``Sam2State`` computes for one object with ``prompt(0, mask=...)`` and a
    one-frame run per later frame, in one batch: SAM2's ``add_new_mask`` (the mask resized to the
    model frame, ``_run_single_frame_inference`` with it, no memory encoder),
    ``propagate_in_video_preflight`` (the memory of that output), then ``_run_single_frame_inference``
    per frame with only the conditioning frame as memory. All objects share the frames' distances to
    the conditioning frame, so SAM2's pointer encodings hold for all.
    """
    inputs = []
    for mask in masks:  # SAM2's add_new_mask
        mask_input = mask[None, None].float().to(device)
        if mask.shape != (image_size, image_size):
            mask_input = torch.nn.functional.interpolate(mask_input, size=(image_size, image_size), mode="bilinear",
                                                         align_corners=False, antialias=True)
            mask_input = (mask_input >= 0.5).float()
        inputs.append(mask_input)
    state = Sam2State(net, frames, cache, image_size=image_size, device=device, offload_state_to_cpu=False)
    batch = len(inputs)
    memory: dict[str, dict] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    out, _ = net._run_single_frame_inference(
        inference_state=state.raw, output_dict=memory, frame_idx=0, batch_size=batch, is_init_cond_frame=True,
        point_inputs=None, mask_inputs=torch.cat(inputs), reverse=False, run_mem_encoder=False,
    )
    state.raw.pop(_LAST_IOU)
    high_res = torch.nn.functional.interpolate(out["pred_masks"].to(device), size=(image_size, image_size),
                                               mode="bilinear", align_corners=False)
    out["maskmem_features"], out["maskmem_pos_enc"] = net._run_memory_encoder(
        state.raw, 0, batch, high_res, out["object_score_logits"], is_mask_from_pts=True)
    memory["cond_frame_outputs"][0] = out
    outputs = []
    for t in range(1, len(frames)):
        out_t, _ = net._run_single_frame_inference(
            inference_state=state.raw, output_dict=memory, frame_idx=t, batch_size=batch, is_init_cond_frame=False,
            point_inputs=None, mask_inputs=None, reverse=False, run_mem_encoder=False,
        )
        outputs.append(_take_iou(state.raw, out_t))
    return outputs


def output_tensors(outs: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits (n, S/4, S/4), object-score logits (n,), predicted IoU (n,))`` of SAM2 output dicts."""
    logits = torch.cat([o["pred_masks"][:, 0] for o in outs])
    object_scores = torch.cat([o["object_score_logits"].reshape(-1) for o in outs])
    ious = torch.cat([o[_IOU_KEY].reshape(-1) for o in outs])
    return logits, object_scores, ious


def position_encodings(net: VolumeVideoPredictor, fpn: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The ``vision_pos_enc`` SAM2's ``forward_image`` returns beside feature levels of these shapes.

    SAM2: ``FpnNeck.forward`` computes a sine encoding of each level's height and width (not
    of its values) and returns it with the features. medseg stores features only and
    recomputes the encoding from their shapes with the same module, so features read from
    disk need no encoder run.
    """
    encode = net.image_encoder.neck.position_encoding
    return [encode(level[:1]).to(level.dtype) for level in fpn]


# --- training: SAM2Base's per-frame forward, as SAM2's own training (sam2/modeling/sam2_base.py) -----------
def flatten_backbone(net: VolumeVideoPredictor, backbone: dict) -> tuple[list, list, list]:
    """``(features, position encodings, sizes)`` of ``forward_image``'s output, flattened to ``(HW, B, C)``.

    SAM2: ``_prepare_backbone_features`` (the first of its returns, the dict, is dropped).
    """
    _, feats, pos, sizes = net._prepare_backbone_features(backbone)
    return feats, pos, sizes


def track_frame(net: VolumeVideoPredictor, t: int, conditioning: bool, feats, pos, sizes, points: dict | None,
                masks: torch.Tensor | None, memory: dict, n_frames: int, previous_logits: torch.Tensor | None):
    """One frame of a training clip: ``(output dict, SAM outputs)``, memory not yet encoded.

    SAM2: ``_track_step`` (the public ``track_step`` hides the object score in training mode and
    always runs the memory encoder; training encodes the memory once per frame, after its last
    correction, with ``encode_frame_memory``). A conditioning frame reads no memory.
    """
    out, sam, _, _ = net._track_step(t, conditioning, feats, pos, sizes, points, masks, memory, n_frames, False,
                                     previous_logits)
    out["pred_masks"], out["pred_masks_high_res"] = sam[3], sam[4]
    out["obj_ptr"], out["object_score_logits"] = sam[5], sam[6]
    return out, sam


def encode_frame_memory(net: VolumeVideoPredictor, feats, sizes, points: dict | None, sam: tuple, out: dict) -> None:
    """Add the frame's memory features to ``out`` (SAM2: ``_encode_memory_in_output``, run in training mode)."""
    net._encode_memory_in_output(feats, sizes, points, True, sam[4], sam[6], out)


def decode_without_memory(net: VolumeVideoPredictor, feats, sizes, frames: list[int], prompts: dict) -> tuple:
    """SAM outputs of ``frames`` prompted alone with ``prompts``, without memory, in one batch.

    SAM2: what ``_prepare_memory_conditioned_features`` does for a first prompted frame (adds the
    "no memory" embedding), then ``_forward_sam_heads`` with ``_use_multimask``'s choice.
    """
    n, hidden = len(frames), net.hidden_dim
    pix = (feats[-1][:, frames] + net.no_mem_embed).permute(1, 2, 0).reshape(n, hidden, *sizes[-1])
    high_res = [x[:, frames].permute(1, 2, 0).reshape(n, x.shape[-1], *size) for x, size in zip(feats[:-1], sizes[:-1])]
    prior = prompt_prior(prompts["point_coords"], prompts["point_labels"], net.image_size) if net.prompt_prior else None
    return net._forward_sam_heads(backbone_features=pix, point_inputs=prompts, mask_inputs=prior,
                                  high_res_features=high_res, multimask_output=net._use_multimask(True, prompts))
