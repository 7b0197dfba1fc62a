"""The dock widget at napari's default size on a 1600 x 1000 screen: nothing clipped, nothing
pushed out of view, the labels drawn where their voxels are (a screenshot, under Xvfb).

Pixel widths depend on the font, so these tests pin it: DejaVu Sans from the font file matplotlib
ships (the same glyphs on every machine, whatever fonts are installed) at 96 dpi (``QT_FONT_DPI``,
set in conftest before Qt starts)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import napari_plugin  # noqa: F401  (loads triton beside Mesa before any torch import)
from medseg.metrics import evaluate_pair
from napari_plugin._metrics_panel import as_label_map

pytestmark = pytest.mark.napari


@pytest.fixture
def pinned_font(qapp):
    """The application font: DejaVu Sans from matplotlib's font file (restored afterwards)."""
    from pathlib import Path

    import matplotlib
    from qtpy.QtGui import QFont, QFontDatabase

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    families = QFontDatabase.applicationFontFamilies(QFontDatabase.addApplicationFont(str(path)))
    assert families, f"Qt could not load {path}"
    before = qapp.font()
    qapp.setFont(QFont(families[0], before.pointSize()))
    yield families[0]
    qapp.setFont(before)


@pytest.fixture
def docked(make_napari_viewer, pinned_font):
    viewer = make_napari_viewer(show=True)
    viewer.window.set_geometry(0, 0, 1600, 1000)
    image, truth = viewer.open_sample("medseg", "phantom")
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    assert widget.font().family() == pinned_font
    return viewer, widget, image, truth


def _bottom_in_viewport(widget, scroll_area) -> int:
    """Where ``widget``'s bottom edge sits in the visible part of its scroll area (pixels from the top)."""
    return widget.mapTo(scroll_area.viewport(), widget.rect().bottomLeft()).y()


def test_long_status_is_scrollable_and_never_pushes_save_away(docked):
    _, widget, *_ = docked
    panel = widget.sam2
    scroll = widget.tabs.widget(0)
    before = _bottom_in_viewport(panel.save_row.save, scroll)
    panel.controls.show_status("\n".join(f"object {i}: 12 slices, 3.2 ml" for i in range(40)))
    panel.adjustSize()
    assert _bottom_in_viewport(panel.save_row.save, scroll) == before
    assert panel.controls.status_area.height() <= panel.controls.status_area.maximumHeight() < 200


def test_metrics_columns_and_reference_cells_fit_the_default_dock(docked, qtbot):
    viewer, widget, *_ = docked
    metrics = widget.metrics
    widget.tabs.setCurrentIndex(3)
    truth = as_label_map(viewer.layers["phantom ground truth"])
    predicted = replace(truth, array=np.where(truth.array == 3, 0, truth.array))
    metrics._show(evaluate_pair(predicted, truth))
    qtbot.wait(50)
    header, table = metrics.table.horizontalHeader(), metrics.table
    last = table.columnCount() - 1
    assert header.sectionViewportPosition(last) + header.sectionSize(last) <= table.viewport().width()
    for column in range(table.columnCount()):  # every header text is shown whole
        text = table.horizontalHeaderItem(column).text()
        assert header.sectionSize(column) >= header.fontMetrics().horizontalAdvance(text)

    widget.tabs.setCurrentIndex(1)
    reference = widget.reference
    qtbot.wait(50)
    picker = reference.references.cellWidget(0, 0)
    assert picker.width() >= picker.fontMetrics().horizontalAdvance("phantom") * 1.5
    scroll = widget.tabs.widget(1)
    assert _bottom_in_viewport(reference.plot, scroll) <= scroll.viewport().height()  # the plot above the fold


def test_metrics_defaults_never_pick_one_layer_twice(docked):
    viewer, widget, image, truth = docked
    metrics = widget.metrics
    prediction = viewer.add_labels(np.zeros(truth.data.shape, np.int32), name="prediction")
    assert metrics.truth.layer().name == truth.name
    assert metrics.prediction.layer().name == prediction.name


def test_screenshot_shows_labels_on_their_voxels(docked, tmp_path):
    viewer, widget, image, truth = docked
    z = int((truth.data == 1).sum(axis=(1, 2)).argmax())
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    truth.opacity = 1.0
    shot = viewer.screenshot(path=str(tmp_path / "napari.png"), canvas_only=True, flash=False)
    truth.visible = False
    plain = viewer.screenshot(canvas_only=True, flash=False)
    assert (tmp_path / "napari.png").is_file()

    canvas = viewer.window._qt_viewer.canvas
    ratio = shot.shape[1] / canvas.native.width()
    inside, outside = [], []
    for value, pixels in ((1, inside), (0, outside)):
        for y, x in np.argwhere(truth.data[z] == value)[::97][:20]:
            world = image.data_to_world((z, y, x))
            cx, cy = canvas.view.scene.transform.map([world[2], world[1]])[:2]
            row, col = int(cy * ratio), int(cx * ratio)
            if 0 <= row < shot.shape[0] and 0 <= col < shot.shape[1]:
                pixels.append(np.abs(shot[row, col, :3].astype(int) - plain[row, col, :3]).sum())
    assert inside and outside
    assert np.median(inside) > 60  # the liver's label colour is drawn over the liver...
    assert np.median(outside) == 0  # ...and nothing where the truth is background
