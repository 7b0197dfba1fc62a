"""COCO mask average precision of 3D label maps, evaluated by pycocotools.

Matching, precision interpolation and averaging are pycocotools' ``COCOeval(iouType="segm")``;
this module only turns label maps into COCO images and run-length-encoded (RLE) annotations.

Modes
-----
``"2d"``
    Each slice with an object (in prediction or truth) is one COCO image; its instances are
    the objects' cross-sections on that slice. Areas are in mm² and the area ranges are
    COCO's own numbers read in mm² (small < 32², medium < 96², large >= 96²), which equal
    COCO's pixel ranges at 1 mm in-plane spacing.
``"3d"``
    Each volume is one COCO image and each instance a 3D mask. The voxels covered by any
    instance of the volume (truth or prediction) are flattened to a single-column image
    before RLE encoding; voxels outside every mask cannot change an IoU or an area, so
    pycocotools' IoU is the exact voxel IoU.
    Areas are volumes in mm³ with ranges that fit anatomy: small < 1 mL (1 000 mm³: nodules,
    small lesions), medium 1–100 mL (lesions, small organs), large >= 100 mL (organs).

Instances
---------
A semantic label map becomes instances in one of two ways (``instances=``):
``"components"`` (default), the connected components of each label value (26-connectivity
in 3D; 8-connectivity within a slice in 2D), or ``"per_class"``, one instance per label value
present. An ``InstanceMap`` (for example from Mask R-CNN) is used as it is.

Scores
------
Predicted instances take their confidence from the method: ``LabelVolume.slice_scores`` (2D,
where finite), else ``LabelVolume.scores`` per label value, else the ``InstanceMap`` scores.
An instance without a score gets 1.0, and ``MaskAP.constant_score`` says so: its AP is then
the AP of an arbitrary ranking and should be read as such.

COCO keeps at most ``max_detections`` (100) detections per image and category, highest
score first; lower-ranked instances are dropped before encoding, which yields the same
numbers as passing them all and is far cheaper for speckled predictions.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.metrics.overlap import label_arrays
from medseg.volume import InstanceMap, LabelVolume

Mode = Literal["2d", "3d"]
InstancePolicy = Literal["components", "per_class"]

AREA_RANGES_2D_MM2 = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2),
                      "large": (96.0**2, 1e10)}
AREA_RANGES_3D_MM3 = {"all": (0.0, 1e12), "small": (0.0, 1e3), "medium": (1e3, 1e5), "large": (1e5, 1e12)}
MAX_DETECTIONS = (1, 10, 100)
_CONSTANT_SCORE = 1.0


@dataclass(frozen=True)
class MaskAP:
    """COCO mask AP over a set of images (``nan`` where there is no ground truth to score)."""

    mode: str
    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar100: float
    per_label: dict[int, float]
    n_images: int
    n_truth: int
    n_predicted: int
    constant_score: bool
    area_unit: str

    def to_dict(self) -> dict:
        data = asdict(self)
        data["per_label"] = {str(k): v for k, v in self.per_label.items()}
        return data


def _nan_if_missing(value: float) -> float:
    return float("nan") if value < 0 else float(value)


@dataclass
class _Annotations:
    """COCO images and annotations under construction, for the truth and the predictions."""

    mode: Mode
    categories: list[int]
    images: list[dict] = field(default_factory=list)
    truth: list[dict] = field(default_factory=list)
    predicted: list[dict] = field(default_factory=list)
    constant_score: bool = False

    def add_image(self, height: int, width: int) -> int:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": int(height), "width": int(width)})
        return image_id

    def add(self, target: list[dict], image_id: int, label: int, rle: dict, area: float, score: float | None) -> None:
        ann = {"id": len(target) + 1, "image_id": image_id, "category_id": int(label), "segmentation": rle,
               "area": float(area), "iscrowd": 0, "bbox": list(mask_utils.toBbox(rle))}
        if score is not None:
            ann["score"] = float(score)
        target.append(ann)

    def coco(self, annotations: list[dict]) -> COCO:
        coco = COCO()
        coco.dataset = {"images": self.images, "categories": [{"id": c} for c in self.categories],
                        "annotations": annotations}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco


@dataclass
class _Instance:
    label: int
    score: float | None
    voxels: np.ndarray  # sorted flat (C-order) indices: into the volume (3D) or its slice (2D)


def _score(item, key: int, z: int | None) -> float | None:
    """The method's confidence for label value / instance id ``key`` (on slice ``z`` in 2D)."""
    if isinstance(item, np.ndarray):
        return None
    per_slice = item.slice_scores.get(key)
    if z is not None and per_slice is not None and np.isfinite(per_slice[z]):
        return float(per_slice[z])
    value = item.scores.get(key)
    return None if value is None or not np.isfinite(value) else float(value)


def _flat(box: tuple[slice, ...], mask: np.ndarray, shape: tuple[int, ...],
          local: np.ndarray | None = None) -> np.ndarray:
    """Flat indices in an array of ``shape`` of the True voxels of ``mask``, the crop at ``box``
    (or of the crop's flat indices ``local``)."""
    coords = np.unravel_index(np.flatnonzero(mask) if local is None else local, mask.shape)
    return np.ravel_multi_index(tuple(c + b.start for c, b in zip(coords, box)), shape)


def _components(mask: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> list[np.ndarray]:
    """Voxels (flat indices in ``shape``) of each connected component of ``mask``, the crop at
    ``box``, numbered as ``ndimage.label`` does (raster order); full connectivity."""
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    local = np.flatnonzero(components)
    ids = components.ravel()[local]
    voxels = _flat(box, mask, shape, local[np.argsort(ids, kind="stable")])
    return np.split(voxels, np.cumsum(np.bincount(ids, minlength=count + 1)[1:])[:-1])


def _semantic_instances(array: np.ndarray, labels: Sequence[int], mode: Mode, policy: InstancePolicy):
    """Yield ``(z or None, label, voxels)`` of each instance of a semantic label map.

    Work is confined to each label's bounding box; components are numbered in raster order.
    """
    boxes = ndimage.find_objects(array, max_label=max(labels))
    for label in sorted(labels):
        box = boxes[label - 1] if label <= len(boxes) else None
        if box is None:
            continue
        crop = array[box] == label
        if mode == "3d":
            pieces = [_flat(box, crop, array.shape)] if policy == "per_class" else _components(crop, box, array.shape)
            for voxels in pieces:
                yield None, label, voxels
            continue
        for dz, plane in enumerate(crop):
            if not plane.any():
                continue
            z = box[0].start + dz
            pieces = ([_flat(box[1:], plane, array.shape[1:])] if policy == "per_class"
                      else _components(plane, box[1:], array.shape[1:]))
            for voxels in pieces:
                yield z, label, voxels


def _map_instances(item: InstanceMap, labels: Sequence[int], mode: Mode):
    """Yield ``(z or None, instance id, label, voxels)`` of each instance of an ``InstanceMap``."""
    wanted = set(labels)
    shape = item.array.shape
    for index, box in enumerate(ndimage.find_objects(item.array), start=1):
        if box is None or item.labels.get(index) not in wanted:
            continue
        crop = item.array[box] == index
        if mode == "3d":
            yield None, index, item.labels[index], _flat(box, crop, shape)
            continue
        for dz, plane in enumerate(crop):
            if plane.any():
                yield box[0].start + dz, index, item.labels[index], _flat(box[1:], plane, shape[1:])


def _instances(item, array: np.ndarray, labels: Sequence[int], mode: Mode,
               policy: InstancePolicy, scored: bool) -> dict[int | None, list[_Instance]]:
    """The instances of one label map (``array`` its integer voxels), grouped by slice (2D) or under ``None`` (3D)."""
    grouped: dict[int | None, list[_Instance]] = {}
    if isinstance(item, InstanceMap):
        for z, key, label, voxels in _map_instances(item, labels, mode):
            grouped.setdefault(z, []).append(_Instance(label, _score(item, key, z) if scored else None, voxels))
    else:
        for z, label, voxels in _semantic_instances(array, labels, mode, policy):
            grouped.setdefault(z, []).append(_Instance(label, _score(item, label, z) if scored else None, voxels))
    return grouped


def _keep_top(instances: list[_Instance], max_detections: int) -> list[_Instance]:
    """What COCOeval keeps: per category, the ``max_detections`` best by score (stable order)."""
    kept = []
    for label in sorted({i.label for i in instances}):
        same = [i for i in instances if i.label == label]
        order = np.argsort([-i.score for i in same], kind="mergesort")[:max_detections]
        kept.extend(same[k] for k in order)
    return kept


def _encode(groups: list[list[_Instance]], mode: Mode,
            plane_shape: tuple[int, int]) -> tuple[tuple[int, int], list[list[dict]]]:
    """The COCO image size and the RLE of every instance of one image.

    2D: the slice itself. 3D: the voxels covered by any instance of the image (truth or
    prediction), flattened to one column. Voxels outside every mask cannot change an IoU or
    an area, so the RLE IoU is the exact voxel IoU, at the cost of the objects' size rather
    than the volume's.
    """
    everything = [i for group in groups for i in group]
    if mode == "3d":
        universe = np.unique(np.concatenate([i.voxels for i in everything]))
        size = (len(universe), 1)
        positions = [np.searchsorted(universe, i.voxels) for i in everything]
    else:
        size = plane_shape
        positions = [i.voxels for i in everything]
    masks = np.zeros((*size, max(1, len(everything))), dtype=np.uint8, order="F")  # (h, w, n) as pycocotools wants
    for column, where in enumerate(positions):
        rows, cols = np.divmod(where, size[1])
        masks[rows, cols, column] = 1
    rles = mask_utils.encode(masks)[: len(everything)]
    out, start = [], 0
    for group in groups:
        out.append(rles[start : start + len(group)])
        start += len(group)
    return size, out


def _add_case(ann: _Annotations, pred, truth, policy: InstancePolicy, case: int) -> None:
    try:
        pred_array, truth_array, spacing = label_arrays(pred, truth)
    except GeometryError as error:
        raise GeometryError(f"case {case}: {error}") from None
    unit = spacing[1] * spacing[2] * (spacing[0] if ann.mode == "3d" else 1.0)
    truth_instances = _instances(truth, truth_array, ann.categories, ann.mode, policy, scored=False)
    pred_instances = _instances(pred, pred_array, ann.categories, ann.mode, policy, scored=True)
    for group in pred_instances.values():
        for inst in group:
            if inst.score is None:
                inst.score = _CONSTANT_SCORE
                ann.constant_score = True
    for key in sorted(set(truth_instances) | set(pred_instances), key=lambda k: -1 if k is None else k):
        groups = [truth_instances.get(key, []), _keep_top(pred_instances.get(key, []), MAX_DETECTIONS[-1])]
        size, rles = _encode(groups, ann.mode, truth_array.shape[1:])
        image_id = ann.add_image(*size)
        for target, group, group_rles in zip((ann.truth, ann.predicted), groups, rles):
            for inst, rle in zip(group, group_rles):
                ann.add(target, image_id, inst.label, rle, float(mask_utils.area(rle)) * unit, inst.score)


def instance_counts(
    item: LabelVolume | InstanceMap | np.ndarray, *, labels: Iterable[int], instances: InstancePolicy = "components"
) -> dict[int, int]:
    """How many 3D instances ``mask_ap`` sees per label value in one label map (see "Instances" above).

    >>> array = np.zeros((1, 3, 5), int); array[0, :, 0] = 3; array[0, :, 4] = 3
    >>> instance_counts(array, labels=[1, 3]), instance_counts(array, labels=[3], instances="per_class")
    ({1: 0, 3: 2}, {3: 1})
    """
    if instances not in ("components", "per_class"):
        raise ConfigError(f"instances must be 'components' or 'per_class', got {instances!r}")
    wanted = sorted(int(v) for v in labels)
    counts = dict.fromkeys(wanted, 0)
    array = item if isinstance(item, np.ndarray) else item.array
    for inst in _instances(item, np.asarray(array), wanted, "3d", instances, scored=False).get(None, []):
        counts[inst.label] += 1
    return counts


def mask_ap(
    pairs: Iterable[tuple[LabelVolume | InstanceMap | np.ndarray, LabelVolume | InstanceMap | np.ndarray]],
    *,
    labels: Iterable[int],
    mode: Mode = "3d",
    instances: InstancePolicy = "components",
) -> MaskAP:
    """COCO mask AP of predictions against ground truth, pooled over all cases.

    Parameters
    ----------
    pairs
        ``(prediction, truth)`` per case; consumed one at a time (only the RLEs are kept), so
        a generator that loads cases lazily keeps memory flat.
    labels
        Label values to evaluate (COCO categories); others are ignored.
    mode
        ``"2d"`` (each slice an image) or ``"3d"`` (each volume an image); see the module docstring.
    instances
        ``"components"`` or ``"per_class"``: how semantic label maps become instances.

    Returns
    -------
    MaskAP
        AP@[.5:.05:.95], AP50, AP75, AP by area range, AR@100 and AP per label, as COCOeval
        computes them; ``nan`` where no ground truth instance exists.
    """
    if mode not in ("2d", "3d"):
        raise ConfigError(f"mask AP mode must be '2d' or '3d', got {mode!r}")
    if instances not in ("components", "per_class"):
        raise ConfigError(f"instances must be 'components' or 'per_class', got {instances!r}")
    categories = sorted(int(v) for v in labels)
    if not categories or categories[0] < 1:
        raise InputError(f"labels must be label values >= 1; got {categories}")
    ann = _Annotations(mode, categories)
    for case, (pred, truth) in enumerate(pairs):
        _add_case(ann, pred, truth, instances, case)

    ranges = AREA_RANGES_3D_MM3 if mode == "3d" else AREA_RANGES_2D_MM2
    evaluator = COCOeval(ann.coco(ann.truth), ann.coco(ann.predicted), iouType="segm")
    evaluator.params.imgIds = [image["id"] for image in ann.images]
    evaluator.params.catIds = categories
    evaluator.params.maxDets = list(MAX_DETECTIONS)
    evaluator.params.areaRng = [list(r) for r in ranges.values()]
    evaluator.params.areaRngLbl = list(ranges)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [_nan_if_missing(s) for s in evaluator.stats]
    # precision: [iou threshold, recall, category, area range, max detections]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_label = {}
    for k, label in enumerate(categories):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        per_label[label] = float(valid.mean()) if valid.size else float("nan")
    return MaskAP(
        mode=mode, ap=stats[0], ap50=stats[1], ap75=stats[2], ap_small=stats[3], ap_medium=stats[4],
        ap_large=stats[5], ar100=stats[8], per_label=per_label, n_images=len(ann.images),
        n_truth=len(ann.truth), n_predicted=len(ann.predicted), constant_score=ann.constant_score,
        area_unit="mm3" if mode == "3d" else "mm2",
    )
