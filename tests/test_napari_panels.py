"""The Metrics, Reference prompting and Baseline panels, driven through their controls in a
real napari viewer under Xvfb (untrained models: mechanics and invariants only)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

import napari_plugin  # noqa: F401  (loads triton beside Mesa before any torch import)
from medseg.metrics import dice_per_label
from medseg.phantom import make_phantom
from medseg.volume import LabelVolume
from napari_plugin._layers import image_layer_data, labels_layer_data

pytestmark = pytest.mark.napari
WORKER_TIMEOUT_MS = 120_000


def _click(qtbot, button):
    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _run(qtbot, panel, button):
    _click(qtbot, button)
    qtbot.waitUntil(lambda: panel.task.finished, timeout=WORKER_TIMEOUT_MS)


def _add(viewer, layer_data):
    data, kwargs, kind = layer_data
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


@pytest.fixture
def phantom_viewer(make_napari_viewer):
    """A viewer with a small phantom and its ground truth, and the medseg dock widget."""
    viewer = make_napari_viewer()
    volume, truth = make_phantom(0, shape=(10, 48, 48))
    image = _add(viewer, image_layer_data(volume, "phantom"))
    truth_layer = _add(viewer, labels_layer_data(truth, volume, "truth"))
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    return viewer, widget, image, truth_layer, volume, truth


def _table(panel):
    table = panel.table
    return {table.item(r, 1).text(): [table.item(r, c).text() for c in range(2, table.columnCount())]
            for r in range(table.rowCount())}


def test_metrics_panel_scores_a_prediction_against_the_truth(phantom_viewer, qtbot):
    viewer, widget, _, truth_layer, volume, truth = phantom_viewer
    predicted = truth.array.copy()
    predicted[predicted == 3] = 0  # the kidneys are missed
    predicted[4][predicted[4] == 1] = 0  # one liver slice is missed
    pred_layer = _add(viewer, labels_layer_data(LabelVolume.like(volume, predicted), volume, "prediction"))
    panel = widget.metrics
    panel.prediction.set_layer(pred_layer)
    panel.truth.set_layer(truth_layer)

    _run(qtbot, panel, panel.compute)

    rows = _table(panel)
    expected = dice_per_label(predicted, truth.array, labels=[1, 2, 3])
    assert rows["liver"][0] == f"{expected[1]:.3f}" and expected[1] < 1.0
    assert rows["spleen"] == ["1.000", "0.000", "1.000"]
    assert rows["kidney"] == ["0.000", "∞", "0.000"]
    assert panel.table.horizontalHeaderItem(3).text() == "HD95 (mm)"
    assert "mask AP 3D" in panel.summary.text() and "no confidence scores" in panel.summary.text()
