"""Keyboard shortcuts of the SAM2 panel, bound through napari's keybinding system.

The keys are chosen not to clash with napari's own layer keys (Points: A, S, Z, P, 1-5;
Labels: P, E, F, L, M, B, X, [ ]; Shapes: its mode letters), so they work whichever prompt or
labels layer is active: a layer's own binding wins in napari, the viewer's applies otherwise.
Micro-sam's habits where they do not clash: a key to segment, Shift for the volume, a key
to commit (accept) an object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shortcut:
    key: str
    action: str  # the name of the panel method it calls
    help: str


SHORTCUTS: tuple[Shortcut, ...] = (
    Shortcut("A", "place_points", "place points (the prompts layer, add mode)"),
    Shortcut("Shift-B", "draw_box", "draw a box (the boxes layer, rectangle mode)"),
    Shortcut("T", "toggle_negative", "toggle positive / negative points (or shift-click)"),
    Shortcut("G", "segment_object", "segment the object on its prompted slices"),
    Shortcut("Shift-G", "propagate_volume", "propagate through the volume"),
    Shortcut("U", "undo_step", "undo (prompts and the whole result)"),
    Shortcut("Shift-U", "redo_step", "redo"),
    Shortcut("N", "next_object", "next object"),
    Shortcut("Shift-N", "previous_object", "previous object"),
    Shortcut("Shift-C", "accept_object", "accept the object (keep it; SAM2 moves on)"),
    Shortcut("Shift-X", "clear_object", "clear the object's prompts and mask"),
    Shortcut("Escape", "cancel_task", "cancel the running task"),
)


def help_text() -> str:
    """One line per shortcut, for the panel's help and the README."""
    return "\n".join(f"{s.key:<8} {s.help}" for s in SHORTCUTS)


def bind_shortcuts(viewer: Any, panel: Any) -> None:
    """Bind every shortcut on ``viewer`` to the panel method it names."""
    for shortcut in SHORTCUTS:
        viewer.bind_key(shortcut.key, _caller(getattr(panel, shortcut.action)), overwrite=True)


def _caller(method: Callable[[], None]) -> Callable[[Any], None]:
    def on_key(_viewer: Any) -> None:
        method()

    on_key.__doc__ = method.__doc__
    return on_key
