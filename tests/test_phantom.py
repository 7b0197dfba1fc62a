"""The demo phantoms, the real MNI152 cohort, and the `medseg demo-data` / `medseg info` commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg.cli import main
from medseg.datasets import (
    MNI152_GM,
    MNI152_T1,
    mni152_tissue_labels,
    package_file,
    write_mni152_hemisphere_cohort,
    write_real_cohort,
)
from medseg.io import load_labels, load_volume
from medseg.manifest import load_manifest
from medseg.phantom import LABELS, make_phantom, write_demo_cohort

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(0)


def test_phantom_is_deterministic_and_varies_with_seed(phantom):
    again, again_labels = make_phantom(0)
    np.testing.assert_array_equal(again.array, phantom[0].array)
    np.testing.assert_array_equal(again_labels.array, phantom[1].array)
    other, other_labels = make_phantom(1)
    assert not np.array_equal(other_labels.array, phantom[1].array)
    assert not np.allclose(other.direction, phantom[0].direction)


def test_phantom_geometry_is_anisotropic_and_rotated(phantom):
    volume, labels = phantom
    assert volume.shape == (32, 128, 128) and volume.spacing == (2.5, 0.8, 0.8)
    assert volume.modality == "CT"
    assert not np.allclose(volume.direction, np.eye(3), atol=0.05)
    np.testing.assert_allclose(volume.direction.T @ volume.direction, np.eye(3), atol=1e-9)
    assert labels.geometry is volume.geometry
    assert labels.label_names == LABELS


def test_phantom_intensities_are_ct_like(test_seed):
    volume, labels = make_phantom(test_seed)
    core = {value: ndimage.binary_erosion(labels.array == value, iterations=2) for value in LABELS}
    means = {value: float(volume.array[mask].mean()) for value, mask in core.items()}
    # seeds 0-15: every organ mean within 0.83 HU of its value, the liver's noise within 0.16 HU of 12
    assert means[1] == pytest.approx(60, abs=2)  # liver
    assert means[2] == pytest.approx(45, abs=2)  # spleen
    assert means[3] == pytest.approx(30, abs=2)  # kidneys
    assert volume.array[:, :3, :3].mean() == pytest.approx(-1000, abs=10)  # air in the corners
    assert volume.array.max() > 500  # bone
    assert np.array_equal(volume.array, np.round(volume.array))  # whole HU, as stored in int16
    assert volume.array[core[1]].std() == pytest.approx(12, abs=1)  # the phantom's Gaussian noise, 12 HU


def test_phantom_kidneys_are_two_components_of_one_label():
    for seed in range(4):
        _, labels = make_phantom(seed, shape=(12, 48, 48))
        assert labels.labels == [1, 2, 3]
        assert ndimage.label(labels.array == 3)[1] == 2


def test_demo_cohort_is_idempotent(tmp_path):
    manifest = write_demo_cohort(tmp_path, shape=(6, 24, 24))
    files = sorted((tmp_path / "demo").iterdir())
    assert len(files) == 16  # 8 cases, image + labels
    splits = [c.split for c in load_manifest(manifest).cases]
    assert splits == ["train"] * 4 + ["test"] * 4
    long_ago = 10**18  # ns: a rewrite would stamp "now", whatever the file system's time resolution
    for f in [*files, manifest]:
        os.utime(f, ns=(long_ago, long_ago))
    write_demo_cohort(tmp_path, shape=(6, 24, 24))
    assert {f.name: f.stat().st_mtime_ns for f in [*files, manifest]} == dict.fromkeys(
        [f.name for f in [*files, manifest]], long_ago)  # nothing rewritten

    broken = files[0]
    broken.write_bytes(b"not a nifti")
    write_demo_cohort(tmp_path, shape=(6, 24, 24))
    assert nib.load(broken).shape == (24, 24, 6)

    volume, labels = load_manifest(manifest).case("phantom_000").load()
    expected, expected_labels = make_phantom(0, shape=(6, 24, 24))
    np.testing.assert_array_equal(volume.array, expected.array)
    np.testing.assert_array_equal(labels.array, expected_labels.array)
    assert volume.geometry.same_grid(expected.geometry, atol=1e-5)


def test_demo_data_command_writes_both_cohorts(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path), "--cases", "3"]) == 0
    out = capsys.readouterr().out
    assert f"demo cohort: {tmp_path / 'demo.json'}" in out
    assert f"real cohort: {tmp_path / 'mni152.json'}" in out
    assert len(load_manifest(tmp_path / "demo.json").cases) == 3
    for name in ("mni152.json", "mni152-hemispheres.json"):
        shipped = (REPO / "data_manifests" / name).read_text(encoding="utf-8")
        assert json.loads((tmp_path / name).read_text(encoding="utf-8")) == json.loads(shipped)
    assert main(["demo-data", str(tmp_path), "--cases", "1"]) == 2
    assert "--cases must be at least 2" in capsys.readouterr().err


def test_info_command_prints_geometry_and_checks_labels(phantom_case, capsys, tmp_path):
    assert main(["info", str(phantom_case.image), "--labels", str(phantom_case.label)]) == 0
    out = capsys.readouterr().out
    assert "shape (z, y, x): (12, 48, 48)" in out
    assert "spacing (z, y, x) mm: (2.5, 0.8, 0.8)" in out
    assert "on the volume's grid; 3 label value(s)" in out
    voxels = int((phantom_case.labels.array == 1).sum())
    assert f"label 1: {voxels} voxels, {voxels * 2.5 * 0.8 * 0.8 / 1000:.2f} ml" in out

    assert main(["info", str(tmp_path)]) == 2
    assert "the folder is empty" in capsys.readouterr().err


def test_info_command_on_a_dicom_series_shows_no_patient_fields(dicom_phantom, capsys):
    assert main(["info", str(dicom_phantom.image)]) == 0
    out = capsys.readouterr().out
    assert "CT volume (dicom-series)" in out and "SeriesDescription: sagittal phantom" in out
    assert "PHANTOM^DEMO" not in out and "Patient" not in out


# --- real data shipped in nilearn -------------------------------------------------------------
def test_real_mni152_template_geometry_matches_nibabel():
    path = package_file(MNI152_T1)
    volume = load_volume(path)
    reference = nib.load(path)
    assert volume.shape == reference.shape[::-1] == (189, 233, 197)
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-6)
    np.testing.assert_array_equal(volume.array, np.asarray(reference.dataobj).transpose(2, 1, 0))


def test_real_mni152_tissue_labels(tmp_path):
    labels, geometry = mni152_tissue_labels()
    gm = np.asarray(nib.load(package_file(MNI152_GM)).dataobj).transpose(2, 1, 0)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert np.all(gm[labels == 1] > 127)  # grey matter where its probability exceeds 0.5
    grey_ml, white_ml = ((labels == v).sum() / 1000 for v in (1, 2))
    assert 500 < grey_ml < 1300 and 350 < white_ml < 900  # adult brain tissue volumes, in ml

    manifest = write_real_cohort(tmp_path)
    cohort = load_manifest(manifest)
    cohort.validate_data()
    (case,) = cohort.cases
    volume, loaded = case.load()
    assert volume.modality == "MR" and loaded.label_names == {1: "grey_matter", 2: "white_matter"}
    np.testing.assert_array_equal(load_labels(case.label, volume).array, labels)
    assert geometry.same_grid(volume.geometry, atol=1e-6)


def test_mni152_hemisphere_cohort_keeps_test_slices_and_their_mirrors_out_of_training(tmp_path):
    cohort = load_manifest(write_mni152_hemisphere_cohort(tmp_path))
    cohort.validate_data()
    labels, geometry = mni152_tissue_labels()
    t1 = np.asarray(nib.load(package_file(MNI152_T1)).dataobj).transpose(2, 1, 0)
    seen: dict[str, set[float]] = {"train": set(), "test": set()}
    for case in cohort.cases:
        volume, truth = case.load()
        assert volume.shape[0] == 16 and volume.shape[1] != volume.shape[2] and truth.labels == [1, 2]
        corners = volume.geometry.index_to_world(np.array([[0, 0, 0], [15, 0, volume.shape[2] - 1]]))
        # LPS: +x is the patient's left; train cases lie left of the midline, test cases right of it
        assert np.all(corners[:, 0] > 0) if case.split == "train" else np.all(corners[:, 0] < 0)
        world = volume.geometry.index_to_world(np.array([[z, 0, 0] for z in range(16)]))
        seen[case.split].update(np.round(world[:, 2], 3))
        # exact voxels of the template at the case's own world position
        start = np.round(np.linalg.inv(geometry.affine) @ np.r_[volume.affine[:3, 3], 1]).astype(int)[:3][::-1]
        window = tuple(slice(s, s + n) for s, n in zip(start, volume.shape))
        np.testing.assert_array_equal(volume.array, t1[window])
        np.testing.assert_array_equal(truth.array, labels[window])
    assert len([c for c in cohort.cases if c.split == "train"]) == 5 and len(cohort.split("test")) == 4
    assert not seen["train"] & seen["test"]  # no axial level (so no mirror image) in both splits
