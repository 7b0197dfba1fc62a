"""The Baseline panel: segment the image with a trained Mask R-CNN model directory.

The model directory (``medseg baseline train``) says which classes it knows, its intensity
preset and input size, and how long it was trained; the panel loads it once, predicts every
slice in a worker and stitches the detections into scored 3D objects (``medseg.maskrcnn``).
The result is a Labels layer that keeps the object scores, so the Metrics panel's mask AP
ranks the objects by the model's confidence.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medseg.errors import MedsegError, WeightsError
from medseg.volume import Volume

from napari_plugin._layer_picker import LayerPicker, fit_columns
from napari_plugin._layers import labels_layer_data, put_labels, volume_of_image
from napari_plugin._task_controls import TaskControls
from napari_plugin._tasks import Progress, StopFlag

if TYPE_CHECKING:
    from medseg.maskrcnn import MaskRCNNModel
    from medseg.maskrcnn.predict import Prediction


class BaselinePanel(QWidget):
    """Pick the image and a model directory, Run, read the objects and their scores."""

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._models: dict[Path, MaskRCNNModel] = {}
        self.instances = None  # the last run's InstanceMap (what the table lists)
        self.image = LayerPicker(viewer, napari.layers.Image)
        self.model_dir = QLineEdit()
        self.model_dir.setPlaceholderText("model directory from `medseg baseline train`")
        self.browse = QPushButton("…")
        self.browse.setMaximumWidth(30)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setSpecialValueText("model default")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.controls = TaskControls("Run")
        self.objects = QTableWidget(0, 4)
        self.objects.setHorizontalHeaderLabels(["label", "name", "score", "slices"])
        self.objects.setToolTip("One row per 3D instance (what 3D mask AP counts), best score first")
        fit_columns(self.objects, stretch=1)
        self.objects.verticalHeader().setVisible(False)

        directory = QHBoxLayout()
        directory.addWidget(self.model_dir)
        directory.addWidget(self.browse)
        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow("Model", directory)
        form.addRow("Score threshold", self.threshold)
        form.addRow("Device", self.device)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.controls)
        layout.addWidget(self.objects)
        layout.addStretch(1)
        self.browse.clicked.connect(self._on_browse)
        self.controls.run.clicked.connect(self._on_run)

    def _on_browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Mask R-CNN model directory", self.model_dir.text())
        if path:
            self.model_dir.setText(path)

    def _on_run(self) -> None:
        layer, directory = self.image.layer(), self.model_dir.text().strip()
        try:
            if layer is None:
                raise MedsegError("pick the image to segment")
            if not directory:
                raise WeightsError("no model directory: train one with `medseg baseline train` and pick its folder")
            volume = volume_of_image(layer)
        except MedsegError as error:
            show_error(str(error))
            return
        path, models = Path(directory).expanduser().resolve(), self._models
        threshold, device = self.threshold.value() or None, self.device.currentText()

        def run(progress: Progress, should_stop: StopFlag) -> tuple[MaskRCNNModel, Prediction]:
            from medseg.maskrcnn import load_model, predict_instances  # torchvision: seconds, so in the worker

            model = models.get(path) or load_model(path)
            return model, predict_instances(model, volume, score_threshold=threshold, device=device, progress=progress,
                                            should_stop=should_stop)

        def done(outcome: tuple[MaskRCNNModel, Prediction]) -> None:
            model, prediction = outcome
            models[path] = model
            self._show(layer, volume, model, prediction)

        self.controls.start(run, label="Mask R-CNN", on_done=done)

    def _show(self, image: Any, volume: Volume, model: MaskRCNNModel, prediction: Prediction) -> None:
        labels, instances = prediction.labels, prediction.instances
        self.instances = instances
        put_labels(self.viewer, labels_layer_data(labels, volume, f"{image.name} Mask R-CNN"))
        self.objects.setRowCount(0)
        present = {int(v) for v in np.unique(instances.array) if v}
        for instance in sorted(present, key=lambda i: -instances.scores.get(i, 0.0)):
            value = instances.labels[instance]
            slices = (instances.array == instance).any(axis=(1, 2)).nonzero()[0]
            score = instances.scores.get(instance)
            cells = [str(value), labels.label_names.get(value, f"label {value}"),
                     "—" if score is None else f"{score:.3f}", f"{slices[0]}–{slices[-1]}"]
            row = self.objects.rowCount()
            self.objects.insertRow(row)
            for column, text in enumerate(cells):
                self.objects.setItem(row, column, QTableWidgetItem(text))
        note = (f"{len(present)} instance(s) of {len(labels.labels)} label(s) found by "
                f"{model.directory.name if model.directory else 'the model'}")
        note += f" ({model.config.backbone}, {model.steps} training steps)."
        if model.untrained:
            note += " UNTRAINED MODEL: these masks are meaningless."
        elif model.undertrained:
            note += " Trained for only a few steps: expect poor masks."
        self.controls.show_status(note, warn=model.untrained or model.undertrained)
