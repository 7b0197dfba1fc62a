"""The Cohort tab: annotate a cohort case by case with the SAM2 panel (``medseg.annotation``).

Open a manifest or a folder; the table lists its cases with their status (untouched, in
progress, accepted) and the annotation opens where the user stopped. Opening a case closes
the previous case's layers, shows the case's image in the SAM2 panel with the case's output
file as its save path, and brings back what was saved for it before (as accepted objects).
Every object accepted in the SAM2 panel (Shift-C) is saved at once to the case's output;
"Accept case" (Shift-J) accepts the current object, saves, marks the case accepted and opens
the next case not accepted. Next / Previous: J / K.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medseg.errors import MedsegError

from napari_plugin._layer_picker import fit_columns
from napari_plugin._layers import image_layer_data
from napari_plugin._sam2_panel import Sam2Panel


class CohortPanel(QWidget):
    """Case list, Previous / Next / Accept case, driving ``sam2``; see the module docstring."""

    def __init__(self, viewer: napari.Viewer, sam2: Sam2Panel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.sam2 = sam2
        self.annotation = None  # medseg.annotation.Annotation, once a cohort is open
        self.index: int | None = None
        self._case_ws: Any | None = None  # the open case's SAM2 workspace (its image, labels, prompts)
        self.source = QLineEdit()
        self.source.setPlaceholderText("cohort manifest (.json) or a folder of images")
        self.output = QLineEdit()
        self.output.setPlaceholderText("default: beside the manifest / inside the folder")
        manifest, folder, self.open_button = QPushButton("Manifest…"), QPushButton("Folder…"), QPushButton("Open")
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["case", "status"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        fit_columns(self.table, stretch=0)
        self.previous, self.next = QPushButton("◀ Previous (K)"), QPushButton("Next (J) ▶")
        self.accept = QPushButton("Accept case (Shift-J)")
        self.accept.setToolTip("Accept the current object, save the case and go to the next case not accepted")
        self.status = QLabel("Open a cohort manifest or a folder of images to annotate case by case.")
        self.status.setWordWrap(True)

        form = QFormLayout()
        row = QHBoxLayout()
        for widget in (self.source, manifest, folder):
            row.addWidget(widget)
        form.addRow("Cohort", row)
        form.addRow("Output", self.output)
        steps = QHBoxLayout()
        for widget in (self.previous, self.next, self.accept):
            steps.addWidget(widget)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.open_button)
        layout.addWidget(self.table)
        layout.addLayout(steps)
        layout.addWidget(self.status)
        manifest.clicked.connect(lambda: self._choose(folder=False))
        folder.clicked.connect(lambda: self._choose(folder=True))
        self.open_button.clicked.connect(self.open_cohort)
        self.previous.clicked.connect(lambda: self.step(-1))
        self.next.clicked.connect(lambda: self.step(1))
        self.accept.clicked.connect(self.accept_case)
        self.table.cellDoubleClicked.connect(lambda row, _: self.open_case(row))
        sam2.objects.accepted.connect(self._on_object_accepted)

    @property
    def actions(self) -> dict[str, Any]:
        """What the cohort keys of ``_keys.SHORTCUTS`` do."""
        return {"next_case": lambda: self.step(1), "previous_case": lambda: self.step(-1),
                "accept_case": self.accept_case}

    def protected(self) -> set[Path]:
        """The open cohort's ground-truth files: Save never suggests or writes them."""
        return set() if self.annotation is None else self.annotation.protected

    def _choose(self, *, folder: bool) -> None:
        if folder:
            path = QFileDialog.getExistingDirectory(self, "Folder of images to annotate")
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Cohort manifest", "", "Manifest (*.json)")
        if path:
            self.source.setText(path)
            self.open_cohort()

    def open_cohort(self) -> None:
        """Read the cohort and open the case where the work stopped."""
        from medseg.annotation import Annotation

        try:
            self.annotation = Annotation.open(self.source.text().strip(), self.output.text().strip() or None)
        except MedsegError as error:
            self._say(str(error), error=True)
            return
        self.output.setText(str(self.annotation.out_dir))
        self._close(self._case_ws)
        self._case_ws, self.index = None, None
        self._list()
        self.open_case(self.annotation.resume_index())

    def _list(self) -> None:
        cases = self.annotation.cases
        self.table.setRowCount(len(cases))
        for row, case in enumerate(cases):
            self.table.setItem(row, 0, QTableWidgetItem(case.id))
            self.table.setItem(row, 1, QTableWidgetItem(self.annotation.status(case.id)))

    def step(self, by: int) -> None:
        """Open the next (``by=1``) or previous (``by=-1``) case."""
        if self.annotation is not None and self.index is not None:
            self.open_case(min(max(self.index + by, 0), len(self.annotation.cases) - 1))

    def open_case(self, index: int) -> None:
        """Close the current case's layers and show case ``index`` in the SAM2 panel."""
        from medseg.io import load_labels, load_volume

        if self.annotation is None or index == self.index:
            return
        if self.sam2.controls.busy:
            self._say("SAM2 is still working on this case: wait for it or cancel it (Shift-Esc) first.", error=True)
            return
        case = self.annotation.cases[index]
        try:
            volume = load_volume(case.image, series_uid=case.series_uid)
            earlier = load_labels(case.output, volume) if case.output.exists() else None
        except MedsegError as error:
            self._say(f"{case.id}: {error}", error=True)
            return
        previous = self._case_ws
        data, kwargs, _ = image_layer_data(volume, case.id, source=str(case.image))
        image = self.viewer.add_image(data, **kwargs)  # before the previous case goes: the viewer is never empty
        self.index = index
        self.sam2.data.image.set_layer(image)
        self._close(previous)
        ws = self._case_ws = self.sam2.workspace
        if ws is None:  # not a 3D volume: the SAM2 tab said why
            self._say(f"{case.id}: {self.sam2.status.text()}", error=True)
            return
        ws.save_path = str(case.output)
        if earlier is not None:
            ws.load_accepted(earlier)
        self.sam2.data.show()
        self.annotation.set_current(case.id)
        self.table.selectRow(index)
        saved = f"; {len(earlier.labels)} saved object(s) brought back" if earlier is not None else ""
        self._say(f"Case {index + 1} of {len(self.annotation.cases)}: {case.id} "
                  f"({self.annotation.status(case.id)}{saved}). Accepted objects are saved to {case.output}.")

    def _close(self, ws: Any | None) -> None:
        """Remove a case's layers: its image, labels and prompt layers."""
        if ws is None:
            return
        ids = {layer.unique_id for layer in (*ws.prompts.layers, ws.labels, ws.image) if layer is not None}
        for i in reversed(range(len(self.viewer.layers))):
            if self.viewer.layers[i].unique_id in ids:
                del self.viewer.layers[i]

    def _on_object_accepted(self, _: int) -> None:
        if self._case_ws is not None and self.sam2.workspace is self._case_ws:
            self.save_case()

    def save_case(self, status: str = "in progress") -> bool:
        """Save the open case's accepted objects to its output; True when written."""
        from medseg.io import save_labels

        ws = self._case_ws
        if self.annotation is None or self.index is None or ws is None:
            return False
        case = self.annotation.cases[self.index]
        try:
            save_labels(ws.accepted_labels(), ws.volume, case.output)
        except MedsegError as error:
            self._say(f"{case.id}: not saved: {error}", error=True)
            return False
        self.annotation.set_status(case.id, status)
        self.table.item(self.index, 1).setText(status)
        self._say(f"{case.id}: {len(ws.accepted)} accepted object(s) saved to {case.output} ({status}).")
        return True

    def accept_case(self) -> None:
        """Accept the current object, save the case as accepted, open the next case not accepted."""
        if self.annotation is None or self.index is None or self._case_ws is None:
            return
        ws, obj_id = self._case_ws, self.sam2.current_object()
        shown = self.sam2.workspace is ws
        if shown and ws.labels is not None and obj_id is not None and (ws.labels.data == obj_id).any():
            self.sam2.objects.accept_object()  # saves as "in progress" through the accepted signal
        if not self.save_case("accepted"):
            return
        ids = [c.id for c in self.annotation.cases]
        after = [i for i in [*range(self.index + 1, len(ids)), *range(self.index)]
                 if self.annotation.status(ids[i]) != "accepted"]
        if after:
            self.open_case(after[0])
        else:
            self._say(f"All {len(ids)} cases are accepted; their labels are in {self.annotation.out_dir}.")

    def _say(self, message: str, *, error: bool = False) -> None:
        self.status.setText(message)
        self.status.setStyleSheet("color: #ff6060" if error else "")
        if error:
            show_error(message)
