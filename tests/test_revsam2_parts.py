"""Reference prompting with each connected part of a label its own object (``medseg.revsam2.parts``).

The matching of parts between references is checked without a model; the merge back into labels
with the real SAM2 architecture (untrained: its masks mean nothing, the label bookkeeping does).
"""

from __future__ import annotations

import numpy as np
import pytest

from medseg import Geometry, InputError, LabelVolume, Volume
from medseg.revsam2 import ReferenceSession, SupportEntry, SupportSet, anchor_prompts
from medseg.revsam2.parts import split_parts
from medseg.sam2 import load_model

SHAPE = (10, 40, 48)


def _kidneys(*, mirrored: bool = False, shift: int = 0, speck: bool = False, one: bool = False,
             spleen: bool = True) -> tuple[Volume, LabelVolume]:
    """Two kidneys under label 3: the patient's right one (small x in LPS) of 4 x 6 x 6 voxels, the left
    one larger (4 x 8 x 8); a spleen (2). ``mirrored``: the columns stored right to left (x direction -1),
    so the left kidney sits at small column indices."""
    direction = np.diag([-1.0, 1.0, 1.0]) if mirrored else np.eye(3)
    origin = (47.0, 0.0, 0.0) if mirrored else (0.0, 0.0, 0.0)
    geometry = Geometry(SHAPE, (2.0, 1.0, 1.0), origin=origin, direction=direction)
    labels = np.zeros(SHAPE, np.int32)
    right, left = (slice(6 + shift, 12 + shift), slice(6, 12)), (slice(14, 22), slice(30, 38))
    labels[3:7, right[0], right[1]] = 3
    if not one:
        labels[3:7, left[0], left[1]] = 3
    if speck:
        labels[8, 30, 2] = 3
    if spleen:
        labels[2:8, 28:34, 14:20] = 2
    if mirrored:
        labels = labels[:, :, ::-1].copy()
    image = np.where(labels > 0, 40.0, -100.0).astype(np.float32)
    return Volume(image, geometry, "CT"), LabelVolume(labels, geometry, label_names={2: "spleen", 3: "kidney"})


def _left_columns(mirrored: bool) -> np.ndarray:
    """The columns of the patient's left half (LPS +x): high indices, low ones when the columns are mirrored."""
    columns = np.arange(SHAPE[2]) >= SHAPE[2] // 2
    return ~columns if mirrored else columns


def test_the_same_kidney_is_the_same_object_in_every_reference_whatever_its_grid():
    plain, mirrored, moved = _kidneys()[1], _kidneys(mirrored=True)[1], _kidneys(shift=3, speck=True)[1]
    before = [volume.array.copy() for volume in (plain, mirrored, moved)]
    relabelled, names, label_of = split_parts([plain, mirrored, moved], {2: "spleen", 3: "kidney"})
    # the largest part (the left kidney) of the first reference keeps the label value; the other is numbered
    # on from the highest value in use
    assert label_of == {2: 2, 3: 3, 4: 3} and names == {2: "spleen", 3: "kidney", 4: "kidney"}
    speck = np.zeros(SHAPE, bool)
    speck[8, 30, 2] = True
    for volume, original, flipped in zip(relabelled, before, (False, True, False)):
        kidney = original == 3
        left = kidney & _left_columns(flipped) | kidney & speck  # a speck stays with the largest part
        np.testing.assert_array_equal(volume.array == 3, left)
        np.testing.assert_array_equal(volume.array == 4, kidney & ~left)
        np.testing.assert_array_equal(volume.array == 2, original == 2)
        assert volume.label_names[4] == "kidney" and volume.geometry is not None
    for volume, original in zip((plain, mirrored, moved), before):
        np.testing.assert_array_equal(volume.array, original)  # the inputs are not modified


def test_a_reference_with_one_kidney_supports_the_object_of_the_same_side():
    relabelled, _, label_of = split_parts([_kidneys()[1], _kidneys(one=True, mirrored=True)[1]], {3: "kidney"})
    assert label_of == {3: 3, 4: 3}
    only = relabelled[1].array
    assert not (only == 3).any() and int((only == 4).sum()) == 4 * 6 * 6  # the right kidney, stored mirrored


def test_support_set_with_parts_keeps_objects_and_logs_them():
    ref, labels = _kidneys()
    support = SupportSet.from_volumes([(ref, labels)], k=2, labels={2: "spleen", 3: "kidney"}, parts=True)
    assert support.labels == [2, 3, 4] and support.label_of == {2: 2, 3: 3, 4: 3}
    assert support.to_dict()["parts"] == {"4": 3}
    assert {s.label for s in support.slices} == {2, 3, 4}
    for s in support.slices:
        assert support.mask(s).any() and not (support.mask(s) & (labels.array[s.z] != 3)).any() or s.label == 2
    flat = SupportSet.from_volumes([(ref, labels)], k=2, labels={2: "spleen", 3: "kidney"})
    assert flat.labels == [2, 3] and flat.to_dict()["parts"] == {}


def test_explicit_slices_that_show_one_kidney_leave_the_other_out_but_not_the_label():
    ref, labels = _kidneys()
    relabelled = split_parts([labels], {3: "kidney"})[0][0]
    only_right = [z for z in range(SHAPE[0]) if (relabelled.array[z] == 4).any()][:1]
    labels.array[only_right[0]][relabelled.array[only_right[0]] == 3] = 0  # this slice shows the right kidney only
    support = SupportSet.from_volumes([(ref, labels, only_right)], labels={3: "kidney"}, parts=True)
    assert [(s.z, s.label) for s in support.slices] == [(only_right[0], 4)]
    assert support.label_of == {4: 3}
    with pytest.raises(InputError, match=r"support slice 0 shows none of the labels to segment \[3\]"):
        SupportSet.from_volumes([(ref, labels, [0])], labels={3: "kidney"}, parts=True)


@pytest.fixture(scope="module")
def model():
    return load_model("untrained", image_size=128, device="cpu")


def test_parts_are_tracked_apart_and_come_back_as_their_label(model):
    query, _ = _kidneys(shift=2)
    ref, labels = _kidneys()
    support = SupportSet.from_volumes([(ref, labels)], k=2, labels={2: "spleen", 3: "kidney"}, parts=True)
    session = ReferenceSession(query, support, model=model)
    result = session.segment(mode="baseline")
    assert result.label_names == {2: "spleen", 3: "kidney"} and set(result.scores) == set(result.slice_scores) == {2, 3}
    assert set(result.provenance["support"]["parts"]) == {"4"}
    # each object's own (z-gated) track, painted by the highest logit, then each part mapped to its label
    objects = np.array([2, 3, 4])
    logits = np.stack([np.stack([session.forward(obj, "before").slice_logits(z) if session.gate(obj)[z]
                                 else np.full(SHAPE[1:], -np.inf) for z in range(SHAPE[0])]) for obj in objects])
    painted = np.where(logits.max(axis=0) > 0, objects[logits.argmax(axis=0)], 0)
    np.testing.assert_array_equal(result.array, np.where(painted == 4, 3, painted))
    # a label's score weighs its parts' scores by their painted voxels
    areas = {obj: (painted == obj).sum(axis=(1, 2)) for obj in (3, 4)}
    scores = {obj: np.sum(session.forward(obj, "before").scores * areas[obj]) / max(areas[obj].sum(), 1)
              for obj in (3, 4)}
    total = sum(int(a.sum()) for a in areas.values())
    expected = sum(scores[o] * areas[o].sum() for o in scores) / total if total else np.mean(list(scores.values()))
    assert result.scores[3] == pytest.approx(expected, rel=1e-5)


def test_parts_drawn_on_the_query_come_back_exactly_and_anchor_their_label(model):
    query, truth = _kidneys()
    drawn = SupportSet.from_volumes([SupportEntry(truth, slices=[4], from_query=True)], labels={3: "kidney"},
                                    parts=True)
    assert drawn.labels == [3, 4]
    result = ReferenceSession(query, drawn, model=model).segment(mode="baseline")
    np.testing.assert_array_equal(result.array[4] == 3, truth.array[4] == 3)
    assert set(np.unique(result.array)) <= {0, 3}
    anchors = anchor_prompts(result)
    assert list(anchors.objects) == [3]  # the label, both kidneys drawn on slice 4
    [mask] = anchors.objects[3].masks
    assert mask.z == 4
    np.testing.assert_array_equal(mask.mask, truth.array[4] == 3)


def test_selected_slices_of_parts_anchor_every_region_of_their_label_but_a_speck():
    _, truth = _kidneys()
    array = truth.array.copy()
    array[4, 38, 46] = 3  # a speck of the kidney label
    array[4, 0, 0] = 2  # and of the spleen, whose object is the label itself
    provenance = {"support": {"drawn_on_query": [], "slices": [], "parts": {"4": 3}},
                  "labels": {"2": {"selected_slices": [4]}, "3": {"selected_slices": []},
                             "4": {"selected_slices": [4]}}}
    anchors = anchor_prompts(LabelVolume(array, truth.geometry, provenance=provenance))
    assert sorted(anchors.objects) == [2, 3]
    np.testing.assert_array_equal(anchors.objects[3].masks[0].mask, truth.array[4] == 3)  # both kidneys, no speck
    np.testing.assert_array_equal(anchors.objects[2].masks[0].mask, truth.array[4] == 2)  # the largest region
