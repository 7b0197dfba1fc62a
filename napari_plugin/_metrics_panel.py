"""The Metrics panel: Dice, 95% Hausdorff, surface Dice and COCO mask AP of a Labels layer
against a ground-truth Labels layer, computed by ``medseg.metrics.evaluate_pair`` in a worker.

Distances are in millimetres when either layer carries its medseg ``Volume`` (the spacing
comes from there); two layers that both carry one must lie on the same voxel grid. Layers
made outside medseg are plain arrays: distances then count voxels, and the table says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medseg.volume import LabelVolume

from napari_plugin._layer_picker import LayerPicker, fit_columns, same_layer
from napari_plugin._layers import LABELS_KEY, label_volume, layer_volume
from napari_plugin._task_controls import TaskControls
from napari_plugin._tasks import Progress, StopFlag

if TYPE_CHECKING:
    from medseg.metrics import PairScores


def as_label_map(layer: Any) -> LabelVolume | np.ndarray:
    """A Labels layer as a ``LabelVolume`` when it carries its volume, else its plain array."""
    volume = layer_volume(layer)
    if volume is None:
        return np.asarray(layer.data)
    return label_volume(layer.data, volume, result=layer.metadata.get(LABELS_KEY), name=layer.name)


def _number(value: float) -> str:
    return "—" if np.isnan(value) else ("∞" if np.isinf(value) else f"{value:.3f}")


class MetricsPanel(QWidget):
    """Pick a prediction and a ground truth, press Compute, read the table."""

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.prediction = LayerPicker(viewer, napari.layers.Labels)
        self.truth = LayerPicker(viewer, napari.layers.Labels)
        self.instances = QComboBox()
        self.instances.addItems(["components", "per_class"])
        self.instances.setToolTip("Mask AP instances: connected components of each label, or one instance per label")
        self.tolerance = QDoubleSpinBox()
        self.tolerance.setRange(0.0, 50.0)
        self.tolerance.setValue(2.0)
        self.tolerance.setSuffix(" mm")
        self.controls = TaskControls("Compute")
        self.copy = QPushButton("Copy table")
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["label", "name", "Dice", "HD95", "surf. Dice"])
        self.table.horizontalHeaderItem(4).setToolTip("surface Dice at the tolerance (MONAI: boundary voxels counted)")
        fit_columns(self.table, stretch=1)
        self.table.verticalHeader().setVisible(False)

        inputs = QGroupBox("Layers")
        form = QFormLayout(inputs)
        form.addRow("Prediction", self.prediction)
        form.addRow("Ground truth", self.truth)
        form.addRow("AP instances", self.instances)
        form.addRow("Surface tolerance", self.tolerance)
        layout = QVBoxLayout(self)
        layout.addWidget(inputs)
        layout.addWidget(self.controls)
        layout.addWidget(self.table)
        layout.addWidget(self.copy)
        layout.addStretch(1)
        self.controls.run.clicked.connect(self._on_compute)
        self.copy.clicked.connect(self._on_copy)
        viewer.layers.events.inserted.connect(self._pick_distinct)
        viewer.layers.events.removed.connect(self._pick_distinct)
        self._pick_distinct()

    def _pick_distinct(self, *_: Any) -> None:
        """Defaults that can be scored: the truth a layer named like one, the prediction another layer."""
        layers = self.prediction.layers()
        if len(layers) < 2 or not same_layer(self.prediction.layer(), self.truth.layer()):
            return
        truthy = [layer for layer in layers if "truth" in layer.name.lower() or "ground" in layer.name.lower()]
        truth = truthy[0] if truthy else layers[0]
        self.truth.set_layer(truth)
        self.prediction.set_layer(next(layer for layer in reversed(layers) if not same_layer(layer, truth)))

    def _on_compute(self) -> None:
        pred_layer, truth_layer = self.prediction.layer(), self.truth.layer()
        if pred_layer is None or truth_layer is None:
            show_error("Pick a prediction and a ground-truth Labels layer.")
            return
        if same_layer(pred_layer, truth_layer):
            show_error("The prediction and the ground truth are the same layer: pick the layer to score and the truth.")
            return
        pred, truth = as_label_map(pred_layer), as_label_map(truth_layer)
        tolerance, instances = self.tolerance.value(), self.instances.currentText()

        def run(progress: Progress, should_stop: StopFlag) -> PairScores:
            from medseg.metrics import evaluate_pair  # MONAI and torch: seconds, so not when the panel opens

            return evaluate_pair(pred, truth, surface_tolerance_mm=tolerance, instances=instances, progress=progress,
                                 should_stop=should_stop)

        self.controls.start(run, label="Metrics", on_done=self._show)

    def _show(self, scores: PairScores) -> None:
        metrics = scores.metrics
        unit = "mm" if metrics.millimetres else "voxels"
        self.table.setHorizontalHeaderLabels(["label", "name", "Dice", f"HD95 ({unit})", "surf. Dice"])
        self.table.setRowCount(0)
        for value, name in scores.names.items():
            row = self.table.rowCount()
            self.table.insertRow(row)
            cells = [str(value), name, _number(metrics.dice[value]), _number(metrics.hd95_mm[value]),
                     _number(metrics.surface_dice[value])]
            for column, text in enumerate(cells):
                self.table.setItem(row, column, QTableWidgetItem(text))
        lines = [f"mean Dice {_number(metrics.mean_dice)}"]
        for ap in (scores.ap_3d, scores.ap_2d):
            lines.append(
                f"mask AP {ap.mode.upper()}: AP {_number(ap.ap)}, AP50 {_number(ap.ap50)}, AP75 {_number(ap.ap75)} "
                f"({ap.n_predicted} predicted / {ap.n_truth} true instances)"
            )
        if scores.ap_3d.constant_score:
            lines.append("The prediction carries no confidence scores: AP ranks its instances arbitrarily.")
        if not metrics.millimetres:
            lines.append("Neither layer carries its volume's geometry: distances are in voxels.")
        if scores.untrained:
            lines.append("UNTRAINED MODEL: these numbers are meaningless.")
        self.controls.show_status("\n".join(lines), warn=scores.untrained)

    def _on_copy(self) -> None:
        """The table and summary as tab-separated text, for a spreadsheet."""
        header = [self.table.horizontalHeaderItem(c).text() for c in range(self.table.columnCount())]
        rows = [[self.table.item(r, c).text() for c in range(self.table.columnCount())]
                for r in range(self.table.rowCount())]
        text = "\n".join("\t".join(row) for row in [header, *rows]) + "\n\n" + self.controls.status.text()
        QApplication.clipboard().setText(text)
