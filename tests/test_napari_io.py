"""The napari plugin's reader, writer and sample data, in a real viewer under Xvfb."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

import napari_plugin  # noqa: F401  (loads triton beside Mesa before any torch import)
from medseg.volume import Volume

pytestmark = pytest.mark.napari

# A 3D NIfTI, (i, j, k) = (x, y, z) = (12, 10, 6), anisotropic, off-origin.
SHAPE_XYZ = (12, 10, 6)
SPACING_XYZ = (0.8, 0.9, 2.5)
RAS_OFFSET = (10.0, -20.0, 30.0)


def _write_nifti(path, flips_xyz, *, data=None):
    """A NIfTI whose index axes point toward R/A/S (flip +1) or L/P/I (flip -1)."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.array(flips_xyz) * SPACING_XYZ)
    affine[:3, 3] = RAS_OFFSET
    if data is None:
        data = np.random.default_rng(0).normal(100, 20, SHAPE_XYZ).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), path)
    return affine


def _lps_zyx(affine, ijk):
    """Patient LPS millimetres of voxel (i, j, k), in napari's (z, y, x) axis order."""
    r, a, s = (affine @ np.append(ijk, 1.0))[:3]
    return np.array([s, -a, -r])


@pytest.mark.parametrize("flips", [(1, 1, 1), (-1, 1, 1), (-1, -1, -1)], ids=["RAS", "LAS", "LPI"])
def test_nifti_opens_with_spacing_and_patient_coordinates(make_napari_viewer, tmp_path, flips):
    path = tmp_path / "scan.nii.gz"
    affine = _write_nifti(path, flips)
    viewer = make_napari_viewer()

    [layer] = viewer.open(str(path), plugin="medseg")

    assert layer.name == "scan"
    assert layer._type_string == "image"
    assert layer.data.shape == SHAPE_XYZ[::-1]
    np.testing.assert_allclose(layer.scale, SPACING_XYZ[::-1])
    for ijk in [(0, 0, 0), (11, 0, 0), (0, 9, 0), (0, 0, 5), (7, 3, 2)]:
        zyx = ijk[::-1]
        np.testing.assert_allclose(layer.data_to_world(zyx), _lps_zyx(affine, ijk), atol=1e-5)
    volume = layer.metadata["medseg_volume"]
    assert isinstance(volume, Volume)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    assert volume.array is layer.data  # no copy: the engines see exactly what is shown
    low, high = np.percentile(volume.array, (0.5, 99.5))
    np.testing.assert_allclose(layer.contrast_limits, (low, high), rtol=1e-5)


@pytest.mark.parametrize("flips", [(1, 1, 1), (-1, -1, 1)], ids=["RAS", "LPS"])
def test_nifti_shows_in_radiological_convention(make_napari_viewer, tmp_path, flips):
    """A bright block in the patient's anterior-left shows at the top right of the canvas."""
    affine = np.diag([*np.array(flips) * (1.0, 1.0, 1.0), 1.0])
    data = np.zeros((40, 40, 3), np.float32)
    left = slice(0, 10) if flips[0] > 0 else slice(30, 40)  # i toward R: the left is at low i
    anterior = slice(30, 40) if flips[1] > 0 else slice(0, 10)  # j toward A: the front is at high j
    data[left, anterior, :] = 1000
    path = tmp_path / "block.nii"
    nib.save(nib.Nifti1Image(data, affine), path)
    viewer = make_napari_viewer(show=True)

    viewer.open(str(path), plugin="medseg")
    viewer.reset_view()
    image = viewer.screenshot(canvas_only=True, flash=False)

    bright = image[..., 0] > 128
    rows, cols = np.nonzero(bright)
    assert rows.size > 0
    assert rows.mean() < image.shape[0] / 2, "anterior must be at the top"
    assert cols.mean() > image.shape[1] / 2, "the patient's left must be on the right"


def test_reader_declines_what_it_cannot_read(tmp_path):
    from napari_builtins.io import napari_get_reader

    from napari_plugin._reader import get_reader, read_volume

    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) is None
    # medseg is the preferred reader of every folder (see _reader): one without DICOM goes on to napari's
    assert get_reader(str(tmp_path / "empty")) is napari_get_reader(str(tmp_path / "empty")) is not read_volume


def test_opening_a_file_imports_neither_torch_nor_monai(tmp_path):
    """File > Open must not wait for torch (5-10 s): only SAM2, Mask R-CNN and metrics need it."""
    nifti, dicom = tmp_path / "scan.nii.gz", tmp_path / "series"
    from medseg.phantom import make_phantom, write_dicom_series

    _write_nifti(nifti, (1, 1, 1))
    write_dicom_series(make_phantom(0, shape=(4, 16, 16))[0], dicom)
    code = (
        "import sys, napari_plugin._reader as r\n"
        f"for path in ({str(nifti)!r}, {str(dicom)!r}):\n"
        "    assert r.get_reader(path)(path)\n"
        "print(sorted(m for m in ('torch', 'monai', 'highdicom') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_opening_the_medseg_panel_imports_no_model_library():
    """The dock widget opens without torch, sam2, torchvision or MONAI (they took 8 s when it
    did): they load in the worker of the first task that needs them."""
    code = (
        "import sys, napari\n"
        "from napari_plugin._widget import MedsegWidget\n"
        "viewer = napari.Viewer(show=False)\n"
        "widget = MedsegWidget(viewer)\n"
        "print(sorted(m for m in ('torch', 'sam2', 'torchvision', 'monai', 'highdicom') if m in sys.modules))\n"
        "viewer.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_writer_saves_labels_on_the_source_affine(make_napari_viewer, tmp_path):
    source = tmp_path / "scan.nii.gz"
    affine = _write_nifti(source, (-1, 1, 1))
    viewer = make_napari_viewer()
    [image] = viewer.open(str(source), plugin="medseg")
    from napari_plugin._layers import labels_layer_data
    from medseg.volume import LabelVolume

    volume = image.metadata["medseg_volume"]
    array = np.zeros(volume.shape, np.int32)
    array[2, 3:6, 4:9] = 3
    data, kwargs, _ = labels_layer_data(LabelVolume.like(volume, array), volume, "organ")
    labels = viewer.add_labels(data, **kwargs)

    out = tmp_path / "out" / "organ.nii.gz"
    written = labels.save(str(out), plugin="medseg")

    assert written == [str(out)]
    saved = nib.load(out)
    np.testing.assert_allclose(saved.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(saved.dataobj).transpose(2, 1, 0), array)


def test_writer_refuses_labels_without_a_source(tmp_path):
    from medseg.errors import InputError
    from napari_plugin._writer import write_labels

    with pytest.raises(InputError, match="does not know which volume"):
        write_labels(str(tmp_path / "x.nii.gz"), np.zeros((2, 3, 4), np.int32), {"name": "drawn", "metadata": {}})
    assert not (tmp_path / "x.nii.gz").exists()


def test_phantom_sample_opens_image_and_ground_truth(make_napari_viewer):
    viewer = make_napari_viewer()

    image, truth = viewer.open_sample("medseg", "phantom")

    volume = image.metadata["medseg_volume"]
    assert volume.modality == "CT"
    assert image.data.shape == truth.data.shape == volume.shape
    np.testing.assert_allclose(image.scale, volume.spacing)
    assert tuple(image.contrast_limits) == (-160.0, 240.0)  # soft-tissue window, level 40 width 400
    assert truth.metadata["medseg_volume"] is volume
    assert set(np.unique(truth.data)) == {0, 1, 2, 3}
    assert list(truth.features["name"]) == ["liver", "spleen", "kidney"]
    np.testing.assert_allclose(truth.affine.affine_matrix, image.affine.affine_matrix)


def test_mni152_sample_is_real_mri_with_tissue_labels(make_napari_viewer):
    import nilearn  # noqa: F401  (installed by make test: a missing one fails, not skips)

    viewer = make_napari_viewer()

    image, truth = viewer.open_sample("medseg", "mni152")

    assert image.data.shape == (189, 233, 197)
    np.testing.assert_allclose(image.scale, (1.0, 1.0, 1.0))
    assert list(truth.features["name"]) == ["grey_matter", "white_matter"]
    # The template is RAS with voxel (0, 0, 0) at RAS (-98, -134, -72) mm: LPS (98, 134, -72).
    np.testing.assert_allclose(image.data_to_world((0, 0, 0)), (-72.0, 134.0, 98.0))


def _world_rule(volume, zyx):
    """The display frame of ``_layers``: LPS projected on the index axes, flipped toward L, P, S."""
    direction_zyx = volume.direction[:, ::-1]
    signs = np.sign(direction_zyx[np.abs(direction_zyx).argmax(axis=0), [0, 1, 2]])
    return signs * (volume.geometry.index_to_world(zyx)[0] @ direction_zyx)


def test_dicom_series_opens_like_its_nifti(make_napari_viewer, tmp_path):
    from medseg.phantom import make_phantom, write_dicom_series

    phantom, _ = make_phantom(3, shape=(6, 24, 20))  # anisotropic, slightly oblique
    write_dicom_series(phantom, tmp_path / "series")
    nifti = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(phantom.array.transpose(2, 1, 0), phantom.affine), nifti)
    viewer = make_napari_viewer()

    [dicom_layer] = viewer.open(str(tmp_path / "series"), plugin="medseg")
    [nifti_layer] = viewer.open(str(nifti), plugin="medseg")

    volume = dicom_layer.metadata["medseg_volume"]
    assert volume.modality == "CT" and dicom_layer.name == "series"
    assert volume.geometry.same_grid(phantom.geometry)
    np.testing.assert_array_equal(dicom_layer.data, phantom.array)
    np.testing.assert_allclose(dicom_layer.scale, phantom.spacing)
    assert tuple(dicom_layer.contrast_limits) == (-160.0, 240.0)  # CT: soft-tissue window
    for zyx in [(0, 0, 0), (5, 23, 19), (2, 10, 4)]:
        world = dicom_layer.data_to_world(zyx)
        np.testing.assert_allclose(world, _world_rule(phantom, zyx), atol=1e-4)
        np.testing.assert_allclose(world, nifti_layer.data_to_world(zyx), atol=1e-4)
    # a rigid frame: world distances are patient distances
    a, b = phantom.geometry.index_to_world([(0, 0, 0), (5, 23, 19)])
    world_distance = np.linalg.norm(np.subtract(dicom_layer.data_to_world((5, 23, 19)),
                                                dicom_layer.data_to_world((0, 0, 0))))
    assert world_distance == pytest.approx(np.linalg.norm(a - b), abs=1e-4)


def test_dicom_study_folder_opens_one_layer_per_series(make_napari_viewer, tmp_path):
    from medseg.phantom import make_phantom, write_dicom_series

    small, _ = make_phantom(0, shape=(4, 16, 16))
    large, _ = make_phantom(1, shape=(7, 16, 16))
    write_dicom_series(small, tmp_path / "study" / "a", series_description="small")
    write_dicom_series(large, tmp_path / "study" / "b", series_description="large")
    viewer = make_napari_viewer()

    layers = viewer.open(str(tmp_path / "study"), plugin="medseg")

    assert [layer.name for layer in layers] == ["study: large (CT)", "study: small (CT)"]
    assert [layer.data.shape for layer in layers] == [(7, 16, 16), (4, 16, 16)]


def test_labels_on_a_dicom_series_save_as_dicom_seg(make_napari_viewer, tmp_path):
    import pydicom

    from medseg.io import load_labels
    from medseg.phantom import make_phantom, write_dicom_series
    from medseg.volume import LabelVolume
    from napari_plugin._layers import labels_layer_data

    phantom, truth = make_phantom(2, shape=(5, 20, 20))
    write_dicom_series(phantom, tmp_path / "series")
    viewer = make_napari_viewer()
    [image] = viewer.open(str(tmp_path / "series"), plugin="medseg")
    volume = image.metadata["medseg_volume"]
    on_series = LabelVolume(truth.array, volume.geometry, label_names=truth.label_names)
    data, kwargs, _ = labels_layer_data(on_series, volume, "organs")
    labels = viewer.add_labels(data, **kwargs)

    [written] = labels.save(str(tmp_path / "organs.dcm"), plugin="medseg")

    back = load_labels(written, volume)
    np.testing.assert_array_equal(back.array, truth.array)
    segments = pydicom.dcmread(written).SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["liver", "spleen", "kidney"]


def test_study_folder_with_a_bad_series_opens_the_good_ones_and_names_the_skipped(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    from medseg.phantom import make_phantom, write_dicom_series

    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    good, _ = make_phantom(0, shape=(4, 16, 16))
    bad, _ = make_phantom(1, shape=(7, 16, 16))
    write_dicom_series(good, tmp_path / "study" / "a", series_description="good axial")
    files = write_dicom_series(bad, tmp_path / "study" / "b", series_description="broken axial")
    sorted(files)[3].unlink()  # a missing slice in the middle
    viewer = make_napari_viewer()

    layers = viewer.open(str(tmp_path / "study"), plugin="medseg")

    assert [layer.name for layer in layers] == ["study: good axial (CT)"]
    [message] = [m for m in messages if "skipped 1 of 2 series" in m]
    assert "'broken axial' (CT, 6 slices)" in message


def test_integer_label_file_opens_as_labels_on_its_image(make_napari_viewer, phantom_case):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(phantom_case.image), plugin="medseg")
    [labels] = viewer.open(str(phantom_case.label), plugin="medseg")  # decided by its voxels, not its name

    assert labels._type_string == "labels" and labels.opacity == 0.5
    np.testing.assert_array_equal(labels.data, phantom_case.labels.array)
    assert labels.metadata["medseg_volume"].geometry.same_grid(image.metadata["medseg_volume"].geometry)
    np.testing.assert_allclose(labels.data_to_world((3, 10, 20)), image.data_to_world((3, 10, 20)))
    assert image._type_string == "image" and image.contrast_limits == [-160.0, 240.0]  # HU-like: CT window


def test_opening_the_widget_keeps_every_reader_choice_the_user_made(make_napari_viewer, phantom_case):
    from napari.settings import get_settings

    from napari_plugin._reader import CLAIMED_PATTERNS

    viewer = make_napari_viewer()
    settings = get_settings()
    previous = dict(settings.plugins.extension2reader)  # napari's settings outlive a test: put them back
    settings.plugins.extension2reader = {"*.nii.gz": "napari", "*.tif": "napari"}  # choices the user made
    try:
        viewer.window.add_plugin_dock_widget("medseg", "medseg")
        # medseg is preferred only where the user had not chosen (issue 27: folders open without a question)
        assert settings.plugins.extension2reader == {"*.nii.gz": "napari", "*.tif": "napari",
                                                     **{p: "medseg" for p in CLAIMED_PATTERNS if p != "*.nii.gz"}}
        [layer] = viewer.open(str(phantom_case.image), plugin="medseg")
        assert "medseg_volume" in layer.metadata
    finally:
        settings.plugins.extension2reader = previous


@pytest.mark.parametrize("scale", [(2.0, -0.8, 0.9), (2.0, 0.8, 0.9)], ids=["flipped", "plain"])
def test_a_layer_from_another_reader_keeps_its_whole_transform(make_napari_viewer, scale):
    from medseg.errors import GeometryError
    from napari_plugin._layers import volume_of_image

    viewer = make_napari_viewer()
    flip_x = np.diag([1.0, 1.0, -1.0, 1.0])
    layer = viewer.add_image(np.zeros((5, 6, 7), np.float32), scale=scale, translate=(10, -20, 30), affine=flip_x)

    volume = volume_of_image(layer)

    for zyx in [(0, 0, 0), (4, 0, 0), (0, 5, 0), (0, 0, 6), (2, 3, 4)]:
        np.testing.assert_allclose(volume.geometry.index_to_world(zyx)[0], layer.data_to_world(zyx)[::-1], atol=1e-9)
    np.testing.assert_allclose(volume.spacing, np.abs(scale))
    sheared = viewer.add_image(np.zeros((5, 6, 7), np.float32), shear=(0.3, 0, 0))
    with pytest.raises(GeometryError, match="shearing transform"):
        volume_of_image(sheared)


@pytest.mark.parametrize("dicom_format", ["rtstruct", "seg"])
def test_a_dropped_structure_set_opens_as_labels_on_its_series(make_napari_viewer, tmp_path,
                                                               dicom_phantom, dicom_format):
    import shutil

    from medseg.errors import MedsegError
    from medseg.io import load_volume, save_labels
    from medseg.volume import LabelVolume

    from napari_plugin._reader import read_volume
    from napari_plugin._writer import write_labels

    folder = tmp_path / "study"
    shutil.copytree(dicom_phantom.image, folder)
    volume = load_volume(folder)
    truth = LabelVolume.like(volume, dicom_phantom.labels.array, label_names=dicom_phantom.labels.label_names)
    written = save_labels(truth, volume, tmp_path / "structures.dcm", format=dicom_format)
    dropped = folder / "structures.dcm"  # planning systems export it beside the series
    shutil.move(written, dropped)

    viewer = make_napari_viewer()
    image, labels = viewer.open(str(dropped), plugin="medseg")
    assert image._type_string == "image" and labels._type_string == "labels"
    np.testing.assert_array_equal(np.asarray(labels.data), truth.array)  # exact for these phantoms (test_rtstruct)
    np.testing.assert_allclose(labels.scale, image.scale)

    # Saved back through the panel's writer, in the format the user picked, it reads the same.
    out = tmp_path / "again.dcm"
    write_labels(str(out), labels.data, {"name": labels.name, "metadata": labels.metadata}, dicom_format=dicom_format)
    from medseg.io import label_file_kind, load_labels

    assert label_file_kind(out) == dicom_format
    np.testing.assert_array_equal(load_labels(out, volume).array, truth.array)

    alone = tmp_path / "alone" / "structures.dcm"  # no image series beside it: a clear refusal
    alone.parent.mkdir()
    shutil.copy(dropped, alone)
    with pytest.raises(MedsegError, match="none of the 0 image series"):
        read_volume(str(alone))


def _no_dialog(qtbot):
    """Fail on any modal dialog (napari's "Choose reader" among them), closing it so the test goes on."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QLabel

    seen = []

    def close_any():
        dialog = QApplication.activeModalWidget()
        if dialog is not None:
            seen.append(" | ".join([dialog.windowTitle()] + [label.text() for label in dialog.findChildren(QLabel)]))
            dialog.reject()

    timer = QTimer()
    timer.timeout.connect(close_any)
    timer.start(50)
    return seen, timer


def _drop(qtbot, viewer, path):
    """A file-manager drop of ``path`` on the viewer's canvas (napari's drag and drop), no key held."""
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    # napari reads the keyboard state (Shift: open as a stack): release what an earlier test may have left
    qtbot.keyRelease(viewer.window._qt_window, Qt.Key.Key_Shift)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    viewer.window._qt_viewer.dropEvent(event)


def test_dicom_folders_open_with_medseg_from_file_open_and_drag_and_drop_without_a_question(
        make_napari_viewer, qtbot, tmp_path, dicom_phantom):
    import shutil

    from PIL import Image
    from napari.utils.notifications import notification_manager

    from medseg.phantom import make_phantom, write_dicom_series

    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    good, _ = make_phantom(0, shape=(4, 16, 16))
    bad, _ = make_phantom(1, shape=(7, 16, 16))
    write_dicom_series(good, tmp_path / "study" / "a", series_description="good axial")
    sorted(write_dicom_series(bad, tmp_path / "study" / "b", series_description="broken axial"))[3].unlink()
    pictures = tmp_path / "pictures"  # not medical: napari's own reader still opens it
    pictures.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 50 * i, np.uint8)).save(pictures / f"{i}.png")
    shutil.copytree(dicom_phantom.image, tmp_path / "series")
    viewer = make_napari_viewer(show=True)
    viewer.window.add_plugin_dock_widget("medseg", "medseg")
    seen, timer = _no_dialog(qtbot)

    viewer.window._qt_viewer._qt_open([str(tmp_path / "series")], stack=False)  # File ▸ Open Folder
    _drop(qtbot, viewer, tmp_path / "study")  # drag and drop of a study folder with a broken series
    [picture_stack] = viewer.open(str(pictures), plugin=None)  # the preferences decide, as in File ▸ Open
    timer.stop()

    assert seen == []
    series, study = viewer.layers[0], viewer.layers[1]
    volume = series.metadata["medseg_volume"]
    assert volume.modality == "CT" and volume.geometry.same_grid(dicom_phantom.volume.geometry)
    np.testing.assert_allclose(series.scale, dicom_phantom.volume.spacing)
    assert study.name == "study: good axial (CT)" and len(viewer.layers) == 3
    [message] = [m for m in messages if "skipped 1 of 2 series" in m]
    assert "'broken axial' (CT, 6 slices)" in message
    assert "medseg_volume" not in picture_stack.metadata and picture_stack.data.shape == (2, 8, 8)


def test_open_without_a_plugin_name_and_a_structure_set_beside_its_open_series(make_napari_viewer, tmp_path,
                                                                              dicom_phantom, phantom_case):
    import shutil

    from medseg.io import load_volume, save_labels
    from medseg.volume import LabelVolume

    folder = tmp_path / "study"
    shutil.copytree(dicom_phantom.image, folder)
    volume = load_volume(folder)
    truth = LabelVolume.like(volume, dicom_phantom.labels.array, label_names=dicom_phantom.labels.label_names)
    shutil.move(save_labels(truth, volume, tmp_path / "structures.dcm", format="rtstruct"), folder / "structures.dcm")
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("medseg", "medseg")

    # plugin=None: the reader preferences decide (napari 0.9's viewer.open defaults to plugin="napari")
    [nifti] = viewer.open(str(phantom_case.image), plugin=None)
    [series] = viewer.open(str(folder), plugin=None)
    [structures] = viewer.open(str(folder / "structures.dcm"), plugin=None)  # the series is open: only the labels

    assert "medseg_volume" in nifti.metadata and "medseg_volume" in series.metadata
    assert [layer._type_string for layer in viewer.layers] == ["image", "image", "labels"]
    np.testing.assert_array_equal(np.asarray(structures.data), truth.array)


def test_viewer_open_without_plugin_is_napari_s_own_reader_whatever_medseg_claims(make_napari_viewer, phantom_case):
    """What the README's napari section says no plugin can change: napari 0.9's ``viewer.open(path)``
    defaults to ``plugin="napari"`` and then tries only napari's readers, whatever the reader
    preferences; if this fails, napari has changed and medseg may claim ``viewer.open`` too."""
    from napari.settings import get_settings

    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("medseg", "medseg")
    assert get_settings().plugins.extension2reader.get("*.nii.gz") == "medseg"
    with pytest.raises(Exception, match="Could not find a backend"):  # imageio, under napari's reader
        viewer.open(str(phantom_case.image))
    assert len(viewer.layers) == 0
