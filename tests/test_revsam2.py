"""Reference prompting end to end with the real SAM2 architecture (untrained tiny, image size 128).

The untrained model's masks are meaningless: these tests check mechanics and invariants
(exact conditioning masks, one prediction per slice, encoder reuse, selection rules, errors).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from medseg import ConfigError, Geometry, InputError, LabelVolume, Volume
from medseg.errors import Cancelled
from medseg.cli import main
from medseg.io import load_labels, load_volume
from medseg.io.nifti import write_nifti
from medseg.phantom import make_phantom
from medseg.revsam2 import (ReferenceSession, SupportEntry, SupportSet, segment_with_references, select_slices,
                            track_object)
from medseg.revsam2.refine import reprompt_mask
from medseg.revsam2.zmatch import gated
from medseg.sam2 import FeatureCache, VolumeFrames, load_model


@pytest.fixture(scope="module")
def model():
    return load_model("untrained", image_size=128, device="cpu")


def _phantom(depth: int, seed: int, *, shape=(40, 36), modality: str = "CT") -> tuple[Volume, LabelVolume]:
    """A CT-like volume: a disc (label 1) whose radius changes with z, and a box (label 2) on the middle slices."""
    geometry = Geometry((depth, *shape), (3.0, 1.0, 1.0))
    z, y, x = np.mgrid[: geometry.shape[0], : shape[0], : shape[1]]
    labels = ((y - 18) ** 2 + (x - 15) ** 2 < (9 - np.abs(z - depth / 2)) ** 2).astype(np.int32)
    labels[depth // 3 : depth - depth // 3, 4:10, 26:33] = 2
    image = np.where(labels == 1, 60.0, np.where(labels == 2, 30.0, -80.0))
    image += np.random.default_rng(seed).normal(0, 8, image.shape)
    return Volume(image.astype(np.float32), geometry, modality), LabelVolume(labels, geometry)


def test_reverse_score_is_one_for_the_slice_its_support_was_drawn_on(model):
    query, truth = _phantom(6, 0)
    # the support is slice 2 of the query itself: forward gives it back exactly as drawn, and
    # the reverse pass from slice 2 onto that support must return the label: score 1
    support = SupportSet.from_volumes([SupportEntry(truth, slices=[2], from_query=True)], labels=[1])
    result = segment_with_references(query, support, model=model, top_k=2, threshold=None, min_spacing=1)
    detail = result.provenance["labels"]["1"]
    assert detail["reverse_scores"][2] == 1.0
    assert np.array_equal(result.array[2] == 1, truth.array[2] == 1)
    scored = [s for s in detail["reverse_scores"] if s is not None]
    assert detail["candidates"] == len(scored) >= 2  # other slices went through the model
    assert all(0.0 <= s <= 1.0 for s in scored)
    assert 2 not in detail["selected_slices"]  # drawn slices condition anyway; selection picks others
    assert result.untrained and result.label_names == {1: "label 1"}
    assert result.provenance["support"]["drawn_on_query"] == ["reference 1"]
    assert result.provenance["support"]["resampled_in_plane"] == {}


def test_drawn_on_the_query_is_the_entry_s_flag_not_the_volume_s_identity(model):
    query, truth = _phantom(5, 0)
    reloaded = Volume(query.array.copy(), query.geometry, query.modality)  # the same file loaded twice
    drawn = SupportSet.from_volumes([SupportEntry(truth, slices=[2], from_query=True)], labels=[1])
    session = ReferenceSession(reloaded, drawn, model=model)
    result = session.segment(mode="baseline")
    assert session.encoder_calls == 5  # the support is the query's own slice 2
    assert np.array_equal(result.array[2] == 1, truth.array[2] == 1)
    # a volume, even the query object: another patient's
    other = SupportSet.from_volumes([(query, truth, [2])], labels=[1])
    session = ReferenceSession(query, other, model=model)
    session.segment(mode="baseline")
    assert session.encoder_calls == 5  # identical voxels: the same content key, encoded once
    assert other.to_dict()["drawn_on_query"] == []


def test_stopping_returns_nothing_and_keeps_only_finished_passes(model, monkeypatch):
    query, _ = _phantom(6, 0)
    ref, ref_labels = _phantom(8, 1)
    support = SupportSet.from_volumes([(ref, ref_labels)], k=2, labels=[1])
    session = ReferenceSession(query, support, model=model)
    steps = []
    monkeypatch.setattr("medseg.revsam2.reverse.REVERSE_BATCH", 2)  # candidates are scored two at a time
    # stop after the forward pass (6 reports) and one batch of two reverse candidates (one report): the reverse
    # pass is dropped whole
    with pytest.raises(Cancelled, match="reverse scoring of object 1 stopped"):
        session.segment(top_k=2, threshold=None, progress=lambda done, total: steps.append(done),
                        should_stop=lambda: len(steps) == 6 + 1)
    assert steps[-1] == 8 and session._reverse == {} and list(session._forward) == [("matched", 1)]
    again = session.segment(top_k=2, threshold=None)
    straight = segment_with_references(query, support, model=model, top_k=2, threshold=None)
    np.testing.assert_array_equal(again.array, straight.array)
    assert again.provenance["labels"] == straight.provenance["labels"]
    with pytest.raises(Cancelled, match="tracking object 1 stopped"):  # in the middle of a pass
        ReferenceSession(query, support, model=model).segment(mode="baseline-middle",
                                                              progress=lambda d, t: steps.append(d),
                                                               should_stop=lambda: steps[-1] == 3)


def test_selected_slices_come_back_exactly_as_their_forward_masks(model):
    query, _ = _phantom(8, 0)
    ref, ref_labels = _phantom(10, 1)
    support = SupportSet.from_volumes([(ref, ref_labels)], k=3, labels={1: "disc"})
    session = ReferenceSession(query, support, model=model)
    steps = []
    result = session.segment(top_k=2, threshold=None, min_spacing=3, reprompt="mask",
                             progress=lambda done, total: steps.append((done, total)))
    forward = session.forward(1, result.provenance["placement"])
    detail = result.provenance["labels"]["1"]
    scores = np.array([np.nan if s is None else s for s in detail["reverse_scores"]])
    selected = detail["selected_slices"]
    assert selected == select_slices(scores, top_k=2, threshold=None, min_spacing=3)
    assert len(selected) == 2 and selected[1] - selected[0] >= 3
    for z in selected:
        assert np.array_equal(result.array[z] == 1, forward.mask(z))
    assert result.scores[1] == pytest.approx(np.mean(scores[selected]), abs=1e-6)
    assert steps[-1][0] == steps[-1][1] == 8 + detail["candidates"] + 8  # forward, reverse, re-prompt
    assert result.provenance["method"] == "reference-prompting-revsam2"
    assert result.provenance["support"]["slices"] == [{"reference": "reference 1", "z": z, "label": 1}
                                                      for z in (1, 4, 8)]
    assert result.provenance["reprompt"] == "mask" and result.provenance["support"]["parts"] == {}


def test_box_reprompt_decodes_each_part_of_a_selected_mask_on_its_own(model):
    """``reprompt="box"``: a selected slice conditions the re-prompt with its forward mask segmented
    again from each part's box on the query slice alone (untrained model: the masks mean nothing,
    the wiring and the part rule are what is checked)."""
    query, _ = _phantom(8, 0)
    ref, ref_labels = _phantom(10, 1)
    support = SupportSet.from_volumes([(ref, ref_labels)], k=3, labels={1: "disc"})
    session = ReferenceSession(query, support, model=model)
    result = session.segment(top_k=2, threshold=None, min_spacing=3)  # box, without the supports: the defaults
    assert result.provenance["reprompt"] == "box" and result.provenance["include_supports"] is False
    forward = session.forward(1, result.provenance["placement"])
    frames = session.query_frames
    for z in result.provenance["labels"]["1"]["selected_slices"]:
        expected = reprompt_mask(model, session.cache, frames[z], forward.mask(z), "box")
        np.testing.assert_array_equal(result.array[z] == 1, expected)
    # two parts are decoded one box each, a speck gives no box
    a, b, speck = (np.zeros((40, 36), bool) for _ in range(3))
    a[5:15, 4:14], b[24:36, 20:32], speck[38, 2] = True, True, True
    pins = dict(session.cache._pins)
    parts = reprompt_mask(model, session.cache, frames[3], a | b | speck, "box")
    assert dict(session.cache._pins) == pins  # the slice's features are not held on to
    np.testing.assert_array_equal(parts, reprompt_mask(model, session.cache, frames[3], a, "box")
                                  | reprompt_mask(model, session.cache, frames[3], b, "box"))
    np.testing.assert_array_equal(reprompt_mask(model, session.cache, frames[3], a | speck, "mask"), a | speck)
    # the box (label 2) lies on query slices 4..7 of 12: scored inside the gate with its margin (2..9), selected
    # inside the gate without it
    tall, _ = _phantom(12, 0)
    boxes = ReferenceSession(tall, SupportSet.from_volumes([(ref, ref_labels)], k=3, labels=[2]), model=model)
    every = boxes.segment(top_k=None, threshold=None, min_spacing=1, reject_rivals=False, reprompt="mask")
    within = set(np.flatnonzero(boxes.gate(2, 0)).tolist())
    assert within < set(np.flatnonzero(boxes.gate(2, 2)).tolist())
    scored = {z for z, s in enumerate(every.provenance["labels"]["2"]["reverse_scores"]) if s is not None}
    assert set(every.provenance["labels"]["2"]["selected_slices"]) == scored & within


def test_a_session_reuses_its_passes_and_falls_back_to_forward_below_threshold(model):
    query, _ = _phantom(6, 0)
    ref, ref_labels = _phantom(8, 1)
    support = SupportSet.from_volumes([(ref, ref_labels)], k=2, labels=[1])
    session = ReferenceSession(query, support, model=model)
    first = session.segment(top_k=1, threshold=None)
    encoded = session.encoder_calls
    assert encoded == 6 + 2
    steps = []
    second = session.segment(top_k=3, threshold=None, min_spacing=1,
                             progress=lambda done, total: steps.append((done, total)))
    assert session.encoder_calls == encoded and steps[-1] == (6, 6)  # only the re-prompt ran
    first_detail, second_detail = first.provenance["labels"]["1"], second.provenance["labels"]["1"]
    assert first_detail["reverse_scores"] == second_detail["reverse_scores"]
    assert len(first_detail["selected_slices"]) == 1 and len(second_detail["selected_slices"]) == 3
    # nothing reaches a reverse score of 1: the forward prediction (within the z-gate) is kept
    steps.clear()
    fallback = session.segment(threshold=1.0, progress=lambda done, total: steps.append((done, total)))
    assert steps == [] and session.encoder_calls == encoded
    detail = fallback.provenance["labels"]["1"]
    assert detail["fell_back_to_forward"] and detail["selected_slices"] == []
    forward = gated(session.forward(1, fallback.provenance["placement"]), session.gate(1))
    assert np.array_equal(fallback.array == 1, np.stack([forward.mask(z) for z in range(6)]))
    assert fallback.scores[1] == pytest.approx(max(s for s in detail["reverse_scores"] if s is not None), abs=1e-6)


def test_every_support_and_query_slice_is_encoded_once(model):
    query, _ = _phantom(6, 0)
    ref, ref_labels = _phantom(9, 1)
    # slices 4 and 5 show both labels: 4 supports, 2 distinct images
    support = SupportSet.from_volumes([(ref, ref_labels, [4, 5])], labels={1: "disc", 2: "box"})
    assert len(support) == 4
    result = segment_with_references(query, support, model=model, top_k=2, threshold=None)
    details = result.provenance["labels"]
    assert details["1"]["candidates"] > 0 and details["2"]["candidates"] > 0
    assert result.provenance["encoder_calls"] == 6 + 2
    assert set(np.unique(result.array)) <= {0, 1, 2}
    assert set(result.slice_scores) == {1, 2}


@pytest.mark.parametrize("placement", ["before", "middle", "matched"])
def test_track_object_predicts_every_query_slice_once(model, placement):
    query, _ = _phantom(7, 0)
    ref, ref_labels = _phantom(9, 1)
    cache = FeatureCache(model)
    frames, ref_frames = VolumeFrames(query), VolumeFrames(ref)
    external = [(ref_frames[z], ref_labels.array[z] == 1) for z in (3, 5)]
    anchors = [2, 4] if placement == "matched" else None  # the supports' query slices, for "matched"
    calls = []
    track = track_object(model, cache, frames, 1, external=external, placement=placement, anchors=anchors,
                         progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 7) for i in range(1, 8)] and np.isfinite(track.scores).all()
    assert track.logits.shape == (7, 32, 32) and track.mask(0).shape == (40, 36)
    # with conditioning slices on the query: those come back exactly, the rest is predicted once each
    drawn = np.zeros((40, 36), bool)
    drawn[10:20, 5:15] = True
    calls.clear()
    track = track_object(model, cache, frames, 1, in_query={4: drawn}, external=external, placement=placement,
                         anchors=anchors, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 7) for i in range(1, 8)] and np.isfinite(track.scores).all()
    assert np.array_equal(track.mask(4), drawn)
    assert cache.encoder_calls == 7 + 2


def test_bad_settings_and_mismatched_modality_fail_before_any_model_work():
    query, truth = _phantom(4, 0)
    support = SupportSet.from_volumes([(query, truth, [2])])
    with pytest.raises(ConfigError, match="mode must be one of"):
        segment_with_references(query, support, mode="fast", model="no-such-model")
    with pytest.raises(ConfigError, match="top_k"):
        segment_with_references(query, support, top_k=0, model="no-such-model")
    with pytest.raises(ConfigError, match=r"reprompt must be one of \('mask', 'box'\), got 'boxes'"):
        segment_with_references(query, support, reprompt="boxes", model="no-such-model")
    mr, mr_labels = _phantom(4, 1, modality="MR")
    mr_support = SupportSet.from_volumes([(mr, mr_labels)], names=["t2.nii.gz"])
    with pytest.raises(InputError, match="t2.nii.gz is MR but the query is CT"):
        segment_with_references(query, mr_support, model="no-such-model")


# --- medseg fewshot -------------------------------------------------------------------------
def test_fewshot_cli_writes_labels_on_the_query_grid(phantom_case, unmodified, tmp_path, capsys):
    query_volume, _ = make_phantom(3, shape=(8, 48, 48))
    query = tmp_path / "case.nii.gz"
    write_nifti(query_volume.array.astype(np.int16), query_volume.geometry, query)
    references = tmp_path / "C:references"  # a ':' in a path is no separator
    references.mkdir()
    image, label = references / "ref:1.nii.gz", references / "ref:1_labels.nii.gz"
    image.write_bytes(phantom_case.image.read_bytes())
    label.write_bytes(phantom_case.label.read_bytes())
    out, qc = tmp_path / "out" / "labels.nii.gz", tmp_path / "qc.json"
    out.parent.mkdir()
    with unmodified(image, label, query):
        code = main([
            "fewshot", "--support", str(image), str(label), "--query", str(query),
            "--out", str(out), "--model", "untrained", "--image-size", "128", "--device", "cpu",
            "--label", "1=liver", "--k", "2", "--top-k", "2", "--threshold", "none", "--preset", "ct-soft-tissue",
            "--placement", "before", "--gate-margin", "none", "--no-reject-rivals", "--reprompt", "mask",
            "--include-supports", "--qc", str(qc), "--no-progress",
        ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "UNTRAINED MODEL" in captured.err
    assert "1 liver:" in captured.out and "re-prompted from slices" in captured.out
    written = load_labels(out, load_volume(query))  # raises unless on the query's exact grid
    assert set(np.unique(written.array)) <= {0, 1}
    report = json.loads(qc.read_text(encoding="utf-8"))
    assert report["provenance"]["preset"]["name"] == "ct-soft-tissue"
    assert report["provenance"]["support"]["references"] == [str(image)]
    assert len(report["provenance"]["labels"]["1"]["reverse_scores"]) == 8
    settings = {key: report["provenance"][key]
                for key in ("placement", "gate_margin", "reject_rivals", "reprompt", "include_supports")}
    assert settings == {"placement": "before", "gate_margin": None, "reject_rivals": False, "reprompt": "mask",
                        "include_supports": True}
    assert "registered_onto_query" not in report["provenance"]["support"]

    registered = tmp_path / "registered.nii.gz"  # the 12-slice reference registered onto the 8-slice query
    with unmodified(image, label, query):
        assert main(["fewshot", "--support", str(image), str(label), "--query", str(query), "--out", str(registered),
                     "--model", "untrained", "--image-size", "128", "--device", "cpu", "--label", "1=liver",
                     "--register", "--qc", str(qc), "--no-progress"]) == 0
    load_labels(registered, load_volume(query))
    support = json.loads(qc.read_text(encoding="utf-8"))["provenance"]["support"]
    assert support["registered_onto_query"] and all(0 <= s["z"] < 8 for s in support["slices"])

    kidneys = tmp_path / "kidneys.nii.gz"  # each kidney its own object, written back as the kidney label
    capsys.readouterr()
    assert main(["fewshot", "--support", str(image), str(label), "--query", str(query), "--out", str(kidneys),
                 "--model", "untrained", "--image-size", "128", "--device", "cpu", "--label", "3=kidney", "--parts",
                 "--top-k", "1", "--threshold", "none", "--qc", str(qc), "--no-progress"]) == 0
    provenance = json.loads(qc.read_text(encoding="utf-8"))["provenance"]
    assert provenance["support"]["parts"] == {"4": 3} and sorted(provenance["labels"]) == ["3", "4"]
    assert set(np.unique(load_labels(kidneys, load_volume(query)).array)) <= {0, 3}
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  3 kidney:")]
    for obj in ("3", "4"):  # each part says what its re-prompt started from
        detail = provenance["labels"][obj]
        assert (f"part {obj} re-prompted from slices {detail['selected_slices']}" in line if detail["selected_slices"]
                else f"part {obj} forward prediction kept (no slice passed the threshold)" in line), line


def test_fewshot_cli_takes_labels_drawn_on_the_query(phantom_case, tmp_path, capsys):
    out, qc = tmp_path / "labels.nii.gz", tmp_path / "qc.json"
    code = main([
        "fewshot", "--support-from-query", str(phantom_case.label), "5,6", "--query", str(phantom_case.image),
        "--out", str(out), "--model", "untrained", "--image-size", "128", "--device", "cpu", "--label", "1=liver",
        "--mode", "baseline", "--preset", "ct-soft-tissue", "--qc", str(qc), "--no-progress", "--postprocess",
        "objects",
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "objects: " in captured.out and json.loads(qc.read_text(encoding="utf-8"))["provenance"]["postprocess"]
    support = json.loads(qc.read_text(encoding="utf-8"))["provenance"]["support"]
    assert support["drawn_on_query"] == [f"{phantom_case.label} (on the query)"]
    assert [s["z"] for s in support["slices"]] == [5, 6]
    written = load_labels(out, load_volume(phantom_case.image))
    for z in (5, 6):  # drawn slices come back exactly (they anchor the objects)
        np.testing.assert_array_equal(written.array[z] == 1, phantom_case.labels.array[z] == 1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--support", "only-one-part.nii.gz"], r"expected --support IMAGE LABELS \[Z1,Z2,...\]"),
        (["--support", "a.nii.gz", "b.nii.gz", "3:4"], "'3:4' is not a list of slice indices"),
        (["--label", "7=liver"], r"labels \[1, 2, 3\] are none of the labels to segment 7 \(liver\)"),
        (["--label", "liver"], "expected ID=NAME"),
        (["--reprompt", "boxes"], r"--reprompt: invalid choice: 'boxes' \(choose from 'mask', 'box'\)"),
    ],
)
def test_fewshot_cli_reports_bad_input_in_one_line(phantom_case, tmp_path, capsys, extra, message):
    code = main(["fewshot", "--support", str(phantom_case.image), str(phantom_case.label), "--query",
                 str(phantom_case.image), "--out", str(tmp_path / "x.nii.gz"), "--model", "untrained", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("medseg fewshot: error:") and len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert not (tmp_path / "x.nii.gz").exists()
