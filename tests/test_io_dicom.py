"""medseg.io on DICOM: series, folders of series, multi-frame, DICOM SEG, real pydicom files, bad input."""

from __future__ import annotations

import shutil

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.datasets import pydicom_test_file
from medseg.errors import GeometryError, InputError
from medseg.io import list_dicom_series, load_labels, load_volume, read_geometry, save_labels
from medseg.io.dicom import METADATA_KEYWORDS
from medseg.phantom import make_phantom, write_dicom_series
from medseg.volume import LabelVolume

TOL = 1e-5
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "StudyDate",
               "ReferringPhysicianName")


def _copy_series(source, target):
    shutil.copytree(source, target)
    return sorted(target.iterdir())


def _files_by_position(folder):
    """The series' files sorted along the slice normal (what a correct reader must do)."""
    headers = [(f, pydicom.dcmread(f, stop_before_pixels=True)) for f in folder.iterdir()]
    normal = np.cross(*np.reshape(np.array(headers[0][1].ImageOrientationPatient, float), (2, 3)))
    return [f for f, h in sorted(headers, key=lambda fh: np.dot(np.array(fh[1].ImagePositionPatient, float), normal))]


def test_series_with_oblique_sagittal_direction_reads_exactly(dicom_phantom, unmodified):
    with unmodified(dicom_phantom.image):
        volume = load_volume(dicom_phantom.image)
    truth = dicom_phantom.volume
    assert volume.modality == "CT"
    assert volume.shape == truth.shape
    np.testing.assert_allclose(volume.spacing, truth.spacing, atol=TOL)
    np.testing.assert_allclose(volume.origin, truth.origin, atol=TOL)
    np.testing.assert_allclose(volume.direction, truth.direction, atol=TOL)
    # rescale applied: stored values are offset by the intercept
    np.testing.assert_array_equal(volume.array, truth.array)
    assert len(volume.source_files) == truth.shape[0]
    assert read_geometry(dicom_phantom.image).same_grid(volume.geometry, atol=TOL)

    # SimpleITK/GDCM reading the same series (its own position sort) gives the same grid and voxels.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom_phantom.image)))
    reference = reader.Execute()
    np.testing.assert_allclose(reference.GetOrigin(), volume.origin, atol=1e-4)
    np.testing.assert_allclose(np.reshape(reference.GetDirection(), (3, 3)), volume.direction, atol=TOL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reference), volume.array)


def test_slices_are_sorted_by_position_not_file_name(dicom_phantom):
    volume = load_volume(dicom_phantom.image)
    by_name = sorted(dicom_phantom.image.iterdir())
    assert list(volume.source_files) == _files_by_position(dicom_phantom.image)
    assert list(volume.source_files) != by_name  # the fixture's names are deliberately out of order


def test_metadata_is_an_allow_list_without_patient_fields(dicom_phantom):
    volume = load_volume(dicom_phantom.image)
    header = pydicom.dcmread(volume.source_files[0], stop_before_pixels=True)
    assert header.PatientName == "PHANTOM^DEMO"  # the files do carry patient fields ...
    assert set(volume.metadata) <= {*METADATA_KEYWORDS, "format", "n_files"}  # ... the volume does not
    assert not set(IDENTIFYING) & set(volume.metadata)
    assert "PHANTOM^DEMO" not in repr(volume) and "PHANTOM^DEMO" not in str(volume.metadata)
    assert volume.metadata["SeriesDescription"] == "sagittal phantom"
    assert volume.metadata["format"] == "dicom-series"


def test_dicom_series_labels_round_trip_to_nifti(dicom_phantom, tmp_path):
    volume = load_volume(dicom_phantom.image)
    labels = LabelVolume.like(volume, dicom_phantom.labels.array)
    out = save_labels(labels, volume, tmp_path / "labels.nii.gz")
    for geometry_of in (
        lambda p: (nib.load(p).affine, nib.load(p).shape),
        lambda p: (_sitk_affine(sitk.ReadImage(str(p))), sitk.ReadImage(str(p)).GetSize()),
    ):
        affine, shape = geometry_of(out)
        np.testing.assert_allclose(affine, volume.affine, atol=TOL)
        assert tuple(shape) == volume.shape[::-1]
    # The labelled voxels land on the same physical points as in the DICOM volume.
    zyx = np.argwhere(labels.array == 3)
    ras = (nib.load(out).affine @ np.c_[zyx[:, ::-1], np.ones(len(zyx))].T).T[:, :3]
    np.testing.assert_allclose(ras * [-1, -1, 1], volume.geometry.index_to_world(zyx), atol=1e-4)
    assert np.all(np.asarray(nib.load(out).dataobj)[tuple(zyx[:, ::-1].T)] == 3)


def _sitk_affine(image: sitk.Image) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1, -1, 1]) @ np.reshape(image.GetDirection(), (3, 3)) @ np.diag(image.GetSpacing())
    affine[:3, 3] = np.diag([-1, -1, 1]) @ np.array(image.GetOrigin())
    return affine


def test_dicom_seg_round_trip(dicom_phantom, tmp_path):
    volume = load_volume(dicom_phantom.image)
    labels = LabelVolume.like(volume, dicom_phantom.labels.array, label_names={1: "liver", 2: "spleen", 3: "kidney"})
    out = save_labels(labels, volume, tmp_path / "labels.dcm")
    back = load_labels(out, volume)
    np.testing.assert_array_equal(back.array, labels.array)
    assert back.label_names == {1: "liver", 2: "spleen", 3: "kidney"}

    seg = hd.seg.segread(out)
    assert [seg.get_segment_description(n).SegmentLabel for n in (1, 2, 3)] == ["liver", "spleen", "kidney"]
    assert seg.get_segment_description(1).SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in volume.source_files}
    assert seg.PatientName == "PHANTOM^DEMO"  # a SEG belongs to its source's patient, by the standard


def test_dicom_seg_of_untrained_output_says_so(dicom_phantom, tmp_path):
    volume = load_volume(dicom_phantom.image)
    labels = LabelVolume.like(volume, dicom_phantom.labels.array, untrained=True, provenance={"method": "sam2"})
    out = save_labels(labels, volume, tmp_path / "untrained.dcm")
    assert "UNTRAINED" in pydicom.dcmread(out, stop_before_pixels=True).SeriesDescription


def test_dicom_seg_from_another_grid_is_refused(dicom_phantom, tmp_path):
    volume = load_volume(dicom_phantom.image)
    out = save_labels(LabelVolume.like(volume, dicom_phantom.labels.array), volume, tmp_path / "labels.dcm")
    other, _ = make_phantom(0, shape=(6, 20, 20))
    with pytest.raises(GeometryError, match=r"labels\.dcm: the SEG's frames do not lie on the image's voxel grid"):
        load_labels(out, other)


def test_multiframe_dicom_with_shuffled_frames(dicom_phantom, tmp_path):
    files = list(_files_by_position(dicom_phantom.image))
    shuffled = [pydicom.dcmread(files[i]) for i in np.random.default_rng(0).permutation(len(files))]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        shuffled, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1
    )
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)

    volume = load_volume(path)
    assert volume.metadata["format"] == "dicom-multiframe"
    assert volume.geometry.same_grid(dicom_phantom.volume.geometry, atol=1e-4)
    np.testing.assert_array_equal(volume.array, dicom_phantom.volume.array)
    assert read_geometry(path).same_grid(volume.geometry, atol=TOL)

    labels = LabelVolume.like(volume, dicom_phantom.labels.array)
    out = save_labels(labels, volume, tmp_path / "enhanced_seg.dcm")
    np.testing.assert_array_equal(load_labels(out, volume).array, labels.array)

    del enhanced.PerFrameFunctionalGroupsSequence
    enhanced.save_as(tmp_path / "no_groups.dcm")
    with pytest.raises(InputError, match=r"no_groups\.dcm: a multi-frame image without per-frame functional "
                                         r"groups \(10 frames\)"):
        load_volume(tmp_path / "no_groups.dcm")


# --- folders with several series ---------------------------------------------------------
@pytest.fixture(scope="module")
def two_series(tmp_path_factory, dicom_phantom):
    folder = tmp_path_factory.mktemp("two_series")
    small, _ = make_phantom(5, shape=(4, 40, 44))
    write_dicom_series(small, folder / "b", series_description="short scout", series_uid="1.2.826.0.1.3680043.8.498.1")
    shutil.copytree(dicom_phantom.image, folder / "a")
    return folder


def test_two_series_in_one_folder_need_a_choice(two_series, dicom_phantom):
    with pytest.raises(InputError) as error:
        load_volume(two_series)
    message = str(error.value)
    long_uid = pydicom.dcmread(next(dicom_phantom.image.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    assert "holds 2 image series; choose one with series_uid=" in message
    assert f"{long_uid} (CT, 'sagittal phantom', 10 slices)" in message
    assert "1.2.826.0.1.3680043.8.498.1 (CT, 'short scout', 4 slices)" in message

    assert [s.n_slices for s in list_dicom_series(two_series)] == [10, 4]
    assert load_volume(two_series, pick_largest=True).shape == (10, 40, 44)
    assert load_volume(two_series, "1.2.826.0.1.3680043.8.498.1").shape == (4, 40, 44)
    with pytest.raises(InputError, match=r"no series with SeriesInstanceUID 9\.9\.9; the folder holds:"):
        load_volume(two_series, "9.9.9")


# --- bad input ------------------------------------------------------------------------------
def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match=r"the folder is empty; give the folder that holds the DICOM files"):
        load_volume(tmp_path)


def test_folder_of_non_dicom_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    (tmp_path / "blob").write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(InputError, match=r"none of its 2 file\(s\) is DICOM \(e\.g\. blob, notes\.txt\)"):
        load_volume(tmp_path)


def test_missing_slice_is_an_error_not_a_silent_stretch(dicom_phantom, tmp_path):
    _copy_series(dicom_phantom.image, tmp_path / "series")
    ordered = _files_by_position(tmp_path / "series")
    ordered[4].unlink()
    with pytest.raises(GeometryError, match=r"1 missing slice\(s\): a gap of 5\.000 mm after slice 4 of 9 where slices "
                                            r"are 2\.500 mm apart"):
        load_volume(tmp_path / "series")


def test_rescale_is_applied_per_file(dicom_phantom, tmp_path):
    _copy_series(dicom_phantom.image, tmp_path / "series")
    victim = _files_by_position(tmp_path / "series")[4]
    ds = pydicom.dcmread(victim)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    ds.PixelData = np.round((hu + 2000) / 0.5).astype(np.uint16).tobytes()  # same HU, other encoding
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-2000"
    ds.save_as(victim)
    np.testing.assert_array_equal(load_volume(tmp_path / "series").array, dicom_phantom.volume.array)


def test_uneven_spacing_is_an_error(dicom_phantom, tmp_path):
    _copy_series(dicom_phantom.image, tmp_path / "series")
    victim = _files_by_position(tmp_path / "series")[6]
    ds = pydicom.dcmread(victim)
    normal = np.cross(*np.reshape(np.array(ds.ImageOrientationPatient, float), (2, 3)))
    ds.ImagePositionPatient = [f"{v:.6f}" for v in np.array(ds.ImagePositionPatient, float) + 0.8 * normal]
    ds.save_as(victim)
    with pytest.raises(GeometryError, match=r"uneven slice spacing: gaps from 1\.700 to 3\.300 mm; medseg will not "
                                            r"guess a grid"):
        load_volume(tmp_path / "series")


def test_repeated_positions_are_an_error(dicom_phantom, tmp_path):
    files = _copy_series(dicom_phantom.image, tmp_path / "series")
    duplicate = pydicom.dcmread(files[0])
    duplicate.SOPInstanceUID = pydicom.uid.generate_uid()
    duplicate.save_as(tmp_path / "series" / "copy.dcm")
    with pytest.raises(GeometryError, match=r"1 slice\(s\) repeat the position of another; the series holds "
                                            r"several volumes"):
        load_volume(tmp_path / "series")


def test_truncated_file_in_a_series_is_named(dicom_phantom, tmp_path, unmodified):
    files = _copy_series(dicom_phantom.image, tmp_path / "series")
    victim = files[3]
    victim.write_bytes(victim.read_bytes()[:-1500])
    with unmodified(tmp_path / "series"), pytest.raises(InputError,
                                                        match=rf"cannot decode the pixel data of .*{victim.name} "
                                                              r"\(truncated or corrupt\)"):
        load_volume(tmp_path / "series")


def test_gantry_tilt_is_an_error(dicom_phantom, tmp_path):
    files = _copy_series(dicom_phantom.image, tmp_path / "series")
    for path in files:
        ds = pydicom.dcmread(path)
        position = np.array(ds.ImagePositionPatient, float)
        along = np.dot(position, np.cross(*np.reshape(np.array(ds.ImageOrientationPatient, float), (2, 3))))
        ds.ImagePositionPatient = [f"{v:.4f}"
                                   for v in position + 0.3 * along * np.array(ds.ImageOrientationPatient[:3], float)]
        ds.save_as(path)
    with pytest.raises(GeometryError, match=r"slice positions do not follow the slice normal \(gantry tilt of about"):
        load_volume(tmp_path / "series")


# --- real files shipped with pydicom -------------------------------------------------------
def test_real_ct_slice_is_in_hounsfield_units():
    path = pydicom_test_file("CT_small.dcm")
    volume = load_volume(path)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert float(ds.RescaleIntercept) == -1024.0
    np.testing.assert_array_equal(volume.array[0], expected)
    assert volume.modality == "CT" and volume.shape == (1, 128, 128)
    np.testing.assert_allclose(volume.origin, [float(v) for v in ds.ImagePositionPatient], atol=TOL)
    np.testing.assert_allclose(volume.spacing, (5.0, 0.661468, 0.661468), atol=TOL)  # one slice: z = slice thickness
    assert volume.metadata["KVP"] == 120.0 and volume.metadata["ConvolutionKernel"] == "STANDARD"
    assert "PatientName" in ds and not set(IDENTIFYING) & set(volume.metadata)


def test_real_mr_slice_matches_pydicom():
    path = pydicom_test_file("MR_small.dcm")
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.array[0], pydicom.dcmread(path).pixel_array)
    assert volume.modality == "MR"


def test_real_localizer_folder_lists_its_series():
    folder = pydicom_test_file("dicomdirtests/98892003/MR2")
    with pytest.raises(InputError, match=r"holds 3 image series.*\n.*'T/S/C RF FAST PILOT', 3 slices"):
        load_volume(folder)


def test_real_three_plane_localizer_is_refused():
    # One series whose 3 slices are axial, sagittal and coronal: not a volume.
    folder = pydicom_test_file("dicomdirtests/98892003/MR2")
    uid = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.136"
    with pytest.raises(GeometryError, match=rf"series {uid}: its 3 slices have 3 different orientations"):
        load_volume(folder, uid)


def test_real_dicom_without_pixel_data_is_refused():
    with pytest.raises(InputError, match=r"holds DICOM objects \(50 CT without pixel data\) but no image series"):
        load_volume(pydicom_test_file("dicomdirtests/TINY_ALPHA"))


def test_real_truncated_file_is_refused(unmodified):
    path = pydicom_test_file("MR_truncated.dcm")
    with unmodified(path), pytest.raises(InputError,
                                         match=r"cannot decode the pixel data of .*MR_truncated\.dcm "
                                               r"\(truncated or corrupt\)"):
        load_volume(path)


def test_real_non_image_dicom_is_refused():
    with pytest.raises(InputError, match=r"liver_1frame\.dcm: a DICOM SEG without an image to load"):
        load_volume(pydicom_test_file("liver_1frame.dcm"))


def _tilt(files, degrees: float) -> None:
    """Shift each slice along the row direction in proportion to its distance along the normal."""
    for path in files:
        ds = pydicom.dcmread(path)
        position = np.array(ds.ImagePositionPatient, float)
        along = np.dot(position, np.cross(*np.reshape(np.array(ds.ImageOrientationPatient, float), (2, 3))))
        shift = np.tan(np.radians(degrees)) * along * np.array(ds.ImageOrientationPatient[:3], float)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position + shift]
        ds.save_as(path)


def test_small_gantry_tilt_is_refused_not_dropped(dicom_phantom, tmp_path):
    # 0.5 degrees passed before (the shear was silently dropped): the last slice would sit 0.2 mm off.
    files = _copy_series(dicom_phantom.image, tmp_path / "series")
    _tilt(files, 0.5)
    with pytest.raises(GeometryError, match=r"gantry tilt of about 0\.50 degrees, the last slice 0\.20 mm off\); the "
                                            r"grid is sheared and medseg will not drop"):
        load_volume(tmp_path / "series")


def test_position_rounding_is_not_tilt(dicom_phantom, tmp_path):
    files = _copy_series(dicom_phantom.image, tmp_path / "series")
    _tilt(files, 0.05)  # a drift of 0.02 mm over the stack: what 2-decimal positions produce
    assert load_volume(tmp_path / "series").geometry.same_grid(dicom_phantom.volume.geometry, atol=0.05)
