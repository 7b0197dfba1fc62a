"""medseg.annotation: a cohort worked through case by case, resumable, never writing the truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.annotation import STATE_FILE, Annotation
from medseg.errors import InputError
from medseg.io import save_labels
from medseg.io.nifti import write_nifti
from medseg.phantom import make_phantom, write_dicom_series


def _manifest(folder, n=3):
    cases = []
    for i in range(n):
        volume, labels = make_phantom(i, shape=(4, 16, 16))
        write_nifti(volume.array, volume.geometry, folder / f"p{i}.nii.gz")
        save_labels(labels, volume, folder / f"p{i}_labels.nii.gz")
        cases.append({"id": f"p{i}", "image": f"p{i}.nii.gz", "label": f"p{i}_labels.nii.gz", "split": "test"})
    path = folder / "cohort.json"
    path.write_text(json.dumps({"name": "c", "modality": "CT", "labels": {"1": "liver"}, "cases": cases}))
    return path


def test_a_manifest_resumes_where_the_user_stopped_and_protects_its_truth(tmp_path):
    manifest = _manifest(tmp_path)
    work = Annotation.open(manifest)
    assert work.out_dir == tmp_path / "cohort-annotations"
    assert [(c.id, c.output.name, c.truth.name) for c in work.cases] == [
        ("p0", "p0.nii.gz", "p0_labels.nii.gz"), ("p1", "p1.nii.gz", "p1_labels.nii.gz"),
        ("p2", "p2.nii.gz", "p2_labels.nii.gz")]
    assert work.protected == {(tmp_path / f"p{i}_labels.nii.gz").resolve() for i in range(3)}
    assert [work.status(c.id) for c in work.cases] == ["untouched"] * 3 and work.resume_index() == 0

    work.set_status("p0", "accepted")
    work.set_status("p1", "in progress")  # the user stopped here
    again = Annotation.open(manifest)
    assert [again.status(c.id) for c in again.cases] == ["accepted", "in progress", "untouched"]
    assert again.resume_index() == 1
    again.set_status("p1", "accepted")
    assert Annotation.open(manifest).resume_index() == 2  # the next case not accepted
    state = json.loads((tmp_path / "cohort-annotations" / STATE_FILE).read_text())
    assert state["statuses"] == {"p0": "accepted", "p1": "accepted", "p2": "untouched"}


def test_a_folder_gives_one_case_per_volume_file_and_dicom_series(tmp_path):
    volume, _ = make_phantom(0, shape=(4, 16, 16))
    write_nifti(volume.array, volume.geometry, tmp_path / "b scan.nii.gz")
    write_dicom_series(volume, tmp_path / "a_series")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not DICOM")
    (tmp_path / "readme.txt").write_text("not an image")

    work = Annotation.open(tmp_path, tmp_path / "out")

    assert [(c.id, c.output.name) for c in work.cases] == [("a_series", "a_series.nii.gz"), ("b scan", "b_scan.nii.gz")]
    assert work.protected == set()


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no cases to annotate"):
        Annotation.open(tmp_path)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InputError, match="open a cohort manifest"):
        Annotation.open(tmp_path / "x.txt")
    work = Annotation.open(_manifest(tmp_path, n=1))
    with pytest.raises(InputError, match="annotation status 'done': expected one of untouched, in progress, accepted"):
        work.set_status("p0", "done")
    with pytest.raises(InputError, match="no case 'p9'"):
        work.status("p9")
    (work.out_dir / STATE_FILE).parent.mkdir(exist_ok=True)
    (work.out_dir / STATE_FILE).write_text("{not json")
    with pytest.raises(InputError, match="not an annotation state file .* move it away"):
        Annotation.open(tmp_path / "cohort.json")
    np.testing.assert_equal(sorted(p.name for p in work.out_dir.iterdir()), [STATE_FILE])  # nothing else written
