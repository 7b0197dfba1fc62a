"""Training clips for SAM2: consecutive slices of a labelled volume, with simulated prompts.

SAM2 trains on videos; a volume is one, with z as time. A clip is ``clip_length`` consecutive
slices taken upwards or downwards (both directions are how propagation is used), starting on
a slice where at least one object is drawn; every object drawn there is tracked through the
clip, which may leave the object's extent (the object-score head learns "gone"). Objects that
only appear later in the clip are not prompted: like SAM2, a track starts from a prompt.

First-frame prompts follow the pipeline's prompt policy (``medseg.pipeline.prompt_policy``),
so training and evaluation agree on what a click or a box means: a point is the voxel nearest
the centroid of the object's cross-section (or, half of the time, a random object voxel), a
box is the inclusive bounding box of the cross-section (with a little jitter, as SAM2 adds),
and a mask prompt is the cross-section itself. Pixel prompts go through ``to_model_xy``, the
same mapping the inference engine uses.

A *reference clip* is RevSAM2's use of SAM2 turned into training data: a few annotated slices
of one object in another case (chosen as ``SupportSet`` chooses supports: chunk centres of its
z-extent) are mask-conditioning frames, followed by consecutive slices of the query case with no
prompt at all. The tracker must find the object from another patient's memory alone, which
within-volume clips never ask of it.

Everything random is drawn from a ``numpy.random.Generator`` the caller seeds per step, so
the clips of step ``k`` do not depend on what ran before (resuming reproduces them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medseg.pipeline.prompt_policy import centroid_voxel
from medseg.preprocess import IntensityPreset, SliceFrames
from medseg.revsam2.support import sample_slices
from medseg.sam2.frames import model_input, to_model_xy
from medseg.volume import LabelVolume, Volume

BOX_JITTER = 0.05  # of the box side, per corner coordinate


@dataclass(frozen=True, eq=False)
class PreparedCase:
    """One training volume at model resolution.

    ``images``: ``(Z, 3, S, S)`` float16 network inputs; ``targets``: ``(Z, S, S)`` uint8
    labels resized (nearest) to the model frame, what the losses compare with; ``labels``:
    the ``(Z, H, W)`` labels at the frame's own size, where prompts are drawn; ``label_ids``:
    the labels drawn anywhere in it.
    """

    id: str
    images: torch.Tensor
    targets: torch.Tensor
    labels: np.ndarray
    label_ids: frozenset[int]


@dataclass(frozen=True, eq=False)
class Clip:
    """``images`` ``(T, 3, S, S)``; ``targets`` ``(B, T, S, S)`` float 0/1, one row per object.

    The first ``cond_frames`` frames are conditioning frames: with ``points`` ``(B, N, 2)``
    model ``(x, y)`` and ``point_labels`` ``(B, N)`` on frame 0 (a box is two points labelled 2
    and 3), or with ``masks`` ``(B, cond_frames, S, S)``. ``case_id`` names the case of the
    tracked frames (for a reference clip, ``"reference->query"``).
    """

    case_id: str
    slices: tuple[int, ...]
    obj_ids: tuple[int, ...]
    images: torch.Tensor
    targets: torch.Tensor
    points: torch.Tensor | None
    point_labels: torch.Tensor | None
    masks: torch.Tensor | None
    cond_frames: int = 1

    def to(self, device: torch.device) -> Clip:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Clip(self.case_id, self.slices, self.obj_ids, move(self.images), move(self.targets), move(self.points),
                    move(self.point_labels), move(self.masks), self.cond_frames)


def prepare_case(case_id: str, volume: Volume, labels: LabelVolume, image_size: int, preset: str | IntensityPreset | None) -> PreparedCase:
    """Frames and targets of one volume at ``image_size``, computed once before training."""
    frames = SliceFrames(volume, preset)
    images = torch.cat([model_input(frames[z], image_size) for z in range(len(frames))]).to(torch.float16)
    array = np.asarray(labels.array)
    targets = F.interpolate(torch.from_numpy(array.astype(np.float32))[:, None], size=(image_size, image_size), mode="nearest")
    label_ids = frozenset(int(v) for v in np.unique(array) if v > 0)
    return PreparedCase(case_id, images, targets[:, 0].to(torch.uint8), array.astype(np.int64), label_ids)


def sample_clip(case: PreparedCase, length: int, rng: np.random.Generator, *, p_point: float, p_box: float) -> Clip:
    """A clip of ``length`` slices of ``case`` with first-frame prompts for every object on it."""
    slices = _consecutive_slices(case.labels.reshape(len(case.labels), -1).max(axis=1) > 0, length, rng)
    z0 = slices[0]
    first = case.labels[z0]
    obj_ids = tuple(int(v) for v in np.unique(first) if v > 0)
    targets = torch.stack([(case.targets[list(slices)] == v) for v in obj_ids]).float()
    images = case.images[list(slices)].float()
    size = images.shape[-1]
    kind = rng.random()
    points = point_labels = masks = None
    if kind < p_point:
        yx = np.array([_click(first == v, rng) for v in obj_ids])
        points = torch.as_tensor(to_model_xy(yx, first.shape, size), dtype=torch.float32)[:, None]
        point_labels = torch.ones(len(obj_ids), 1, dtype=torch.int32)
    elif kind < p_point + p_box:
        corners = [_box(first == v, rng) for v in obj_ids]
        points = torch.stack([torch.as_tensor(to_model_xy(c, first.shape, size), dtype=torch.float32) for c in corners])
        point_labels = torch.tensor([[2, 3]] * len(obj_ids), dtype=torch.int32)
    else:
        masks = targets[:, :1]
    return Clip(case.id, slices, obj_ids, images, targets, points, point_labels, masks)


def sample_reference_clip(reference: PreparedCase, query: PreparedCase, length: int, n_references: int,
                          rng: np.random.Generator) -> Clip:
    """One object's ``n_references`` annotated slices of ``reference`` (mask prompts), then
    ``length`` consecutive slices of ``query`` that must be segmented from that memory alone."""
    shared = sorted(reference.label_ids & query.label_ids)
    if not shared:
        raise ValueError(f"cases {reference.id} and {query.id} share no label")
    label = int(rng.choice(shared))
    refs = sample_slices(reference.labels == label, k=n_references)
    drawn = (query.labels == label).reshape(len(query.labels), -1).any(axis=1)
    slices = _consecutive_slices(drawn, length, rng)
    targets = torch.cat([reference.targets[refs], query.targets[list(slices)]])[None].eq(label).float()
    images = torch.cat([reference.images[refs], query.images[list(slices)]]).float()
    return Clip(f"{reference.id}->{query.id}", slices, (label,), images, targets, None, None,
                targets[:, :len(refs)], cond_frames=len(refs))


def correction_click(pred: torch.Tensor, target: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per object from its error region, as SAM2's training samples corrections.

    ``pred`` (logits) and ``target`` are ``(B, S, S)`` in the model frame. Returns model
    ``(x, y)`` points ``(B, 1, 2)`` and labels ``(B, 1)``: 1 on a missed object pixel, 0 on a
    false-positive pixel, drawn uniformly from the union of both; a perfect mask gets a
    positive click on the object (or a negative one anywhere when the object is absent).
    """
    points, labels = [], []
    for p, t in zip((pred > 0).cpu().numpy(), target.cpu().numpy() > 0.5):
        errors = np.argwhere(p != t)
        if len(errors) == 0:
            errors = np.argwhere(t) if t.any() else np.argwhere(~t)
        y, x = errors[rng.integers(len(errors))]
        points.append((x, y))
        labels.append(int(t[y, x]))
    return torch.tensor(points, dtype=torch.float32)[:, None], torch.tensor(labels, dtype=torch.int32)[:, None]


def _consecutive_slices(drawn: np.ndarray, length: int, rng: np.random.Generator) -> tuple[int, ...]:
    """``length`` consecutive slice indices, upwards or downwards, starting on a ``drawn`` slice."""
    n = len(drawn)
    length = min(length, n)
    step = int(rng.choice([-1, 1]))
    drawn = np.flatnonzero(drawn)
    starts = drawn[(drawn <= n - length) if step > 0 else (drawn >= length - 1)]
    if len(starts) == 0:  # the objects sit at the wrong end for this direction
        step, starts = -step, drawn[(drawn >= length - 1) if step > 0 else (drawn <= n - length)]
    z0 = int(rng.choice(starts))
    return tuple(range(z0, z0 + step * length, step))


def _click(plane: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """The policy's centroid click half of the time, a random object voxel otherwise."""
    if rng.random() < 0.5:
        return centroid_voxel(plane)
    yx = np.argwhere(plane)
    return tuple(int(v) for v in yx[rng.integers(len(yx))])


def _box(plane: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inclusive ``[(y0, x0), (y1, x1)]`` box of ``plane``, each corner jittered a little."""
    yx = np.argwhere(plane)
    low, high = yx.min(axis=0).astype(float), yx.max(axis=0).astype(float)
    side = high - low + 1
    jitter = rng.uniform(-BOX_JITTER, BOX_JITTER, size=(2, 2)) * side
    box = np.stack([low, high]) + np.round(jitter)
    return np.clip(box, 0, np.array(plane.shape) - 1)
