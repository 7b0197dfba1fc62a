"""Quality-control summary of a propagated segmentation: where to look, and where to correct next.

Works on any ``LabelVolume`` that carries ``slice_scores`` (SAM2 propagation writes
P(object present) x predicted IoU per slice). For each object: its slices, area per slice
(voxels and mm²), confidence per slice, volume, and the least confident slice where it is
present, named as the slice to correct next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.volume import UNTRAINED_BANNER, LabelVolume


@dataclass(frozen=True, eq=False)
class ObjectQc:
    """QC numbers of one object; per-slice arrays have one entry per slice of the volume."""

    obj_id: int
    name: str
    area_voxels: np.ndarray
    area_mm2: np.ndarray
    confidence: np.ndarray
    volume_ml: float
    least_confident_slice: int | None

    @property
    def slices(self) -> np.ndarray:
        """Slices where the object is present."""
        return np.flatnonzero(self.area_voxels)

    def to_dict(self) -> dict:
        return {
            "obj_id": self.obj_id,
            "name": self.name,
            "slices": self.slices.tolist(),
            "area_voxels": self.area_voxels.tolist(),
            "area_mm2": np.round(self.area_mm2, 3).tolist(),
            "confidence": [None if not np.isfinite(c) else round(float(c), 4) for c in self.confidence],
            "volume_ml": round(self.volume_ml, 4),
            "least_confident_slice": self.least_confident_slice,
        }


@dataclass(frozen=True)
class QcSummary:
    objects: list[ObjectQc]
    untrained: bool

    def correct_next(self) -> tuple[int, int] | None:
        """``(obj_id, z)``: the least confident object slice overall (None if none is scored)."""
        candidates = [
            (float(o.confidence[o.least_confident_slice]), o.obj_id, o.least_confident_slice)
            for o in self.objects
            if o.least_confident_slice is not None
        ]
        return min(candidates)[1:] if candidates else None

    def to_dict(self) -> dict:
        return {"untrained": self.untrained, "objects": [o.to_dict() for o in self.objects],
                "correct_next": self.correct_next()}

    def to_text(self) -> str:
        lines = [UNTRAINED_BANNER] if self.untrained else []
        for o in self.objects:
            slices = o.slices
            if not len(slices):
                lines.append(f"object {o.obj_id} ({o.name}): not found on any slice")
                continue
            mean = np.nanmean(o.confidence[slices]) if np.isfinite(o.confidence[slices]).any() else float("nan")
            line = (
                f"object {o.obj_id} ({o.name}): slices {slices[0]}-{slices[-1]} ({len(slices)} with voxels), "
                f"volume {o.volume_ml:.2f} ml, mean confidence {mean:.2f}"
            )
            if o.least_confident_slice is not None:
                z = o.least_confident_slice
                line += (f"; least confident slice z={z} ({o.confidence[z]:.2f}, {o.area_mm2[z]:.0f} mm²): "
                         "correct here next")
            lines.append(line)
        return "\n".join(lines)


def qc_summary(labels: LabelVolume) -> QcSummary:
    """Per-object, per-slice area and confidence of ``labels``, and the slice to correct next."""
    dz, dy, dx = labels.geometry.spacing
    nz = labels.array.shape[0]
    objects = []
    for obj_id in sorted(set(labels.labels) | set(labels.label_names)):
        area = (labels.array == obj_id).sum(axis=(1, 2))
        confidence = np.asarray(labels.slice_scores.get(obj_id, np.full(nz, np.nan)), dtype=np.float64)
        scored = np.flatnonzero((area > 0) & np.isfinite(confidence))
        least = int(scored[np.argmin(confidence[scored])]) if len(scored) else None
        objects.append(
            ObjectQc(
                obj_id,
                labels.label_names.get(obj_id, f"object {obj_id}"),
                area,
                area * dy * dx,
                confidence,
                float(area.sum() * dz * dy * dx / 1000.0),
                least,
            )
        )
    return QcSummary(objects, labels.untrained)
