"""The Save row of the SAM2 panel: a path per image, never an input, overwrite only when asked.

The path is the image's own (``Workspace.save_path``; until the user picks one,
``suggest_save_path`` proposes one beside its source), so saving image B never writes over
image A's labels. The suggestion is never a file that exists, nor a file to avoid: any
file a layer was read from (a ground truth opened for the Metrics tab among them) and the
label files of an open cohort manifest. It ends in ``_medseg`` rather than ``_labels``,
the usual name of ground-truth files (the demo cohort's included). A path that is one of
the viewer's inputs is refused before anything is written; an existing file is overwritten
only after the user says yes to a question naming it (``ask_overwrite``, a QMessageBox,
replaceable so tests can answer it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QMessageBox, QPushButton, QWidget

from medseg.errors import InputError
from medseg.io.files import safe_file_name, volume_stem
from medseg.outputs import check_output

from napari_plugin._layers import SOURCE_KEY, VOLUME_KEY
from napari_plugin._writer import write_labels

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


def suggest_save_path(source: str | None, image_name: str, *, avoid: Iterable[Path] = ()) -> Path:
    """Where to offer to save an image's labels: beside its source, never an existing file or one of ``avoid``.

    ``/data/ct.nii.gz`` -> ``/data/ct_medseg.nii.gz``, then ``ct_medseg_2.nii.gz``... when taken;
    a DICOM series folder gets ``<folder>_medseg.nii.gz`` beside the folder; an image without a
    source file ``<layer name>_medseg.nii.gz`` in the working directory.
    """
    folder, stem = (Path(source).parent, volume_stem(source)) if source else (Path.cwd(), image_name)
    avoided = {Path(p).expanduser().resolve() for p in avoid}
    stem, n = safe_file_name(stem, default="labels"), 1
    while True:
        path = folder / f"{stem}_medseg{'' if n == 1 else f'_{n}'}.nii.gz"
        if not path.exists() and path.resolve() not in avoided:
            return path
        n += 1


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
        self.dicom.setToolTip("how a .dcm file is written: DICOM SEG (label maps) or RTSTRUCT (contours, for planning "
                              "systems)")
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

    def write(self, layer: Any, inputs: set[Path]) -> str | None:
        """Write the Labels ``layer`` where ``target`` says; the file written, or None when declined."""
        path = self.target(inputs)
        if path is None:
            return None
        meta = {"name": layer.name, "metadata": layer.metadata}
        return write_labels(str(path), layer.data, meta, dicom_format=self.dicom_format)[0]
