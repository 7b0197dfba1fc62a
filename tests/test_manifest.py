"""Cohort manifests: the medseg form, the Decathlon form, validation and loading cases."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.datasets import MNI152_T1
from medseg.errors import ConfigError, GeometryError
from medseg.manifest import load_manifest, resolve_path
from medseg.phantom import write_demo_cohort

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def cohort_dir(tmp_path, phantom_case):
    """Three cases on disk (images + labels) in ``images/``, beside where manifests go."""
    (tmp_path / "images").mkdir()
    for i in range(3):
        shutil.copy(phantom_case.image, tmp_path / "images" / f"case{i}.nii.gz")
        shutil.copy(phantom_case.label, tmp_path / "images" / f"case{i}_labels.nii.gz")
    return tmp_path


def _manifest(**changes) -> dict:
    data = {
        "name": "abdomen",
        "description": "test cohort",
        "modality": "CT",
        "labels": {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"},
        "cases": [
            {"id": f"case{i}", "image": f"images/case{i}.nii.gz", "label": f"images/case{i}_labels.nii.gz",
             "split": split}
            for i, split in enumerate(["train", "val", "test"])
        ],
    }
    data.update(changes)
    return data


def test_medseg_manifest_loads_and_resolves_relative_paths(cohort_dir, phantom_case):
    cohort = load_manifest(_write(cohort_dir / "abdomen.json", _manifest()))
    assert cohort.name == "abdomen" and cohort.modality == "CT"
    assert cohort.path == (cohort_dir / "abdomen.json").resolve()
    assert cohort.labels == {1: "liver", 2: "spleen", 3: "kidney"}
    assert [c.id for c in cohort.split("train")] == ["case0"]
    assert [c.id for c in cohort.split("test")] == ["case2"]
    assert cohort.cases[1].image == (cohort_dir / "images" / "case1.nii.gz").resolve()
    cohort.validate_data()

    volume, labels = cohort.case("case0").load()
    assert volume.modality == "CT"  # NIfTI does not say; the manifest does
    assert labels.label_names == {1: "liver", 2: "spleen", 3: "kidney"}
    np.testing.assert_array_equal(labels.array, phantom_case.labels.array)
    assert labels.geometry is volume.geometry


def test_spacing_override_and_unlabelled_cases(cohort_dir, phantom_case):
    data = _manifest()
    data["cases"][0]["spacing"] = [3.0, 0.5, 0.5]
    data["cases"][2]["label"] = None
    cohort = load_manifest(_write(cohort_dir / "m.json", data))
    volume, labels = cohort.cases[0].load()
    assert volume.spacing == (3.0, 0.5, 0.5) and labels.geometry.spacing == (3.0, 0.5, 0.5)
    np.testing.assert_allclose(volume.origin, phantom_case.volume.origin)
    volume, labels = cohort.cases[2].load()
    assert labels is None and cohort.cases[2].label is None


def test_every_problem_is_reported_at_once(cohort_dir):
    data = _manifest(labels={"0": "background", "one": "liver", "2": ""})
    data["cases"][0]["split"] = "training"
    data["cases"][1]["image"] = "images/missing.nii.gz"
    data["cases"][2]["lable"] = "typo.nii.gz"
    data["cases"].append(dict(data["cases"][0], split="train"))
    path = _write(cohort_dir / "bad.json", data)
    with pytest.raises(ConfigError) as error:
        load_manifest(path)
    message = str(error.value)
    assert message.startswith(f"{path.resolve()}: 6 problem(s) in the manifest:")
    assert "labels: key 'one' is not an integer label value" in message
    assert "labels: value 2 needs a non-empty name" in message
    assert "cases[0] (id 'case0'): \"split\" is 'training'; use one of train, val, test" in message
    assert "cases[1] (id 'case1'): \"image\" file " in message and "missing.nii.gz does not exist" in message
    assert "cases[2] (id 'case2'): unknown field(s) ['lable']" in message
    assert "cases[3] (id 'case0'): case id 'case0' is used more than once" in message


def test_unreadable_manifests(tmp_path):
    with pytest.raises(ConfigError, match=r"nothere\.json: manifest not found"):
        load_manifest(tmp_path / "nothere.json")
    (tmp_path / "broken.json").write_text("{\"cases\": [", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.json: not a readable JSON manifest"):
        load_manifest(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match=r"(?s)empty\.json: 2 problem\(s\).*\"labels\" must be an object.*\"cases\" "
                                          r"must be a non-empty list"):
        load_manifest(_write(tmp_path / "empty.json", {"name": "x"}))


def test_unknown_split_name(cohort_dir):
    cohort = load_manifest(_write(cohort_dir / "m.json", _manifest()))
    with pytest.raises(ConfigError, match="unknown split 'validation'; use one of train, val, test"):
        cohort.split("validation")


def test_validate_data_names_each_failing_case(cohort_dir, phantom_case):
    # case1's labels on another grid, case2's labels with an undeclared value.
    shifted = phantom_case.volume.affine.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(phantom_case.labels.array.transpose(2, 1, 0).astype(np.uint8), shifted),
             cohort_dir / "images" / "case1_labels.nii.gz")
    extra = phantom_case.labels.array.copy()
    extra[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(extra.transpose(2, 1, 0).astype(np.uint8), phantom_case.volume.affine),
             cohort_dir / "images" / "case2_labels.nii.gz")
    cohort = load_manifest(_write(cohort_dir / "m.json", _manifest()))
    with pytest.raises(GeometryError) as error:
        cohort.validate_data()
    message = str(error.value)
    assert "2 of 3 cases failed validation" in message
    assert "case 'case1': " in message
    assert "case1_labels.nii.gz: label map does not lie on its image's voxel grid" in message
    assert "case 'case2': " in message and "case2_labels.nii.gz: label values [7] are not declared" in message


def test_decathlon_dataset_json_as_shipped(tmp_path, phantom_case):
    ids = [f"liver_{i}" for i in range(12)]
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp_path / folder).mkdir()
    for case_id in ids:
        shutil.copy(phantom_case.image, tmp_path / "imagesTr" / f"{case_id}.nii.gz")
        shutil.copy(phantom_case.label, tmp_path / "labelsTr" / f"{case_id}.nii.gz")
    shutil.copy(phantom_case.image, tmp_path / "imagesTs" / "liver_99.nii.gz")
    data = {
        "name": "Liver",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": len(ids),
        "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids],
        "test": ["./imagesTs/liver_99.nii.gz"],
    }
    cohort = load_manifest(_write(tmp_path / "dataset.json", data))
    assert cohort.name == "Liver" and cohort.modality == "CT" and cohort.labels == {1: "liver", 2: "cancer"}
    expected_val = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[: math.ceil(len(ids) / 5)]
    assert sorted(c.id for c in cohort.split("val")) == sorted(expected_val)
    assert len(cohort.split("train")) == len(ids) - len(expected_val)
    (test_case,) = cohort.split("test")
    assert test_case.id == "liver_99" and test_case.label is None
    assert all(c.label is not None for c in cohort.split("train") + cohort.split("val"))

    # Deterministic and stable: dropping a case moves no other case, except the one that fills its val place.
    data["training"] = data["training"][:-1]
    smaller = load_manifest(_write(tmp_path / "dataset.json", data))
    before = {c.id: c.split for c in cohort.cases}
    moved = sorted(c.id for c in smaller.cases if before[c.id] != c.split)
    by_hash = sorted(ids[:-1], key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    smaller_val = by_hash[: math.ceil((len(ids) - 1) / 5)]
    assert moved == sorted(set(smaller_val) - set(expected_val))  # empty unless the dropped case was in val
    assert len(moved) <= 1


def test_decathlon_multichannel_task_is_refused(tmp_path):
    data = {"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "edema"}, "training": []}
    with pytest.raises(ConfigError, match=r"modality: 2 channels \['FLAIR', 'T1w'\]; multi-channel \(4D\) Decathlon "
                                          r"tasks are not supported"):
        load_manifest(_write(tmp_path / "dataset.json", data))


def test_package_paths_resolve_inside_installed_distributions():
    path = resolve_path(MNI152_T1, Path("/nonexistent"))
    assert path.is_file() and path.name == "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    with pytest.raises(ConfigError, match=r"package 'no-such-dist' is not installed"):
        resolve_path("package://no-such-dist/x.nii.gz", Path("."))


def test_committed_demo_manifest_is_what_the_generator_writes(tmp_path):
    written = write_demo_cohort(tmp_path, shape=(6, 24, 24))
    assert written.read_text(encoding="utf-8") == (REPO / "data_manifests" / "demo.json").read_text(encoding="utf-8")
    cohort = load_manifest(written)
    assert [c.split for c in cohort.cases] == ["train"] * 4 + ["test"] * 4
    cohort.validate_data()


# --- SEG and RTSTRUCT labels: ROI names -> label values ------------------------------------
@pytest.fixture(scope="module")
def clinical_rtstruct(tmp_path_factory, dicom_phantom):
    """An RTSTRUCT with clinical-style ROI names ("LIVER", "spleen", "Lt Kidney", "Couch") on the DICOM phantom."""
    import pydicom

    from medseg.io import load_volume, save_labels
    from medseg.volume import LabelVolume

    folder = tmp_path_factory.mktemp("clinical")
    volume = load_volume(dicom_phantom.image)
    array = dicom_phantom.labels.array.copy()
    array[0, :3, :3] = 4  # a fourth structure, the couch
    out = save_labels(LabelVolume.like(volume, array), volume, folder / "rt.dcm", format="rtstruct")
    ds = pydicom.dcmread(out)
    for roi, name in zip(ds.StructureSetROISequence, ("LIVER", "spleen", "Lt Kidney", "Couch")):
        roi.ROIName = name
    ds.save_as(out)
    return out


def _rt_manifest(tmp_path, dicom_phantom, rtstruct, **extra) -> Path:
    labels = {"0": "background", "1": "liver", "2": "spleen", "3": "kidney_left"}
    case = {"id": "rt_case", "image": str(dicom_phantom.image), "label": str(rtstruct), "split": "test"}
    return _write(tmp_path / "m.json", {"name": "rt", "modality": "CT", "labels": labels, "cases": [case], **extra})


def test_rtstruct_label_roi_names_by_rules(tmp_path, dicom_phantom, clinical_rtstruct, caplog):
    path = _rt_manifest(tmp_path, dicom_phantom, clinical_rtstruct,
                        roi_names={"1": ["liver"], "2": ["exact:spleen"], "3": ["glob:l* kidney", "re:kidney_l(eft)?"]})
    cohort = load_manifest(path)
    with caplog.at_level("WARNING"):
        cohort.validate_data()
    assert "case 'rt_case': ROI(s) ['Couch'] of rt.dcm match no label and are left out" in caplog.text
    volume, labels = cohort.case("rt_case").load()
    # the couch is left out, the rest lands exactly
    np.testing.assert_array_equal(labels.array, dicom_phantom.labels.array)
    assert labels.label_names == {1: "liver", 2: "spleen", 3: "kidney_left"}


def test_rtstruct_label_default_mapping_uses_names_and_tg263(tmp_path, dicom_phantom, clinical_rtstruct):
    # No "roi_names": "LIVER" matches label "liver" (case-insensitive); "kidney_left" is TG-263 "Kidney_L",
    # not "Lt Kidney".
    cohort = load_manifest(_rt_manifest(tmp_path, dicom_phantom, clinical_rtstruct))
    assert cohort.roi_report(cohort.cases[0]) == [
        "case 'rt_case': ROI(s) ['Lt Kidney', 'Couch'] of rt.dcm match no label and are left out",
        "case 'rt_case': no ROI of rt.dcm matches label(s) 3 (kidney_left)",
    ]
    _, labels = cohort.cases[0].load()
    assert labels.labels == [1, 2]


def test_rtstruct_roi_matched_twice_is_refused_before_compute(tmp_path, dicom_phantom, clinical_rtstruct):
    cohort = load_manifest(_rt_manifest(tmp_path, dicom_phantom, clinical_rtstruct,
                                        roi_names={"1": ["glob:*"], "2": ["spleen"]}))
    with pytest.raises(ConfigError, match=r"case 'rt_case': .*rt\.dcm: ROI\(s\) matched by several labels: 'spleen' -> "
                                          r"labels \[1, 2\]"):
        cohort.validate_data()


def test_bad_roi_names_are_manifest_problems(tmp_path, dicom_phantom, clinical_rtstruct):
    with pytest.raises(ConfigError) as error:
        load_manifest(_rt_manifest(tmp_path, dicom_phantom, clinical_rtstruct,
                                   roi_names={"1": ["re:(unclosed"], "7": ["x"]}))
    assert "roi_names['1']: bad regular expression '(unclosed'" in str(error.value)


def test_seg_label_segments_mapped_by_name(tmp_path, dicom_phantom):
    from medseg.io import load_volume, save_labels
    from medseg.volume import LabelVolume

    volume = load_volume(dicom_phantom.image)
    names = {1: "Kidney_L", 2: "Liver", 3: "Spleen"}  # another order than the manifest's values
    relabel = np.array([0, 2, 3, 1])
    seg = save_labels(LabelVolume.like(volume, relabel[dicom_phantom.labels.array], label_names=names), volume,
                      tmp_path / "s" / "seg.dcm")
    cohort = load_manifest(_rt_manifest(tmp_path, dicom_phantom, seg))
    _, labels = cohort.cases[0].load()
    np.testing.assert_array_equal(labels.array, dicom_phantom.labels.array)
