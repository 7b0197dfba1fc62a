"""Training clips for SAM2: a few consecutive slices, every object on the first one, simulated prompts.

SAM2 trains on videos; a volume is one, with z as time. A clip is ``clip_length`` consecutive
slices taken upwards or downwards, from one of three sources:

* a **synthetic scene** (``medseg.synthetic``, probability ``p_synthetic``): generic objects of
  any shape, grey value and place, so the only way to find an object is the prompt;
* a **cohort case**: its objects are *class-agnostic*: every label value, each connected part of
  a label made of several (with probability ``p_parts``, e.g. one kidney of the two), and, with
  ``structures``, the unlabelled compartments found from the intensities (``case_structures``:
  body, bone, any region of one grey level), so the model learns "the thing under the prompt"
  rather than "liver, spleen, kidney";
* a **reference clip** (probability ``p_reference``): another case's annotated slices of one label
  condition a clip of the query with no prompt (RevSAM2's use of SAM2 made into training data).

Every clip is augmented (``medseg.training.augment``) with one draw for all its slices; then the
objects still visible on the first frame get a prompt there: a click (the voxel nearest the
centroid of the cross-section half of the time, a random object voxel otherwise), a box (the
bounding box with a little jitter, as SAM2 adds) or the mask itself, drawn with
``medseg.prompt_simulation`` (the pipeline's definitions), in the model frame. At most
``max_objects`` objects are tracked per clip (a random subset); objects that appear only later in
the clip are not prompted: like SAM2, a track starts from a prompt. Objects may leave the clip's
slices, which teaches the object-score head "gone".

Everything random is drawn from the ``numpy.random.Generator`` the caller seeds per step, so the
clips of step ``k`` do not depend on what ran before (resuming reproduces them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medseg.preprocess import IntensityPreset, SliceFrames
from medseg.prompt_simulation import centroid_voxel, jittered_box, random_voxel, sample_slices
from medseg.sam2.frames import normalise, resize_frame
from medseg.synthetic import SyntheticConfig, make_scene
from medseg.training.augment import AugmentConfig, ClipAugmentation
from medseg.volume import LabelVolume, Volume

BOX_JITTER = 0.05  # of the box side, per corner coordinate
MIN_PIXELS = 8  # an object smaller than this on the prompted frame is not prompted


@dataclass(frozen=True, eq=False)
class PreparedCase:
    """One training volume at model resolution, computed once before training.

    ``frames``: ``(Z, 3, S, S)`` float16 in [0, 1] (the preset applied, not yet normalised);
    ``labels``: ``(Z, S, S)`` label values resized with nearest neighbour; ``parts``: the 3D
    connected parts of the labels that have several, numbered from 1 (0 elsewhere);
    ``structures``: unlabelled compartments numbered from 1 (all 0 when not asked for).
    """

    id: str
    frames: torch.Tensor
    labels: np.ndarray
    parts: np.ndarray
    structures: np.ndarray

    @property
    def label_ids(self) -> frozenset[int]:
        return frozenset(int(v) for v in np.unique(self.labels) if v > 0)


@dataclass(frozen=True, eq=False)
class Clip:
    """``images`` ``(T, 3, S, S)`` network inputs; ``targets`` ``(B, T, S, S)`` float 0/1, one row per object.

    The first ``cond_frames`` frames are conditioning frames: with ``points`` ``(B, N, 2)``
    model ``(x, y)`` and ``point_labels`` ``(B, N)`` on frame 0 (a box is two points labelled 2
    and 3), or with ``masks`` ``(B, cond_frames, S, S)``. ``source`` says where the clip came from
    (a case id, ``"reference->query"`` or ``"synthetic"``).
    """

    source: str
    images: torch.Tensor
    targets: torch.Tensor
    points: torch.Tensor | None
    point_labels: torch.Tensor | None
    masks: torch.Tensor | None
    cond_frames: int = 1

    def to(self, device: torch.device) -> Clip:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Clip(self.source, move(self.images), move(self.targets), move(self.points), move(self.point_labels),
                    move(self.masks), self.cond_frames)


@dataclass(frozen=True)
class ClipSettings:
    """What ``ClipSampler`` draws; the fields of ``Sam2TrainConfig`` of the same names."""

    length: int
    p_point: float
    p_box: float
    p_synthetic: float
    p_reference: float
    references: int
    p_parts: float
    max_objects: int
    synthetic: SyntheticConfig
    augment: AugmentConfig


def prepare_case(case_id: str, volume: Volume, labels: LabelVolume, image_size: int,
                 preset: str | IntensityPreset | None, *, structures: bool) -> PreparedCase:
    """Frames, label maps, parts and (with ``structures``) unlabelled compartments at ``image_size``."""
    frames = SliceFrames(volume, preset)
    images = torch.stack([resize_frame(frames[z], image_size) for z in range(len(frames))]).to(torch.float16)
    array = torch.from_numpy(np.asarray(labels.array).astype(np.float32))[:, None]
    small = F.interpolate(array, size=(image_size, image_size), mode="nearest")[:, 0].numpy().astype(np.int16)
    found = case_structures(images[:, 0].float().numpy(), small) if structures else np.zeros_like(small)
    return PreparedCase(case_id, images, small, label_parts(small), found)


def label_parts(labels: np.ndarray) -> np.ndarray:
    """The 3D connected parts of every label value that has more than one, numbered from 1."""
    parts = np.zeros(labels.shape, dtype=np.int16)
    count = 0
    for value in np.unique(labels):
        if value == 0:
            continue
        components, n = ndimage.label(labels == value)
        if n > 1:
            parts[components > 0] = components[components > 0] + count
            count += n
    return parts


def case_structures(grey: np.ndarray, labels: np.ndarray, *, classes: int = 4, min_voxels: int = 200) -> np.ndarray:
    """Unlabelled compartments of a volume of grey values in [0, 1]: the 3D connected regions of one
    intensity class (multi-Otsu thresholds over the volume, classes taken on the volume smoothed in-plane
    so that noise makes no specks), outside every label, not touching the volume's in-plane border
    (the background), of at least ``min_voxels``; numbered from 1."""
    from skimage.filters import threshold_multiotsu

    values = grey[:: max(1, len(grey) // 8)].ravel()
    if np.ptp(values) == 0:
        return np.zeros(grey.shape, dtype=np.int16)
    thresholds = threshold_multiotsu(values, classes=classes)
    classified = np.digitize(ndimage.gaussian_filter(grey, sigma=(0, 1, 1)), thresholds)  # smoothed: no noise specks
    found = np.zeros(grey.shape, dtype=np.int16)
    count = 0
    for value in range(classes):
        components, n = ndimage.label((classified == value) & (labels == 0))
        border = set(np.unique(np.concatenate([components[:, 0].ravel(), components[:, -1].ravel(),
                                               components[:, :, 0].ravel(), components[:, :, -1].ravel()])))
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        for index in range(1, n + 1):
            if index not in border and sizes[index] >= min_voxels:
                count += 1
                found[components == index] = count
    return found


class ClipSampler:
    """Draws training clips from prepared cases and synthetic scenes (see the module docstring)."""

    def __init__(self, cases: list[PreparedCase], settings: ClipSettings, *, image_size: int) -> None:
        self.cases = cases
        self.settings = settings
        self.image_size = image_size
        self.augment = ClipAugmentation(settings.augment, size=image_size)
        self.reference_pairs = [(r, q) for r, ref in enumerate(cases) for q, query in enumerate(cases)
                                if r != q and ref.label_ids & query.label_ids]

    def clip(self, rng: np.random.Generator) -> Clip:
        """One clip; a draw that leaves no visible object is redrawn (from the same generator)."""
        for _ in range(20):
            s = self.settings
            kind = rng.random()
            if not self.cases or kind < s.p_synthetic:
                clip = self._prompted(*self._synthetic(rng), "synthetic", rng)
            elif self.reference_pairs and kind < s.p_synthetic + s.p_reference:
                clip = self._reference(rng)
            else:
                case = self.cases[int(rng.integers(len(self.cases)))]
                clip = self._prompted(*self._case(case, rng), case.id, rng)
            if clip is not None:
                return clip
        raise RuntimeError("20 clip draws in a row held no visible object; the training data has none to track")

    # --- sources ---------------------------------------------------------------------------
    def _synthetic(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s, size = self.settings, self.image_size
        depth = s.length + int(rng.integers(0, 3 * s.length))
        scene = make_scene(rng, (depth, size, size), s.synthetic)
        z0 = int(rng.integers(0, depth - s.length + 1))
        slices = list(range(z0, z0 + s.length))
        if rng.random() < 0.5:
            slices.reverse()
        image, labels = scene.render(slices)
        values = [v for v in np.unique(labels[0]) if v > 0]
        masks = np.stack([labels == v for v in values]) if values else np.zeros((0, *labels.shape), dtype=bool)
        frames = torch.from_numpy(image)[:, None].expand(-1, 3, -1, -1)
        return frames, torch.from_numpy(masks)

    def _case(self, case: PreparedCase, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        slices = consecutive_slices((case.labels > 0).reshape(len(case.labels), -1).any(axis=1),
                                    self.settings.length, rng)
        labels, parts, structures = case.labels[slices], case.parts[slices], case.structures[slices]
        masks = []
        for value in np.unique(labels[0]):
            if value == 0:
                continue
            split = np.unique(parts[0][labels[0] == value])
            if rng.random() < self.settings.p_parts and len(split) > 1 and 0 not in split:
                masks += [parts == p for p in split]  # one part alone, e.g. one kidney of two
            else:
                masks.append(labels == value)
        masks += [structures == v for v in np.unique(structures[0]) if v > 0]
        stacked = np.stack(masks) if masks else np.zeros((0, *labels.shape), dtype=bool)
        return case.frames[slices].float(), torch.from_numpy(stacked)

    def _reference(self, rng: np.random.Generator) -> Clip | None:
        """One label's annotated slices of a reference case (mask prompts), then query slices to segment."""
        r, q = self.reference_pairs[int(rng.integers(len(self.reference_pairs)))]
        reference, query = self.cases[r], self.cases[q]
        label = int(rng.choice(sorted(reference.label_ids & query.label_ids)))
        n_refs = int(rng.integers(1, self.settings.references + 1))
        refs = sample_slices(reference.labels == label, k=n_refs)
        slices = consecutive_slices((query.labels == label).reshape(len(query.labels), -1).any(axis=1),
                                    self.settings.length, rng)
        ref_frames, ref_masks = self.augment(reference.frames[refs].float(),
                                             torch.from_numpy(reference.labels[refs] == label)[None].float(),
                                             int(rng.integers(2**31)))
        frames, masks = self.augment(query.frames[slices].float(),
                                     torch.from_numpy(query.labels[slices] == label)[None].float(),
                                     int(rng.integers(2**31)))
        if (ref_masks.flatten(2).sum(-1) < MIN_PIXELS).any():
            return None
        targets = torch.cat([ref_masks, masks], dim=1)
        return Clip(f"{reference.id}->{query.id}", normalise(torch.cat([ref_frames, frames])), targets, None, None,
                    ref_masks, cond_frames=len(refs))

    # --- prompts ---------------------------------------------------------------------------
    def _prompted(self, frames: torch.Tensor, masks: torch.Tensor, source: str,
                  rng: np.random.Generator) -> Clip | None:
        """Augment, keep the objects visible on frame 0 (at most ``max_objects``), prompt them there."""
        if len(masks) == 0:
            return None
        frames, masks = self.augment(frames, masks.float(), int(rng.integers(2**31)))
        visible = np.flatnonzero(masks[:, 0].flatten(1).sum(-1).numpy() >= MIN_PIXELS)
        if len(visible) == 0:
            return None
        if len(visible) > self.settings.max_objects:
            visible = np.sort(rng.choice(visible, self.settings.max_objects, replace=False))
        targets = masks[visible]
        first = targets[:, 0].numpy() > 0.5
        s = self.settings
        kind = rng.random()
        points = point_labels = prompt_masks = None
        if kind < s.p_point:
            clicks = [centroid_voxel(m) if rng.random() < 0.5 else random_voxel(m, rng) for m in first]
            points = torch.tensor([[[x, y]] for y, x in clicks], dtype=torch.float32)
            point_labels = torch.ones(len(first), 1, dtype=torch.int32)
        elif kind < s.p_point + s.p_box:
            boxes = [jittered_box(m, rng, jitter=BOX_JITTER)[:, ::-1] for m in first]  # (x, y) corners
            points = torch.tensor(np.array(boxes), dtype=torch.float32)
            point_labels = torch.tensor([[2, 3]] * len(first), dtype=torch.int32)
        else:
            prompt_masks = targets[:, :1]
        return Clip(source, normalise(frames), targets, points, point_labels, prompt_masks)


def correction_click(pred: torch.Tensor, target: torch.Tensor,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per object from its error region, as SAM2's training samples corrections.

    ``pred`` (logits) and ``target`` are ``(B, S, S)`` in the model frame. Returns model
    ``(x, y)`` points ``(B, 1, 2)`` and labels ``(B, 1)``: 1 on a missed object pixel, 0 on a
    false-positive pixel, drawn uniformly from the union of both; a perfect mask gets a
    positive click on the object (or a negative one anywhere when the object is absent).
    """
    points, labels = [], []
    for p, t in zip((pred > 0).cpu().numpy(), target.cpu().numpy() > 0.5):
        errors = p != t
        if not errors.any():
            errors = t if t.any() else ~t
        y, x = random_voxel(errors, rng)
        points.append((x, y))
        labels.append(int(t[y, x]))
    return torch.tensor(points, dtype=torch.float32)[:, None], torch.tensor(labels, dtype=torch.int32)[:, None]


def consecutive_slices(drawn: np.ndarray, length: int, rng: np.random.Generator) -> list[int]:
    """``length`` consecutive slice indices, upwards or downwards, starting on a ``drawn`` slice."""
    n = len(drawn)
    length = min(length, n)
    step = int(rng.choice([-1, 1]))
    drawn = np.flatnonzero(drawn)
    starts = drawn[(drawn <= n - length) if step > 0 else (drawn >= length - 1)]
    if len(starts) == 0:  # the objects sit at the wrong end for this direction
        step, starts = -step, drawn[(drawn >= length - 1) if step > 0 else (drawn <= n - length)]
    z0 = int(rng.choice(starts))
    return list(range(z0, z0 + step * length, step))
