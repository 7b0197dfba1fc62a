"""Method plug-ins: how the pipeline runs each kind of segmentation method.

A plug-in is a ``Method`` subclass registered in ``METHODS`` under its YAML ``type``. It
declares its YAML options as a frozen dataclass (``Options``; unknown or mistyped keys are
rejected by ``medseg.pipeline.config``), may ``check`` its resources before any compute and
``prepare`` once in the main process (download weights, train a model, pick reference cases).
In a worker, ``load`` is called once (the runner's ``Worker`` keeps what it returns, one
method per worker) and ``segment(model, volume, prompts=..., case_id=...)`` once per case.

What a method sees: the volume and, when ``uses_prompts``, the prompt policy's prompts
(simulated from the truth by the runner, as a user would click them); every other method
gets ``prompts=None``. The ground truth is never an argument of ``segment``. Support sets
come from the *reference* split (chosen in ``prepare``, built in ``load``), Mask R-CNN from
its model. The one exception is explicit: a ``ReferenceMethod`` subclass (the ``oracle``
self-check) gets the truth through its own ``from_truth`` hook.

Built in, one module each: ``sam2`` (propagation from the policy's points/boxes), ``revsam2``
(reference prompting from annotated slices of reference cases), ``maskrcnn`` (supervised
baseline, trained on the train split or loaded from a model directory) and ``oracle`` (returns
the ground truth: a self-check of the pipeline and metrics, whose Dice must be 1). The base
classes and the registry are in ``base``.
"""

from medseg.pipeline.methods.base import (
    METHODS,
    Method,
    MethodSetup,
    ReferenceMethod,
    Segmentation,
    build_method,
    method_class,
    register,
)
from medseg.pipeline.methods.maskrcnn import MaskRCNN, MaskRCNNOptions
from medseg.pipeline.methods.oracle import Oracle, OracleOptions
from medseg.pipeline.methods.revsam2 import RevSam2, RevSam2Options
from medseg.pipeline.methods.sam2 import Sam2, Sam2Family, Sam2Options

__all__ = [
    "METHODS",
    "MaskRCNN",
    "MaskRCNNOptions",
    "Method",
    "MethodSetup",
    "Oracle",
    "OracleOptions",
    "ReferenceMethod",
    "RevSam2",
    "RevSam2Options",
    "Sam2",
    "Sam2Family",
    "Sam2Options",
    "Segmentation",
    "build_method",
    "method_class",
    "register",
]
