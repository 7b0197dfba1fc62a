"""A Medical Segmentation Decathlon ``dataset.json`` as medseg-form cases (see ``medseg.manifest``).

The ``training`` cases are split deterministically: the ``ceil(n / 5)`` cases whose SHA-256
of the id is smallest are ``val``, the rest ``train``; ``test`` cases have no label; ids are
the image file names without suffix; multi-channel tasks are refused.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

_VAL_FRACTION = 0.2


def msd_cases(data: dict[str, Any], problems: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """The modality and the cases (``{"id", "image", "label", "split"}``) of a Decathlon dataset;
    every problem found is appended to ``problems``."""
    modality = _modality(data.get("modality"), problems)
    training, test = data.get("training"), data.get("test", [])
    if not isinstance(training, list) or not all(isinstance(t, dict) for t in training):
        problems.append("\"training\" must be a list of {\"image\", \"label\"} objects")
        training = []
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        problems.append("\"test\" must be a list of image paths")
        test = []
    train_ids = [_case_id(t.get("image", "")) for t in training]
    val_ids = set(sorted(train_ids, key=_sha256)[: math.ceil(len(train_ids) * _VAL_FRACTION)])
    cases = [{"id": case_id, "image": t.get("image"), "label": t.get("label"),
              "split": "val" if case_id in val_ids else "train"} for case_id, t in zip(train_ids, training)]
    return modality, cases + [{"id": _case_id(image), "image": image, "split": "test"} for image in test]


def _modality(raw: Any, problems: list[str]) -> str:
    if isinstance(raw, dict) and len(raw) == 1:
        return str(next(iter(raw.values())))
    if isinstance(raw, dict) and len(raw) > 1:
        problems.append(f"modality: {len(raw)} channels {sorted(raw.values())}; multi-channel (4D) Decathlon tasks "
                        "are not supported")
    else:
        problems.append(f"modality must be an object such as {{\"0\": \"CT\"}}, got {raw!r}")
    return "OT"


def _case_id(image: Any) -> str:
    name = Path(str(image)).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
