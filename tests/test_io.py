"""medseg.io on NIfTI, NRRD and MetaImage: exact geometry, label round trips, bad input."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from medseg.errors import GeometryError, InputError, OutputError
from medseg.geometry import Geometry
from medseg.io import load_labels, load_volume, read_geometry, save_labels
from medseg.volume import LabelVolume

TOL = 1e-5


def _affine(linear: np.ndarray, spacing_xyz: tuple[float, float, float],
            origin_ras: tuple[float, float, float]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = linear @ np.diag(spacing_xyz)
    affine[:3, 3] = origin_ras
    return affine


AFFINES = {
    "RAS": _affine(np.eye(3), (0.8, 0.9, 2.5), (-90.0, -120.5, 30.25)),
    "LAS": _affine(np.diag([-1.0, 1.0, 1.0]), (0.7, 0.7, 3.0), (100.0, -80.0, -40.0)),
    "oblique": _affine(Rotation.from_euler("xyz", [25, -10, 35], degrees=True).as_matrix(), (0.6, 0.75, 2.0),
                       (12.5, -33.0, 71.0)),
}


def _write_image(path, affine, shape_xyz=(20, 16, 9), seed=0):
    """A smooth float image with a bright off-centre blob (labels from it are asymmetric)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape_xyz), indexing="ij")
    data = 100.0 * np.exp(-((x - 6) ** 2 + (y - 10) ** 2 + (z - 3) ** 2) / 20.0) + rng.normal(0, 1, shape_xyz)
    image = nib.Nifti1Image(data.astype(np.float32), affine)
    image.set_qform(affine, code=1)
    nib.save(image, path)
    return data


def _assert_labels_line_up(labels: LabelVolume, path) -> None:
    """Reload ``path`` with nibabel and SimpleITK: same grid as ``labels`` and same voxels at the same points."""
    geometry = labels.geometry
    reference = nib.load(path)
    assert reference.shape == geometry.shape[::-1]
    np.testing.assert_allclose(reference.header.get_zooms()[:3], geometry.spacing[::-1], atol=TOL)
    np.testing.assert_allclose(reference.affine, geometry.affine, atol=TOL)
    np.testing.assert_array_equal(np.asarray(reference.dataobj).transpose(2, 1, 0), labels.array)
    assert np.issubdtype(reference.get_data_dtype(), np.integer)

    image = sitk.ReadImage(str(path))
    assert image.GetSize() == geometry.shape[::-1]
    np.testing.assert_allclose(image.GetSpacing(), geometry.spacing[::-1], atol=TOL)
    np.testing.assert_allclose(image.GetOrigin(), geometry.origin, atol=TOL)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), geometry.direction, atol=TOL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels.array)

    # Every labelled voxel sits at the same physical point in medseg, nibabel and SimpleITK.
    zyx = np.argwhere(labels.array > 0)[::7]
    assert len(zyx) > 0
    lps = geometry.index_to_world(zyx)
    ras = (reference.affine @ np.c_[zyx[:, ::-1], np.ones(len(zyx))].T).T[:, :3]
    np.testing.assert_allclose(ras * [-1, -1, 1], lps, atol=1e-4)
    itk_points = [image.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]]) for index in zyx]
    np.testing.assert_allclose(itk_points, lps, atol=1e-4)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_nifti_round_trip_keeps_geometry_in_nibabel_and_simpleitk(tmp_path, unmodified, name):
    affine = AFFINES[name]
    source = tmp_path / f"{name}.nii.gz"
    data = _write_image(source, affine)
    with unmodified(source):
        volume = load_volume(source)
    assert volume.shape == data.shape[::-1]
    np.testing.assert_allclose(volume.affine, affine, atol=TOL)
    np.testing.assert_allclose(volume.array, data.transpose(2, 1, 0), atol=1e-4)
    # SimpleITK reading the same input agrees with medseg's LPS geometry.
    reference = sitk.ReadImage(str(source))
    np.testing.assert_allclose(reference.GetOrigin(), volume.origin, atol=TOL)
    np.testing.assert_allclose(np.reshape(reference.GetDirection(), (3, 3)), volume.direction, atol=TOL)

    labels = LabelVolume.like(volume, (volume.array > 50).astype(np.int32) + (volume.array > 80))
    assert labels.labels == [1, 2]
    out = save_labels(labels, volume, tmp_path / "out" / f"{name}_labels.nii.gz")
    _assert_labels_line_up(labels, out)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left behind
    reloaded = load_labels(out, volume)
    np.testing.assert_array_equal(reloaded.array, labels.array)
    assert reloaded.geometry is volume.geometry


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_round_trip(tmp_path, unmodified, phantom_case, suffix):
    source = tmp_path / f"image{suffix}"
    image = sitk.GetImageFromArray(phantom_case.volume.array)
    image.SetSpacing(phantom_case.volume.spacing[::-1])
    image.SetOrigin(phantom_case.volume.origin)
    image.SetDirection(phantom_case.volume.direction.ravel().tolist())
    sitk.WriteImage(image, str(source))
    with unmodified(source):
        volume = load_volume(source)
        assert read_geometry(source).same_grid(volume.geometry, atol=TOL)
    assert volume.geometry.same_grid(phantom_case.volume.geometry, atol=TOL)
    np.testing.assert_array_equal(volume.array, phantom_case.volume.array)
    assert volume.metadata["format"] == suffix[1:]

    out = save_labels(LabelVolume.like(volume, phantom_case.labels.array), volume, tmp_path / f"labels{suffix}")
    np.testing.assert_array_equal(load_labels(out, volume).array, phantom_case.labels.array)
    nifti_out = save_labels(LabelVolume.like(volume, phantom_case.labels.array), volume, tmp_path / "labels.nii")
    _assert_labels_line_up(LabelVolume.like(volume, phantom_case.labels.array), nifti_out)


def test_phantom_fixture_reads_back_exactly(phantom_case, unmodified):
    with unmodified(phantom_case.image, phantom_case.label):
        volume = load_volume(phantom_case.image)
        labels = load_labels(phantom_case.label, volume)
    assert volume.geometry.same_grid(phantom_case.volume.geometry, atol=TOL)
    np.testing.assert_array_equal(volume.array, phantom_case.volume.array)
    np.testing.assert_array_equal(labels.array, phantom_case.labels.array)
    assert nib.load(phantom_case.label).get_data_dtype() == np.uint8
    assert read_geometry(phantom_case.image).same_grid(volume.geometry, atol=TOL)


def test_singleton_fourth_dimension_is_read_as_3d(tmp_path):
    path = tmp_path / "one_volume.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7, 1), np.float32), AFFINES["RAS"]), path)
    assert load_volume(path).shape == (7, 6, 5)


# --- bad input: a specific, readable error naming the file --------------------------------
def test_4d_nifti_is_refused(tmp_path):
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 3), np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match=r"bold\.nii\.gz: a 4D NIfTI of shape \(5, 6, 7, 3\) \(3 volumes\); medseg "
                                         r"needs one 3D volume"):
        load_volume(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused(tmp_path, bad):
    data = np.zeros((4, 5, 6), np.float32)
    data[1, 2, 3] = bad
    data[0, 0, 0] = bad
    path = tmp_path / "holes.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(InputError, match=r"holes\.nii: 2 of 120 voxels are NaN or infinite"):
        load_volume(path)


def test_label_map_with_other_shape_is_refused(tmp_path, phantom_case):
    path = tmp_path / "small_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), phantom_case.volume.affine), path)
    with pytest.raises(GeometryError, match=r"small_labels\.nii\.gz: label map does not lie on its image's voxel grid: "
                                            r"shape \(10, 10, 10\) != \(12, 48, 48\)"):
        load_labels(path, phantom_case.volume)


def test_label_map_with_other_affine_is_refused(tmp_path, phantom_case):
    shifted = phantom_case.volume.affine.copy()
    shifted[:3, 3] += [0.0, 0.0, 2.5]
    path = tmp_path / "shifted_labels.nii.gz"
    nib.save(nib.Nifti1Image(phantom_case.labels.array.transpose(2, 1, 0).astype(np.uint8), shifted), path)
    with pytest.raises(GeometryError, match=r"shifted_labels\.nii\.gz: .*origin .* != .*resample it onto the image"):
        load_labels(path, phantom_case.volume)


def test_fractional_label_values_are_refused(tmp_path, phantom_case):
    path = tmp_path / "soft.nii.gz"
    nib.save(nib.Nifti1Image(np.full(phantom_case.volume.shape[::-1], 0.5, np.float32),
                             phantom_case.volume.affine), path)
    with pytest.raises(InputError, match=r"soft\.nii\.gz: a label map holds integer values only"):
        load_labels(path, phantom_case.volume)


def test_truncated_gzip_nifti_is_refused(tmp_path, phantom_case, unmodified):
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(phantom_case.image.read_bytes()[:5000])
    with unmodified(path), pytest.raises(InputError,
                                         match=r"cut\.nii\.gz: cannot read the voxel data .*truncated or corrupt"):
        load_volume(path)


def test_truncated_plain_nifti_is_refused(tmp_path, phantom_case):
    path = tmp_path / "cut.nii"
    raw = gzip.decompress(phantom_case.image.read_bytes())
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.nii: cannot read"):
        load_volume(path)


def test_corrupt_header_is_refused(tmp_path):
    path = tmp_path / "noise.nii"
    path.write_bytes(np.random.default_rng(0).bytes(400))
    with pytest.raises(InputError, match=r"noise\.nii: cannot read as NIfTI"):
        load_volume(path)


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.nii\.gz: no such file or folder"):
        load_volume(tmp_path / "nowhere.nii.gz")
    picture = tmp_path / "slice.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(InputError, match=r"slice\.png: not a format medseg reads"):
        load_volume(picture)


def test_series_uid_is_refused_for_nifti(phantom_case):
    with pytest.raises(InputError, match="series_uid applies to DICOM input only"):
        load_volume(phantom_case.image, series_uid="1.2.3")


def test_save_labels_refuses_other_grid_and_unknown_format(tmp_path, phantom_case):
    other = Geometry(phantom_case.volume.shape, (1.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match="not on the image's grid"):
        save_labels(LabelVolume(phantom_case.labels.array, other), phantom_case.volume, tmp_path / "x.nii.gz")
    with pytest.raises(InputError, match=r"labels\.png: cannot write labels as \.png"):
        save_labels(phantom_case.labels, phantom_case.volume, tmp_path / "labels.png")
    with pytest.raises(InputError, match="not read from DICOM"):
        save_labels(phantom_case.labels, phantom_case.volume, tmp_path / "labels.dcm")
    assert not any(tmp_path.iterdir())


def test_save_labels_replaces_an_existing_file_whole(tmp_path, phantom_case):
    out = tmp_path / "labels.nii.gz"
    out.write_bytes(b"old")
    save_labels(phantom_case.labels, phantom_case.volume, out)
    np.testing.assert_array_equal(load_labels(out, phantom_case.volume).array, phantom_case.labels.array)
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]


def test_save_labels_picks_the_smallest_integer_type(tmp_path, phantom_case):
    big = phantom_case.labels.array.astype(np.int32) * 300
    out = save_labels(LabelVolume.like(phantom_case.volume, big), phantom_case.volume, tmp_path / "big.nii.gz")
    assert nib.load(out).get_data_dtype() == np.uint16
    np.testing.assert_array_equal(load_labels(out, phantom_case.volume).array, big)


def test_nifti_with_a_zero_size_dimension_names_the_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 0, 7), np.float32), np.eye(4)), path)
    for read in (load_volume, read_geometry):
        with pytest.raises(InputError, match=r"empty\.nii\.gz: a NIfTI with a zero-size dimension "
                                             r"\(shape \(5, 0, 7\)\)"):
            read(path)


def test_save_labels_takes_a_plain_integer_array(phantom_case, tmp_path):
    out = save_labels(phantom_case.labels.array, phantom_case.volume, tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(load_labels(out, phantom_case.volume).array, phantom_case.labels.array)
    with pytest.raises(GeometryError, match=r"label array shape \(2, 3, 4\) does not match its volume's shape"):
        save_labels(np.zeros((2, 3, 4), np.int32), phantom_case.volume, tmp_path / "bad.nii.gz")
    with pytest.raises(InputError, match=r"format='rtstruct' applies to \.dcm outputs only"):
        save_labels(phantom_case.labels, phantom_case.volume, tmp_path / "x.nii.gz", format="rtstruct")


def test_save_labels_never_replaces_an_input(phantom_case, dicom_phantom, tmp_path, unmodified):
    volume = load_volume(phantom_case.image)
    labels = load_labels(phantom_case.label, volume)
    (tmp_path / "link.nii.gz").symlink_to(phantom_case.image)
    (tmp_path / "dir_link").symlink_to(phantom_case.image.parent)
    with unmodified(phantom_case.image, phantom_case.label, dicom_phantom.image):
        for target in (phantom_case.image, tmp_path / "link.nii.gz", tmp_path / "dir_link" / phantom_case.image.name):
            with pytest.raises(OutputError,
                               match=r"is the input .*phantom\.nii\.gz: writing it would destroy the input"):
                save_labels(labels, volume, target)
        with pytest.raises(OutputError, match=r"is the input .*phantom_labels\.nii\.gz"):
            save_labels(labels, volume, phantom_case.label)  # the label map that was read
        series = load_volume(dicom_phantom.image)
        inside = dicom_phantom.image / "labels.dcm"
        with pytest.raises(OutputError, match=rf"labels\.dcm lies inside the input folder {dicom_phantom.image}"):
            save_labels(dicom_phantom.labels.array, series, inside, format="rtstruct")
        with pytest.raises(OutputError, match=r"writing it would destroy the input"):
            save_labels(dicom_phantom.labels.array, series, series.source_files[3])
    assert not inside.exists()


def test_label_file_kind_tells_label_objects_from_images(dicom_phantom, tmp_path):
    from medseg.io import label_file_kind

    series = load_volume(dicom_phantom.image)
    rt = save_labels(dicom_phantom.labels.array, series, tmp_path / "rt.dcm", format="rtstruct")
    seg = save_labels(dicom_phantom.labels.array, series, tmp_path / "seg.dcm")
    files = (rt, seg, series.source_files[0], dicom_phantom.label, dicom_phantom.image)
    assert [label_file_kind(p) for p in files] == [
        "rtstruct", "seg", None, None, None
    ]


def test_label_maps_are_told_from_images_by_header_and_voxels(tmp_path, phantom_case):
    from medseg.io.files import is_label_map, stored_as_integers

    image, label = phantom_case.image, phantom_case.label  # both integer NIfTI; the name plays no part
    assert stored_as_integers(image) and stored_as_integers(label)
    assert is_label_map(load_volume(label).array) and not is_label_map(load_volume(image).array)  # HU go below 0
    floats = tmp_path / "labels_as_float.nii.gz"
    nib.save(nib.Nifti1Image(phantom_case.labels.array.astype(np.float32), np.eye(4)), floats)
    assert not stored_as_integers(floats)  # float voxels: an image, whatever their values
    sitk.WriteImage(sitk.GetImageFromArray(phantom_case.labels.array.astype(np.uint8)), str(tmp_path / "l.nrrd"))
    assert stored_as_integers(tmp_path / "l.nrrd") and not stored_as_integers(phantom_case.image.parent)
    few_background = np.ones((4, 4, 4), np.int16)
    assert not is_label_map(few_background)  # less than 30% zeros: not mostly background
