"""The SAM2 panel: prompt objects on any slice, segment them there, propagate, correct, save.

Workflow: pick the image, the intensity preset and a model; press A (or pick an object) and
click on the object (shift-click or T for red background points) and/or draw a box;
"Segment object" (G) shows the objects on their prompted slices; "Propagate" (Shift-G) fills
the volume from every prompted slice, slice by slice as they finish; points on another slice
correct it (propagate again); Undo/Redo (U / Shift-U) restore the whole previous result;
"Accept" (Shift-C) keeps an object as it is and moves on to the next organ; "Save" writes
the labels on the image's geometry, to a path of this image's own.

All model work (``_sam2_runs``) runs through the panel's ``TaskControls`` (a napari thread worker): the viewer
stays live, progress with phase and ETA shows in the panel and in napari's activity dock,
Cancel (Escape) stops between slices and leaves the labels as they were. One predictor per
model choice is kept (``LoadedModels``), so a model loads once per napari session; the
session keeps the image features of every prompted slice, so more clicks there are fast.
"""

from __future__ import annotations

from typing import Any

import napari
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medseg.errors import MedsegError
from medseg.preprocess import PRESETS

from napari_plugin._keys import bind_shortcuts, help_text
from napari_plugin._layer_picker import LayerPicker, same_layer
from napari_plugin._layers import volume_of_image
from napari_plugin._model_picker import LoadedModels, ModelPicker
from napari_plugin._object_table import ObjectTable
from napari_plugin._sam2_runs import Sam2Runs
from napari_plugin._sam2_workspace import Workspace
from napari_plugin._save_row import SaveRow, input_paths
from napari_plugin._tasks import Task, TaskControls
from napari_plugin._writer import write_labels


class Sam2Panel(QWidget):
    """Interactive SAM2 segmentation of the selected image; see the module docstring."""

    def __init__(self, viewer: napari.Viewer, models: LoadedModels, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._workspaces: dict[str, Workspace] = {}  # by image layer unique_id
        self._shown_image: Any | None = None

        self.image = LayerPicker(viewer, napari.layers.Image)
        self.output = LayerPicker(viewer, napari.layers.Labels, none_text="(new layer)")
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setToolTip("How intensities become SAM2's input: a CT window (HU) or MRI percentiles")
        self.preset_note = QLabel()
        self.model = ModelPicker()
        self.precompute = QPushButton("Precompute embeddings")
        self.precompute.setToolTip("Encode every slice now (cancellable), so later clicks and propagation are fast")
        self.objects = ObjectTable()
        self.add_object = QPushButton("+ object")
        self.remove_object = QPushButton("− object")
        self.accept = QPushButton("Accept (Shift-C)")
        self.accept.setToolTip("Keep this object as it is now; SAM2 forgets its prompts and moves on to a new object")
        self.clear = QPushButton("Clear prompts")
        self.clear.setToolTip("Remove this object's points, boxes and mask (accepted voxels stay)")
        self.box = QPushButton("Draw box (Shift-B)")
        self.box.setToolTip("Drag a box around the object on this slice (one box per object per slice)")
        self.negative = QCheckBox("Negative points (T, or shift-click)")
        self.negative.setToolTip("Place background points (red) instead of object points (green)")
        self.mask_prompt = QPushButton("Slice as mask prompt")
        self.mask_prompt.setToolTip(
            "Use the object's voxels on the current slice, as shown and as painted with the labels brush, "
            "as a mask prompt: SAM2 keeps them exactly and propagates from them"
        )
        self.segment = QPushButton("Segment object (G)")
        self.segment.setToolTip("Send the new points and boxes to SAM2 and show the objects on their slices")
        self.controls = TaskControls("Propagate (Shift-G)")
        self.controls.run.setToolTip("Segment every object through the whole volume from all its prompted slices")
        self.undo = QPushButton("Undo (U)")
        self.undo.setToolTip("Take back the last point, or the last result (labels and prompts)")
        self.redo = QPushButton("Redo (Shift-U)")
        self.correct_next = QPushButton("Go to the slice to correct next")
        self.correct_next.setVisible(False)
        self.save_row = SaveRow()
        self.help = QLabel(help_text())
        self.help.setStyleSheet("font-family: monospace; font-size: 9pt")
        self.controls.busy_widgets = [
            self.segment, self.undo, self.redo, self.save_row.save, self.add_object, self.remove_object,
            self.mask_prompt, self.accept, self.clear, self.model, self.image, self.preset, self.precompute,
        ]
        self.runs = Sam2Runs(self, models)
        self._layout()
        self._connect()
        bind_shortcuts(viewer, self)
        self._show_image()

    @property
    def task(self) -> Task | None:
        return self.controls.task

    @property
    def status(self) -> QLabel:
        return self.controls.status

    @property
    def progress(self):
        return self.controls.progress

    @property
    def propagate(self) -> QPushButton:
        return self.controls.run

    @property
    def cancel(self) -> QPushButton:
        return self.controls.cancel

    # --- layout and signals -----------------------------------------------------------------
    def _layout(self) -> None:
        data = QGroupBox("Data")
        form = QFormLayout(data)
        form.addRow("Image", self.image)
        form.addRow("Labels", self.output)
        form.addRow("Preset", self.preset)
        form.addRow(self.preset_note)
        model = QGroupBox("Model")
        box = QVBoxLayout(model)
        box.addWidget(self.model)
        box.addWidget(self.precompute)
        objects = QGroupBox("Objects and prompts")
        grid = QGridLayout(objects)
        grid.addWidget(self.objects, 0, 0, 1, 2)
        grid.addWidget(self.add_object, 1, 0)
        grid.addWidget(self.remove_object, 1, 1)
        grid.addWidget(self.accept, 2, 0)
        grid.addWidget(self.clear, 2, 1)
        grid.addWidget(self.negative, 3, 0)
        grid.addWidget(self.box, 3, 1)
        grid.addWidget(self.mask_prompt, 4, 0, 1, 2)
        actions = QGroupBox("Segment")
        grid = QGridLayout(actions)
        grid.addWidget(self.segment, 0, 0)
        grid.addWidget(self.undo, 1, 0)
        grid.addWidget(self.redo, 1, 1)
        grid.addWidget(self.controls, 2, 0, 1, 2)
        grid.addWidget(self.correct_next, 3, 0, 1, 2)
        save = QGroupBox("Save labels")
        QVBoxLayout(save).addWidget(self.save_row)
        keys = QGroupBox("Keys")
        QVBoxLayout(keys).addWidget(self.help)
        layout = QVBoxLayout(self)
        for group in (data, model, objects, actions, save, keys):
            layout.addWidget(group)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.image.currentIndexChanged.connect(self._on_image_changed)
        self.image.activated.connect(self._show_image)
        self.output.currentIndexChanged.connect(self._on_output_changed)
        self.preset.currentTextChanged.connect(self._on_preset)
        self.objects.itemSelectionChanged.connect(self._on_object_selected)
        self.objects.itemChanged.connect(self._on_object_renamed)
        self.add_object.clicked.connect(self._on_add_object)
        self.remove_object.clicked.connect(self._on_remove_object)
        self.accept.clicked.connect(self.accept_object)
        self.clear.clicked.connect(self.clear_object)
        self.negative.toggled.connect(self._on_negative)
        self.box.clicked.connect(self.draw_box)
        self.mask_prompt.clicked.connect(self._on_mask_prompt)
        self.segment.clicked.connect(self.runs.segment)
        self.controls.run.clicked.connect(self.runs.propagate)
        self.undo.clicked.connect(self.undo_step)
        self.redo.clicked.connect(self.redo_step)
        self.precompute.clicked.connect(self.runs.precompute)
        self.correct_next.clicked.connect(self._on_correct_next)
        self.save_row.browse.clicked.connect(lambda: self.save_row.choose() and self._on_save())
        self.save_row.save.clicked.connect(self._on_save)
        self.save_row.path.editingFinished.connect(self._on_save_path_edited)

    # --- keyboard (see _keys.SHORTCUTS) -------------------------------------------------------
    def place_points(self) -> None:
        """Make the prompts layer active in add mode: clicks on the image become points."""
        ws = self.workspace
        if ws is not None:
            ws.restore_layers()
            self.viewer.layers.selection.active = ws.prompts.points
            ws.prompts.points.mode = "add"

    def draw_box(self) -> None:
        """Make the boxes layer active in rectangle mode: a drag on the image draws a box."""
        ws = self.workspace
        if ws is not None:
            ws.restore_layers()
            self.viewer.layers.selection.active = ws.prompts.boxes
            ws.prompts.boxes.mode = "add_rectangle"

    def toggle_negative(self) -> None:
        self.negative.toggle()

    def segment_object(self) -> None:
        self.segment.click()

    def propagate_volume(self) -> None:
        self.controls.run.click()

    def next_object(self, step: int = 1) -> None:
        ws, current = self.workspace, self.current_object()
        if ws is None or current is None:
            return
        ids = list(ws.objects)
        self.select_object(ids[(ids.index(current) + step) % len(ids)])

    def previous_object(self) -> None:
        self.next_object(-1)

    def cancel_task(self) -> None:
        self.controls.cancel.click()

    # --- the current image ------------------------------------------------------------------
    @property
    def workspace(self) -> Workspace | None:
        layer = self.image.layer()
        return None if layer is None else self._workspaces.get(layer.unique_id)

    def _in_viewer(self, layer: Any) -> bool:
        return any(same_layer(layer, other) for other in self.viewer.layers)

    def _on_image_changed(self, *_: Any) -> None:
        """The picker moved: start on the image, unless it moved because its image was removed."""
        removed = self._shown_image is not None and not self._in_viewer(self._shown_image)
        self._show_image(start=not removed)

    def _show_image(self, *_: Any, start: bool = True) -> None:
        """Show the picked image's objects, preset, save path; with ``start``, set it up on first use."""
        alive = {layer.unique_id for layer in self.viewer.layers}
        self._workspaces = {k: ws for k, ws in self._workspaces.items() if k in alive}
        layer = self._shown_image = self.image.layer()
        self._reset_stale()
        if layer is None:
            self.controls.show_status("Open a 3D CT or MRI volume (File ▸ Open, or File ▸ Open Sample ▸ medseg).")
        elif layer.unique_id not in self._workspaces and start:
            try:
                self._workspaces[layer.unique_id] = Workspace(self.viewer, layer, volume_of_image(layer))
            except MedsegError as error:
                show_error(str(error))
                self.controls.show_status(str(error), warn=True)
            else:
                self.viewer.layers.selection.active = layer  # napari's New Labels then fits this image
        ws = self.workspace
        if ws is not None:
            self.output.set_layer(ws.labels)
            self.preset.blockSignals(True)
            self.preset.setCurrentText(ws.preset)
            self.preset.blockSignals(False)
            self.preset_note.setText(self._preset_reason(ws))
            self.save_row.path.setText(ws.save_path)
            self.controls.show_status(
                f"{layer.name}: {ws.volume.modality} volume {ws.volume.shape} (z, y, x). Press A (or pick an "
                "object) and click on the object, or draw a box; then Segment object (G) or Propagate (Shift-G)."
            )
        elif layer is not None and start is False:
            self.controls.show_status(f"Pick {layer.name!r} in the Image list to segment it.")
        self._refresh_objects()

    def _reset_stale(self) -> None:
        """What belonged to the previous image: the correction hint and the last progress."""
        self.correct_next.setVisible(False)
        if not self.controls.busy:
            self.controls.progress.setRange(0, 1)
            self.controls.progress.setValue(0)
            self.controls.progress.setFormat("")

    @staticmethod
    def _preset_reason(ws: Workspace) -> str:
        modality = ws.volume.modality
        if modality.upper() not in ("OT", ""):
            return f"default for {modality}"
        return "modality unknown: chosen from the intensities (HU-like: CT)" if ws.preset.startswith("ct") else \
            "modality unknown: chosen from the intensities (not HU-like: MRI)"

    def _on_preset(self, name: str) -> None:
        ws = self.workspace
        if ws is not None:
            ws.preset = name
            self.preset_note.setText("chosen by you; the next call re-encodes the slices")

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

    def _on_save_path_edited(self) -> None:
        if self.workspace is not None:
            self.workspace.save_path = self.save_row.path.text().strip()

    # --- objects ----------------------------------------------------------------------------
    def _refresh_objects(self, select: int | None = None) -> None:
        ws = self.workspace
        if ws is None:
            self.objects.setRowCount(0)
            return
        self.objects.show_objects(ws.objects, accepted=ws.accepted, colour_of=ws.colour_of, select=select)

    def current_object(self) -> int | None:
        return None if self.workspace is None else self.objects.current()

    def select_object(self, obj_id: int) -> None:
        """Make ``obj_id`` the object new markers prompt (as clicking its row does)."""
        self._refresh_objects(select=obj_id)

    def _on_object_selected(self) -> None:
        ws, obj_id = self.workspace, self.current_object()
        if ws is not None and obj_id is not None:
            ws.prompts.set_object(obj_id)
            if ws.labels is not None:
                ws.labels.selected_label = obj_id

    def _on_object_renamed(self, item: QTableWidgetItem) -> None:
        ws = self.workspace
        if ws is not None and item.column() == 1:
            obj_id = self.objects.object_at(item.row())
            ws.rename(obj_id, item.text().strip() or f"object {obj_id}")

    def _on_add_object(self) -> None:
        ws = self.workspace
        if ws is not None:
            self._refresh_objects(select=ws.add_object())
            self.place_points()

    def _on_remove_object(self) -> None:
        self._change_object(lambda ws, obj_id: ws.remove_object(obj_id), "Removed object {obj_id}.")

    def accept_object(self) -> None:
        """Keep the current object's voxels as they are; SAM2 moves on to a new object."""
        ws, obj_id = self.workspace, self.current_object()
        if ws is None or obj_id is None or not self.accept.isEnabled():
            return
        before = ws.snapshot()
        voxels = ws.accept(obj_id)
        ws.history.push(before)
        self._refresh_objects(select=ws.add_object())
        self.controls.show_status(f"Accepted object {obj_id} ({voxels} voxels): it stays as it is. "
                                  "Now prompt the next object.")

    def clear_object(self) -> None:
        """Take away the current object's prompts and the mask SAM2 gave it."""
        self._change_object(lambda ws, obj_id: ws.clear_object(obj_id), "Cleared the prompts of object {obj_id}.")

    def _change_object(self, change, message: str) -> None:
        ws, obj_id = self.workspace, self.current_object()
        if ws is None or obj_id is None or not self.clear.isEnabled():
            return
        before = ws.snapshot()
        change(ws, obj_id)
        ws.history.push(before)
        self._refresh_objects(select=obj_id)
        self.controls.show_status(message.format(obj_id=obj_id) + " Undo (U) brings it back.")

    def _on_negative(self, negative: bool) -> None:
        if self.workspace is not None:
            self.workspace.prompts.set_negative(negative)

    def _on_mask_prompt(self) -> None:
        ws, obj_id = self.workspace, self.current_object()
        if ws is None or obj_id is None:
            return
        z = ws.current_slice()
        marker = ws.add_mask_from_labels(obj_id, z)
        voxels = int(marker.mask_array(ws.volume.shape[1:]).sum())
        if voxels == 0:
            ws.remove_marker(marker.uid)
            ws.labels.selected_label = obj_id
            self.viewer.layers.selection.active = ws.labels
            ws.labels.mode = "paint"
            message = (f"Object {obj_id} has no voxels on slice {z}: paint it now with the labels brush "
                       f"(label {obj_id}), then press Slice as mask prompt again.")
            show_info(message)
            self.controls.show_status(message)
            return
        self.controls.show_status(f"Mask prompt of object {obj_id} on slice {z} ({voxels} voxels); "
                                  "press Segment object or Propagate.")

    def undo_step(self) -> None:
        """Take back the last point not sent yet, else the last result (prompts and labels)."""
        ws = self.workspace
        if ws is None or not self.undo.isEnabled():
            return
        pending = ws.pending()
        if pending:
            ws.remove_marker(pending[-1].uid)
            self.controls.show_status("Removed the last point or box (it had not been sent to SAM2 yet).")
            return
        self._restore(ws, ws.history.undo(ws.snapshot()), "Undone", "Nothing to undo.")

    def redo_step(self) -> None:
        """Put back what the last Undo took."""
        ws = self.workspace
        if ws is not None and self.redo.isEnabled():
            self._restore(ws, ws.history.redo(ws.snapshot()), "Redone", "Nothing to redo.")

    def _restore(self, ws: Workspace, snapshot, verb: str, nothing: str) -> None:
        if snapshot is None:
            show_info(nothing)
            return
        ws.restore(snapshot)
        self._refresh_objects(select=self.current_object())
        self.correct_next.setVisible(False)
        self.controls.show_status(f"{verb}: labels and prompts are as they were "
                                  "(SAM2 follows on the next Segment or Propagate).")

    # --- results ----------------------------------------------------------------------------
    def _on_correct_next(self) -> None:
        ws = self.workspace
        if ws is None or ws.correct_next is None:
            return
        obj_id, z = ws.correct_next
        self.viewer.dims.set_point(0, ws.image.data_to_world((z, 0, 0))[0])
        self.select_object(obj_id)
        self.place_points()

    def _on_save(self) -> None:
        ws = self.workspace
        if ws is None or ws.labels is None:
            show_error("Nothing to save: pick an image and segment it first.")
            return
        try:
            path = self.save_row.target(input_paths(self.viewer.layers))
            if path is None:
                self.controls.show_status("Not saved: the file exists and you chose not to replace it.")
                return
            meta = {"name": ws.labels.name, "metadata": ws.labels.metadata}
            written = write_labels(str(path), ws.labels.data, meta, dicom_format=self.save_row.dicom_format)
        except MedsegError as error:
            show_error(str(error))
            self.controls.show_status(str(error), warn=True)
            return
        ws.save_path = str(path)
        show_info(f"Saved {ws.labels.name} to {written[0]}")
        self.controls.show_status(f"Saved to {written[0]} on the geometry of {ws.image.name}.")
