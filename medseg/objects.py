"""Object-level output: each segmented object as its 3D instances, specks dropped, scored by the method.

A propagating method (SAM2, reference prompting) paints an object slice by slice. Where the
object is absent or at its edge it often paints a few stray voxels as well, so one object comes
back as the organ plus dozens of disconnected specks. Counted as connected components, every
speck is an instance of its own carrying the organ's score, and mask AP ranks the organ among
them. ``clean_objects`` turns such a label map into the objects the user asked for.

The rule (per label value, i.e. per prompted object)
----------------------------------------------------
1. The *units* are the 3D connected components of the label (26-connectivity, as mask AP's
   ``components``), or a method's own instances when it has them (Mask R-CNN's stitched
   detections).
2. *Anchors* are the units that touch the object's prompts: a positive click's voxel, a box,
   a painted mask (for reference prompting, ``medseg.revsam2.anchor_prompts``: the supports drawn
   on the query and the largest region of each slice it re-prompted from). Without
   prompts, or when no unit touches them, the largest unit is the anchor. Anchors are always
   kept: cleaning removes specks, never the object itself (whether the object is right is for
   the score ranking and the metrics to say).
3. Any other unit is kept when it is at least ``min_fraction`` of the largest anchor's voxels
   *and* its score is at least ``min_score``. The size test is relative because the prompted
   component tells the scale of the object: a second kidney under the same label is about as
   large as the first and stays; a speck of a few dozen voxels beside an organ of thousands goes.
   The score test drops what the method itself scores as absent.
4. Each kept unit is one instance. Its score is the method's own per-slice confidence (for
   SAM2: P(object present) x predicted IoU) averaged over the instance's voxels, i.e. weighted
   by its area on each slice; a method's own instance score (Mask R-CNN) is kept as it is.

Why these defaults (``MIN_FRACTION`` 0.1, ``MIN_SCORE`` 0.0), measured by ``benchmarks/objects.py``
on the demo cohort's test split with a SAM2 trained on its train split: any fraction from 0.05 to
0.2 gives the same objects for SAM2, reference prompting and Mask R-CNN (the specks dropped are
1-98 voxels, and nothing a prompt marked is lost); 0.02 keeps a few specks, 0.5 loses a true
kidney. A score floor of 0.5 or 0.7 drops nothing more: a slice score belongs to the object's whole
mask on that slice, and SAM2 already blanks a slice whose presence score is below 0.5, so specks
carry confident scores. The option stays for methods and models where it matters.

The raw output is not changed: ``clean_objects`` returns new arrays.

>>> import numpy as np
>>> from medseg.geometry import Geometry
>>> array = np.zeros((6, 8, 8), np.int32)
>>> array[1:5, 1:5, 1:5] = 1          # the organ (64 voxels)
>>> array[0, 7, 7] = 1                # a speck on a slice where the organ is absent
>>> scores = np.array([0.6, 0.9, 0.9, 0.9, 0.9, np.nan])
>>> labels = LabelVolume(array, Geometry(array.shape, (1.0, 1.0, 1.0)), slice_scores={1: scores})
>>> objects = clean_objects(labels)
>>> len(objects.instances.labels), round(objects.instances.scores[1], 2), objects.dropped[1]
(1, 0.9, [1])
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from medseg.errors import ConfigError
from medseg.prompts import ObjectPrompts, Prompts
from medseg.volume import InstanceMap, LabelVolume

MIN_FRACTION = 0.1
MIN_SCORE = 0.0
_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as mask AP's components


@dataclass(frozen=True, eq=False)
class Objects:
    """What ``clean_objects`` returns.

    ``labels``: the kept voxels, with per-label ``scores`` (area-weighted over the kept voxels)
    and ``slice_scores`` (NaN where nothing is kept); ``instances``: one scored instance per kept
    unit, ids in label order then raster order; ``dropped``: label value -> voxel count of each
    dropped unit.
    """

    labels: LabelVolume
    instances: InstanceMap
    dropped: dict[int, list[int]]


@dataclass
class _Unit:
    label: int
    voxels: np.ndarray  # flat indices into the volume
    score: float | None
    slice_scores: np.ndarray | None


def clean_objects(
    labels: LabelVolume,
    *,
    instances: InstanceMap | None = None,
    prompts: Prompts | None = None,
    min_fraction: float = MIN_FRACTION,
    min_score: float = MIN_SCORE,
) -> Objects:
    """Each object of ``labels`` as its kept 3D instances (see the module docstring for the rule).

    Parameters
    ----------
    labels
        A method's label map with its ``slice_scores`` (or ``scores``) per label value.
    instances
        The method's own scored instances behind ``labels`` (Mask R-CNN); they are the units
        instead of connected components.
    prompts
        What the object was segmented from (object id = label value): anchors the units that
        touch a positive point, a box or a mask. None: the largest unit of each label.
    min_fraction
        A unit that touches no prompt is kept only with at least this fraction of the voxels of
        the label's largest anchor.
    min_score
        ... and a score of at least this.

    Returns
    -------
    Objects
        New arrays; ``labels`` and ``instances`` are left as they were.
    """
    if not 0 <= min_fraction <= 1:
        raise ConfigError(f"min_fraction must be in [0, 1], got {min_fraction}")
    if not 0 <= min_score <= 1:
        raise ConfigError(f"min_score must be in [0, 1], got {min_score}")
    if instances is not None and instances.array.shape != labels.array.shape:
        raise ConfigError(f"instances of shape {instances.array.shape} do not belong to labels of shape "
                          f"{labels.array.shape}")
    kept: list[_Unit] = []
    dropped: dict[int, list[int]] = {}
    units = _instance_units(instances) if instances is not None else _component_units(labels)
    for label in sorted(units):
        group = units[label]
        obj = prompts.objects.get(label) if prompts is not None else None
        anchors = _anchors(group, obj, labels.array.shape)
        reference = max(group[i].voxels.size for i in anchors)
        for i, unit in enumerate(group):
            score = -np.inf if unit.score is None else unit.score
            if i in anchors or (unit.voxels.size >= min_fraction * reference and score >= min_score):
                kept.append(unit)
            else:
                dropped.setdefault(label, []).append(int(unit.voxels.size))
    result = _instance_map(kept, labels)
    settings = {"rule": "objects", "min_fraction": min_fraction, "min_score": min_score,
                "dropped": {str(k): {"units": len(v), "voxels": int(sum(v))} for k, v in dropped.items()}}
    return Objects(semantic_labels(result, labels, postprocess=settings), result, dropped)


def semantic_labels(instances: InstanceMap, like: LabelVolume, *, postprocess: dict | None = None) -> LabelVolume:
    """The label map of ``instances``, with per label value the voxel-weighted mean instance score and
    the best instance score per slice; names, ``untrained`` and provenance come from ``like``.

    This is how Mask R-CNN's semantic output is made from its instances, and how cleaned objects
    are (for SAM2, every instance of a label shares the label's slice score, so the best per slice is
    that score and the weighted mean equals the area-weighted mean slice score over the kept voxels).
    """
    lookup = np.zeros(max(instances.labels, default=0) + 1, dtype=like.array.dtype)
    for k, value in instances.labels.items():
        lookup[k] = value
    voxels = np.bincount(instances.array.ravel(), minlength=len(lookup))
    scores, slice_scores = {}, {}
    for value in sorted(set(instances.labels.values())):
        ids = [k for k, v in instances.labels.items() if v == value and k in instances.scores]
        if not ids:
            continue
        weights = np.array([voxels[k] for k in ids], dtype=float)
        scores[value] = float(np.dot(weights, [instances.scores[k] for k in ids]) / weights.sum())
        per_slice = [instances.slice_scores[k] for k in ids if k in instances.slice_scores]
        if per_slice:
            best = np.stack([np.nan_to_num(s, nan=-1.0) for s in per_slice]).max(axis=0)
            slice_scores[value] = np.where(best < 0, np.nan, best)  # scores are in [0, 1]; -1 marks "absent"
    provenance = like.provenance if postprocess is None else {**like.provenance, "postprocess": postprocess}
    return replace(like, array=lookup[instances.array], scores=scores, slice_scores=slice_scores,
                   provenance=provenance, source_files=())


def _component_units(labels: LabelVolume) -> dict[int, list[_Unit]]:
    """The 3D connected components of each label value, scored from the label's slice scores."""
    array = labels.array
    units: dict[int, list[_Unit]] = {}
    boxes = ndimage.find_objects(array)
    for label in labels.labels:
        box = boxes[label - 1]
        components, count = ndimage.label(array[box] == label, structure=_FULL)
        per_slice = labels.slice_scores.get(label)
        fallback = labels.scores.get(label)
        local = np.flatnonzero(components)
        ids = components.ravel()[local]
        order = np.argsort(ids, kind="stable")
        coords = np.unravel_index(local[order], components.shape)
        flat = np.ravel_multi_index(tuple(c + b.start for c, b in zip(coords, box)), array.shape)
        for voxels in np.split(flat, np.cumsum(np.bincount(ids, minlength=count + 1)[1:])[:-1]):
            units.setdefault(label, []).append(_score_unit(label, voxels, array.shape, per_slice, fallback))
    return units


def _score_unit(label: int, voxels: np.ndarray, shape: tuple[int, ...], per_slice: np.ndarray | None,
                fallback: float | None) -> _Unit:
    """A component scored by the label's slice scores weighted by its area on each slice."""
    if per_slice is None:
        score = None if fallback is None or not np.isfinite(fallback) else float(fallback)
        return _Unit(label, voxels, score, None)
    area = np.bincount(voxels // (shape[1] * shape[2]), minlength=shape[0]).astype(float)
    finite = np.isfinite(per_slice) & (area > 0)
    mine = np.where(area > 0, per_slice, np.nan)
    if not finite.any():
        score = None if fallback is None or not np.isfinite(fallback) else float(fallback)
        return _Unit(label, voxels, score, mine)
    return _Unit(label, voxels, float(np.dot(area[finite], per_slice[finite]) / area[finite].sum()), mine)


def _instance_units(instances: InstanceMap) -> dict[int, list[_Unit]]:
    """A method's own instances, with their own scores, grouped by label value."""
    units: dict[int, list[_Unit]] = {}
    order = np.argsort(instances.array.ravel(), kind="stable")
    counts = np.bincount(instances.array.ravel())
    starts = np.concatenate([[0], np.cumsum(counts)])
    for k in range(1, len(counts)):
        if counts[k] == 0:
            continue
        label = instances.labels[k]
        voxels = np.sort(order[starts[k]:starts[k + 1]])
        units.setdefault(label, []).append(_Unit(label, voxels, instances.scores.get(k), instances.slice_scores.get(k)))
    return units


def _anchors(group: list[_Unit], obj: ObjectPrompts | None, shape: tuple[int, int, int]) -> set[int]:
    """Indices of the units touching the object's positive prompts; else the largest unit."""
    if obj is not None:
        region = _prompt_voxels(obj, shape)
        touching = {i for i, unit in enumerate(group) if np.isin(unit.voxels, region, assume_unique=False).any()}
        if touching:
            return touching
    return {int(np.argmax([unit.voxels.size for unit in group]))}


def _prompt_voxels(obj: ObjectPrompts, shape: tuple[int, int, int]) -> np.ndarray:
    """Flat indices of the voxels a user marked as the object: positive clicks, boxes, masks."""
    plane = shape[1] * shape[2]
    parts = []
    for p in obj.points:
        if p.positive:
            y, x = min(max(round(p.y), 0), shape[1] - 1), min(max(round(p.x), 0), shape[2] - 1)
            parts.append(np.array([p.z * plane + y * shape[2] + x]))
    for b in obj.boxes:
        ys = np.arange(max(int(np.floor(b.y0)), 0), min(int(np.ceil(b.y1)), shape[1] - 1) + 1)
        xs = np.arange(max(int(np.floor(b.x0)), 0), min(int(np.ceil(b.x1)), shape[2] - 1) + 1)
        parts.append((b.z * plane + ys[:, None] * shape[2] + xs[None, :]).ravel())
    for m in obj.masks:
        parts.append(m.z * plane + np.flatnonzero(m.mask))
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)


def _instance_map(kept: list[_Unit], labels: LabelVolume) -> InstanceMap:
    """The kept units as instances ``1..n`` in the order given."""
    array = np.zeros(labels.array.shape, dtype=np.int32)
    flat = array.reshape(-1)
    ids, scores, slice_scores = {}, {}, {}
    for k, unit in enumerate(kept, start=1):
        flat[unit.voxels] = k
        ids[k] = unit.label
        if unit.score is not None:
            scores[k] = unit.score
        if unit.slice_scores is not None:
            slice_scores[k] = unit.slice_scores
    return InstanceMap(array, labels.geometry, labels=ids, scores=scores, slice_scores=slice_scores)
