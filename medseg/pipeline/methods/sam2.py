"""The ``sam2`` method, and the SAM2 model resolution it shares with ``revsam2`` (``Sam2Family``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from medseg.errors import InputError, WeightsError
from medseg.pipeline.methods.base import Method, MethodSetup, Segmentation, absolute, register
from medseg.prompts import Prompts
from medseg.runtime import Progress, ShouldStop
from medseg.volume import UNTRAINED_BANNER, Volume

log = logging.getLogger(__name__)


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


class Sam2Family(Method):
    """Resolves the checkpoint once in the main process (download or fallback to untrained)."""

    @classmethod
    def resolve_paths(cls, options: Any, base: Path) -> Any:
        from medseg.weights import REGISTRY

        if options.model in REGISTRY:
            return options
        return replace(options, model=absolute(options.model, base))

    @classmethod
    def check(cls, setup: MethodSetup, cohort) -> None:
        from medseg.preprocess import get_preset
        from medseg.weights import REGISTRY

        model = setup.options.model
        if setup.options.train is not None:
            from medseg.pipeline.sam2_training import check_trainable

            check_trainable(setup.name, cohort)
        elif model not in REGISTRY and not Path(model).is_file() and not Path(model).is_dir():
            raise WeightsError(f"method {setup.name}: model {model!r} is neither a registry name "
                               f"{sorted(REGISTRY)} nor a checkpoint file")
        if setup.options.preset is not None:
            get_preset(setup.options.preset)

    def prepare(self, cohort, *, progress: Progress | None = None,
                should_stop: ShouldStop | None = None) -> dict[str, Any]:
        from medseg.runtime import sha256_file
        from medseg.weights import REGISTRY, fetch_checkpoint

        model = self.options.model
        if self.options.train is not None:
            from medseg.pipeline.sam2_training import train_for_pipeline

            return train_for_pipeline(self.options, cohort, self.setup.method_dir.parent, progress=progress,
                                      should_stop=should_stop)
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
class Sam2(Sam2Family):
    """SAM2 propagation through the volume from the prompt policy's points and boxes."""

    kind = "sam2"
    Options = Sam2Options
    uses_prompts = True

    def segment(self, model: Any, volume: Volume, *, prompts: Prompts | None, case_id: str) -> Segmentation:
        if prompts is None or not prompts.objects:
            raise InputError(f"case {case_id}: none of the labels {sorted(self.setup.labels)} is drawn, so there is "
                             "nothing to prompt")
        return Segmentation(model.segment(volume, prompts, progress=None), anchors=prompts.by_label())
