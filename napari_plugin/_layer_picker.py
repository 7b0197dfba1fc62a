"""A combo box of the viewer's layers of one kind, kept in step with the layer list.

Layers are compared by ``unique_id``, never by identity: napari hands plugin widgets a proxy
of the viewer, and every layer read through it is a new proxy object.
"""

from __future__ import annotations

from typing import Any

import napari
from qtpy.QtWidgets import QComboBox, QHeaderView, QTableWidget, QWidget


def same_layer(a: Any | None, b: Any | None) -> bool:
    """True when ``a`` and ``b`` are the same layer (or both None), proxies or not."""
    if a is None or b is None:
        return a is b
    return a.unique_id == b.unique_id


class LayerPicker(QComboBox):
    """Pick a layer of ``kind`` (``napari.layers.Image``, ``Labels``...) by name.

    ``none_text``, when given, is a first entry that stands for "no layer" (e.g. "(new layer)").
    The selection follows a renamed layer and falls back to the first entry when its layer is
    removed.
    """

    def __init__(
        self, viewer: napari.Viewer, kind: type, *, none_text: str | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._kind = kind
        self._none_text = none_text
        self._choices: list[Any] = []
        events = viewer.layers.events
        self._events = (events.inserted, events.removed, events.moved, events.changed, events.renamed)
        for event in self._events:
            event.connect(self.refresh)
        self.refresh()

    def release(self) -> None:
        """Stop following the layer list (before this picker is deleted)."""
        for event in self._events:
            event.disconnect(self.refresh)

    def layers(self) -> list[Any]:
        return [layer for layer in self._viewer.layers if isinstance(layer, self._kind)]

    def layer(self) -> Any | None:
        """The selected layer, or None (the "no layer" entry, or no layer of this kind)."""
        index = self.currentIndex()
        return self._choices[index] if 0 <= index < len(self._choices) else None

    def set_layer(self, layer: Any | None) -> None:
        """Select ``layer`` (None: the "no layer" entry); a layer not listed is ignored."""
        for index, choice in enumerate(self._choices):
            if same_layer(choice, layer):
                self.setCurrentIndex(index)

    def refresh(self, *_: Any) -> None:
        current = self.layer()
        self._choices = ([None] if self._none_text is not None else []) + self.layers()
        self.blockSignals(True)
        self.clear()
        self.addItems([self._none_text if c is None else c.name for c in self._choices])
        kept = [i for i, c in enumerate(self._choices) if c is not None and same_layer(c, current)]
        self.setCurrentIndex(kept[0] if kept else 0)
        self.blockSignals(False)
        if not same_layer(self.layer(), current):
            self.currentIndexChanged.emit(self.currentIndex())


def fit_columns(table: QTableWidget, *, stretch: int) -> None:
    """Columns sized to their contents, column ``stretch`` taking the rest: nothing clipped at the dock's width."""
    header = table.horizontalHeader()
    header.setStretchLastSection(False)
    for column in range(table.columnCount()):
        mode = QHeaderView.ResizeMode.Stretch if column == stretch else QHeaderView.ResizeMode.ResizeToContents
        header.setSectionResizeMode(column, mode)
