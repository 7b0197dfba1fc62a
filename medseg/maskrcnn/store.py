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

The layout every engine shares (``medseg.io.model_dir``): both files are written atomically;
``weights.pt`` is checked against its SHA-256 on load. Directories of format ``medseg-maskrcnn/1``
(the weights' name and SHA-256 nested under ``weights``) still load.
A model trained for fewer than ``UNDERTRAINED_STEPS`` steps is marked ``undertrained``;
one that never saw a training step or pretrained weights is ``untrained`` (its
predictions carry ``LabelVolume.untrained``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torchvision.models.detection import MaskRCNN

from medseg.errors import WeightsError
from medseg.io import model_dir
from medseg.io.model_dir import MODEL_JSON
from medseg.maskrcnn.config import TrainConfig
from medseg.maskrcnn.model import build_model
from medseg.runtime import seeded
from medseg.volume import UNTRAINED_BANNER

log = logging.getLogger(__name__)

FORMAT = "medseg-maskrcnn/2"
FORMATS = (FORMAT, "medseg-maskrcnn/1")  # /1: the weights' name and SHA-256 under "weights"
PACKAGES = ("medseg", "torch", "torchvision")  # whose versions model.json records
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
        """What ``model.json`` says about the model (``medseg.io.model_dir`` adds the format, weights and versions)."""
        return {
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
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def save_model(model: MaskRCNNModel, directory: str | Path) -> Path:
    """Write ``weights.pt`` then ``model.json`` into ``directory`` (each atomically)."""
    directory = Path(directory)
    info = model_dir.write_model_dir(directory, model.network.state_dict(), model.card(), format=FORMAT,
                                     packages=PACKAGES)
    model.weights_sha256, model.directory = info["weights_sha256"], directory
    return directory


def load_model(directory: str | Path) -> MaskRCNNModel:
    """A model directory written by training (see the module docstring), ready to predict.

    Raises
    ------
    WeightsError
        No model there, a damaged ``model.json``, a weights file that is missing, fails its
        checksum or does not fit the network.
    ConfigError
        A ``model.json`` with bad settings.
    """
    directory = Path(directory)
    card = model_dir.read_model_json(directory, formats=FORMATS, what="Mask R-CNN")
    if card is None:
        raise WeightsError(f"{directory} is not a Mask R-CNN model directory: {MODEL_JSON} is missing; train one with "
                           "`medseg baseline train`")
    config = TrainConfig.from_dict(card["config"])
    classes = {int(v): name for v, name in card["classes"].items()}
    weights_path = directory / card["weights"]
    state = model_dir.read_model_weights(directory, card, what="Mask R-CNN weights")
    with seeded(0):  # the random init is overwritten below; loading leaves the caller's random state alone
        network = build_model(num_classes=len(classes), backbone=config.backbone, norm=config.norm,
                              image_size=config.image_size)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(f"{weights_path} does not fit a {config.backbone} Mask R-CNN with {len(classes)} classes: "
                           f"{str(error)[:300]}") from error
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
        weights_sha256=card["weights_sha256"],
    )
    if model.untrained:
        log.warning("%s (Mask R-CNN %s)", UNTRAINED_BANNER, directory)
    elif model.undertrained:
        log.warning("Mask R-CNN %s was trained for only %d steps (< %d): treat its output as a smoke test", directory,
                    model.steps, UNDERTRAINED_STEPS)
    return model
