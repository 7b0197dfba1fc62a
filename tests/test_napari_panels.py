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
WORKER_TIMEOUT_MS = 600_000  # a shared machine can be slow: generous, never a timing assertion


def _click(qtbot, button):
    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _run(qtbot, panel):
    _click(qtbot, panel.controls.run)
    qtbot.waitUntil(lambda: panel.controls.task.finished, timeout=WORKER_TIMEOUT_MS)


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

    _run(qtbot, panel)

    rows = _table(panel)
    expected = dice_per_label(predicted, truth.array, labels=[1, 2, 3])
    assert rows["liver"][0] == f"{expected[1]:.3f}" and expected[1] < 1.0
    assert rows["spleen"] == ["1.000", "0.000", "1.000"]
    assert rows["kidney"] == ["0.000", "∞", "0.000"]
    assert panel.table.horizontalHeaderItem(3).text() == "HD95 (mm)"
    assert "mask AP 3D" in panel.controls.status.text() and "no confidence scores" in panel.controls.status.text()


def test_reference_panel_segments_the_query_from_another_volume_and_its_own_slices(phantom_viewer, qtbot):
    viewer, widget, image, truth_layer, volume, truth = phantom_viewer
    ref_volume, ref_truth = make_phantom(1, shape=(10, 48, 48))
    ref_image = _add(viewer, image_layer_data(ref_volume, "reference"))
    ref_labels = _add(viewer, labels_layer_data(ref_truth, ref_volume, "reference truth"))
    panel = widget.reference
    panel.query.set_layer(image)
    panel.set_reference(0, ref_image, ref_labels)  # k sampled slices of another volume
    panel.set_reference(1, image, truth_layer, "5")  # one slice drawn on the query itself
    panel.labels.setText("1")
    panel.k.setValue(2)
    panel.model.set_choice("untrained", image_size=128)

    _run(qtbot, panel)

    layer = viewer.layers["phantom references (revsam2)"]
    result = layer.metadata["medseg_labels"]
    assert layer.data.shape == volume.shape and result.geometry.same_grid(volume.geometry)
    assert result.untrained and result.label_names == {1: "liver"}
    np.testing.assert_array_equal(layer.data[5] == 1, truth.array[5] == 1)  # drawn on the query: kept exactly
    detail = result.provenance["labels"]["1"]
    assert len(detail["reverse_scores"]) == volume.shape[0]
    listed = [panel.selected.item(i).text() for i in range(panel.selected.count())]
    assert len(listed) == max(1, len(detail["selected_slices"]))
    assert all(text.startswith("liver: ") for text in listed)
    assert len(panel.plot.axes.lines) == 2  # scores and selected slices of the one label
    assert "UNTRAINED" in panel.controls.status.text()


def test_reference_panel_tracks_each_kidney_and_paints_them_as_one_label(phantom_viewer, qtbot):
    viewer, widget, image, *_ = phantom_viewer
    ref_volume, ref_truth = make_phantom(1, shape=(10, 48, 48))
    ref_image = _add(viewer, image_layer_data(ref_volume, "reference"))
    ref_labels = _add(viewer, labels_layer_data(ref_truth, ref_volume, "reference truth"))
    panel = widget.reference
    panel.query.set_layer(image)
    panel.set_reference(0, ref_image, ref_labels)
    qtbot.keyClicks(panel.labels, "3")
    qtbot.keyClicks(panel.reprompt, "mask")  # typing in a closed combo box picks the item
    _click(qtbot, panel.parts)
    panel.k.setValue(2)
    panel.model.set_choice("untrained", image_size=128)
    assert panel.parts.isChecked() and panel.reprompt.currentText() == "mask"
    assert not panel.include_supports.isChecked()  # the default

    _run(qtbot, panel)

    result = viewer.layers["phantom references (revsam2)"].metadata["medseg_labels"]
    assert result.label_names == {3: "kidney"} and set(np.unique(result.array)) <= {0, 3}
    assert result.provenance["support"]["parts"] == {"4": 3} and result.provenance["reprompt"] == "mask"
    listed = [panel.selected.item(i).text() for i in range(panel.selected.count())]
    assert {text.split(":")[0] for text in listed} == {"kidney", "kidney (part 4)"}
    assert [t.get_text() for t in panel.plot.axes.get_legend().get_texts()] == ["kidney", "kidney (part 4)"]


def test_baseline_panel_runs_a_model_directory(phantom_viewer, qtbot, tmp_path):
    from medseg.maskrcnn import MaskRCNNModel, TrainConfig, build_model, save_model

    viewer, widget, image, _, volume, _ = phantom_viewer
    config = TrainConfig(backbone="resnet18", image_size=64, score_threshold=0.0)
    network = build_model(num_classes=3, backbone="resnet18", image_size=64)
    save_model(MaskRCNNModel(network, config, {1: "liver", 2: "spleen", 3: "kidney"}), tmp_path / "model")
    panel = widget.baseline
    panel.image.set_layer(image)
    panel.model_dir.setText(str(tmp_path / "model"))

    _run(qtbot, panel)

    layer = viewer.layers["phantom Mask R-CNN"]
    result = layer.metadata["medseg_labels"]
    assert layer.data.shape == volume.shape and result.untrained
    instances = panel.instances
    assert panel.objects.rowCount() == len(np.unique(instances.array)) - 1 > 0  # a row per 3D instance
    scores = [float(panel.objects.item(r, 2).text()) for r in range(panel.objects.rowCount())]
    assert scores == sorted(scores, reverse=True)
    assert "UNTRAINED" in panel.controls.status.text()
    assert panel.controls.progress.value() == panel.controls.progress.maximum() == volume.shape[0]


def test_baseline_panel_says_what_is_wrong_with_a_model_directory(phantom_viewer, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    viewer, widget, image, *_ = phantom_viewer
    panel = widget.baseline
    panel.model_dir.setText(str(tmp_path))

    _run(qtbot, panel)

    assert any(m.startswith("Mask R-CNN: ") and "model.json is missing" in m for m in messages)
    assert panel.controls.run.isEnabled()
