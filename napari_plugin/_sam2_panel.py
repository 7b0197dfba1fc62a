"""The SAM2 panel: prompt objects on any slice, segment them there, propagate, correct, save.

Workflow: pick the image and a model; place green points on the object (shift-click or the
"negative" toggle for red background points) and/or draw a box; "Segment object" shows the
objects on their prompted slices; "Propagate" fills the volume from every prompted slice;
points on another slice correct it (press Propagate again); "Undo" takes back the last
point or box; "Save" writes the labels on the image's geometry.

All model work runs in a napari thread worker (``_tasks.Task``): the viewer stays live,
progress shows in the panel and in napari's activity dock, Cancel stops between slices.
One predictor per model choice is kept, so a model loads once per napari session, and the
session keeps the image features of every prompted slice, so more clicks there are fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import napari
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medseg.errors import Cancelled, MedsegError
from medseg.sam2.qc import qc_summary

from napari_plugin._layer_picker import LayerPicker, same_layer
from napari_plugin._layers import volume_of_image
from napari_plugin._model_picker import LoadedModels, ModelChoice, ModelPicker
from napari_plugin._sam2_workspace import Plan, Workspace, check_markers, send
from napari_plugin._tasks import Progress, StopFlag, Task
from napari_plugin._writer import write_labels


class Sam2Panel(QWidget):
    """Interactive SAM2 segmentation of the selected image; see the module docstring."""

    def __init__(self, viewer: napari.Viewer, models: LoadedModels, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.task: Task | None = None
        self._models = models
        self._workspaces: dict[str, Workspace] = {}  # by image layer unique_id
        self._correct_next: tuple[int, int] | None = None
        self._shown_image: Any | None = None

        self.image = LayerPicker(viewer, napari.layers.Image)
        self.output = LayerPicker(viewer, napari.layers.Labels, none_text="(new layer)")
        self.model = ModelPicker()
        self.objects = QTableWidget(0, 2)
        self.objects.setHorizontalHeaderLabels(["label", "name"])
        self.objects.horizontalHeader().setStretchLastSection(True)
        self.objects.verticalHeader().setVisible(False)
        self.objects.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.objects.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.objects.setMinimumHeight(130)
        self.objects.setMaximumHeight(160)
        self.objects.setColumnWidth(0, 60)
        self.add_object = QPushButton("+ object")
        self.remove_object = QPushButton("− object")
        self.negative = QCheckBox("Negative points (or shift-click)")
        self.negative.setToolTip("Place background points (red) instead of object points (green)")
        self.mask_prompt = QPushButton("Slice as mask prompt")
        self.mask_prompt.setToolTip(
            "Use the object's voxels on the current slice, as shown and as painted with the labels brush, "
            "as a mask prompt: SAM2 keeps them exactly and propagates from them"
        )
        self.segment = QPushButton("Segment object")
        self.segment.setToolTip("Send the new points and boxes to SAM2 and show the objects on their slices")
        self.propagate = QPushButton("Propagate")
        self.propagate.setToolTip("Segment every object through the whole volume from all its prompted slices")
        self.undo = QPushButton("Undo")
        self.undo.setToolTip("Take back the last point or box")
        self.cancel = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.correct_next = QPushButton("Go to the slice to correct next")
        self.correct_next.setVisible(False)
        self.save_path = QLineEdit()
        self.save_path.setPlaceholderText("labels.nii.gz, .nrrd, .mha or .dcm (DICOM SEG)")
        self.browse = QPushButton("…")
        self.browse.setMaximumWidth(30)
        self.save = QPushButton("Save")
        self._layout()
        self._connect()
        self._show_image()

    # --- layout and signals -----------------------------------------------------------------
    def _layout(self) -> None:
        data = QGroupBox("Data")
        form = QFormLayout(data)
        form.addRow("Image", self.image)
        form.addRow("Labels", self.output)
        model = QGroupBox("Model")
        QVBoxLayout(model).addWidget(self.model)
        objects = QGroupBox("Objects and prompts")
        grid = QGridLayout(objects)
        grid.addWidget(self.objects, 0, 0, 1, 2)
        grid.addWidget(self.add_object, 1, 0)
        grid.addWidget(self.remove_object, 1, 1)
        grid.addWidget(self.negative, 2, 0)
        grid.addWidget(self.mask_prompt, 2, 1)
        actions = QGroupBox("Segment")
        grid = QGridLayout(actions)
        grid.addWidget(self.segment, 0, 0)
        grid.addWidget(self.propagate, 0, 1)
        grid.addWidget(self.undo, 1, 0)
        grid.addWidget(self.cancel, 1, 1)
        grid.addWidget(self.progress, 2, 0, 1, 2)
        grid.addWidget(self.status, 3, 0, 1, 2)
        grid.addWidget(self.correct_next, 4, 0, 1, 2)
        save = QGroupBox("Save labels")
        row = QHBoxLayout(save)
        row.addWidget(self.save_path)
        row.addWidget(self.browse)
        row.addWidget(self.save)
        layout = QVBoxLayout(self)
        for box in (data, model, objects, actions, save):
            layout.addWidget(box)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.image.currentIndexChanged.connect(self._on_image_changed)
        self.image.activated.connect(self._show_image)
        self.output.currentIndexChanged.connect(self._on_output_changed)
        self.objects.itemSelectionChanged.connect(self._on_object_selected)
        self.objects.itemChanged.connect(self._on_object_renamed)
        self.add_object.clicked.connect(self._on_add_object)
        self.remove_object.clicked.connect(self._on_remove_object)
        self.negative.toggled.connect(self._on_negative)
        self.mask_prompt.clicked.connect(self._on_mask_prompt)
        self.segment.clicked.connect(self._on_segment)
        self.propagate.clicked.connect(self._on_propagate)
        self.undo.clicked.connect(self._on_undo)
        self.cancel.clicked.connect(self._on_cancel)
        self.correct_next.clicked.connect(self._on_correct_next)
        self.browse.clicked.connect(self._on_browse)
        self.save.clicked.connect(self._on_save)
        self._set_busy(False)

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
        """Show the picked image's objects; with ``start``, create its layers on first use."""
        alive = {layer.unique_id for layer in self.viewer.layers}
        self._workspaces = {k: ws for k, ws in self._workspaces.items() if k in alive}
        layer = self._shown_image = self.image.layer()
        if layer is None:
            self._show_status("Open a 3D CT or MRI volume (File ▸ Open, or File ▸ Open Sample ▸ medseg).")
        elif layer.unique_id not in self._workspaces and start:
            try:
                ws = self._workspaces[layer.unique_id] = Workspace(self.viewer, layer, volume_of_image(layer))
            except MedsegError as error:
                show_error(str(error))
                self._show_status(str(error), error=True)
            else:
                self.viewer.layers.selection.active = ws.prompts.points
        ws = self.workspace
        if ws is not None:
            self.output.set_layer(ws.labels)
            self._show_status(
                f"{layer.name}: {ws.volume.modality} volume {ws.volume.shape} (z, y, x). Click on the object "
                "(points layer in add mode) or draw a box, then press Segment object or Propagate."
            )
        elif layer is not None and start is False:
            self._show_status(f"Pick {layer.name!r} in the Image list to segment it.")
        self._refresh_objects()

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

    # --- objects ----------------------------------------------------------------------------
    def _refresh_objects(self, select: int | None = None) -> None:
        ws = self.workspace
        self.objects.blockSignals(True)
        self.objects.setRowCount(0)
        for obj_id, name in (ws.objects.items() if ws else []):
            row = self.objects.rowCount()
            self.objects.insertRow(row)
            value = QTableWidgetItem(str(obj_id))
            value.setFlags(value.flags() & ~Qt.ItemFlag.ItemIsEditable)
            value.setBackground(QColor.fromRgbF(*ws.colour_of(obj_id)))
            self.objects.setItem(row, 0, value)
            self.objects.setItem(row, 1, QTableWidgetItem(name))
        self.objects.blockSignals(False)
        if ws:
            ids = list(ws.objects)
            self.objects.selectRow(ids.index(select) if select in ids else 0)

    def current_object(self) -> int | None:
        rows = self.objects.selectionModel().selectedRows()
        if not rows or self.workspace is None:
            return None
        return int(self.objects.item(rows[0].row(), 0).text())

    def select_object(self, obj_id: int) -> None:
        """Make ``obj_id`` the object new markers prompt (as clicking its row does)."""
        self._refresh_objects(select=obj_id)

    def _on_object_selected(self) -> None:
        ws, obj_id = self.workspace, self.current_object()
        if ws is not None and obj_id is not None:
            ws.prompts.set_object(obj_id)
            ws.labels.selected_label = obj_id

    def _on_object_renamed(self, item: QTableWidgetItem) -> None:
        ws = self.workspace
        if ws is not None and item.column() == 1:
            ws.rename(int(self.objects.item(item.row(), 0).text()), item.text().strip() or f"object {item.row() + 1}")

    def _on_add_object(self) -> None:
        ws = self.workspace
        if ws is not None:
            self._refresh_objects(select=ws.add_object())

    def _on_remove_object(self) -> None:
        ws, obj_id = self.workspace, self.current_object()
        if ws is not None and obj_id is not None:
            ws.remove_object(obj_id)
            self._refresh_objects()

    def _on_negative(self, negative: bool) -> None:
        if self.workspace is not None:
            self.workspace.prompts.set_negative(negative)

    def current_slice(self, ws: Workspace) -> int:
        """The slice index of ``ws``'s image that the viewer shows."""
        z = ws.image.world_to_data(self.viewer.dims.point)[0]
        return int(min(max(round(z), 0), ws.volume.shape[0] - 1))

    def _on_mask_prompt(self) -> None:
        ws, obj_id = self.workspace, self.current_object()
        if ws is None or obj_id is None:
            return
        z = self.current_slice(ws)
        marker = ws.add_mask_from_labels(obj_id, z)
        voxels = int(marker.mask_array(ws.volume.shape[1:]).sum())
        if voxels == 0:
            ws.remove_marker(marker.uid)
            show_error(
                f"Object {obj_id} has no voxels on slice {z}: paint it with the labels brush "
                f"(label {obj_id}) or segment it there first."
            )
            return
        self._show_status(f"Mask prompt of object {obj_id} on slice {z} ({voxels} voxels); press Segment object or Propagate.")

    # --- engine calls -----------------------------------------------------------------------
    def _prepare(self) -> tuple[Workspace, ModelChoice, Plan] | None:
        """The workspace, model and markers for the next call; a message instead when unusable."""
        ws = self.workspace
        if ws is None:
            show_error("Pick a 3D image layer first (File ▸ Open a DICOM folder or NIfTI file).")
            return None
        ws.restore_layers()
        self.output.set_layer(ws.labels)
        try:
            choice = self.model.choice()
            plan = ws.plan(choice)
            check_markers(plan.markers, ws.volume.shape)
        except MedsegError as error:
            show_error(str(error))
            return None
        return ws, choice, plan

    def _sender(self, ws: Workspace, choice: ModelChoice, plan: Plan):
        """A worker-side function giving ``plan``'s markers to the (new) session."""
        session = None if plan.rebuild else ws.session
        names = dict(ws.objects)
        volume, models = ws.volume, self._models

        def run(progress: Progress, should_stop: StopFlag):
            nonlocal session
            if session is None:
                session = models.get(choice).session(volume)
            slices = {}
            for done, marker in enumerate(plan.markers, start=1):
                slices[marker.z] = send(session, marker, names.get(marker.obj_id, ""))
                progress(done, len(plan.markers))
            return session, slices

        return run

    def _on_segment(self) -> None:
        prepared = self._prepare()
        if prepared is None:
            return
        ws, choice, plan = prepared
        if not plan.markers:
            show_info("No new points or boxes: click on the object first (shift-click for background).")
            return
        send_markers = self._sender(ws, choice, plan)

        def run(progress: Progress, should_stop: StopFlag):
            session, slices = send_markers(progress, should_stop)
            return session, slices, session.result()

        def done(outcome) -> None:
            session, slices, result = outcome
            ws.commit(choice, session, plan)
            ws.paint_slices(slices, result)
            shown = ", ".join(str(z) for z in sorted(slices))
            note = " UNTRAINED MODEL: the masks are meaningless." if result.untrained else ""
            self._show_status(f"Segmented on slice {shown} with {result.provenance['model']}.{note}", result=result)

        self._start(run, "Segment object", done, ws, choice)

    def _on_propagate(self) -> None:
        prepared = self._prepare()
        if prepared is None:
            return
        ws, choice, plan = prepared
        if not plan.markers and not ws.sent:
            show_info("Nothing to propagate: place points or a box on the object first.")
            return
        send_markers = self._sender(ws, choice, plan)

        def run(progress: Progress, should_stop: StopFlag):
            started = time.perf_counter()
            session, _ = send_markers(lambda *_: None, should_stop)
            try:
                result = session.propagate(progress=progress, should_stop=should_stop)
            except Cancelled:  # the session's labels are as they were
                result = None
            return session, result, time.perf_counter() - started

        def done(outcome) -> None:
            session, result, seconds = outcome
            ws.commit(choice, session, plan)
            if result is None:
                show_info("Propagation cancelled: the labels are as they were.")
                self._show_status("Propagation cancelled: the labels are as they were.")
                return
            ws.show_result(result)
            summary = qc_summary(ws.result())
            self._correct_next = summary.correct_next()
            self._show_status(
                f"Propagated {len(result.label_names)} object(s) through {ws.volume.shape[0]} slices in "
                f"{seconds:.1f} s with {result.provenance['model']}.\n{summary.to_text()}",
                result=result,
            )
            self.correct_next.setVisible(self._correct_next is not None)

        self._start(run, "Propagate", done, ws, choice)

    def _on_undo(self) -> None:
        ws = self.workspace
        if ws is None:
            return
        pending = ws.pending()
        if pending:
            ws.remove_marker(pending[-1].uid)
            self._show_status("Removed the last point or box (it had not been sent to SAM2 yet).")
            return
        if not ws.sent or ws.session is None:
            show_info("Nothing to undo.")
            return
        last = ws.sent.pop()
        ws.remove_marker(last.uid)
        session = ws.session

        def run(progress: Progress, should_stop: StopFlag):
            z = session.undo()
            return z, session.result()

        def done(outcome) -> None:
            z, result = outcome
            if z is not None:
                ws.paint_slices({z: result.array[z]}, result)
            self._show_status(f"Took back the last prompt on slice {z}; press Propagate to carry it through.")

        self._start(run, "Undo", done, ws, ws.session_model)

    def _on_cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _start(self, run, label: str, on_done, ws: Workspace, choice: ModelChoice) -> None:
        self.task = Task(
            run, label=label, on_done=on_done, bar=self.progress,
            on_error=ws.forget_session, on_finish=lambda: self._set_busy(False),
        )
        self._set_busy(True)
        self.correct_next.setVisible(False)
        if choice not in self._models:
            self._show_status(f"{label}: loading {choice.model} (once per napari session)…")
        self.task.start()

    def _set_busy(self, busy: bool) -> None:
        for button in (self.segment, self.propagate, self.undo, self.save, self.add_object, self.remove_object,
                       self.mask_prompt):
            button.setEnabled(not busy)
        self.model.setEnabled(not busy)
        self.image.setEnabled(not busy)
        self.cancel.setEnabled(busy)

    # --- results ----------------------------------------------------------------------------
    def _show_status(self, text: str, *, error: bool = False, result=None) -> None:
        untrained = result is not None and result.untrained
        self.status.setText(text)
        self.status.setStyleSheet("color: #ff6060" if error or untrained else "")

    def _on_correct_next(self) -> None:
        ws = self.workspace
        if ws is None or self._correct_next is None:
            return
        obj_id, z = self._correct_next
        self.viewer.dims.set_point(0, ws.image.data_to_world((z, 0, 0))[0])
        self.select_object(obj_id)

    def _on_browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save labels", self.save_path.text(), "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha);;DICOM SEG (*.dcm)"
        )
        if path:
            self.save_path.setText(path)
            self._on_save()

    def _on_save(self) -> None:
        ws = self.workspace
        path = self.save_path.text().strip()
        if ws is None:
            show_error("Nothing to save: pick an image and segment it first.")
            return
        if not path:
            self._on_browse()
            return
        try:
            meta = {"name": ws.labels.name, "metadata": ws.labels.metadata}
            written = write_labels(str(Path(path).expanduser()), ws.labels.data, meta)
        except MedsegError as error:
            show_error(str(error))
            return
        show_info(f"Saved {ws.labels.name} to {written[0]}")
        self._show_status(f"Saved to {written[0]} on the geometry of {ws.image.name}.")
