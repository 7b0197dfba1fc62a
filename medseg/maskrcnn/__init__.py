"""Supervised baseline: a 2D Mask R-CNN trained on a cohort's slices, stitched into 3D objects.

>>> from medseg.manifest import load_manifest
>>> from medseg.maskrcnn import TrainConfig, load_model, predict_volume
>>> from medseg.training.maskrcnn import train_from_cohort
>>> model_dir = train_from_cohort(load_manifest("data_manifests/demo.json"), "models/demo",
...                               config=TrainConfig(backbone="resnet18", steps=300))  # doctest: +SKIP
>>> labels = predict_volume(load_model(model_dir), volume)  # doctest: +SKIP

Modules: ``model`` (network construction, pretrained checkpoints), ``dataset`` (slices and
instances), ``config`` (``TrainConfig``), ``predict`` (inference and
3D stitching), ``store`` (the self-describing model directory). Training lives a layer up,
in ``medseg.training.maskrcnn``.
"""

from medseg.maskrcnn.config import TrainConfig
from medseg.maskrcnn.model import BACKBONES, build_model, load_pretrained
from medseg.maskrcnn.predict import Prediction, predict_instances, predict_volume
from medseg.maskrcnn.store import UNDERTRAINED_STEPS, MaskRCNNModel, load_model, save_model

__all__ = [
    "BACKBONES",
    "UNDERTRAINED_STEPS",
    "MaskRCNNModel",
    "Prediction",
    "TrainConfig",
    "build_model",
    "load_model",
    "load_pretrained",
    "predict_instances",
    "predict_volume",
    "save_model",
]
