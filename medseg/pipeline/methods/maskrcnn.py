"""The ``maskrcnn`` method: the supervised baseline (``medseg.maskrcnn``), trained on the cohort or loaded."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError
from medseg.pipeline.methods.base import Method, MethodSetup, Segmentation, absolute, register
from medseg.prompts import Prompts
from medseg.runtime import Progress, ShouldStop
from medseg.volume import Volume


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
        return options if options.model_dir is None else replace(options, model_dir=absolute(options.model_dir, base))

    @classmethod
    def check(cls, setup: MethodSetup, cohort) -> None:
        if setup.options.model_dir is not None:
            if not (Path(setup.options.model_dir) / "model.json").is_file():
                raise ConfigError(f"method {setup.name}: model_dir {setup.options.model_dir} is not a Mask R-CNN model "
                                  "directory (no model.json)")
        elif not [c for c in cohort.split("train") if c.label is not None]:
            raise ConfigError(f"method {setup.name}: no model_dir given and the cohort has no labelled train cases to "
                              "train on")

    def prepare(self, cohort, *, progress: Progress | None = None,
                should_stop: ShouldStop | None = None) -> dict[str, Any]:
        from medseg.maskrcnn import TrainConfig, load_model
        from medseg.training.maskrcnn import train_from_cohort

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

        prediction = predict_instances(model, volume, score_threshold=self.options.score_threshold,
                                       device=self.options.device)
        return Segmentation(prediction.labels, prediction.instances)
