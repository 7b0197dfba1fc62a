"""Keyboard shortcuts of the SAM2 panel, on the viewer and on the dock widget.

No key here is bound by any napari 0.9 layer (Image, Labels, Points, Shapes, Surface, Vectors,
Tracks) or by the viewer: napari gives a key to the active layer first, so a key a layer also
binds would do the layer's action instead (A selects all points in the slice, T switches Shapes
to path mode, Escape finishes a shape). A test reads what napari binds and presses every key
below with each layer type active. Free are G, H, J, K, N, Q, U, W and Shift with any letter
but A, L, P and V; medseg uses those.

The same keys work while the keyboard focus is in the medseg dock (after clicking a button or
an object's row): ``bind_shortcuts`` also installs them as Qt shortcuts of the dock widget.
Text fields keep the letters typed into them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QShortcut, QWidget


@dataclass(frozen=True)
class Shortcut:
    key: str  # napari's spelling: "Shift-G"
    action: str  # the name of the action it calls
    help: str


SHORTCUTS: tuple[Shortcut, ...] = (
    Shortcut("Shift-D", "place_points", "place points (dots): the prompts layer, add mode"),
    Shortcut("Shift-B", "draw_box", "draw a box: the boxes layer, rectangle mode"),
    Shortcut("Shift-S", "scribble", "scribble: the scribbles layer, brush (any view)"),
    Shortcut("Shift-T", "toggle_negative", "toggle positive / negative prompts (or shift-click)"),
    Shortcut("G", "segment_object", "segment the object on its prompted slices"),
    Shortcut("Shift-G", "propagate_volume", "propagate through the volume"),
    Shortcut("U", "undo_step", "undo (prompts and the whole result)"),
    Shortcut("Shift-U", "redo_step", "redo"),
    Shortcut("N", "next_object", "next object"),
    Shortcut("Shift-N", "previous_object", "previous object"),
    Shortcut("Shift-C", "accept_object", "accept the object (keep it; SAM2 moves on)"),
    Shortcut("Shift-X", "clear_object", "clear the object's prompts and mask"),
    Shortcut("Shift-Escape", "cancel_task", "cancel the running task"),
    Shortcut("J", "next_case", "cohort: next case"),
    Shortcut("K", "previous_case", "cohort: previous case"),
    Shortcut("Shift-J", "accept_case", "cohort: accept the case, save it, go to the next"),
)


def help_text() -> str:
    """One line per shortcut, for the panel's help and the README."""
    return "\n".join(f"{s.key:<13}{s.help}" for s in SHORTCUTS)


def bind_shortcuts(viewer: Any, dock: QWidget, actions: Mapping[str, Callable[[], object]]) -> None:
    """Bind every shortcut on ``viewer`` (canvas focus) and on ``dock`` (focus in the dock)."""
    for shortcut in SHORTCUTS:
        action = actions[shortcut.action]
        viewer.bind_key(shortcut.key, _caller(action), overwrite=True)
        qt = QShortcut(QKeySequence(shortcut.key.replace("-", "+")), dock)
        qt.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        qt.activated.connect(action)


def _caller(method: Callable[[], object]) -> Callable[[Any], None]:
    def on_key(_viewer: Any) -> None:
        method()

    on_key.__doc__ = method.__doc__
    return on_key
