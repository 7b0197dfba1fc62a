"""Voxel overlap and surface distances per label: Dice, 95% Hausdorff, normalised surface Dice.

All three are MONAI's implementations (``DiceMetric``, ``compute_hausdorff_distance``,
``compute_surface_dice``) applied to one binary channel per label. What MONAI leaves to the
caller is decided here, once, and is the same for every metric:

* **Both empty** (the label is absent from the prediction and the ground truth): the score is
  ``empty`` (default NaN: "not applicable"), so a case without a kidney neither rewards nor
  punishes a method in a mean; ``mean_dice`` and the pipeline's means skip NaN. Pass
  ``empty=1.0`` for the "agreeing on absence is perfect" convention.
* **One empty**: Dice 0, Hausdorff ``inf``, surface Dice 0 (a missed or invented object is a
  complete failure, never NaN).

Distances are in millimetres from the label map's geometry (``spacing`` in ``(z, y, x)``).
Plain arrays carry no geometry: their distances are in voxels (spacing 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from monai.metrics import DiceMetric, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from medseg.errors import GeometryError, InputError
from medseg.volume import LabelVolume

LabelMap = LabelVolume | np.ndarray


def label_arrays(pred, truth) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The two label arrays and their common spacing ``(z, y, x)`` in mm (1 for plain arrays).

    ``pred`` and ``truth`` are arrays or objects with ``array`` and ``geometry``
    (``LabelVolume``, ``InstanceMap``). Raises ``GeometryError`` when two geometries do not
    describe the same voxel grid, or when the shapes differ.
    """
    gridded = [item for item in (truth, pred) if not isinstance(item, np.ndarray)]
    if len(gridded) == 2 and not truth.geometry.same_grid(pred.geometry):
        raise GeometryError(
            "prediction and ground truth are on different voxel grids: "
            f"{truth.geometry.describe_difference(pred.geometry)}; resample the prediction onto the image first"
        )
    spacing = gridded[0].geometry.spacing if gridded else (1.0, 1.0, 1.0)
    pred_array, truth_array = (np.asarray(getattr(item, "array", item)) for item in (pred, truth))
    if pred_array.shape != truth_array.shape:
        raise GeometryError(f"prediction shape {pred_array.shape} != ground truth shape {truth_array.shape}")
    if pred_array.ndim != 3:
        raise InputError(f"label maps are 3D (z, y, x); got an array of shape {pred_array.shape}")
    return _integer(pred_array, "prediction"), _integer(truth_array, "ground truth"), spacing


def _integer(array: np.ndarray, name: str) -> np.ndarray:
    if np.issubdtype(array.dtype, np.integer):
        return array
    if array.dtype != bool and not np.all(np.mod(array, 1) == 0):
        raise InputError(f"the {name} holds non-integer values; label maps hold integer label values")
    return array.astype(np.int32)


def _label_boxes(pred: np.ndarray, truth: np.ndarray, labels: list[int]) -> dict[int, tuple[slice, ...] | None]:
    """Per label, the box around its voxels in either map, grown by one voxel (None when absent).

    Every metric here depends only on the voxels of the two masks and their immediate
    background, so computing it on this box gives the same number as on the whole volume.
    """
    top = max(labels)
    pred_boxes = ndimage.find_objects(pred, max_label=top)
    truth_boxes = ndimage.find_objects(truth, max_label=top)
    boxes = {}
    for value in labels:
        found = [b[value - 1] for b in (pred_boxes, truth_boxes) if value <= len(b) and b[value - 1] is not None]
        boxes[value] = None if not found else tuple(
            slice(max(0, min(b[d].start for b in found) - 1), min(n, max(b[d].stop for b in found) + 1))
            for d, n in enumerate(pred.shape)
        )
    return boxes


def _label_values(labels: Iterable[int] | Mapping[int, str]) -> list[int]:
    values = [int(v) for v in labels]
    if not values or min(values) < 1:
        raise InputError(f"labels must be label values >= 1 (background 0 is never scored); got {values}")
    return values


def _channel(array: np.ndarray, value: int) -> torch.Tensor:
    """A ``(1, 1, z, y, x)`` boolean tensor of one label, as MONAI metrics take it."""
    return torch.from_numpy(array == value)[None, None]


def dice_per_label(pred: LabelMap, truth: LabelMap, *, labels: Iterable[int],
                   empty: float = np.nan) -> dict[int, float]:
    """Dice coefficient of each label value, with MONAI's ``DiceMetric``.

    Parameters
    ----------
    pred, truth
        Label maps on the same grid (``LabelVolume`` or integer arrays).
    labels
        Label values to score (a ``dict`` of label names works too).
    empty
        Score when the label is absent from both maps (see the module docstring).

    Examples
    --------
    >>> truth = np.zeros((1, 4, 4), int); truth[0, :2] = 1
    >>> pred = np.zeros((1, 4, 4), int); pred[0, :1] = 1
    >>> round(dice_per_label(pred, truth, labels=[1])[1], 4)
    0.6667
    """
    pred_array, truth_array, _ = label_arrays(pred, truth)
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    values = _label_values(labels)
    scores = {}
    for value, box in _label_boxes(pred_array, truth_array, values).items():
        if box is None:
            scores[value] = float(empty)
        else:
            scores[value] = float(metric(_channel(pred_array[box], value), _channel(truth_array[box], value))[0, 0])
    return scores


def mean_dice(scores: Mapping[int, float]) -> float:
    """Mean over labels, skipping NaN (labels absent from both maps); NaN when nothing is left."""
    values = np.array([v for v in scores.values() if not np.isnan(v)], dtype=float)
    return float(values.mean()) if values.size else float("nan")


def _surface_metric(pred: LabelMap, truth: LabelMap, labels: Iterable[int], empty: float,
                    one_empty: float, compute) -> dict[int, float]:
    pred_array, truth_array, spacing = label_arrays(pred, truth)
    values = _label_values(labels)
    scores = {}
    for value, box in _label_boxes(pred_array, truth_array, values).items():
        if box is None:
            scores[value] = float(empty)
            continue
        p, t = _channel(pred_array[box], value), _channel(truth_array[box], value)
        has_pred, has_truth = bool(p.any()), bool(t.any())
        if has_pred != has_truth:
            scores[value] = float(one_empty)
        else:
            with warnings.catch_warnings():  # MONAI warns about deprecated internals on every call
                warnings.simplefilter("ignore")
                scores[value] = float(compute(p.float(), t.float(), spacing))
    return scores


def hausdorff95_per_label(pred: LabelMap, truth: LabelMap, *, labels: Iterable[int],
                          empty: float = np.nan) -> dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance in mm per label (MONAI).

    The larger of the two directed 95th percentiles of surface-to-surface distances, as in
    ``compute_hausdorff_distance(percentile=95)``. ``inf`` when only one map has the label.
    """

    def compute(p, t, spacing):
        return compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=list(spacing))[0, 0]

    return _surface_metric(pred, truth, labels, empty, float("inf"), compute)


def surface_dice_per_label(
    pred: LabelMap, truth: LabelMap, *, labels: Iterable[int], tolerance_mm: float = 2.0, empty: float = np.nan
) -> dict[int, float]:
    """Normalised surface Dice per label (MONAI): the fraction of both surfaces within ``tolerance_mm``.

    0 when only one map has the label.
    """
    if tolerance_mm < 0:
        raise InputError(f"tolerance_mm must be >= 0, got {tolerance_mm}")

    def compute(p, t, spacing):
        return compute_surface_dice(p, t, [float(tolerance_mm)], include_background=True, spacing=list(spacing))[0, 0]

    return _surface_metric(pred, truth, labels, empty, 0.0, compute)
