"""RT Structure Sets: round trips on oblique, sagittal and coronal series, an independent reader,
holes and islands, reference checks, tolerance, the header, and dciodvfy on medseg's DICOM outputs."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from matplotlib.path import Path as PolygonPath

from medseg.datasets import pydicom_test_file
from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.io import label_file_kind, load_labels, load_volume, save_labels
from medseg.phantom import make_phantom, write_dicom_series
from medseg.volume import LabelVolume, Volume

CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # rows run left-right, columns head-foot


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


def _with_holes_and_islands(labels: np.ndarray) -> np.ndarray:
    """Add label 4: on three slices a ring (a hole) with an island inside the hole."""
    labels = labels.copy()
    for z in range(1, 4):
        labels[z, 4:18, 4:18] = 4
        labels[z, 7:15, 7:15] = 0
        labels[z, 10:12, 10:12] = 4
    return labels


def _series(tmp_path_factory, name: str, direction: np.ndarray, seed: int) -> tuple[Volume, LabelVolume]:
    phantom, labels = make_phantom(seed, shape=(8, 36, 40))
    geometry = Geometry(phantom.shape, (2.0, 0.9, 0.8), (-30.0, 20.5, 41.0), direction)
    folder = tmp_path_factory.mktemp(name)
    write_dicom_series(Volume(phantom.array, geometry, "CT"), folder / "series", series_description=name)
    volume = load_volume(folder / "series")
    names = {**labels.label_names, 4: "ring"}
    provenance = {"method": "sam2", "model": "sam2.1_hiera_tiny", "checkpoint_sha256": "ab" * 32, "prompts": [1]}
    return volume, LabelVolume(_with_holes_and_islands(labels.array), volume.geometry, label_names=names,
                               provenance=provenance)


@pytest.fixture(scope="module", params=["oblique", "coronal", "sagittal"])
def case(request, tmp_path_factory, dicom_phantom):
    if request.param == "sagittal":  # the shared fixture: a sagittal-like stack tilted by 0.2 rad
        volume = load_volume(dicom_phantom.image)
        labels = LabelVolume(_with_holes_and_islands(dicom_phantom.labels.array), volume.geometry,
                             label_names={**dicom_phantom.labels.label_names, 4: "ring"})
    else:
        direction = _rotation(0.3, -0.2, 0.5) if request.param == "oblique" else CORONAL
        volume, labels = _series(tmp_path_factory, request.param, direction, seed=3)
    out = tmp_path_factory.mktemp(f"rt_{request.param}") / "structures.dcm"
    save_labels(labels, volume, out, format="rtstruct")
    return volume, labels, out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_round_trip_keeps_every_structure(case):
    volume, labels, out = case
    back = load_labels(out, volume)
    assert back.label_names == {1: "Liver", 2: "Spleen", 3: "Kidneys", 4: "ring"}  # TG-263 names for known organs
    dice = {v: _dice(labels.array == v, back.array == v) for v in labels.labels}
    print("round-trip Dice per structure:", {v: round(float(d), 4) for v, d in dice.items()})
    assert min(dice.values()) >= 0.98
    np.testing.assert_array_equal(back.array, labels.array)  # contours at half-voxel: in fact exact


def test_holes_and_islands_are_separate_polygons(case):
    _, labels, out = case
    ring = next(r for r in pydicom.dcmread(out).ROIContourSequence if r.ReferencedROINumber == 4)
    per_slice = {}
    for contour in ring.ContourSequence:
        uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
        per_slice[uid] = per_slice.get(uid, 0) + 1
    assert sorted(per_slice.values()) == [3, 3, 3]  # outer boundary, hole, island on each of the 3 slices


def test_an_independent_reader_places_the_contours_on_the_same_voxels(case):
    """SimpleITK (its own sort and geometry) maps each point; matplotlib fills the polygons."""
    volume, labels, out = case
    folder = volume.source_files[0].parent
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(files)
    image = reader.Execute()
    uid_of_slice = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    array = sitk.GetArrayFromImage(image)
    filled = np.zeros(array.shape, dtype=np.int32)
    rows, cols = np.mgrid[: array.shape[1], : array.shape[2]]
    centres = np.column_stack([cols.ravel(), rows.ravel()])
    for roi in pydicom.dcmread(out).ROIContourSequence:
        mask = np.zeros(array.shape, dtype=bool)
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            index = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points])  # (x, y, z)
            z = int(round(index[0, 2]))
            assert np.allclose(index[:, 2], z, atol=1e-3)  # on a slice plane
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == uid_of_slice[z]  # and it says which
            inside = PolygonPath(index[:, :2]).contains_points(centres).reshape(array.shape[1:])
            mask[z] ^= inside
        filled[mask] = roi.ReferencedROINumber
    # GDCM orders the same slices the same way (right-handed stacks), so the grids coincide.
    assert np.allclose(image.GetOrigin(), volume.origin, atol=1e-4)
    np.testing.assert_array_equal(filled, labels.array)


def test_header_references_the_source_and_identifies_the_algorithm(dicom_phantom, tmp_path):
    volume = load_volume(dicom_phantom.image)
    provenance = {"method": "sam2", "model": "sam2.1_hiera_tiny", "checkpoint_sha256": "cd" * 32,
                  "checkpoint": "/home/jane.doe/x.pt"}
    labels = LabelVolume.like(volume, dicom_phantom.labels.array, label_names={1: "liver", 2: "spleen", 3: "kidney"},
                              untrained=True, provenance=provenance)
    out = save_labels(labels, volume, tmp_path / "rt.dcm", format="rtstruct")
    ds = pydicom.dcmread(out)
    source = pydicom.dcmread(volume.source_files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == pydicom.uid.RTStructureSetStorage and ds.Modality == "RTSTRUCT"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    assert (ds.PatientName, ds.PatientID, ds.StudyInstanceUID) == (source.PatientName, source.PatientID,
                                                                   source.StudyInstanceUID)
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.ReferringPhysicianName == "" and "InstitutionName" not in ds and "jane.doe" not in str(ds)
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    referenced = [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence]
    assert referenced == [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in volume.source_files]
    roi = ds.StructureSetROISequence[0]
    assert (roi.ROIName, roi.ROIGenerationAlgorithm) == ("Liver", "AUTOMATIC")
    assert roi.ROIGenerationDescription.startswith("medseg 0.") and "UNTRAINED" in roi.ROIGenerationDescription
    algorithm = roi.ROIDerivationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "medseg sam2" and algorithm.AlgorithmVersion
    assert f"model sam2.1_hiera_tiny; sha256 {'cd' * 32}" in algorithm.AlgorithmParameters
    assert [list(r.ROIDisplayColor) for r in ds.ROIContourSequence][:2] == [[220, 20, 60], [65, 105, 225]]
    assert ds.RTROIObservationsSequence[0].RTROIInterpretedType == "ORGAN"


def test_multiframe_source_contours_reference_frames(dicom_phantom, tmp_path):
    import highdicom as hd

    files = sorted(dicom_phantom.image.iterdir())
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in files], series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    volume = load_volume(tmp_path / "enhanced.dcm")
    labels = LabelVolume.like(volume, dicom_phantom.labels.array)
    out = save_labels(labels, volume, tmp_path / "out" / "rt.dcm", format="rtstruct")
    np.testing.assert_array_equal(load_labels(out, volume).array, labels.array)
    frames = {c.ContourImageSequence[0].ReferencedFrameNumber for r in pydicom.dcmread(out).ROIContourSequence
              for c in r.ContourSequence}
    assert frames <= set(range(1, volume.shape[0] + 1)) and len(frames) > 1


# --- refusals -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def written(tmp_path_factory, dicom_phantom):
    volume = load_volume(dicom_phantom.image)
    out = tmp_path_factory.mktemp("rt_refusals") / "rt.dcm"
    save_labels(LabelVolume.like(volume, dicom_phantom.labels.array), volume, out, format="rtstruct")
    return volume, out


def _shift_contour(path, target, mm: float, normal: np.ndarray) -> None:
    ds = pydicom.dcmread(path)
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    points = np.asarray(contour.ContourData, float).reshape(-1, 3) + mm * normal
    contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
    ds.save_as(target)


def test_points_off_the_slice_within_tolerance_load_and_beyond_are_refused(written, tmp_path):
    volume, out = written
    normal = volume.direction[:, 2]
    _shift_contour(out, tmp_path / "near.dcm", 0.1, normal)  # 4 % of the 2.5 mm slice spacing
    np.testing.assert_array_equal(load_labels(tmp_path / "near.dcm", volume).array, load_labels(out, volume).array)
    _shift_contour(out, tmp_path / "far.dcm", -0.5, normal)  # 20 %
    with pytest.raises(GeometryError, match=r"far\.dcm: ROI 'label_1' contour 1 lies 0\.50 mm off the image slices "
                                            r"\(tolerance 0\.25 mm"):
        load_labels(tmp_path / "far.dcm", volume)


def test_another_frame_of_reference_is_refused_naming_both(written, tmp_path):
    volume, out = written
    ds = pydicom.dcmread(out)
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4"
    for roi in ds.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = "1.2.3.4"
    ds.save_as(tmp_path / "other_for.dcm")
    image_for = pydicom.dcmread(volume.source_files[0], stop_before_pixels=True).FrameOfReferenceUID
    with pytest.raises(GeometryError, match=rf"FrameOfReferenceUID 1\.2\.3\.4 differs from the image's {image_for}"):
        load_labels(tmp_path / "other_for.dcm", volume)


def test_contours_on_another_series_are_refused(written, dicom_phantom, tmp_path):
    volume, out = written
    shutil.copytree(dicom_phantom.image, tmp_path / "copy")
    for path in (tmp_path / "copy").iterdir():  # the same scan re-exported: same frame of reference, new instances
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(path)
    other = load_volume(tmp_path / "copy")
    with pytest.raises(GeometryError, match=r"rt\.dcm: \d+ of the 10 image\(s\) its contours reference are not in the "
                                            r"image series"):
        load_labels(out, other)
    # A bare geometry (no instances to compare) checks the placement only, and loads.
    assert load_labels(out, other.geometry).labels == [1, 2, 3]


def test_pydicoms_rtstruct_is_refused_on_another_scan_and_loads_on_its_grid():
    path = pydicom_test_file("rtstruct.dcm")
    assert label_file_kind(path) == "rtstruct"
    ct = load_volume(pydicom_test_file("CT_small.dcm"))
    with pytest.raises(GeometryError, match=r"rtstruct\.dcm: the structure set's FrameOfReferenceUID "
                                            r"1\.2\.826\.0\.1\.3680043\.8\.498\.2010020400001\.2 differs"):
        load_labels(path, ct)
    # Its 'patient' ROI: 400 x 300 mm rectangles on the axial planes z = -200, -190, -180 mm.
    grid = Geometry((3, 40, 50), (10.0, 10.0, 10.0), (-245.0, -195.0, -200.0))
    labels = load_labels(path, grid)
    assert labels.label_names == {1: "patient"}  # the two isocentre POINT ROIs enclose nothing
    assert np.count_nonzero(labels.array) == 3 * 30 * 40


def test_writing_needs_a_dicom_source_with_a_frame_of_reference(phantom_case, tmp_path):
    with pytest.raises(InputError, match=r"as DICOM rtstruct: the image was not read from DICOM \(nifti\)"):
        save_labels(phantom_case.labels, load_volume(phantom_case.image), tmp_path / "x.dcm", format="rtstruct")
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    del ds.FrameOfReferenceUID
    ds.save_as(tmp_path / "ct.dcm")
    volume = load_volume(tmp_path / "ct.dcm")
    array = np.zeros(volume.shape, dtype=np.int32)
    array[0, 40:60, 30:50] = 1
    for fmt, what in (("rtstruct", "RTSTRUCT"), ("seg", "DICOM SEG")):
        with pytest.raises(InputError, match=rf"as {what}: the source image .*ct\.dcm lacks FrameOfReferenceUID"):
            save_labels(array, volume, tmp_path / "out" / f"{fmt}.dcm", format=fmt)


def test_seg_from_a_source_without_slice_thickness(tmp_path):
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    del ds.SliceThickness
    ds.save_as(tmp_path / "ct.dcm")
    volume = load_volume(tmp_path / "ct.dcm")
    array = np.zeros(volume.shape, dtype=np.int32)
    array[0, 40:60, 30:50] = 1
    for fmt in ("seg", "rtstruct"):
        out = save_labels(array, volume, tmp_path / "out" / f"{fmt}.dcm", format=fmt)
        np.testing.assert_array_equal(load_labels(out, volume).array, array)
    assert "SliceThickness" not in pydicom.dcmread(tmp_path / "ct.dcm")  # the source was only read


def test_overlapping_rois_give_voxels_to_the_smaller(written, tmp_path):
    volume, out = written
    ds = pydicom.dcmread(out)
    liver, spleen = ds.ROIContourSequence[0], ds.ROIContourSequence[1]
    # spleen also covers a liver slice
    spleen.ContourSequence = pydicom.Sequence([*spleen.ContourSequence, liver.ContourSequence[0]])
    ds.save_as(tmp_path / "overlap.dcm")
    single = load_labels(out, volume).array
    both = load_labels(tmp_path / "overlap.dcm", volume).array
    shared = (single == 1) & (both != 1)
    # the spleen ROI is smaller ...
    assert np.count_nonzero(single == 2) + np.count_nonzero(shared) < np.count_nonzero(single == 1)
    assert np.count_nonzero(shared) > 0 and np.all(both[shared] == 2)  # ... so it keeps the shared voxels
    np.testing.assert_array_equal(both != 0, single != 0)


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (Debian package dicom3tools) is not installed; make test installs it")
def test_dciodvfy_finds_no_errors_in_medsegs_dicom_outputs(case, tmp_path):
    volume, labels, rt = case
    seg = save_labels(labels, volume, tmp_path / "seg.dcm")
    for path, iod in ((rt, "RTStructureSet"), (seg, "Segmentation")):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = result.stdout + result.stderr
        assert iod in report
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_cli_info_reads_an_rtstruct_and_the_commands_offer_the_format(written, capsys):
    from medseg.cli import main

    volume, out = written
    assert main(["info", str(volume.source_files[0].parent), "--labels", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: on the volume's grid; 3 label value(s)" in printed
    for command in (["segment"], ["fewshot"], ["baseline", "predict"]):
        assert main([*command, "--help"]) == 0
        assert "--dicom-format {seg,rtstruct}" in capsys.readouterr().out
