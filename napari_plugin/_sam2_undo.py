"""The SAM2 panel's Undo and Redo: the last prompt not sent yet, else the whole last result.

What is restored is the workspace's ``History`` (``_history``): labels, accepted objects,
objects and markers; SAM2's session follows on the next call (``Workspace.plan``).
"""

from __future__ import annotations

from collections.abc import Callable

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QWidget

from napari_plugin._history import Snapshot
from napari_plugin._sam2_workspace import Workspace

ShowStatus = Callable[..., None]


class UndoRedo(QWidget):
    """Undo (U) and Redo (Shift-U) of ``workspace()``; ``on_restored()`` runs after either changed something."""

    def __init__(self, workspace: Callable[[], Workspace | None], show_status: ShowStatus,
                 on_restored: Callable[[], None], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._workspace = workspace
        self._show_status = show_status
        self._on_restored = on_restored
        self.undo = QPushButton("Undo (U)")
        self.undo.setToolTip("Take back the last point, or the last result (labels and prompts)")
        self.redo = QPushButton("Redo (Shift-U)")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.undo)
        row.addWidget(self.redo)
        self.undo.clicked.connect(self.undo_step)
        self.redo.clicked.connect(self.redo_step)

    def undo_step(self) -> None:
        """Take back the last prompt not sent yet, else the last result (prompts and labels)."""
        ws = self._workspace()
        if ws is None or not self.undo.isEnabled():
            return
        pending = ws.pending()
        if pending:
            ws.remove_marker(pending[-1].uid)
            self._show_status("Removed the last prompt (it had not been sent to SAM2 yet).")
            return
        self._restore(ws, ws.history.undo(ws.snapshot()), "Undone", "Nothing to undo.")

    def redo_step(self) -> None:
        """Put back what the last Undo took."""
        ws = self._workspace()
        if ws is not None and self.redo.isEnabled():
            self._restore(ws, ws.history.redo(ws.snapshot()), "Redone", "Nothing to redo.")

    def _restore(self, ws: Workspace, snapshot: Snapshot | None, verb: str, nothing: str) -> None:
        if snapshot is None:
            show_info(nothing)
            return
        ws.restore(snapshot)
        self._on_restored()
        self._show_status(f"{verb}: labels and prompts are as they were "
                          "(SAM2 follows on the next Segment or Propagate).")
