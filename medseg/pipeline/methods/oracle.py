"""The ``oracle`` method: the ground truth itself, a self-check of the pipeline and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.pipeline.methods.base import ReferenceMethod, Segmentation, register
from medseg.volume import LabelVolume, Volume

@dataclass(frozen=True)
class OracleOptions:
    pass


@register
class Oracle(ReferenceMethod):
    """The ground truth itself, every object scored 1: Dice 1, AP 1 (a self-check)."""

    kind = "oracle"
    Options = OracleOptions

    def describe(self) -> dict[str, Any]:
        return {"model": "ground truth"}

    def from_truth(self, volume: Volume, truth: LabelVolume, *, case_id: str) -> Segmentation:
        wanted = sorted(self.setup.labels)
        array = np.where(np.isin(truth.array, wanted), truth.array, 0)
        return Segmentation(LabelVolume.like(volume, array, label_names=dict(self.setup.labels),
                                             scores={v: 1.0 for v in wanted}, provenance={"method": "oracle"}))
