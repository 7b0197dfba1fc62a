"""The model directory: a trained Mask R-CNN that says what it is and reloads anywhere.

Layout::

    MODEL_DIR/
      model.json     what the model is: format, classes, training config (backbone, input
                     size, intensity preset, ...), steps trained, loss per step,
                     validation metrics, whether it is untrained / undertrained, the
                     training and validation case ids, weights checksum, versions
      weights.pt     the network's state dict (loads with torch.load(weights_only=True))
      training/      while training runs: the resumable state (checkpoint.pt) and the
                     slice cache; removed when training finishes

Both files are written atomically; ``weights.pt`` is checked against its SHA-256 on load.
A model trained for fewer than ``UNDERTRAINED_STEPS`` steps is marked ``undertrained``;
one that never saw a training step or pretrained weights is ``untrained`` (its
predictions carry ``LabelVolume.untrained``).
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models.detection import MaskRCNN

from medseg.errors import ConfigError, WeightsError
from medseg.io.files import atomic_output
from medseg.maskrcnn.config import TrainConfig
from medseg.maskrcnn.model import build_model
from medseg.runtime import read_checkpoint, seeded, sha256_file
from medseg.volume import UNTRAINED_BANNER

log = logging.getLogger(__name__)

FORMAT = "medseg-maskrcnn/1"
MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"
UNDERTRAINED_STEPS = 1000


@dataclass(eq=False)
class MaskRCNNModel:
    """A Mask R-CNN with everything needed to use it: classes, preset, training record."""

    network: MaskRCNN
    config: TrainConfig
    classes: dict[int, str]
    steps: int = 0
    validation: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    train_cases: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)
    directory: Path | None = None
    weights_sha256: str = ""

    @property
    def label_values(self) -> list[int]:
        """Label values in class order: class index ``i + 1`` is ``label_values[i]``."""
        return sorted(self.classes)

    @property
    def untrained(self) -> bool:
        return self.steps == 0 and self.config.pretrained is None

    @property
    def undertrained(self) -> bool:
        return self.steps < UNDERTRAINED_STEPS

    def provenance(self, **settings: Any) -> dict[str, Any]:
        """What reproduces a prediction: model, weights checksum, training record and settings."""
        return {
            "method": "maskrcnn",
            "model_dir": str(self.directory) if self.directory else None,
            "weights_sha256": self.weights_sha256,
            "backbone": self.config.backbone,
            "image_size": self.config.image_size,
            "preset": self.config.preset,
            "training_steps": self.steps,
            "undertrained": self.undertrained,
            "untrained": self.untrained,
            **settings,
        }

    def card(self) -> dict[str, Any]:
        """The content of ``model.json``."""
        return {
            "format": FORMAT,
            "method": "Mask R-CNN (torchvision, FPN)",
            "classes": {str(v): name for v, name in sorted(self.classes.items())},
            "steps": self.steps,
            "untrained": self.untrained,
            "undertrained": self.undertrained,
            "undertrained_below_steps": UNDERTRAINED_STEPS,
            "validation": self.validation[-1] if self.validation else None,
            "validation_history": self.validation,
            "loss_per_step": self.losses,
            "config": self.config.to_dict(),
            "train_cases": self.train_cases,
            "val_cases": self.val_cases,
            "weights": {"file": WEIGHTS, "sha256": self.weights_sha256},
            "versions": {
                "medseg": _version("medseg"),
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "python": platform.python_version(),
            },
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def save_model(model: MaskRCNNModel, directory: str | Path) -> Path:
    """Write ``weights.pt`` then ``model.json`` into ``directory`` (each atomically)."""
    directory = Path(directory)
    with atomic_output(directory / WEIGHTS) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.network.state_dict().items()}, tmp)
        model.weights_sha256 = sha256_file(tmp)
    model.directory = directory
    with atomic_output(directory / MODEL_JSON) as tmp:
        tmp.write_text(json.dumps(model.card(), indent=2) + "\n", encoding="utf-8")
    return directory


def load_model(directory: str | Path) -> MaskRCNNModel:
    """A model directory written by training (see the module docstring), ready to predict.

    Raises
    ------
    WeightsError
        No model there, a weights file that fails its checksum or does not fit the network.
    ConfigError
        A ``model.json`` with bad fields.
    """
    directory = Path(directory)
    card_path = directory / MODEL_JSON
    if not card_path.is_file():
        raise WeightsError(f"{directory} is not a Mask R-CNN model directory: {MODEL_JSON} is missing; train one with `medseg baseline train`")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{card_path}: not valid JSON ({error})") from error
    if card.get("format") != FORMAT:
        raise ConfigError(f"{card_path}: format {card.get('format')!r} is not {FORMAT!r}")
    config = TrainConfig.from_dict(card["config"])
    classes = {int(v): name for v, name in card["classes"].items()}
    weights_path = directory / card["weights"]["file"]
    if not weights_path.is_file():
        raise WeightsError(f"{weights_path} is missing; the model directory is incomplete (copy weights.pt with model.json)")
    sha256 = card["weights"]["sha256"]
    state = read_checkpoint(weights_path, sha256=sha256, what="Mask R-CNN weights")
    with seeded(0):  # the random init is overwritten below; loading leaves the caller's random state alone
        network = build_model(num_classes=len(classes), backbone=config.backbone, norm=config.norm,
                              image_size=config.image_size)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(f"{weights_path} does not fit a {config.backbone} Mask R-CNN with {len(classes)} classes: {str(error)[:300]}") from error
    network.eval()
    model = MaskRCNNModel(
        network=network,
        config=config,
        classes=classes,
        steps=int(card["steps"]),
        validation=list(card.get("validation_history", [])),
        losses=list(card.get("loss_per_step", [])),
        train_cases=list(card.get("train_cases", [])),
        val_cases=list(card.get("val_cases", [])),
        directory=directory,
        weights_sha256=sha256,
    )
    if model.untrained:
        log.warning("%s (Mask R-CNN %s)", UNTRAINED_BANNER, directory)
    elif model.undertrained:
        log.warning("Mask R-CNN %s was trained for only %d steps (< %d): treat its output as a smoke test", directory, model.steps, UNDERTRAINED_STEPS)
    return model
