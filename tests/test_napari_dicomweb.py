"""The napari PACS widget against the real Orthanc: search a study, open a series with its exact
geometry, store a Labels layer back as DICOM SEG once (a second Store finds it on the server)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medseg.io import load_labels, load_volume
from medseg.io.dicomweb import DicomwebRef, DicomwebServer
from medseg.phantom import make_phantom, write_dicom_series
from medseg.volume import LabelVolume
from napari_plugin._layers import VOLUME_KEY, labels_layer_data
from napari_plugin._pacs_widget import PacsWidget

pytestmark = pytest.mark.napari
WAIT_MS = 120_000  # a busy 2-core machine: each task is a few seconds alone


def finish(qtbot, widget) -> str:
    """Wait for the widget's task to end; its status line."""
    qtbot.waitUntil(lambda: widget.task is not None and widget.task.finished, timeout=WAIT_MS)
    return widget.status.text()


def test_search_open_and_store_back(make_napari_viewer, qtbot, pacs_env, tmp_path):
    volume, truth = make_phantom(5, shape=(6, 24, 28))
    write_dicom_series(volume, tmp_path / "series", series_description="pacs widget phantom")
    datasets = [pydicom.dcmread(f) for f in sorted((tmp_path / "series").iterdir())]
    DicomwebServer(pacs_env.url).store(datasets)
    study = DicomwebRef(DicomwebServer(pacs_env.url).url, str(datasets[0].StudyInstanceUID))
    viewer = make_napari_viewer()
    widget = PacsWidget(viewer)

    widget.address.setText(str(study))
    widget.search.click()
    assert finish(qtbot, widget) == "1 series found"
    assert "CT  pacs widget phantom  (6 instances)" == widget.found.item(0).text()
    widget.found.setCurrentRow(0)
    widget.open.click()
    assert finish(qtbot, widget).startswith("opened dicomweb://") and len(viewer.layers) == 1
    image = viewer.layers[0]
    from_files = load_volume(tmp_path / "series")
    opened = image.metadata[VOLUME_KEY]
    assert image.name == "pacs widget phantom" and np.array_equal(image.data, from_files.array)
    assert opened.spacing == from_files.spacing and np.array_equal(opened.direction, from_files.direction)
    assert tuple(image.scale) == from_files.spacing

    labels = LabelVolume(truth.array, opened.geometry, label_names=dict(truth.label_names))
    data, kwargs, _ = labels_layer_data(labels, opened, "organs")
    viewer.add_labels(data, **kwargs)
    widget.labels.refresh()
    widget.store.click()
    status = finish(qtbot, widget)
    assert status.startswith("stored as dicomweb://"), status
    address = status.removeprefix("stored as ")
    assert np.array_equal(load_labels(address, opened).array, truth.array)
    widget.store.click()
    assert finish(qtbot, widget) == f"already on the server: {address}"
    assert sorted(s["modality"] for s in pacs_env.study_series(study.study)) == ["CT", "SEG"]


def test_a_wrong_address_or_layer_is_said_in_the_status(make_napari_viewer, qtbot, pacs_env):
    widget = PacsWidget(make_napari_viewer())
    widget.address.setText("ftp://127.0.0.1/dicom-web")
    widget.search.click()
    assert finish(qtbot, widget) == ("Search: ftp://127.0.0.1/dicom-web: not a DICOMweb address; write "
                                     "dicomweb://host:port/dicom-web/studies/<uid>/series/<uid>")
    widget.store.click()
    assert widget.status.text().startswith("Store: choose a Labels layer")
