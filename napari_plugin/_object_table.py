"""The SAM2 panel's objects: one row per label value, its colour, editable name, ✓ when accepted."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem, QWidget


class ObjectTable(QTableWidget):
    """Rows of (label value, name); the selected row is the object new prompts go to."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, 2, parent)
        self.setHorizontalHeaderLabels(["label", "name"])
        self.horizontalHeader().setStretchLastSection(True)
        self.verticalHeader().setVisible(False)
        self.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.setMinimumHeight(100)
        self.setMaximumHeight(130)
        self.setColumnWidth(0, 60)
        # a name is edited on double-click or F2, never by typing: letters typed here are the panel's keys
        triggers = QTableWidget.EditTrigger
        self.setEditTriggers(triggers.DoubleClicked | triggers.EditKeyPressed)

    def show_objects(self, objects: dict[int, str], *, accepted: set[int], colour_of,
                     select: int | None = None) -> None:
        """List ``objects`` (value -> name) and select ``select`` (else the first row)."""
        self.blockSignals(True)
        self.setRowCount(0)
        for obj_id, name in objects.items():
            row = self.rowCount()
            self.insertRow(row)
            value = QTableWidgetItem(f"{obj_id} ✓" if obj_id in accepted else str(obj_id))
            value.setData(Qt.ItemDataRole.UserRole, obj_id)
            value.setFlags(value.flags() & ~Qt.ItemFlag.ItemIsEditable)
            value.setBackground(QColor.fromRgbF(*colour_of(obj_id)))
            self.setItem(row, 0, value)
            self.setItem(row, 1, QTableWidgetItem(name))
        self.blockSignals(False)
        if objects:
            ids = list(objects)
            self.selectRow(ids.index(select) if select in ids else 0)

    def current(self) -> int | None:
        """The selected object's label value."""
        rows = self.selectionModel().selectedRows()
        return self.object_at(rows[0].row()) if rows else None

    def object_at(self, row: int) -> int:
        return int(self.item(row, 0).data(Qt.ItemDataRole.UserRole))
