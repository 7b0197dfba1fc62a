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

Built in: ``sam2`` (propagation from the policy's points/boxes), ``revsam2`` (reference
prompting from annotated slices of reference cases), ``maskrcnn`` (supervised baseline,
trained on the train split or loaded from a model directory) and ``oracle`` (returns the
ground truth: a self-check of the pipeline and metrics, whose Dice must be 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from medseg.errors import ConfigError, InputError, WeightsError
from medseg.prompts import Prompts
from medseg.revsam2.defaults import (
    DEFAULT_GATE_MARGIN,
    DEFAULT_PLACEMENT,
    DEFAULT_REJECT_RIVALS,
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
)
from medseg.runtime import Progress, ShouldStop
from medseg.volume import UNTRAINED_BANNER, InstanceMap, LabelVolume, Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segmentation:
    """What a method returns for one case: labels (with scores, provenance), its own scored 3D instances
    when it has them (mask AP uses them) and the prompts marking its objects (``medseg.objects`` anchors)."""

    labels: LabelVolume
    instances: InstanceMap | None = None
    prompt_log: dict[str, Any] = field(default_factory=dict)
    anchors: Prompts | None = None


@dataclass(frozen=True)
class MethodSetup:
    """Everything a worker needs to build a method: picklable, and fingerprinted for resumption.

    ``state`` is what ``prepare`` produced in the main process (a trained model directory,
    the weights actually used).
    """

    name: str
    kind: str
    options: Any
    labels: dict[int, str]
    seed: int
    reference_slices: int
    method_dir: Path
    state: dict[str, Any] = field(default_factory=dict)
    postprocess: str = "none"  # medseg.pipeline.config.Postprocess


class Method:
    """Base class of the plug-ins; see the module docstring."""

    kind: ClassVar[str]
    Options: ClassVar[type]
    uses_prompts: ClassVar[bool] = False  # segment gets the prompt policy's prompts (else None)

    def __init__(self, setup: MethodSetup) -> None:
        self.setup = setup
        self.options = setup.options

    @classmethod
    def resolve_paths(cls, options: Any, base: Path) -> Any:
        """``options`` with relative file paths made absolute against ``base`` (the YAML's folder)."""
        return options

    @classmethod
    def check(cls, setup: MethodSetup, cohort) -> None:
        """Raise a ``MedsegError`` when the method cannot run on ``cohort`` (before any compute)."""

    def prepare(self, cohort, *, progress: Progress | None = None, should_stop: ShouldStop | None = None) -> dict[str, Any]:
        """One-off work in the main process; returns ``MethodSetup.state`` for the workers."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Model name, checksum, preset... as known before any case runs (for method.json)."""
        return {}

    def load(self) -> Any:
        """The model (and whatever else ``segment`` needs), built once per worker from ``setup.state``."""
        return None

    def segment(self, model: Any, volume: Volume, *, prompts: Prompts | None, case_id: str) -> Segmentation:
        """Segment one case with ``model`` (what ``load`` returned). No ground truth, by design."""
        raise NotImplementedError


class ReferenceMethod(Method):
    """A self-check that is *given the truth*: never a method to compare.

    The runner calls ``from_truth`` instead of ``segment``; ``segment`` refuses, so the
    truth reaches nothing else through this class.
    """

    def from_truth(self, volume: Volume, truth: LabelVolume, *, case_id: str) -> Segmentation:
        raise NotImplementedError

    def segment(self, model: Any, volume: Volume, *, prompts: Prompts | None, case_id: str) -> Segmentation:
        raise ConfigError(f"method type {self.kind!r} is a reference built from the ground truth; it cannot segment on its own")


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Make ``cls`` available as YAML ``type: <cls.kind>``."""
    METHODS[cls.kind] = cls
    return cls


def method_class(kind: str) -> type[Method]:
    """The plug-in class of a YAML ``type`` (looked up in the main process; workers get the class)."""
    try:
        return METHODS[kind]
    except KeyError:
        raise ConfigError(f"unknown method type {kind!r}; known: {sorted(METHODS)}") from None


def build_method(setup: MethodSetup) -> Method:
    return method_class(setup.kind)(setup)


# --- oracle ---------------------------------------------------------------------------------
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


# --- SAM2 and reference prompting: shared model resolution -----------------------------------
@dataclass(frozen=True)
class Sam2Options:
    """``model``: registry name, checkpoint path or trained model directory. ``fallback``:
    ``untrained`` runs the random-weight model (flagged everywhere) when the checkpoint cannot
    be had, ``error`` stops. ``image_size``/``preset``/``device``: None = the model's/modality's
    default. ``train``: ``Sam2TrainConfig`` settings: train SAM2 on the cohort's train split
    first (``medseg.pipeline.sam2_training``; ``model`` then names the start weights)."""

    model: str = "sam2.1-tiny"
    fallback: Literal["error", "untrained"] = "error"
    image_size: int | None = None
    preset: str | None = None
    device: str | None = None
    train: dict | None = None

    def __post_init__(self) -> None:
        if self.train is not None:
            from medseg.pipeline.sam2_training import check_train_options

            check_train_options(self)


class _Sam2Family(Method):
    """Resolves the checkpoint once in the main process (download or fallback to untrained)."""

    @classmethod
    def resolve_paths(cls, options: Any, base: Path) -> Any:
        from medseg.weights import REGISTRY

        if options.model in REGISTRY:
            return options
        return replace(options, model=str((base / Path(options.model).expanduser()).resolve()))

    @classmethod
    def check(cls, setup: MethodSetup, cohort) -> None:
        from medseg.preprocess import get_preset
        from medseg.weights import REGISTRY

        model = setup.options.model
        if setup.options.train is not None:
            from medseg.pipeline.sam2_training import check_trainable

            check_trainable(setup.name, cohort)
        elif model not in REGISTRY and not Path(model).is_file() and not Path(model).is_dir():
            raise WeightsError(f"method {setup.name}: model {model!r} is neither a registry name {sorted(REGISTRY)} nor a checkpoint file")
        if setup.options.preset is not None:
            get_preset(setup.options.preset)

    def prepare(self, cohort, *, progress: Progress | None = None, should_stop: ShouldStop | None = None) -> dict[str, Any]:
        from medseg.runtime import sha256_file
        from medseg.weights import REGISTRY, fetch_checkpoint

        model = self.options.model
        if self.options.train is not None:
            from medseg.pipeline.sam2_training import train_for_pipeline

            return train_for_pipeline(self.options, cohort, self.setup.method_dir.parent, progress=progress, should_stop=should_stop)
        if Path(model).is_dir():
            from medseg.pipeline.sam2_training import trained_state

            return trained_state(Path(model))
        if model not in REGISTRY:
            path = Path(model)
            return {"model": str(path), "checkpoint_sha256": sha256_file(path), "untrained": False}
        spec = REGISTRY[model]
        if spec.untrained:
            return {"model": model, "checkpoint_sha256": None, "untrained": True}
        try:
            path = fetch_checkpoint(spec, progress=progress)
        except WeightsError as error:
            if self.options.fallback != "untrained":
                raise
            log.warning("method %s: %s", self.setup.name, error)
            log.warning("method %s falls back to the untrained model. %s", self.setup.name, UNTRAINED_BANNER)
            return {"model": "untrained", "requested_model": model, "checkpoint_sha256": None, "untrained": True,
                    "fallback_reason": str(error)}
        return {"model": model, "checkpoint_sha256": sha256_file(path), "untrained": False}

    def describe(self) -> dict[str, Any]:
        shown = {"model": self.setup.state["trained"]} if "trained" in self.setup.state else {}
        return {**self.setup.state, "image_size": self.options.image_size, "preset": self.options.preset, **shown}

    def load(self) -> Any:
        """The SAM2 predictor of the prepared checkpoint."""
        from medseg.sam2 import Sam2VolumePredictor

        return Sam2VolumePredictor(
            self.setup.state["model"], image_size=self.options.image_size, device=self.options.device,
            preset=self.options.preset, seed=self.setup.seed,
        )


@register
class Sam2(_Sam2Family):
    """SAM2 propagation through the volume from the prompt policy's points and boxes."""

    kind = "sam2"
    Options = Sam2Options
    uses_prompts = True

    def segment(self, model: Any, volume: Volume, *, prompts: Prompts | None, case_id: str) -> Segmentation:
        if prompts is None or not prompts.objects:
            raise InputError(f"case {case_id}: none of the labels {sorted(self.setup.labels)} is drawn, so there is nothing to prompt")
        return Segmentation(model.segment(volume, prompts, progress=None), anchors=prompts)


@dataclass(frozen=True)
class RevSam2Options(Sam2Options):
    """The SAM2 options, plus: ``mode`` (``revsam2``, ``baseline``, ``baseline-middle``; see
    ``medseg.revsam2``), ``references`` (how many labelled cases of ``reference_split``, in
    manifest order, give the support slices: ``prompts.reference_slices`` per label each) and
    the re-prompt selection ``top_k`` / ``threshold`` / ``min_spacing`` (None = no limit / no
    floor / automatic), the supports' ``placement``, the z-gate's ``gate_margin`` (None: no gate)
    and ``reject_rivals`` (see ``ReferenceSession.segment``). With ``prompts: {point: none, box:
    none}`` a pipeline of such methods segments the cohort from the references alone."""

    mode: Literal["revsam2", "baseline", "baseline-middle"] = "revsam2"
    references: int = 1
    reference_split: Literal["train", "val"] = "train"
    top_k: int | None = DEFAULT_TOP_K
    threshold: float | None = DEFAULT_THRESHOLD
    min_spacing: int | None = None
    placement: Literal["matched", "before", "middle"] = DEFAULT_PLACEMENT
    gate_margin: int | None = DEFAULT_GATE_MARGIN
    reject_rivals: bool = DEFAULT_REJECT_RIVALS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.references < 1:
            raise ConfigError(f"references must be at least 1, got {self.references}")


@register
class RevSam2(_Sam2Family):
    """Reference prompting (``medseg.revsam2``): annotated slices of reference cases, frozen SAM2."""

    kind = "revsam2"
    Options = RevSam2Options

    @classmethod
    def _reference_cases(cls, setup: MethodSetup, cohort) -> list:
        labelled = [c for c in cohort.split(setup.options.reference_split) if c.label is not None]
        if len(labelled) < setup.options.references:
            raise ConfigError(
                f"method {setup.name}: references: {setup.options.references} reference case(s) wanted but the "
                f"{setup.options.reference_split!r} split of {cohort.path} has {len(labelled)} labelled case(s)"
            )
        return labelled[: setup.options.references]

    @classmethod
    def check(cls, setup: MethodSetup, cohort) -> None:
        super().check(setup, cohort)
        cls._reference_cases(setup, cohort)

    def prepare(self, cohort, *, progress: Progress | None = None, should_stop: ShouldStop | None = None) -> dict[str, Any]:
        """The checkpoint, and the reference cases (ids of the reference split, never the query's)."""
        references = [c.id for c in self._reference_cases(self.setup, cohort)]
        return {**super().prepare(cohort, progress=progress, should_stop=should_stop), "cohort": str(cohort.path),
                "references": references}

    def load(self) -> Any:
        """The SAM2 predictor and the support set built from the reference cases chosen in ``prepare``."""
        from medseg.manifest import load_manifest
        from medseg.revsam2 import SupportSet

        cohort = load_manifest(self.setup.state["cohort"])
        ids = self.setup.state["references"]
        support = SupportSet.from_volumes(
            [cohort.case(i).load() for i in ids], k=self.setup.reference_slices, labels=self.setup.labels, names=ids
        )
        return super().load(), support

    def segment(self, model: Any, volume: Volume, *, prompts: Prompts | None, case_id: str) -> Segmentation:
        from medseg.revsam2 import anchor_prompts, segment_with_references

        predictor, support = model
        labels = segment_with_references(
            volume, support, mode=self.options.mode, model=predictor, top_k=self.options.top_k,
            threshold=self.options.threshold, min_spacing=self.options.min_spacing, placement=self.options.placement,
            gate_margin=self.options.gate_margin, reject_rivals=self.options.reject_rivals,
        )
        return Segmentation(labels, prompt_log={"support": support.to_dict()}, anchors=anchor_prompts(labels))


# --- Mask R-CNN -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskRCNNOptions:
    """``model_dir``: a trained model directory; without it the model is trained first on the
    cohort's train split (validated on val) with the ``train`` settings (``TrainConfig``
    fields), into ``RESULTS/<method>/model`` (resumable). ``score_threshold``: None = the model's."""

    model_dir: str | None = None
    train: dict | None = None
    score_threshold: float | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.model_dir is not None and self.train is not None:
            raise ConfigError("give either model_dir (a trained model) or train (settings to train one), not both")
        if self.train is not None:
            from medseg.maskrcnn import TrainConfig

            TrainConfig.from_dict(self.train)


@register
class MaskRCNN(Method):
    """The supervised baseline (``medseg.maskrcnn``): 2D detections stitched into 3D instances."""

    kind = "maskrcnn"
    Options = MaskRCNNOptions

    @classmethod
    def resolve_paths(cls, options: Any, base: Path) -> Any:
        if options.model_dir is None:
            return options
        return replace(options, model_dir=str((base / Path(options.model_dir).expanduser()).resolve()))

    @classmethod
    def check(cls, setup: MethodSetup, cohort) -> None:
        if setup.options.model_dir is not None:
            if not (Path(setup.options.model_dir) / "model.json").is_file():
                raise ConfigError(f"method {setup.name}: model_dir {setup.options.model_dir} is not a Mask R-CNN model directory (no model.json)")
        elif not [c for c in cohort.split("train") if c.label is not None]:
            raise ConfigError(f"method {setup.name}: no model_dir given and the cohort has no labelled train cases to train on")

    def prepare(self, cohort, *, progress: Progress | None = None, should_stop: ShouldStop | None = None) -> dict[str, Any]:
        from medseg.maskrcnn import TrainConfig, load_model, train_from_cohort

        if self.options.model_dir is not None:
            model_dir = Path(self.options.model_dir)
        else:
            config = TrainConfig.from_dict(self.options.train or {})
            model_dir = train_from_cohort(cohort, self.setup.method_dir / "model", config=config,
                                          progress=progress, should_stop=should_stop)
        model = load_model(model_dir)
        return {"model_dir": str(model_dir), "weights_sha256": model.weights_sha256, "untrained": model.untrained,
                "undertrained": model.undertrained, "training_steps": model.steps, "preset": model.config.preset}

    def describe(self) -> dict[str, Any]:
        return {"model": f"Mask R-CNN {self.setup.state.get('model_dir')}", **self.setup.state}

    def load(self) -> Any:
        from medseg.maskrcnn import load_model

        return load_model(self.setup.state["model_dir"])

    def segment(self, model: Any, volume: Volume, *, prompts: Prompts | None, case_id: str) -> Segmentation:
        from medseg.maskrcnn import predict_instances

        prediction = predict_instances(model, volume, score_threshold=self.options.score_threshold, device=self.options.device)
        return Segmentation(prediction.labels, prediction.instances)
