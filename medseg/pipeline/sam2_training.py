"""Pipeline glue for SAM2 training: a ``train:`` block on ``sam2`` / ``revsam2`` methods.

The model is trained once per cohort and settings, into ``RESULTS/sam2-model/<key>`` where
``key`` is a digest of the settings, the network they train from the start model (its prompt
prior and tracking) and the training cases, so every method of a run (and a re-run) with the same
``train:`` block shares one model; the methods then evaluate it on their split. Rows made with it
are labelled "trained on <cohort> (N steps)".
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError
from medseg.runtime import Progress, ShouldStop

log = logging.getLogger(__name__)

MODELS_DIR = "sam2-model"


def check_train_options(options: Any) -> None:
    """Validate a method's ``train:`` block (unknown keys, bad values) when the YAML is read."""
    from medseg.training.sam2.config import Sam2TrainConfig

    Sam2TrainConfig.from_dict(options.train)


def check_trainable(method: str, cohort) -> None:
    """A ``train:`` block needs labelled train cases."""
    if not [c for c in cohort.split("train") if c.label is not None]:
        raise ConfigError(f"method {method}: train: is given but {cohort.path} has no labelled case in its "
                          "\"train\" split")


def train_for_pipeline(options: Any, cohort, results_dir: Path, *, progress: Progress | None = None,
                       should_stop: ShouldStop | None = None) -> dict[str, Any]:
    """Train (or reuse) the model of ``options.train`` on ``cohort``; the method's state."""
    from medseg.training.sam2.config import BOOKKEEPING, Sam2TrainConfig
    from medseg.training.sam2.train import network_architecture, train_sam2

    config = Sam2TrainConfig.from_dict(options.train)
    ids = [c.id for c in cohort.split("train") if c.label is not None]
    model_config = {k: v for k, v in config.to_dict().items() if k not in BOOKKEEPING}
    network = network_architecture(config).to_dict()  # what the settings train from the start model as it is now
    digest = hashlib.sha256(json.dumps([cohort.name, ids, model_config, network], sort_keys=True).encode())
    key = digest.hexdigest()[:12]
    directory = results_dir / MODELS_DIR / key
    log.info("SAM2 model for %s: %s (training it unless it is there)", cohort.name, directory)
    return trained_state(train_sam2(cohort, directory, config=config, progress=progress, should_stop=should_stop))


def trained_state(directory: Path) -> dict[str, Any]:
    """What a method records about a trained model directory (``MethodSetup.state``)."""
    from medseg.sam2.model_dir import read_model_json

    info = read_model_json(directory)
    if info is None:
        raise ConfigError(f"{directory} is not a trained SAM2 model directory (no model.json); train one with "
                          "`medseg sam2 train`")
    cohort = info["cohort"]["name"]
    return {"model": str(directory), "checkpoint_sha256": info["weights_sha256"], "untrained": False,
            "undertrained": info["undertrained"], "training_steps": info["steps"], "trained_on": cohort,
            "trained": f"trained on {cohort} ({info['steps']} steps)"}
