"""The Save row of the SAM2 panel: a path per image, never an input, overwrite only when asked.

The path is the image's own (``Workspace.save_path``, suggested beside its source), so saving
image B never writes over image A's labels. A path that is one of the viewer's inputs (a
file or DICOM series a layer was read from) is refused before anything is written; an
existing file is overwritten only after the user says yes (``ask_overwrite``, a QMessageBox
question, replaceable so tests can answer it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QMessageBox, QPushButton, QWidget

from medseg.errors import InputError
from medseg.outputs import check_output

from napari_plugin._layers import SOURCE_KEY, VOLUME_KEY

_SEG_FILTER, _RTSTRUCT_FILTER = "DICOM SEG (*.dcm)", "DICOM RTSTRUCT (*.dcm)"
_FILTERS = ";;".join(["NIfTI (*.nii.gz *.nii)", "NRRD (*.nrrd)", "MetaImage (*.mha)", _SEG_FILTER, _RTSTRUCT_FILTER])


def input_paths(layers: Iterable[Any]) -> set[Path]:
    """Every file or folder the layers were read from (sources and DICOM source files)."""
    found: set[Path] = set()
    for layer in layers:
        source = layer.metadata.get(SOURCE_KEY) or getattr(layer.source, "path", None)
        if source:
            found.add(Path(source).expanduser().resolve())
        volume = layer.metadata.get(VOLUME_KEY)
        found.update(Path(f).resolve() for f in getattr(volume, "source_files", ()))
    return found


def ask_overwrite_dialog(parent: QWidget, path: Path) -> bool:
    """Ask before replacing ``path``; True when the user says yes."""
    answer = QMessageBox.question(parent, "Overwrite?", f"{path} exists. Replace it?",
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


class SaveRow(QWidget):
    """Path, browse and Save; ``target(inputs)`` says where a save may go (or raises).

    A ``.dcm`` path is written as DICOM SEG or RTSTRUCT as ``dicom_format`` says (the combo box
    beside the path, also set by the file dialog's filter).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path = QLineEdit()
        self.path.setPlaceholderText("labels.nii.gz, .nrrd, .mha or .dcm")
        self.dicom = QComboBox()
        self.dicom.addItems(["SEG", "RTSTRUCT"])
        self.dicom.setToolTip("how a .dcm file is written: DICOM SEG (label maps) or RTSTRUCT (contours, for planning systems)")
        self.browse = QPushButton("…")
        self.browse.setMaximumWidth(30)
        self.save = QPushButton("Save")
        self.ask_overwrite: Callable[[Path], bool] = lambda path: ask_overwrite_dialog(self, path)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path)
        row.addWidget(self.dicom)
        row.addWidget(self.browse)
        row.addWidget(self.save)

    def choose(self) -> bool:
        """The file dialog (it asks about overwriting itself); True when a path was chosen."""
        selected = _RTSTRUCT_FILTER if self.dicom_format == "rtstruct" else _SEG_FILTER
        path, chosen = QFileDialog.getSaveFileName(self, "Save labels", self.path.text(), _FILTERS, selected,
                                                   options=QFileDialog.Option.DontConfirmOverwrite)
        if path:
            self.path.setText(path)
            if chosen in (_SEG_FILTER, _RTSTRUCT_FILTER):
                self.dicom.setCurrentText("RTSTRUCT" if chosen == _RTSTRUCT_FILTER else "SEG")
        return bool(path)

    @property
    def dicom_format(self) -> str:
        """``"seg"`` or ``"rtstruct"``: how a ``.dcm`` path is written."""
        return self.dicom.currentText().lower()

    def target(self, inputs: set[Path]) -> Path | None:
        """Where to write: the checked path, or None when the user declined to overwrite.

        Raises
        ------
        InputError
            No path, or a folder.
        OutputError
            One of the inputs, or inside an input folder (``medseg.outputs.check_output``).
        """
        text = self.path.text().strip()
        if not text:
            raise InputError("no file name: type one or press … to choose where to save")
        path = check_output(Path(text), inputs=inputs, what="labels file")
        if path.is_dir():
            raise InputError(f"{path} is a folder: give a file name ending in .nii.gz, .nrrd, .mha or .dcm")
        if path.exists() and not self.ask_overwrite(path):
            return None
        return path
