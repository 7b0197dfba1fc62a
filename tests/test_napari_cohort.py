"""The Cohort tab driven as a user drives it: open a manifest, annotate, accept, next, close, resume.

The model is the untrained SAM2.1 Hiera-T at 128 px (masks meaningless): the test checks where
labels go and what the statuses say, with the exact voxels of painted mask prompts.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from qtpy.QtCore import Qt

import napari_plugin  # noqa: F401  (loads triton beside Mesa before any torch import)
from napari_helpers import SHIFT, click, key, wait, write_phantom

pytestmark = pytest.mark.napari


@pytest.fixture
def cohort(tmp_path):
    cases = []
    for i in range(3):
        truth = write_phantom(tmp_path / f"p{i}.nii.gz", seed=i, shape=(6, 32, 32))
        nib.save(nib.Nifti1Image(truth.array.transpose(2, 1, 0).astype(np.int16), truth.affine),
                 tmp_path / f"p{i}_labels.nii.gz")
        cases.append({"id": f"p{i}", "image": f"p{i}.nii.gz", "label": f"p{i}_labels.nii.gz", "split": "test"})
    path = tmp_path / "cohort.json"
    manifest = {"name": "c", "modality": "CT", "labels": {"1": "liver", "2": "spleen"}, "cases": cases}
    path.write_text(json.dumps(manifest))
    return path


def _paint_and_accept(qtbot, viewer, panel, z, region, value):
    """Paint ``region`` of slice ``z`` as the current object, use it as the mask prompt, segment, accept (Shift-C)."""
    ws = panel.workspace
    viewer.dims.set_point(0, ws.image.data_to_world((z, 0, 0))[0])
    click(qtbot, panel.tools.mask_prompt)  # opens the labels layer for painting
    ws.labels.data[z][region] = value  # what the labels brush does
    ws.labels.refresh()
    click(qtbot, panel.tools.mask_prompt)
    click(qtbot, panel.segment)
    wait(qtbot, panel)
    key(qtbot, viewer, Qt.Key.Key_C, SHIFT)


def test_annotate_a_cohort_case_by_case_and_resume(make_napari_viewer, qtbot, cohort, tmp_path):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    panel, tab = widget.sam2, widget.cohort
    panel.model.set_choice("untrained", image_size=128)
    tab.source.setText(str(cohort))
    click(qtbot, tab.open_button)
    out = tmp_path / "cohort-annotations"
    assert [tab.table.item(r, 1).text() for r in range(3)] == ["untouched"] * 3
    assert panel.workspace.image.name == "p0" and panel.save_row.path.text() == str(out / "p0.nii.gz")

    region = np.zeros((32, 32), bool)
    region[8:16, 10:20] = True
    _paint_and_accept(qtbot, viewer, panel, 3, region, 1)  # accepted: saved at once
    saved = np.asarray(nib.load(out / "p0.nii.gz").dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(saved[3] == 1, region)
    assert tab.table.item(0, 1).text() == "in progress"

    key(qtbot, viewer, Qt.Key.Key_J, SHIFT)  # accept the case: next case, p0's layers gone
    assert tab.table.item(0, 1).text() == "accepted" and panel.workspace.image.name == "p1"
    assert [layer.name for layer in viewer.layers] == ["p1"]
    _paint_and_accept(qtbot, viewer, panel, 2, region, 1)
    assert tab.table.item(1, 1).text() == "in progress"
    key(qtbot, viewer, Qt.Key.Key_K)  # back to p0: its saved object comes back, accepted
    assert panel.workspace.image.name == "p0" and panel.workspace.accepted == {1}
    np.testing.assert_array_equal(panel.workspace.labels.data[3] == 1, region)
    key(qtbot, viewer, Qt.Key.Key_J)
    assert panel.workspace.image.name == "p1"
    truth_files = {f"p{i}_labels.nii.gz": (tmp_path / f"p{i}_labels.nii.gz").read_bytes() for i in range(3)}
    panel.save_row.path.setText(str(tmp_path / "p1_labels.nii.gz"))  # the user types the truth's name
    click(qtbot, panel.save_row.save)
    assert "p1_labels.nii.gz" in panel.status.text() and "input" in panel.status.text()  # refused
    assert {name: (tmp_path / name).read_bytes() for name in truth_files} == truth_files

    viewer.close()  # the user stops; a new session opens the same cohort where it stopped
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    widget.cohort.source.setText(str(cohort))
    click(qtbot, widget.cohort.open_button)
    assert widget.sam2.workspace.image.name == "p1" and widget.sam2.workspace.accepted == {1}
    assert [widget.cohort.table.item(r, 1).text() for r in range(3)] == ["accepted", "in progress", "untouched"]
