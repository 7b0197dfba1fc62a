"""Segmentation metrics: Dice, 95% Hausdorff and surface Dice per label (MONAI), and COCO
mask AP in 2D and 3D (pycocotools).

See ``medseg.metrics.overlap`` for the empty-label conventions and ``medseg.metrics.coco``
for how label maps become COCO images, instances, scores and area ranges.

``evaluate(prediction, truth, labels=...)`` scores one case with all of them at once (a
``CaseMetrics``); use it rather than assembling the bundle by hand. ``evaluate_pair`` adds that
pair's own mask AP, over the truth's labels (what a viewer shows for two label maps).
"""

from medseg.metrics.coco import AREA_RANGES_2D_MM2, AREA_RANGES_3D_MM3, MaskAP, instance_counts, mask_ap
from medseg.metrics.evaluate import CaseMetrics, LabelScores, PairScores, evaluate, evaluate_pair
from medseg.metrics.overlap import dice_per_label, hausdorff95_per_label, mean_dice, surface_dice_per_label

__all__ = [
    "AREA_RANGES_2D_MM2",
    "AREA_RANGES_3D_MM3",
    "CaseMetrics",
    "LabelScores",
    "MaskAP",
    "PairScores",
    "dice_per_label",
    "evaluate",
    "evaluate_pair",
    "hausdorff95_per_label",
    "instance_counts",
    "mask_ap",
    "mean_dice",
    "surface_dice_per_label",
]
