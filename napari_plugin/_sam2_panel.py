"""The SAM2 panel: prompt objects in any view, segment them, propagate, correct, save.

Workflow: pick the image, the intensity preset and a model; press Shift-D (or pick an
object) and click on the object (shift-click or Shift-T for red background points), drag a
box (Shift-B) or paint scribbles (Shift-S); "Segment object" (G) shows the objects on their
prompted slices; "Propagate" (Shift-G) fills the volume from every prompted slice, slice by
slice as they finish; prompts on another slice correct it (propagate again); Undo/Redo (U /
Shift-U) restore the whole previous result; "Accept" (Shift-C) keeps an object as it is and
moves on to the next organ; "Save" writes the labels on the image's geometry, to a path of
this image's own.

The panel puts its parts together: the Data box and per-image workspaces (``_sam2_images``),
the model picker, the object table (``_sam2_objects``), the prompt tools
(``_sam2_prompt_tools``), undo and redo (``_sam2_undo``), the model calls (``_sam2_runs``,
in the panel's ``TaskControls``: the viewer stays live, Cancel stops between slices) and the
Save row. One predictor per model choice is kept (``LoadedModels``), so a model loads once
per napari session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import napari
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QGridLayout, QGroupBox, QLabel, QPushButton, QVBoxLayout, QWidget

from medseg.errors import MedsegError

from napari_plugin._keys import help_text
from napari_plugin._layers import SOURCE_KEY
from napari_plugin._model_picker import LoadedModels, ModelPicker
from napari_plugin._sam2_images import ImageBox
from napari_plugin._sam2_objects import ObjectsBox
from napari_plugin._sam2_prompt_tools import PromptTools
from napari_plugin._sam2_runs import Sam2Runs
from napari_plugin._sam2_undo import UndoRedo
from napari_plugin._sam2_workspace import Workspace
from napari_plugin._save_row import SaveRow, input_paths, suggest_save_path
from napari_plugin._task_controls import TaskControls
from napari_plugin._tasks import Task


class Sam2Panel(QWidget):
    """Interactive SAM2 segmentation of the selected image; see the module docstring.

    ``protected()`` gives the files Save must never suggest or write besides the viewer's
    inputs (the Cohort tab sets it: the ground truth of an open cohort manifest).
    """

    def __init__(self, viewer: napari.Viewer, models: LoadedModels, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.protected: Callable[[], Iterable[Path]] = tuple
        self.controls = TaskControls("Propagate (Shift-G)")
        self.controls.run.setToolTip("Segment every object through the whole volume from all its prompted slices")
        self.controls.cancel.setText("Cancel (Shift-Esc)")
        show_status = self.controls.show_status
        self.data = ImageBox(viewer, show_status)
        self.model = ModelPicker()
        self.precompute = QPushButton("Precompute embeddings")
        self.precompute.setToolTip("Encode every slice now (cancellable), so later clicks and propagation are fast")
        self.objects = ObjectsBox(lambda: self.workspace, show_status)
        self.tools = PromptTools(viewer, lambda: self.workspace, self.objects.current, show_status)
        self.history = UndoRedo(lambda: self.workspace, show_status, self._on_restored)
        self.segment = QPushButton("Segment object (G)")
        self.segment.setToolTip("Send the new prompts to SAM2 and show the objects on their slices")
        self.correct_next = QPushButton("Go to the slice to correct next")
        self.correct_next.setEnabled(False)  # always shown: the layout never jumps (a relayout repaints the panel)
        self.save_row = SaveRow()
        self.help = QLabel(help_text())
        self.help.setStyleSheet("font-family: monospace; font-size: 9pt")
        self.controls.busy_widgets = [
            self.segment, self.history.undo, self.history.redo, self.save_row.save, self.objects.add,
            self.objects.remove, self.tools.mask_prompt, self.objects.accept, self.objects.clear, self.model,
            self.data.image, self.data.preset, self.precompute,
        ]
        self.controls.quiet_widgets = [self.correct_next]
        self.runs = Sam2Runs(self.controls, models, workspace=lambda: self.workspace, model=self.model.choice,
                             on_changed=self._show_correct_next, on_session=self.data.show_preset)
        self._layout()
        self._connect()
        self.data.show()

    @property
    def actions(self) -> dict[str, Callable[[], object]]:
        """What each key of ``_keys.SHORTCUTS`` does."""
        return {
            "place_points": self.tools.place_points, "draw_box": self.tools.draw_box,
            "scribble": self.tools.draw_scribble, "toggle_negative": self.tools.toggle_negative,
            "segment_object": self.segment.click, "propagate_volume": self.controls.run.click,
            "undo_step": self.history.undo_step, "redo_step": self.history.redo_step,
            "next_object": lambda: self.objects.step(1), "previous_object": lambda: self.objects.step(-1),
            "accept_object": self.objects.accept_object, "clear_object": self.objects.clear_object,
            "cancel_task": self.controls.cancel.click,
        }

    @property
    def workspace(self) -> Workspace | None:
        return self.data.workspace

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

    def current_object(self) -> int | None:
        return self.objects.current()

    def select_object(self, obj_id: int) -> None:
        """Make ``obj_id`` the object new prompts go to (as clicking its row does)."""
        self.objects.refresh(select=obj_id)

    # --- layout and signals -----------------------------------------------------------------
    def _layout(self) -> None:
        model = QGroupBox("Model")
        box = QVBoxLayout(model)
        box.addWidget(self.model)
        box.addWidget(self.precompute)
        actions = QGroupBox("Segment")
        grid = QGridLayout(actions)
        grid.addWidget(self.segment, 0, 0)
        grid.addWidget(self.history, 0, 1)
        grid.addWidget(self.controls, 1, 0, 1, 2)
        grid.addWidget(self.correct_next, 2, 0, 1, 2)
        save = QGroupBox("Save labels")
        QVBoxLayout(save).addWidget(self.save_row)
        keys = QGroupBox("Keys")
        QVBoxLayout(keys).addWidget(self.help)
        layout = QVBoxLayout(self)
        for group in (self.data, model, self.objects, self.tools, actions, save, keys):
            layout.addWidget(group)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.data.changed.connect(self._on_workspace_shown)
        self.objects.added.connect(self.tools.place_points)
        self.segment.clicked.connect(self.runs.segment)
        self.controls.run.clicked.connect(self.runs.propagate)
        self.precompute.clicked.connect(self.runs.precompute)
        self.correct_next.clicked.connect(self._on_correct_next)
        self.save_row.browse.clicked.connect(lambda: self.save_row.choose() and self._on_save())
        self.save_row.save.clicked.connect(self._on_save)
        self.save_row.path.editingFinished.connect(self._on_save_path_edited)

    def _on_workspace_shown(self) -> None:
        """Another image (or none): its objects and save path; nothing stale from the previous one."""
        self.correct_next.setEnabled(False)
        if not self.controls.busy:
            self.controls.progress.setRange(0, 1)
            self.controls.progress.setValue(0)
            self.controls.progress.setFormat("")
        ws = self.workspace
        self.save_row.path.setText("" if ws is None else ws.save_path or str(self.suggested_save_path(ws)))
        self.objects.refresh()

    def suggested_save_path(self, ws: Workspace) -> Path:
        """Beside the image's source; never an existing file, an input or a protected file (``_save_row``)."""
        avoid = input_paths(self.viewer.layers) | set(self.protected())
        return suggest_save_path(ws.image.metadata.get(SOURCE_KEY), ws.image.name, avoid=avoid)

    def _on_restored(self) -> None:
        self.objects.refresh(select=self.objects.current())
        self.correct_next.setEnabled(False)

    def _show_correct_next(self) -> None:
        ws = self.workspace
        self.correct_next.setEnabled(ws is not None and ws.correct_next is not None)

    def _on_correct_next(self) -> None:
        ws = self.workspace
        if ws is None or ws.correct_next is None:
            return
        obj_id, z = ws.correct_next
        self.viewer.dims.set_point(0, ws.image.data_to_world((z, 0, 0))[0])
        self.select_object(obj_id)
        self.tools.place_points()

    def _on_save_path_edited(self) -> None:
        if self.workspace is not None:
            self.workspace.save_path = self.save_row.path.text().strip() or None

    def _on_save(self) -> None:
        ws = self.workspace
        if ws is None or ws.labels is None:
            show_error("Nothing to save: pick an image and segment it first.")
            return
        try:
            written = self.save_row.write(ws.labels, input_paths(self.viewer.layers) | set(self.protected()))
        except MedsegError as error:
            show_error(str(error))
            self.controls.show_status(str(error), warn=True)
            return
        if written is None:
            self.controls.show_status("Not saved: the file exists and you chose not to replace it.")
            return
        ws.save_path = written
        show_info(f"Saved {ws.labels.name} to {written}")
        self.controls.show_status(f"Saved to {written} on the geometry of {ws.image.name}.")
