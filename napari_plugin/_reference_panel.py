"""The Reference prompting panel: segment a query volume from a few annotated slices (RevSAM2).

References are (image, labels) layer pairs: another open volume with its labels, or the
query itself with a few slices drawn on it. Each label is segmented through the query with
frozen SAM2 (``medseg.revsam2``). In RevSAM2 mode the panel then shows, per label, the
reverse score of every query slice (how well that slice's prediction, propagated back,
reproduces the references' labels) and the slices chosen as prompts; clicking a chosen
slice shows it in the viewer.
"""

from __future__ import annotations

from typing import Any

import napari
import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from medseg.errors import InputError, MedsegError
from medseg.volume import undertrained_note
from medseg.preprocess import PRESETS, choose_preset
from medseg.revsam2 import (DEFAULT_INCLUDE_SUPPORTS, DEFAULT_REPROMPT, DEFAULT_THRESHOLD, DEFAULT_TOP_K, MODES,
                            REPROMPTS, SupportEntry, SupportSet)
from medseg.volume import LabelVolume, Volume

from napari_plugin._layer_picker import LayerPicker
from napari_plugin._layers import (
    LABELS_KEY,
    label_volume,
    labels_layer_data,
    layer_volume,
    put_labels,
    volume_of_image,
)
from napari_plugin._model_picker import LoadedModels, ModelPicker
from napari_plugin._task_controls import TaskControls
from napari_plugin._tasks import Progress, StopFlag

_MODE_HELP = {
    "revsam2": "RevSAM2: forward pass, reverse scoring of every slice, re-prompt from the best slices",
    "baseline": "Supports as conditioning frames before the query, then propagation (FS-MedSAM2 baseline)",
    "baseline-middle": "Supports inserted at the query's middle, propagation both ways",
}


def parse_slices(text: str, reference: str) -> list[int] | None:
    """``"12, 20 28"`` -> ``[12, 20, 28]``; empty -> None (sample ``k`` slices per label)."""
    parts = text.replace(",", " ").split()
    if not parts:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise InputError(f"{reference}: slices must be whole numbers separated by commas, got {text!r}") from None


def _object_name(result: LabelVolume, value: str) -> str:
    """An object's name in a reference-prompting result: its label's, and which part (``parts``: the second kidney)."""
    support = result.provenance["support"]
    name = support["label_names"].get(str(value), f"label {value}")
    return f"{name} (part {value})" if str(value) in support.get("parts", {}) else name


class ScorePlot(FigureCanvasQTAgg):
    """Reverse score against slice index per label, the selected slices marked."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(4, 2.2), tight_layout=True)
        super().__init__(self.figure)
        self.axes = self.figure.add_subplot()
        self.setMinimumHeight(170)

    def show_scores(self, result: LabelVolume) -> None:
        self.axes.clear()
        for value, detail in result.provenance.get("labels", {}).items():
            scores = np.array([np.nan if s is None else s for s in detail["reverse_scores"]], dtype=float)
            name = _object_name(result, value)
            (line,) = self.axes.plot(np.arange(len(scores)), scores, marker=".", label=name)
            selected = detail["selected_slices"]
            self.axes.plot(selected, scores[selected], "o", mfc="none", ms=9, color=line.get_color())
        self.axes.set_xlabel("query slice (z)")
        self.axes.set_ylabel("reverse score")
        self.axes.set_ylim(-0.02, 1.02)
        if self.axes.lines:
            self.axes.legend(fontsize="small")
        self.draw_idle()


class ReferencePanel(QWidget):
    """Pick the query, the references and the mode; Run; read the scores; jump to chosen slices."""

    def __init__(self, viewer: napari.Viewer, models: LoadedModels, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._models = models
        self._query_layer: Any | None = None
        self.query = LayerPicker(viewer, napari.layers.Image)
        self.references = QTableWidget(0, 3)
        self.references.setHorizontalHeaderLabels(["image", "labels", "slices"])
        self.references.horizontalHeaderItem(2).setToolTip("slices drawn on, e.g. 12, 20 (empty: sample k per label)")
        header = self.references.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Fixed)
        self.references.setColumnWidth(2, 70)
        self.references.verticalHeader().setVisible(False)
        self.references.setMaximumHeight(110)
        self.add_reference = QPushButton("+ reference")
        self.remove_reference = QPushButton("− reference")
        self.k = QSpinBox()
        self.k.setRange(1, 50)
        self.k.setValue(3)
        self.labels = QLineEdit()
        self.labels.setPlaceholderText("all labels of the references")
        self.mode = QComboBox()
        for mode in MODES:
            self.mode.addItem(mode)
            self.mode.setItemData(self.mode.count() - 1, _MODE_HELP[mode], Qt.ItemDataRole.ToolTipRole)
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 100)
        self.top_k.setValue(DEFAULT_TOP_K)
        self.top_k.setSpecialValueText("no limit")
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(DEFAULT_THRESHOLD)
        self.min_spacing = QSpinBox()
        self.min_spacing.setRange(0, 1000)
        self.min_spacing.setSpecialValueText("auto")
        self.include_supports = QCheckBox("Keep the references as prompts in the final pass")
        self.include_supports.setChecked(DEFAULT_INCLUDE_SUPPORTS)
        self.reprompt = QComboBox()
        self.reprompt.addItems(list(REPROMPTS))
        self.reprompt.setCurrentText(DEFAULT_REPROMPT)
        self.reprompt.setToolTip("How a chosen slice prompts the final pass: its forward mask, or that mask segmented "
                                 "again from its parts' boxes on the query slice alone (finds the query's own edges)")
        self.parts = QCheckBox("Each connected part of a label its own object (two kidneys)")
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setToolTip("How intensities become SAM2's input (query and references): a CT window or MRI "
                               "percentiles; the model's training preset, else the query's modality, else its "
                               "intensities; a preset you pick here wins")
        self._preset_chosen = False
        self.preset.activated.connect(self._on_preset_picked)  # activated: the user's picks only
        self.model = ModelPicker()
        self.controls = TaskControls("Run")
        self.plot = ScorePlot()
        self.selected = QListWidget()
        self.selected.setMaximumHeight(110)
        self.selected.setToolTip("Slices chosen as prompts; click one to show it")
        self._layout()
        self.add_reference.clicked.connect(self._on_add_reference)
        self.remove_reference.clicked.connect(self._on_remove_reference)
        self.controls.run.clicked.connect(self._on_run)
        self.selected.itemClicked.connect(self._on_slice_clicked)
        self.query.currentIndexChanged.connect(self._on_query_changed)
        self._on_add_reference()
        self._on_query_changed()

    def _layout(self) -> None:
        data = QGroupBox("Query and references")
        grid = QGridLayout(data)
        form = QFormLayout()
        form.addRow("Query", self.query)
        grid.addLayout(form, 0, 0, 1, 2)
        grid.addWidget(self.references, 1, 0, 1, 2)
        grid.addWidget(self.add_reference, 2, 0)
        grid.addWidget(self.remove_reference, 2, 1)
        settings = QGroupBox("Settings")
        grid = QGridLayout(settings)  # two fields per row: the score plot stays above the fold
        fields = [("Labels", self.labels), ("Preset", self.preset), ("k per label", self.k), ("Mode", self.mode),
                  ("Top k", self.top_k), ("Threshold", self.threshold), ("Min spacing", self.min_spacing),
                  ("Re-prompt with", self.reprompt)]
        for i, (text, widget) in enumerate(fields):
            grid.addWidget(QLabel(text), i // 2, 2 * (i % 2))
            grid.addWidget(widget, i // 2, 2 * (i % 2) + 1)
        grid.addWidget(self.include_supports, len(fields) // 2 + 1, 0, 1, 4)
        grid.addWidget(self.parts, len(fields) // 2 + 2, 0, 1, 4)
        model = QGroupBox("Model")
        QVBoxLayout(model).addWidget(self.model)
        run = QGroupBox("Run")
        box = QVBoxLayout(run)
        box.addWidget(self.controls)
        box.addWidget(self.plot)
        box.addWidget(self.selected)
        layout = QVBoxLayout(self)
        for group in (data, settings, run, model):
            layout.addWidget(group)
        layout.addStretch(1)

    def _on_query_changed(self, *_: Any) -> None:
        """The preset shown follows the query (its modality, else its intensities) until a run
        shows the one used; a pick of the user's is sent as chosen (``choose_preset``)."""
        layer = self.query.layer()
        if layer is not None and layer_volume(layer) is not None:
            self.preset.setCurrentText(choose_preset(layer_volume(layer)).name)
            self._preset_chosen = False

    def _on_preset_picked(self, *_: Any) -> None:
        self._preset_chosen = True

    # --- references -------------------------------------------------------------------------
    def _on_add_reference(self) -> None:
        row = self.references.rowCount()
        self.references.insertRow(row)
        for column, kind in ((0, napari.layers.Image), (1, napari.layers.Labels)):
            picker = LayerPicker(self.viewer, kind)
            picker.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            picker.setMinimumContentsLength(8)
            self.references.setCellWidget(row, column, picker)
        self.references.setCellWidget(row, 2, QLineEdit())

    def _on_remove_reference(self) -> None:
        row = self.references.currentRow() if self.references.currentRow() >= 0 else self.references.rowCount() - 1
        if row >= 0:
            for column in (0, 1):
                self.references.cellWidget(row, column).release()
            self.references.removeRow(row)

    def set_reference(self, row: int, image: Any, labels: Any, slices: str = "") -> None:
        """Fill reference row ``row`` (added if needed), as a user picking in its cells would."""
        while self.references.rowCount() <= row:
            self._on_add_reference()
        self.references.cellWidget(row, 0).set_layer(image)
        self.references.cellWidget(row, 1).set_layer(labels)
        self.references.cellWidget(row, 2).setText(slices)

    def _support_entries(self, query_layer: Any, query: Volume) -> tuple[list[tuple], list[str]]:
        entries, names = [], []
        for row in range(self.references.rowCount()):
            image, labels = self.references.cellWidget(row, 0).layer(), self.references.cellWidget(row, 1).layer()
            if image is None or labels is None:
                raise InputError(f"reference {row + 1}: pick its image and its labels layer")
            on_query = image.unique_id == query_layer.unique_id  # engineer F replaces this with an explicit choice
            volume = query if on_query else volume_of_image(image)
            label_map = label_volume(labels.data, volume, result=labels.metadata.get(LABELS_KEY), name=labels.name)
            name = f"{image.name} / {labels.name}"
            slices = parse_slices(self.references.cellWidget(row, 2).text(), name)
            entries.append(SupportEntry(label_map, volume=None if on_query else volume, slices=slices,
                                        from_query=on_query))
            names.append(name)
        if not entries:
            raise InputError("no reference: add one (an annotated volume, or slices drawn on the query)")
        return entries, names

    def _wanted_labels(self) -> list[int] | None:
        text = self.labels.text().replace(",", " ").split()
        try:
            return [int(v) for v in text] or None
        except ValueError:
            raise InputError(f"labels must be label values separated by commas, got {self.labels.text()!r}") from None

    # --- run --------------------------------------------------------------------------------
    def _on_run(self) -> None:
        query_layer = self.query.layer()
        if query_layer is None:
            show_error("Pick the query image to segment.")
            return
        try:
            query = volume_of_image(query_layer)
            entries, names = self._support_entries(query_layer, query)
            labels, choice = self._wanted_labels(), self.model.choice()
        except MedsegError as error:
            show_error(str(error))
            return
        k, mode, models = self.k.value(), self.mode.currentText(), self._models
        preset = self.preset.currentText() if self._preset_chosen else None  # None: the model's, else the query's
        settings = {
            "top_k": self.top_k.value() or None,
            "threshold": self.threshold.value(),
            "min_spacing": self.min_spacing.value() or None,
            "include_supports": self.include_supports.isChecked(),
            "reprompt": self.reprompt.currentText(),
        }
        parts = self.parts.isChecked()

        def run(progress: Progress, should_stop: StopFlag) -> LabelVolume:
            from medseg.revsam2 import ReferenceSession  # torch and sam2: seconds, so in the worker

            support = SupportSet.from_volumes(entries, k=k, labels=labels, names=names, parts=parts)
            session = ReferenceSession(query, support, model=models.get(choice), preset=preset)
            return session.segment(mode=mode, progress=progress, should_stop=should_stop, **settings)

        self._query_layer = query_layer
        phases = ("forward pass", "reverse scoring", "re-prompted pass") if mode == "revsam2" else ("propagation",)
        self.controls.start(run, label="Reference prompting", on_done=lambda result: self._show(result, query),
                            phases=phases)

    def _show(self, result: LabelVolume, query: Volume) -> None:
        method = result.provenance["method"].removeprefix("reference-prompting-")
        name = f"{self._query_layer.name} references ({method})"
        put_labels(self.viewer, labels_layer_data(result, query, name))
        self.preset.setCurrentText(result.provenance["preset"]["name"])  # the one used
        self.plot.show_scores(result)
        self.selected.clear()
        for value, detail in result.provenance.get("labels", {}).items():
            label_name = _object_name(result, value)
            if detail["fell_back_to_forward"]:
                self.selected.addItem(f"{label_name}: no slice reached the threshold; forward prediction kept")
            for z in detail["selected_slices"]:
                item = QListWidgetItem(f"{label_name}: slice {z}, reverse score {detail['reverse_scores'][z]:.3f}")
                item.setData(Qt.ItemDataRole.UserRole, z)
                self.selected.addItem(item)
        lines = [f"{len(result.label_names)} label(s) segmented; {result.provenance['encoder_calls']} slices encoded."]
        if result.untrained:
            lines.append("UNTRAINED MODEL: masks and scores are meaningless.")
        elif note := undertrained_note(result.provenance):
            lines.append(f"{note[0].upper()}{note[1:]}.")
        self.controls.show_status(" ".join(lines), warn=result.untrained)

    def _on_slice_clicked(self, item: QListWidgetItem) -> None:
        z = item.data(Qt.ItemDataRole.UserRole)
        if z is not None and self._query_layer is not None:
            self.viewer.dims.set_point(0, self._query_layer.data_to_world((z, 0, 0))[0])
