"""One SAM2 training forward pass over a clip, and SAM2's losses.

The loop is SAM2's own video training, written against ``SAM2Base`` (sam2 1.1.0): the image encoder
runs on every frame of the clip; frame 0 is the conditioning frame (its prompt goes through
``_track_step``, and after a point prompt 0 to ``correction_clicks`` more clicks (none for half the
clips, ``correction_count``) are sampled from the error region and fed with the previous logits, as
SAM2 trains interactive correction); every later frame is tracked with the memory attention reading
the memory encoder's output of the frames before it. A reference clip has several conditioning
frames (another case's mask prompts) and no prompt on the frames it supervises. Gradients flow
through all of it, memory included.

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

from medseg.prompt_simulation import bounding_box, centroid_voxel, random_voxel
from medseg.sam2.meta_internals import decode_without_memory, encode_frame_memory, flatten_backbone, track_frame
from medseg.training.sam2.clips import Clip, correction_click

WEIGHT_FOCAL, WEIGHT_IOU, WEIGHT_OBJECT = 20.0, 1.0, 1.0
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
IMAGE_PROMPTS = 8
"""At most this many (object, frame) pairs per clip are also prompted alone: the decoder's cost grows
with them, and 8 is about the number of a 4-slice clip of 2 objects."""


def clip_loss(net: torch.nn.Module, clip: Clip, rng: np.random.Generator, *, correction_clicks: int, dice_weight: float,
              image_prompts: bool = True, encoder_grad: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The summed SAM2 loss of ``clip`` (averaged over supervised predictions) and its parts.

    ``image_prompts``: also prompt every object on every frame of the clip on its own, without
    memory (SAM2 trains on images and videos together; on a volume the frames are the images).
    The decoder is cheap next to the encoder, so this multiplies the prompted examples per step.
    """
    with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
        backbone = net.forward_image(clip.images)
    feats, pos, sizes = flatten_backbone(net, backbone)
    n_obj, n_frames = clip.targets.shape[:2]
    corrections = correction_count(rng, correction_clicks) if clip.points is not None else 0
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
        out, sam = track_frame(net, t, conditioning, frame_feats, frame_pos, sizes, points, masks, memory,
                               n_frames, None)
        if masks is None:
            terms.append(_frame_terms(sam, target, dice_weight))
        for _ in range(corrections if points is not None else 0):
            xy, labels = correction_click(sam[4][:, 0], target, rng)
            points = {"point_coords": torch.cat([points["point_coords"], xy], 1),
                      "point_labels": torch.cat([points["point_labels"], labels], 1)}
            out, sam = track_frame(net, t, conditioning, frame_feats, frame_pos, sizes, points, None, memory, n_frames,
                                   out["pred_masks"])
            terms.append(_frame_terms(sam, target, dice_weight))
        if t < n_frames - 1:  # the last frame's memory would never be read
            encode_frame_memory(net, frame_feats, sizes, points, sam, out)
            memory["cond_frame_outputs" if conditioning else "non_cond_frame_outputs"][t] = out
    if image_prompts:
        terms.append(_image_terms(net, feats, sizes, clip.targets, rng, dice_weight))
    parts = {k: torch.stack([term[k] for term in terms]).mean() for k in terms[0]}
    loss = (WEIGHT_FOCAL * parts["focal"] + dice_weight * parts["dice"] + WEIGHT_IOU * parts["iou"]
            + WEIGHT_OBJECT * parts["object"])
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def correction_count(rng: np.random.Generator, most: int) -> int:
    """How many correction clicks follow a clip's first click or box: none for half the clips, else 1 to
    ``most``, evenly.

    Half keep the first prompt alone: its multimask output is what a single click gives at inference,
    and the memory must learn to track from it (with memory encoded only after a correction, the
    tracker never saw one and one-click propagation failed on some seeds). One draw of ``2 * most``
    values, so ``most`` 1 draws exactly as the earlier rule (0 or 1 click, evenly, ``integers(2)``).
    """
    draw = int(rng.integers(max(2 * most, 1)))
    return max(0, draw - most + 1) if most else 0


def _image_terms(net, feats, sizes, targets: torch.Tensor, rng: np.random.Generator,
                 dice_weight: float) -> dict[str, torch.Tensor]:
    """The drawn (object, frame) pairs of the clip (at most ``IMAGE_PROMPTS``, drawn at random) prompted
    alone, with no memory, in one batch.

    The prompt kind (one click: the object's centroid voxel or a random object voxel; or the
    object's box) is drawn once per clip, so the batch shares one prompt shape.
    """
    n_obj, n_frames = targets.shape[:2]
    drawn = [(b, t) for t in range(n_frames) for b in range(n_obj) if bool(targets[b, t].any())]
    if len(drawn) > IMAGE_PROMPTS:
        drawn = [drawn[i] for i in sorted(rng.choice(len(drawn), IMAGE_PROMPTS, replace=False))]
    frames = [t for _, t in drawn]
    masks = torch.stack([targets[b, t] for b, t in drawn])
    box = rng.random() < 0.5
    points = torch.tensor(np.array([_image_prompt(m.cpu().numpy() > 0.5, box, rng) for m in masks]),
                          dtype=torch.float32, device=masks.device)
    labels = torch.tensor([[2, 3] if box else [1]] * len(drawn), dtype=torch.int32, device=masks.device)
    sam = decode_without_memory(net, feats, sizes, frames, {"point_coords": points, "point_labels": labels})
    return _frame_terms(sam, masks, dice_weight)


def _image_prompt(mask: np.ndarray, box: bool, rng: np.random.Generator) -> np.ndarray:
    """Model ``(x, y)`` prompt points of a model-frame ``mask``: its box corners, or one click."""
    if box:
        y0, x0, y1, x1 = bounding_box(mask)
        return np.array([[x0, y0], [x1, y1]], dtype=np.float32)
    y, x = centroid_voxel(mask) if rng.random() < 0.5 else random_voxel(mask, rng)
    return np.array([[x, y]], dtype=np.float32)


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
