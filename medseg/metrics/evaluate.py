"""One case scored once: every per-label metric medseg reports, and what mask AP needs.

``evaluate`` is the one place the metric bundle is assembled; the pipeline runner, Mask
R-CNN validation and ``evaluate_pair`` all call it, so a case scores the same wherever it is
scored. Mask AP is pooled over cases by COCO, so a case cannot carry its own AP:
``CaseMetrics.ap_pair`` is the ``(prediction, truth)`` pair to hand to ``mask_ap`` (the
method's own scored instances where it has them, else its label map). ``evaluate_pair`` scores
one prediction against one truth with everything at once, AP of that pair included: what a
viewer shows for two label maps (the napari Metrics panel).

>>> truth = np.zeros((1, 4, 4), int); truth[0, :2] = 1
>>> pred = np.zeros((1, 4, 4), int); pred[0, :1] = 1
>>> scores = evaluate(pred, truth, labels=[1])
>>> round(scores.dice[1], 4), scores[1].truth_voxels, scores[1].pred_voxels
(0.6667, 8, 4)
>>> round(mask_ap([scores.ap_pair], labels=[1]).ap50, 1)  # IoU 0.5: a hit at AP50; pooled AP takes a list of pairs
1.0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.metrics.coco import InstancePolicy, MaskAP, Mode, mask_ap
from medseg.metrics.overlap import (
    LabelMap,
    dice_per_label,
    hausdorff95_per_label,
    label_arrays,
    mean_dice,
    surface_dice_per_label,
)
from medseg.runtime import Progress, ShouldStop, check_stop, report
from medseg.volume import InstanceMap, LabelVolume


@dataclass(frozen=True)
class LabelScores:
    """The scores of one label value of one case (NaN: the label is in neither map)."""

    dice: float
    hd95_mm: float  # NaN when not computed (``hausdorff=False``); inf when only one map has the label
    surface_dice: float
    truth_voxels: int
    pred_voxels: int

    def to_dict(self) -> dict[str, float | int]:
        """The keys of the pipeline's ``result.json`` and ``metrics.csv`` (``nsd`` = surface Dice)."""
        return {"dice": self.dice, "hd95_mm": self.hd95_mm, "nsd": self.surface_dice,
                "truth_voxels": self.truth_voxels, "pred_voxels": self.pred_voxels}


@dataclass(frozen=True)
class CaseMetrics:
    """What ``evaluate`` returns: ``per_label`` scores and the inputs of 2D/3D mask AP."""

    per_label: dict[int, LabelScores]
    surface_tolerance_mm: float
    millimetres: bool  # distances in mm (a map carried geometry) or in voxels (plain arrays)
    ap_pair: tuple[Any, Any]  # (prediction or its InstanceMap, truth), for ``mask_ap``

    def __getitem__(self, label: int) -> LabelScores:
        return self.per_label[label]

    @property
    def dice(self) -> dict[int, float]:
        return {v: s.dice for v, s in self.per_label.items()}

    @property
    def hd95_mm(self) -> dict[int, float]:
        return {v: s.hd95_mm for v, s in self.per_label.items()}

    @property
    def surface_dice(self) -> dict[int, float]:
        return {v: s.surface_dice for v, s in self.per_label.items()}

    @property
    def mean_dice(self) -> float:
        """Mean Dice over labels, NaN labels skipped (``medseg.metrics.mean_dice``)."""
        return mean_dice(self.dice)

    def mask_ap(self, *, mode: Mode = "3d", instances: InstancePolicy = "components") -> MaskAP:
        """COCO mask AP of this case alone (for a cohort, pool the ``ap_pair`` of every case)."""
        return mask_ap([self.ap_pair], labels=list(self.per_label), mode=mode, instances=instances)

    def to_dict(self) -> dict[str, dict[str, float | int]]:
        """``{"<label>": {"dice", "hd95_mm", "nsd", "truth_voxels", "pred_voxels"}}`` (NaN kept)."""
        return {str(v): s.to_dict() for v, s in self.per_label.items()}


def evaluate(
    prediction: LabelMap,
    truth: LabelMap,
    *,
    labels: Iterable[int] | Mapping[int, str],
    instances: InstanceMap | None = None,
    hausdorff: bool = True,
    surface_tolerance_mm: float = 2.0,
    empty: float = np.nan,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> CaseMetrics:
    """Dice, 95% Hausdorff, surface Dice and voxel counts per label of one case.

    Parameters
    ----------
    prediction, truth
        Label maps on the same grid (``LabelVolume`` or integer arrays; a geometry mismatch is
        a ``GeometryError``). Distances are in mm from the geometry, in voxels for plain arrays.
    labels
        Label values to score (a ``dict`` of label names works too).
    instances
        The method's own scored 3D instances (e.g. Mask R-CNN's), used for mask AP instead of
        the prediction's connected components.
    hausdorff
        False skips HD95 (the slowest metric on large organs); ``hd95_mm`` is then NaN.
    surface_tolerance_mm
        Tolerance of surface Dice. This is MONAI's ``compute_surface_dice``: the fraction of
        *boundary voxels* of both masks within the tolerance. DeepMind's ``surface-distance``
        package weights each boundary element by its surface area and gives other numbers.
    empty
        Score of a label absent from both maps (NaN: "not applicable"; see ``medseg.metrics.overlap``).
    progress, should_stop
        The engine contract (``medseg.runtime``): one unit per metric.
    """
    values = [int(v) for v in labels]
    pred_array, truth_array, _ = label_arrays(prediction, truth)
    steps = [
        lambda: dice_per_label(prediction, truth, labels=values, empty=empty),
        lambda: hausdorff95_per_label(prediction, truth, labels=values, empty=empty) if hausdorff else {},
        lambda: surface_dice_per_label(prediction, truth, labels=values,
                                       tolerance_mm=surface_tolerance_mm, empty=empty),
    ]
    results = []
    for done, step in enumerate(steps, start=1):
        check_stop(should_stop, "evaluation")
        results.append(step())
        report(progress, done, len(steps))
    dice, hd95, surface = results
    per_label = {
        v: LabelScores(dice=dice[v], hd95_mm=hd95.get(v, float("nan")), surface_dice=surface[v],
                       truth_voxels=int(np.count_nonzero(truth_array == v)),
                       pred_voxels=int(np.count_nonzero(pred_array == v)))
        for v in values
    }
    gridded = not (isinstance(prediction, np.ndarray) and isinstance(truth, np.ndarray))
    return CaseMetrics(per_label, float(surface_tolerance_mm), gridded,
                       (instances if instances is not None else prediction, truth))


@dataclass(frozen=True)
class PairScores:
    """What ``evaluate_pair`` returns: the per-label metrics, both mask APs, names and the untrained flag."""

    names: dict[int, str]  # every label of the truth; names from the label maps (the truth's win), else "label N"
    metrics: CaseMetrics
    ap_3d: MaskAP
    ap_2d: MaskAP
    untrained: bool  # the prediction came from a random-weight model: its numbers mean nothing


def evaluate_pair(
    prediction: LabelMap,
    truth: LabelMap,
    *,
    surface_tolerance_mm: float = 2.0,
    instances: InstancePolicy = "components",
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> PairScores:
    """Every metric of one prediction against one truth, over the truth's labels: ``evaluate``, then 3D and 2D mask AP.

    Parameters
    ----------
    prediction, truth
        Label maps on the same grid (``LabelVolume`` or integer arrays; see ``evaluate``).
    surface_tolerance_mm
        Tolerance of surface Dice.
    instances
        Mask AP instances: ``"components"`` (connected components of each label) or ``"per_class"``.
    progress, should_stop
        The engine contract (``medseg.runtime``): five units (three metrics, two APs).

    Raises
    ------
    InputError
        The truth has no label (all voxels 0).
    """
    truth_array = truth.array if isinstance(truth, LabelVolume) else np.asarray(truth)
    labels = [int(v) for v in np.unique(truth_array) if v != 0]
    if not labels:
        raise InputError("the ground truth has no labels (all voxels are 0): pick the label map that holds the truth")
    names: dict[int, str] = {}
    for item in (prediction, truth):  # the truth's names win
        if isinstance(item, LabelVolume):
            names.update(item.label_names)
    metrics = evaluate(prediction, truth, labels=labels, surface_tolerance_mm=surface_tolerance_mm,
                       progress=lambda done, _: report(progress, done, 5), should_stop=should_stop)
    aps = []
    for done, mode in enumerate(("3d", "2d"), start=4):
        check_stop(should_stop, "mask AP")
        aps.append(metrics.mask_ap(mode=mode, instances=instances))
        report(progress, done, 5)
    return PairScores({v: names.get(v, f"label {v}") for v in labels}, metrics, *aps,
                      untrained=isinstance(prediction, LabelVolume) and prediction.untrained)
