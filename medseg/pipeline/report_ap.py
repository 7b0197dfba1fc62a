"""Mask AP of one method's saved results, the 3D instances it counted per case, and what an instance is.

Read from the results folder alone (``labels.nii.gz``, ``instances.nii.gz`` and the scores in
``result.json``). A method that saved its own 3D instances (Mask R-CNN, ``postprocess: objects``)
is scored on them; any other on its label map, turned into instances by the pipeline's
``metrics.ap_instances``. The instance counts per case use the same definition as 3D AP, so a
method that returns specks shows many predicted instances against few true ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.io import load_labels, read_geometry
from medseg.metrics import instance_counts, mask_ap
from medseg.pipeline import results as rs
from medseg.volume import InstanceMap, LabelVolume

POLICY_TEXT = {"components": "3D connected components of each label", "per_class": "one per label value"}


def saved_prediction(case_dir: Path, result: dict[str, Any]) -> LabelVolume | InstanceMap:
    """A saved prediction with the scores its method gave (from result.json): its own instances if saved."""
    path = case_dir / rs.LABELS
    geometry = read_geometry(path)
    slices = lambda data: {int(k): np.array([rs.as_float(v) for v in s], dtype=float) for k, s in data.items()}
    if result.get("instances"):
        inst = result["instances"]
        array = load_labels(case_dir / rs.INSTANCES, geometry).array
        return InstanceMap(array, geometry, labels={int(k): int(v) for k, v in inst["labels"].items()},
                           scores={int(k): rs.as_float(v) for k, v in inst["scores"].items()},
                           slice_scores=slices(inst["slice_scores"]))
    return LabelVolume(load_labels(path, geometry).array, geometry,
                       scores={int(k): rs.as_float(v) for k, v in result["scores"].items()},
                       slice_scores=slices(result["slice_scores"]))


def saved_truth(case) -> LabelVolume:
    """The case's label map on its image's own geometry (a prediction on another grid is a GeometryError)."""
    return case.load_labels(read_geometry(case.image, case.series_uid))


def instance_definition(results: dict[str, dict[str, Any]], policy: str) -> str:
    """What one predicted instance is in a method's AP rows (its own instances where it saved them)."""
    own = [r["instances"] for r in results.values() if r.get("instances")]
    if not own:
        return POLICY_TEXT[policy]
    return own[0].get("definition") or "the method's own 3D instances"


def average_precision(method_dir: Path, results: dict[str, dict[str, Any]], cohort, labels: list[int],
                      policy: str) -> dict[str, Any]:
    """2D and 3D mask AP of the ``ok`` cases ``results`` (case id -> result.json), the 3D instances
    per case (predicted and true) and what an instance is, as ``{"ap": ..., "instances": ...}``."""
    ap: dict[str, dict] = {}
    counts: dict[str, dict[str, dict[int, int]]] = {}
    for mode in ("2d", "3d"):
        def pairs():
            for case_id, result in results.items():
                pair = saved_prediction(method_dir / case_id, result), saved_truth(cohort.case(case_id))
                if mode == "3d":
                    counts[case_id] = {name: instance_counts(item, labels=labels, instances=policy)
                                       for name, item in zip(("predicted", "truth"), pair)}
                yield pair

        ap[mode] = mask_ap(pairs(), labels=labels, mode=mode, instances=policy).to_dict() if results else {}
    return {"ap": ap, "instances": {"prediction": instance_definition(results, policy), "truth": POLICY_TEXT[policy],
                                    "per_case": counts}}
