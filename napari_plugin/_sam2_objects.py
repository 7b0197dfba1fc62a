"""The SAM2 panel's Objects box: the object table and what changes objects (add, remove, accept, clear).

Every change that takes voxels or prompts away is pushed on the workspace's history first, so
Undo (U) brings it back.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QGridLayout, QGroupBox, QPushButton, QTableWidgetItem, QWidget

from napari_plugin._object_table import ObjectTable
from napari_plugin._sam2_workspace import Workspace

ShowStatus = Callable[..., None]


class ObjectsBox(QGroupBox):
    """The objects of ``workspace()``; the selected one is what new prompts go to."""

    added = Signal()  # a new object was added (the panel makes clicks go to it)
    accepted = Signal(int)  # an object was accepted (its label value)

    def __init__(self, workspace: Callable[[], Workspace | None], show_status: ShowStatus,
                 parent: QWidget | None = None) -> None:
        super().__init__("Objects", parent)
        self._workspace = workspace
        self._show_status = show_status
        self.table = ObjectTable()
        self.add = QPushButton("+ object")
        self.remove = QPushButton("− object")
        self.accept = QPushButton("Accept (Shift-C)")
        self.accept.setToolTip("Keep this object as it is now; SAM2 forgets its prompts and moves on to a new object")
        self.clear = QPushButton("Clear prompts (Shift-X)")
        self.clear.setToolTip("Remove this object's points, boxes, scribbles and mask (accepted voxels stay)")
        grid = QGridLayout(self)
        grid.addWidget(self.table, 0, 0, 1, 2)
        grid.addWidget(self.add, 1, 0)
        grid.addWidget(self.remove, 1, 1)
        grid.addWidget(self.accept, 2, 0)
        grid.addWidget(self.clear, 2, 1)
        self.table.itemSelectionChanged.connect(self._on_selected)
        self.table.itemChanged.connect(self._on_renamed)
        self.add.clicked.connect(self._on_add)
        self.remove.clicked.connect(lambda: self._change(Workspace.remove_object, "Removed object {obj_id}."))
        self.accept.clicked.connect(self.accept_object)
        self.clear.clicked.connect(self.clear_object)

    def refresh(self, select: int | None = None) -> None:
        """List the workspace's objects and select ``select`` (else the first)."""
        ws = self._workspace()
        if ws is None:
            self.table.setRowCount(0)
            return
        self.table.show_objects(ws.objects, accepted=ws.accepted, colour_of=ws.colour_of, select=select)

    def current(self) -> int | None:
        return None if self._workspace() is None else self.table.current()

    def step(self, by: int) -> None:
        """Select the next (``by=1``) or previous (``by=-1``) object."""
        ws, current = self._workspace(), self.current()
        if ws is not None and current is not None:
            ids = list(ws.objects)
            self.refresh(select=ids[(ids.index(current) + by) % len(ids)])

    def _on_selected(self) -> None:
        ws, obj_id = self._workspace(), self.current()
        if ws is not None and obj_id is not None:
            ws.prompts.set_object(obj_id)
            if ws.labels is not None:
                ws.labels.selected_label = obj_id

    def _on_renamed(self, item: QTableWidgetItem) -> None:
        ws = self._workspace()
        if ws is not None and item.column() == 1:
            obj_id = self.table.object_at(item.row())
            ws.rename(obj_id, item.text().strip() or f"object {obj_id}")

    def _on_add(self) -> None:
        ws = self._workspace()
        if ws is not None:
            self.refresh(select=ws.add_object())
            self.added.emit()

    def accept_object(self) -> None:
        """Keep the current object's voxels as they are; SAM2 moves on to a new object."""
        ws, obj_id = self._workspace(), self.current()
        if ws is None or obj_id is None or not self.accept.isEnabled():
            return
        before = ws.snapshot()
        voxels = ws.accept(obj_id)
        ws.history.push(before)
        self.refresh(select=ws.add_object())
        self._show_status(f"Accepted object {obj_id} ({voxels} voxels): it stays as it is. Now prompt the next object.")
        self.accepted.emit(obj_id)

    def clear_object(self) -> None:
        """Take away the current object's prompts and the mask SAM2 gave it."""
        self._change(Workspace.clear_object, "Cleared the prompts of object {obj_id}.")

    def _change(self, change: Callable[[Workspace, int], None], message: str) -> None:
        ws, obj_id = self._workspace(), self.current()
        if ws is None or obj_id is None or not self.clear.isEnabled():
            return
        before = ws.snapshot()
        change(ws, obj_id)
        ws.history.push(before)
        self.refresh(select=obj_id)
        self._show_status(message.format(obj_id=obj_id) + " Undo (U) brings it back.")
