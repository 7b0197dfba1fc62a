"""The SAM2 panel's Prompts box: which prompt layer the mouse draws into, the sign, mask prompts.

Points (Shift-D), boxes (Shift-B) and scribbles (Shift-S) each make their layer the active one
in its drawing mode, so the next click, drag or stroke on the canvas becomes a prompt of the
selected object. Points and scribbles work in any view (napari's Ctrl-T / Ctrl-E show coronal
and sagittal slices); a box is drawn on an acquired slice. "Negative" (Shift-T) makes new
points and scribbles background prompts.
"""

from __future__ import annotations

from collections.abc import Callable

import napari
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QCheckBox, QGridLayout, QGroupBox, QPushButton, QWidget

from napari_plugin._sam2_workspace import Workspace

ShowStatus = Callable[..., None]


class PromptTools(QGroupBox):
    """Buttons and keys that pick the prompt layer and mode for ``workspace()``'s current object."""

    def __init__(self, viewer: napari.Viewer, workspace: Callable[[], Workspace | None],
                 current_object: Callable[[], int | None], show_status: ShowStatus,
                 parent: QWidget | None = None) -> None:
        super().__init__("Prompts", parent)
        self.viewer = viewer
        self._workspace = workspace
        self._current_object = current_object
        self._show_status = show_status
        self.points = QPushButton("Points (Shift-D)")
        self.points.setToolTip("Click on the object (shift-click: background); in any view")
        self.box = QPushButton("Box (Shift-B)")
        self.box.setToolTip("Drag a box around the object on an acquired slice (one box per object per slice)")
        self.scribble = QPushButton("Scribble (Shift-S)")
        self.scribble.setToolTip("Paint strokes on the object (or, negative, on the background); in any view: "
                                 "a stroke becomes prompts on every acquired slice it crosses")
        self.negative = QCheckBox("Negative (Shift-T, or shift-click)")
        self.negative.setToolTip("Place background points and scribbles (red) instead of object ones (green)")
        self.mask_prompt = QPushButton("Slice as mask prompt")
        self.mask_prompt.setToolTip(
            "Use the object's voxels on the current slice, as shown and as painted with the labels brush, "
            "as a mask prompt: SAM2 keeps them exactly and propagates from them"
        )
        grid = QGridLayout(self)
        grid.addWidget(self.points, 0, 0)
        grid.addWidget(self.box, 0, 1)
        grid.addWidget(self.scribble, 1, 0)
        grid.addWidget(self.negative, 1, 1)
        grid.addWidget(self.mask_prompt, 2, 0, 1, 2)
        self.points.clicked.connect(self.place_points)
        self.box.clicked.connect(self.draw_box)
        self.scribble.clicked.connect(self.draw_scribble)
        self.negative.toggled.connect(self._on_negative)
        self.mask_prompt.clicked.connect(self.use_slice_as_mask)

    def place_points(self) -> None:
        """Make the prompts layer active in add mode: clicks on the image become points."""
        self._activate("points", "add")

    def draw_box(self) -> None:
        """Make the boxes layer active in rectangle mode: a drag on the image draws a box."""
        self._activate("boxes", "add_rectangle")

    def draw_scribble(self) -> None:
        """Make the scribbles layer active with the brush: strokes on the image become scribbles."""
        self._activate("scribbles", "paint")

    def _activate(self, which: str, mode: str) -> None:
        ws = self._workspace()
        if ws is not None:
            ws.restore_layers()
            layer = getattr(ws.prompts, which)  # made on first use
            self.viewer.layers.selection.active = layer
            layer.mode = mode

    def toggle_negative(self) -> None:
        self.negative.toggle()

    def _on_negative(self, negative: bool) -> None:
        ws = self._workspace()
        if ws is not None:
            ws.prompts.set_negative(negative)

    def use_slice_as_mask(self) -> None:
        """The current object's voxels on the shown slice become its mask prompt there."""
        ws, obj_id = self._workspace(), self._current_object()
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
            self._show_status(message)
            return
        self._show_status(f"Mask prompt of object {obj_id} on slice {z} ({voxels} voxels); "
                          "press Segment object or Propagate.")
