"""Choose a SAM2 model: registry name or checkpoint file, input size, device; licence shown.

Shared by the SAM2 and Reference prompting panels. ``ModelChoice`` is what the engines are
built from; ``LoadedModels`` (one per dock widget) keeps one predictor per choice, so a model
loads once per napari session whichever panel asks first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from medseg.errors import WeightsError
from medseg.weights import REGISTRY, default_model

if TYPE_CHECKING:
    from medseg.sam2 import Sam2VolumePredictor

_CHECKPOINT = "checkpoint file…"
_DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class ModelChoice:
    """``model`` (registry name or checkpoint path), ``image_size`` (None: the model's), ``device`` (None: best)."""

    model: str
    image_size: int | None
    device: str | None


class LoadedModels:
    """Predictors by ``ModelChoice``, loaded on first use (call ``get`` from a worker thread)."""

    def __init__(self) -> None:
        self._predictors: dict[ModelChoice, Sam2VolumePredictor] = {}
        self._lock = threading.Lock()

    def __contains__(self, choice: ModelChoice) -> bool:
        return choice in self._predictors

    def get(self, choice: ModelChoice) -> Sam2VolumePredictor:
        """The predictor of ``choice``; the first call imports torch and sam2 (seconds), so the
        panels open without waiting for them."""
        from medseg.sam2 import Sam2VolumePredictor

        with self._lock:
            if choice not in self._predictors:
                self._predictors[choice] = Sam2VolumePredictor(
                    choice.model, image_size=choice.image_size, device=choice.device
                )
            return self._predictors[choice]


class ModelPicker(QWidget):
    """Model name or checkpoint, image size and device, with the licence of the chosen weights."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None, *, default: str | None = None) -> None:
        super().__init__(parent)
        self.name = QComboBox()
        for name, spec in REGISTRY.items():
            self.name.addItem(name)
            tooltip = f"{spec.description}\nLicence: {spec.licence}"
            self.name.setItemData(self.name.count() - 1, tooltip, Qt.ItemDataRole.ToolTipRole)
        self.name.addItem(_CHECKPOINT)
        self.name.setCurrentText(default or default_model())
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("path of a SAM2 .pt checkpoint (Hiera-T config)")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        self._checkpoint_row = QWidget()
        row = QHBoxLayout(self._checkpoint_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.checkpoint)
        row.addWidget(browse)
        self.image_size = QSpinBox()
        self.image_size.setRange(0, 2048)
        self.image_size.setSingleStep(32)
        self.image_size.setSpecialValueText("model default")
        self.image_size.setToolTip("Model input size in pixels (a multiple of 32); smaller is faster and coarser")
        self.device = QComboBox()
        self.device.addItems(_DEVICES)
        self.licence = QLabel()
        self.licence.setWordWrap(True)

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Model", self.name)
        form.addRow("", self._checkpoint_row)
        form.addRow("Input size", self.image_size)
        form.addRow("Device", self.device)
        form.addRow(self.licence)
        for signal in (self.name.currentTextChanged, self.checkpoint.editingFinished, self.image_size.valueChanged,
                       self.device.currentTextChanged):
            signal.connect(self._on_change)
        self._on_change()

    def choice(self) -> ModelChoice:
        """The current choice; ``WeightsError`` when "checkpoint file" is picked without a path."""
        name = self.name.currentText()
        if name == _CHECKPOINT:
            name = self.checkpoint.text().strip()
            if not name:
                raise WeightsError("no checkpoint file chosen: enter the path of a SAM2 .pt file or pick a model name")
        device = self.device.currentText()
        return ModelChoice(name, self.image_size.value() or None, None if device == "auto" else device)

    def set_choice(self, model: str, *, image_size: int | None = None) -> None:
        """Select a registry name (or a checkpoint path) and input size, as a user would."""
        if model in REGISTRY:
            self.name.setCurrentText(model)
        else:
            self.name.setCurrentText(_CHECKPOINT)
            self.checkpoint.setText(model)
            self.checkpoint.editingFinished.emit()
        self.image_size.setValue(image_size or 0)

    def _on_change(self, *_: object) -> None:
        name = self.name.currentText()
        self._checkpoint_row.setVisible(name == _CHECKPOINT)
        spec = REGISTRY.get(name)
        if spec is None:
            text, colour = "Weights: your checkpoint; its licence is the one of its source.", ""
        elif spec.untrained:
            text, colour = "RANDOM WEIGHTS, for tests only: the masks are meaningless.", "#ff6060"
        elif spec.packaged:
            text, colour = (f"Ships with medseg ({spec.approx_size_mb} MB), trained on synthetic scenes only: "
                            f"fine-tune it on your cohort (medseg sam2 train). Licence: {spec.licence}."), ""
        elif "CC-BY-SA" in spec.licence:
            text, colour = f"Weights licence: {spec.licence}.", "#ffb040"
        else:
            text, colour = (f"Licence: {spec.licence}. Downloaded once ({spec.approx_size_mb} MB) into the medseg "
                            "cache."), ""
        self.licence.setText(text)
        self.licence.setStyleSheet(f"color: {colour}" if colour else "")
        self.changed.emit()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "SAM2 checkpoint", "", "PyTorch checkpoint (*.pt *.pth)")
        if path:
            self.checkpoint.setText(path)
            self.checkpoint.editingFinished.emit()
