"""The "medseg PACS" dock widget: open a series from a DICOMweb server, store labels back to it.

A thin face over ``medseg.io.dicomweb``. Search lists the series of a server or of one study
(QIDO-RS; modality, description and count, no patient field); Open loads the chosen series, or
the series address typed, through the verified local cache (``medseg.io.load_volume``), as an
Image layer with its exact geometry; Store writes a Labels layer drawn on such an image as DICOM
SEG or RTSTRUCT on its series and stores it with STOW-RS, once (``store_labels``: the same labels
stored again are found on the server, not sent twice). The server is the one the image came from,
else the one typed. Network work runs off the UI thread (``_tasks.Task``); credentials come from
the environment (``MEDSEG_DICOMWEB_*``), as on the command line.
"""

from __future__ import annotations

from typing import Any

import napari
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QPushButton,
                            QVBoxLayout, QWidget)

from napari_plugin._layer_picker import LayerPicker
from napari_plugin._layers import LABELS_KEY, VOLUME_KEY, image_layer_data, label_volume
from napari_plugin._tasks import Task


class PacsWidget(QWidget):
    """Address, Search, the series found, Open; a Labels layer, its format, Store; a status line."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.task: Task | None = None
        self.address = QLineEdit()
        self.address.setPlaceholderText("dicomweb://host:8042/dicom-web[/studies/<uid>[/series/<uid>]]")
        self.search = QPushButton("Search")
        self.found = QListWidget()
        self.open = QPushButton("Open")
        self.labels = LayerPicker(napari_viewer, napari.layers.Labels)
        self.format = QComboBox()
        self.format.addItems(["SEG", "RTSTRUCT"])
        self.store = QPushButton("Store on the server")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        top, bottom = QHBoxLayout(), QHBoxLayout()
        top.addWidget(self.address)
        top.addWidget(self.search)
        for widget in (self.labels, self.format, self.store):
            bottom.addWidget(widget)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.found)
        layout.addWidget(self.open)
        layout.addLayout(bottom)
        layout.addWidget(self.status)
        self.search.clicked.connect(self.search_series)
        self.open.clicked.connect(self.open_series)
        self.found.itemDoubleClicked.connect(lambda _: self.open_series())
        self.store.clicked.connect(self.store_labels)

    def search_series(self) -> None:
        """List the series of the server or study typed."""
        from medseg.io.dicomweb import DicomwebServer, parse_dicomweb_url

        text = self.address.text().strip()

        def search(progress: Any, should_stop: Any) -> list:
            ref = parse_dicomweb_url(text)
            return DicomwebServer(ref).series(ref.study)

        self._start(search, "Search", self._list)

    def open_series(self) -> None:
        """Open the selected series (or the series address typed) as an Image layer."""
        from medseg.io import load_volume

        item = self.found.currentItem()
        address = item.data(Qt.ItemDataRole.UserRole) if item is not None else self.address.text().strip()
        self._start(lambda progress, should_stop: load_volume(address), "Open",
                    lambda volume: self._show(volume, address))

    def store_labels(self) -> None:
        """Store the chosen Labels layer on the server as DICOM SEG or RTSTRUCT."""
        from medseg.io.dicomweb import store_labels

        layer = self.labels.layer()
        volume = None if layer is None else layer.metadata.get(VOLUME_KEY)
        if volume is None or not volume.metadata.get("format", "").startswith("dicom"):
            self._say("Store: choose a Labels layer drawn on an image opened from DICOM (Open above, or File ▸ Open)",
                      warn=True)
            return
        labels = label_volume(layer.data, volume, result=layer.metadata.get(LABELS_KEY), name=layer.name)
        server = None if volume.metadata.get("dicomweb") else self.address.text().strip() or None
        fmt = self.format.currentText().lower()
        self._start(lambda progress, should_stop: store_labels(labels, volume, format=fmt, server=server), "Store",
                    self._stored)

    def _list(self, series: list) -> None:
        self.found.clear()
        for info in series:
            count = "?" if info.n_instances is None else info.n_instances
            text = f"{info.modality or '?'}  {info.description or '(no description)'}  ({count} instances)"
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, str(info.ref))
            item.setToolTip(str(info.ref))
            self.found.addItem(item)
        self._say(f"{len(series)} series found")

    def _show(self, volume: Any, address: str) -> None:
        name = str(volume.metadata.get("SeriesDescription") or "PACS series")
        data, kwargs, _ = image_layer_data(volume, name, source=address)
        self.viewer.add_image(data, **kwargs)
        self._say(f"opened {address}")

    def _stored(self, outcome: tuple) -> None:
        address, sent = outcome
        self._say(f"stored as {address}" if sent else f"already on the server: {address}")

    def _start(self, fn: Any, label: str, on_done: Any) -> None:
        if self.task is not None and not self.task.finished:
            self._say(f"{label}: wait until {self.task.label} has finished", warn=True)
            return
        self._say(f"{label}…")
        self.task = Task(fn, label=label, on_done=on_done, on_error=lambda message: self._say(message, warn=True))
        self.task.start()

    def _say(self, text: str, *, warn: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #ff6060" if warn else "")
