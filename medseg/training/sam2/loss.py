"""One SAM2 training forward pass over a clip, and SAM2's losses.

The loop is SAM2's own video training, written against ``SAM2Base`` (sam2 1.1.0): the image
encoder runs on every frame of the clip; frame 0 is the conditioning frame (its prompt goes
through ``_track_step``, and after a point prompt 0 to ``correction_clicks`` more clicks, drawn
uniformly, are sampled from the error region and fed with the previous logits, as SAM2 trains
interactive correction); every later frame is tracked with the memory attention reading the memory
encoder's output of the frames before it. A reference clip has several conditioning frames
(another case's mask prompts) and no prompt on the frames it supervises. Gradients flow through
all of it, memory included.

Losses (SAM2's ``MultiStepMultiMasksAndIous``, re-derived): sigmoid focal loss (weight 20) and
dice loss (weight ``dice_weight``) on the high-resolution masks (with several candidate masks
only the best one is trained, so the candidates can specialise), an L1 loss between the
predicted and the actual IoU of every candidate (1), and a binary cross-entropy on the object
score ("is the object on this frame", 1). SAM2 weighs dice 1. The focal loss is a mean over the
frame's pixels, so an organ's errors count in proportion to its area and the liver outweighs the
spleen and kidneys several times; from random initialisation the tracker then learned the liver
and lost the small organs on some seeds. Dice counts every object alike whatever its size, hence
a larger weight (``Sam2TrainConfig.dice_weight``, README). Mask
and IoU losses count only on frames where the object is drawn. Every prediction of a frame
(before and after each correction click) is supervised.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medseg.pipeline.prompt_policy import centroid_voxel
from medseg.sam2.train_data import Clip, correction_click

WEIGHT_FOCAL, WEIGHT_IOU, WEIGHT_OBJECT = 20.0, 1.0, 1.0
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


def clip_loss(net: torch.nn.Module, clip: Clip, rng: np.random.Generator, *, correction_clicks: int, dice_weight: float,
              image_prompts: bool = True, encoder_grad: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The summed SAM2 loss of ``clip`` (averaged over supervised predictions) and its parts.

    ``image_prompts``: also prompt every object on every frame of the clip on its own, without
    memory (SAM2 trains on images and videos together; on a volume the frames are the images).
    The decoder is cheap next to the encoder, so this multiplies the prompted examples per step.
    """
    with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
        backbone = net.forward_image(clip.images)
    _, feats, pos, sizes = net._prepare_backbone_features(backbone)
    n_obj, n_frames = clip.targets.shape[:2]
    # Some clips keep the first click alone: its multimask output is what a single click gives
    # at inference, and the memory must learn to track from it too (encoding memory only after a
    # correction, the tracker never saw it and one-click propagation failed on some seeds).
    corrections = int(rng.integers(correction_clicks + 1)) if clip.points is not None else 0
    memory = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    terms: list[dict[str, torch.Tensor]] = []
    for t in range(n_frames):
        frame_feats = [x[:, t:t + 1].expand(-1, n_obj, -1) for x in feats]
        frame_pos = [x[:, t:t + 1].expand(-1, n_obj, -1) for x in pos]
        target = clip.targets[:, t]
        conditioning = t < clip.cond_frames
        points = None
        if t == 0 and clip.points is not None:
            points = {"point_coords": clip.points, "point_labels": clip.point_labels}
        masks = clip.masks[:, t:t + 1] if conditioning and clip.masks is not None else None
        out, sam = _track(net, t, conditioning, frame_feats, frame_pos, sizes, points, masks, memory, n_frames, None)
        if masks is None:
            terms.append(_frame_terms(sam, target, dice_weight))
        for _ in range(corrections if points is not None else 0):
            xy, labels = correction_click(sam[4][:, 0], target, rng)
            points = {"point_coords": torch.cat([points["point_coords"], xy], 1),
                      "point_labels": torch.cat([points["point_labels"], labels], 1)}
            out, sam = _track(net, t, conditioning, frame_feats, frame_pos, sizes, points, None, memory, n_frames,
                              out["pred_masks"])
            terms.append(_frame_terms(sam, target, dice_weight))
        if t < n_frames - 1:  # the last frame's memory would never be read
            net._encode_memory_in_output(frame_feats, sizes, points, True, sam[4], sam[6], out)
            memory["cond_frame_outputs" if conditioning else "non_cond_frame_outputs"][t] = out
    if image_prompts:
        terms.append(_image_terms(net, feats, sizes, clip.targets, rng, dice_weight))
    parts = {k: torch.stack([term[k] for term in terms]).mean() for k in terms[0]}
    loss = (WEIGHT_FOCAL * parts["focal"] + dice_weight * parts["dice"] + WEIGHT_IOU * parts["iou"]
            + WEIGHT_OBJECT * parts["object"])
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def _track(net, t, conditioning, feats, pos, sizes, points, masks, memory, n_frames, previous_logits):
    """``SAM2Base._track_step`` on frame ``t``; returns its output dict and SAM outputs.

    A conditioning frame reads no memory (SAM2's "initial conditioning frame"): each reference
    mask of a reference clip is encoded on its own, as inference adds them.

    ``track_step`` (the public one) hides the object score in training mode and always runs
    the memory encoder; here the memory is encoded once per frame, after its last correction.
    """
    out, sam, _, _ = net._track_step(t, conditioning, feats, pos, sizes, points, masks, memory, n_frames, False, previous_logits)
    out["pred_masks"], out["pred_masks_high_res"], out["obj_ptr"], out["object_score_logits"] = sam[3], sam[4], sam[5], sam[6]
    return out, sam


def _image_terms(net, feats, sizes, targets: torch.Tensor, rng: np.random.Generator,
                 dice_weight: float) -> dict[str, torch.Tensor]:
    """Every drawn (object, frame) of the clip prompted alone, with no memory, in one batch.

    The prompt kind (one click: the object's centroid voxel or a random object voxel; or the
    object's box) is drawn once per clip, so the batch shares one prompt shape.
    """
    n_obj, n_frames = targets.shape[:2]
    drawn = [(b, t) for t in range(n_frames) for b in range(n_obj) if bool(targets[b, t].any())]
    frames = [t for _, t in drawn]
    masks = torch.stack([targets[b, t] for b, t in drawn])
    box = rng.random() < 0.5
    points = torch.tensor(np.array([_image_prompt(m.cpu().numpy() > 0.5, box, rng) for m in masks]), dtype=torch.float32,
                          device=masks.device)
    labels = torch.tensor([[2, 3] if box else [1]] * len(drawn), dtype=torch.int32, device=masks.device)
    prompts = {"point_coords": points, "point_labels": labels}
    # As _prepare_memory_conditioned_features does for a first prompted frame: no memory, the "no memory" embedding.
    pix = (feats[-1][:, frames] + net.no_mem_embed).permute(1, 2, 0).reshape(len(drawn), net.hidden_dim, *sizes[-1])
    high_res = [x[:, frames].permute(1, 2, 0).reshape(len(drawn), x.shape[-1], *size) for x, size in zip(feats[:-1], sizes[:-1])]
    sam = net._forward_sam_heads(backbone_features=pix, point_inputs=prompts, mask_inputs=None, high_res_features=high_res,
                                 multimask_output=net._use_multimask(True, prompts))
    return _frame_terms(sam, masks, dice_weight)


def _image_prompt(mask: np.ndarray, box: bool, rng: np.random.Generator) -> np.ndarray:
    """Model ``(x, y)`` prompt points of a model-frame ``mask``: its box corners, or one click."""
    yx = np.argwhere(mask)
    if box:
        return np.stack([yx.min(axis=0), yx.max(axis=0)])[:, ::-1].astype(np.float32)
    click = centroid_voxel(mask) if rng.random() < 0.5 else yx[rng.integers(len(yx))]
    return np.asarray(click, dtype=np.float32)[None, ::-1]


def _frame_terms(sam: tuple, target: torch.Tensor, dice_weight: float) -> dict[str, torch.Tensor]:
    """Loss terms of one prediction, averaged over objects. ``target``: ``(B, S, S)`` 0/1."""
    multimasks, ious, object_logits = sam[1], sam[2], sam[6]
    present = target.flatten(1).amax(dim=1)
    target = target[:, None].expand_as(multimasks)
    focal = _focal(multimasks, target)
    dice = _dice(multimasks, target)
    best = (WEIGHT_FOCAL * focal + dice_weight * dice).argmin(dim=1, keepdim=True)
    with torch.no_grad():
        binary = multimasks > 0
        intersection = (binary & (target > 0.5)).flatten(2).sum(-1).float()
        union = (binary | (target > 0.5)).flatten(2).sum(-1).float()
        actual_iou = intersection / union.clamp(min=1.0)
    iou = (ious - actual_iou).abs().mean(dim=1)
    n = max(float(present.sum()), 1.0)
    return {
        "focal": (focal.gather(1, best)[:, 0] * present).sum() / n,
        "dice": (dice.gather(1, best)[:, 0] * present).sum() / n,
        "iou": (iou * present).sum() / n,
        "object": F.binary_cross_entropy_with_logits(object_logits[:, 0], present),
    }


def _focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet), mean over pixels: ``(B, M)``."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA).flatten(2).mean(-1)


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft dice loss per mask: ``(B, M)``."""
    prob = logits.sigmoid().flatten(2)
    target = target.flatten(2)
    return 1 - (2 * (prob * target).sum(-1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)
