"""One preset decision for every face: a trained SAM2 model directory brings its training preset to
the predictor, reference prompting and the CLI, which also flag it as undertrained; the CLI and the
napari panel give the same mask for the same click on a CT NIfTI (modality unknown: the content check).

The model directory is trained for 1 step at 64 px with the ``ct-liver`` preset on purpose: the
content check would pick ``ct-soft-tissue`` for the phantom, so only the model can bring ``ct-liver``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.io import load_labels, load_volume, save_labels
from medseg.io.nifti import write_nifti
from medseg.manifest import write_manifest
from medseg.phantom import LABELS, make_phantom
from medseg.prompts import Prompts
from medseg.revsam2 import ReferenceSession, SupportEntry, SupportSet
from medseg.sam2 import Sam2VolumePredictor, load_model
from medseg.sam2.model_dir import read_model_json

SHAPE = (6, 32, 48)
TRAINED_REASON = "the model was trained with it"


@pytest.fixture(scope="module")
def phantom_nifti(tmp_path_factory) -> tuple[Path, Path]:
    """A CT phantom written as NIfTI (no modality in the file) and its labels."""
    folder = tmp_path_factory.mktemp("phantom")
    volume, labels = make_phantom(0, shape=SHAPE)
    write_nifti(volume.array.astype(np.int16), volume.geometry, folder / "p0.nii.gz")
    save_labels(labels, volume, folder / "p0_labels.nii.gz")
    return folder / "p0.nii.gz", folder / "p0_labels.nii.gz"


@pytest.fixture(scope="module")
def model_dir(phantom_nifti, tmp_path_factory) -> Path:
    """A SAM2 model directory trained (``medseg sam2 train``) for 1 step from random weights with ``ct-liver``."""
    image, label = phantom_nifti
    manifest = write_manifest(image.parent / "cohort.json", {
        "name": "one-phantom", "modality": "CT",
        "labels": {"0": "background", **{str(k): v for k, v in LABELS.items()}},
        "cases": [{"id": "p0", "image": image.name, "label": label.name, "split": "train"}]})
    out = tmp_path_factory.mktemp("model") / "sam2"
    assert main(["sam2", "train", "--manifest", str(manifest), "--out", str(out), "--from", "untrained", "--image-size",
                 "64", "--steps", "1", "--clip-length", "2", "--warmup-steps", "1", "--threads", "1", "--preset",
                 "ct-liver", "--no-progress"]) == 0
    info = read_model_json(out)
    assert info["preset"] == "ct-liver" and info["undertrained"] is True
    return out


def test_a_trained_model_brings_its_preset_to_the_engines(model_dir, phantom_nifti):
    image, label = phantom_nifti
    volume = load_volume(image)
    assert volume.modality == "OT"
    model = load_model(model_dir, device="cpu")
    assert (model.preset, model.undertrained) == ("ct-liver", True)

    predictor = Sam2VolumePredictor(model, store=False)
    labels = predictor.segment(volume, Prompts().add_point(1, z=3, y=16, x=24))
    assert labels.provenance["preset"]["name"] == "ct-liver" and labels.provenance["preset_reason"] == TRAINED_REASON
    assert labels.provenance["undertrained"] is True and not labels.untrained
    assert predictor.session(volume, preset="mri").frames.preset.name == "mri"  # what the user gives wins
    assert Sam2VolumePredictor(model, preset="ct-bone", store=False).session(volume).frames.preset.name == "ct-bone"

    entry = SupportEntry(load_labels(label, volume), volume=volume)
    support = SupportSet.from_volumes([entry], k=1, labels={1: "liver"})
    assert ReferenceSession(volume, support, model=model).preset.name == "ct-liver"
    assert ReferenceSession(volume, support, model=predictor).preset.name == "ct-liver"
    assert ReferenceSession(volume, support, model=model, preset="mri").preset.name == "mri"


def test_segment_and_fewshot_show_the_preset_and_flag_undertrained_models(model_dir, phantom_nifti, tmp_path, capsys):
    image, label = phantom_nifti
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(image), "--model", str(model_dir), "--point", "1:3,16,24", "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"intensity preset ct-liver: {TRAINED_REASON}" in captured.out
    assert f"note: {model_dir} (trained on one-phantom (1 steps)) is undertrained" in captured.err
    assert "UNTRAINED MODEL" not in captured.err

    qc = tmp_path / "fewshot.json"
    assert main(["fewshot", "--support", str(image), str(label), "--query", str(image),
                 "--out", str(tmp_path / "f.nii.gz"), "--model", str(model_dir), "--label", "1=liver", "--k", "1",
                 "--device", "cpu", "--qc", str(qc), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"intensity preset ct-liver: {TRAINED_REASON}" in captured.out and "is undertrained" in captured.err
    assert json.loads(qc.read_text(encoding="utf-8"))["provenance"]["preset"]["name"] == "ct-liver"


@pytest.mark.napari
def test_cli_and_napari_give_the_same_mask_for_the_same_click_on_a_ct_nifti(make_napari_viewer, qtbot, phantom_nifti,
                                                                           tmp_path):
    from qtpy.QtCore import Qt

    image_path, label_path = phantom_nifti
    volume = load_volume(image_path)
    liver = load_labels(label_path, volume).array == 1
    z = int(liver.sum(axis=(1, 2)).argmax())
    y, x = (int(v) for v in np.argwhere(liver[z]).mean(axis=0).round())
    out, qc = tmp_path / "cli.nii.gz", tmp_path / "cli.json"
    assert main(["segment", str(image_path), "--model", "untrained", "--image-size", "128", "--device", "cpu",
                 "--point", f"1:{z},{y},{x}", "--out", str(out), "--qc", str(qc), "--no-progress"]) == 0
    cli_preset = json.loads(qc.read_text(encoding="utf-8"))["provenance"]["preset"]

    viewer = make_napari_viewer()
    [image] = viewer.open(str(image_path), plugin="medseg")
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    panel = widget.sam2
    panel.model.set_choice("untrained", image_size=128)
    panel.model.device.setCurrentText("cpu")
    np.testing.assert_allclose(image.contrast_limits, (-160, 240))  # shown in the window SAM2 is given
    panel.workspace.prompts.points.add([(z, y, x)])
    qtbot.mouseClick(panel.propagate, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.task is not None and panel.task.finished, timeout=600_000)
    shown = panel.workspace.result()

    assert cli_preset["name"] == shown.provenance["preset"]["name"] == "ct-soft-tissue"
    cli = load_labels(out, volume).array
    assert np.count_nonzero(cli) > 0
    np.testing.assert_array_equal(shown.array, cli)


@pytest.mark.napari
def test_napari_uses_the_models_preset_and_flags_an_undertrained_model(make_napari_viewer, qtbot, model_dir,
                                                                       phantom_nifti):
    """The SAM2 panel decides the preset as `medseg segment` does (the model's training preset over the
    content check, shown with its reason) and says what it says about a model trained for 1 step."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    viewer.open(str(phantom_nifti[0]), plugin="medseg")
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    panel = widget.sam2
    panel.model.set_choice(str(model_dir))
    panel.model.device.setCurrentText("cpu")
    assert panel.data.preset.currentText() == "ct-soft-tissue"  # the content check, before the model is asked
    panel.workspace.prompts.points.add([(3, 16, 24)])
    qtbot.mouseClick(panel.propagate, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.task is not None and panel.task.finished, timeout=600_000)
    assert panel.workspace.result().provenance["preset"]["name"] == "ct-liver"
    assert (panel.data.preset.currentText(), panel.data.preset_note.text()) == ("ct-liver", TRAINED_REASON)
    status = panel.controls.status.text()
    assert f"Note: {model_dir} (trained on one-phantom (1 steps)) is undertrained" in status, status
    assert "UNTRAINED" not in status, status
