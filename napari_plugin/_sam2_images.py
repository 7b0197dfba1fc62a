"""The SAM2 panel's Data box: which image to segment, its output Labels layer and intensity preset.

Each image gets its own ``Workspace`` (objects, prompt layers, labels, session), made when the
image is first picked and kept while the image is in the viewer, so switching images and back
finds everything as it was. ``changed`` tells the panel that another workspace (or none) is
shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import napari
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QWidget

from medseg.errors import MedsegError
from medseg.preprocess import PRESETS

from napari_plugin._layer_picker import LayerPicker, same_layer
from napari_plugin._layers import display_range, volume_of_image
from napari_plugin._sam2_workspace import Workspace

ShowStatus = Callable[..., None]


class ImageBox(QGroupBox):
    """Image and Labels pickers and the preset; ``workspace`` is the picked image's."""

    changed = Signal()

    def __init__(self, viewer: napari.Viewer, show_status: ShowStatus, parent: QWidget | None = None) -> None:
        super().__init__("Data", parent)
        self.viewer = viewer
        self._show_status = show_status
        self._workspaces: dict[str, Workspace] = {}  # by image layer unique_id
        self._shown: Any | None = None
        self.image = LayerPicker(viewer, napari.layers.Image)
        self.output = LayerPicker(viewer, napari.layers.Labels, none_text="(new layer)")
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setToolTip("How intensities become SAM2's input (and the contrast shown): a CT window (HU) "
                               "or MRI percentiles")
        self.preset_note = QLabel()
        form = QFormLayout(self)
        form.addRow("Image", self.image)
        form.addRow("Labels", self.output)
        form.addRow("Preset", self.preset)
        form.addRow(self.preset_note)
        self.image.currentIndexChanged.connect(self._on_image_changed)
        self.image.activated.connect(lambda *_: self.show())
        self.output.currentIndexChanged.connect(self._on_output_changed)
        self.preset.currentTextChanged.connect(self._on_preset)

    @property
    def workspace(self) -> Workspace | None:
        layer = self.image.layer()
        return None if layer is None else self._workspaces.get(layer.unique_id)

    def _in_viewer(self, layer: Any) -> bool:
        return any(same_layer(layer, other) for other in self.viewer.layers)

    def _on_image_changed(self, *_: Any) -> None:
        """The picker moved: start on the image, unless it moved because its image was removed."""
        removed = self._shown is not None and not self._in_viewer(self._shown)
        self.show(start=not removed)

    def show(self, *, start: bool = True) -> None:
        """Show the picked image's workspace; with ``start``, set it up on first use."""
        alive = {layer.unique_id for layer in self.viewer.layers}
        self._workspaces = {k: ws for k, ws in self._workspaces.items() if k in alive}
        layer = self._shown = self.image.layer()
        if layer is None:
            self._show_status("Open a 3D CT or MRI volume (File ▸ Open, or File ▸ Open Sample ▸ medseg).")
        elif layer.unique_id not in self._workspaces and start:
            try:
                self._workspaces[layer.unique_id] = Workspace(self.viewer, layer, volume_of_image(layer))
            except MedsegError as error:
                show_error(str(error))
                self._show_status(str(error), warn=True)
            else:
                self.viewer.layers.selection.active = layer  # napari's New Labels then fits this image
        ws = self.workspace
        if ws is not None:
            self.output.set_layer(ws.labels)
            self.show_preset(ws)
            self._show_status(
                f"{layer.name}: {ws.volume.modality} volume {ws.volume.shape} (z, y, x). Press Shift-D (or pick an "
                "object) and click on the object, draw a box (Shift-B) or scribble (Shift-S); then Segment object "
                "(G) or Propagate (Shift-G)."
            )
        elif layer is not None and start is False:
            self._show_status(f"Pick {layer.name!r} in the Image list to segment it.")
        self.changed.emit()

    def show_preset(self, ws: Workspace) -> None:
        """Show the preset ``ws`` uses and why (the library's choice, the model's training preset
        once a session is built), with the image's contrast following it."""
        if ws is not self.workspace:
            return
        if self.preset.currentText() != ws.preset:
            ws.image.contrast_limits = display_range(ws.volume, ws.preset)
        self.preset.blockSignals(True)
        self.preset.setCurrentText(ws.preset)
        self.preset.blockSignals(False)
        self.preset_note.setText(ws.preset_reason)

    def _on_preset(self, name: str) -> None:
        """The user picked a preset: SAM2's input and the image's contrast follow it."""
        ws = self.workspace
        if ws is not None:
            ws.preset, ws.chosen_preset = name, name
            ws.preset_reason = "chosen by you; the next call re-encodes the slices"
            ws.image.contrast_limits = display_range(ws.volume, name)
            self.preset_note.setText(ws.preset_reason)

    def _on_output_changed(self, *_: Any) -> None:
        """The user picked another labels layer for the results, or "(new layer)"."""
        ws, layer = self.workspace, self.output.layer()
        if ws is None or same_layer(layer, ws.labels) or (layer is None and not self._in_viewer(ws.labels)):
            return  # nothing changed, or the results layer was removed: a new one comes on the next run
        try:
            ws.use_labels_layer(layer if layer is not None else ws.new_labels_layer())
        except MedsegError as error:
            show_error(str(error))
        ws.prompts.recolour()
        self.output.set_layer(ws.labels)
