"""Prompts: JSON round trip (exact masks via RLE) and validation against a volume's shape."""

import json

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.prompts import PointPrompt, Prompts


def _mask(shape=(20, 30)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[3:9, 4:20] = True
    mask[15, 29] = True  # a lone voxel in the last column
    return mask


def test_round_trip_through_json_is_exact():
    prompts = Prompts()
    prompts.object(1, "liver")
    prompts.add_point(1, 4, 2.5, 7.0).add_point(1, 4, 10, 11, positive=False)
    prompts.add_box(2, 6, 1, 2, 8, 9).add_mask(2, 0, _mask())
    back = Prompts.from_dict(json.loads(json.dumps(prompts.to_dict())))
    assert back.objects[1].name == "liver"
    assert back.objects[1].points == prompts.objects[1].points
    assert back.objects[2].boxes == prompts.objects[2].boxes
    np.testing.assert_array_equal(back.objects[2].masks[0].mask, _mask())
    assert back.slices == [0, 4, 6]
    assert back.to_dict() == prompts.to_dict()


def test_a_big_mask_is_stored_compactly():
    mask = np.zeros((512, 512), dtype=bool)
    mask[100:400, 50:450] = True
    text = json.dumps(Prompts().add_mask(1, 0, mask).to_dict())
    assert len(text) < 2000  # 120,000 foreground voxels as a few hundred run lengths
    np.testing.assert_array_equal(Prompts.from_dict(json.loads(text)).objects[1].masks[0].mask, mask)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: p, r"no prompts given"),
        (lambda p: p.add_point(1, 5, 1, 1),
         r"object 1: point \(z=5, y=1.0, x=1.0\) is outside the volume of shape \(5, 20, 30\)"),
        (lambda p: p.add_point(1, 0, 20, 1), r"is outside the volume"),
        (lambda p: p.add_box(2, 0, 0, 0, 19, 30), r"object 2: box on slice 0 .* is outside the volume"),
        (lambda p: p.add_mask(3, 1, np.zeros((20, 30), bool)), r"object 3: mask on slice 1 is empty"),
        (lambda p: p.add_mask(3, 1, np.ones((30, 20), bool)),
         r"mask on slice 1 has shape \(30, 20\), the slices are \(20, 30\)"),
    ],
)
def test_validate_names_the_prompt_that_does_not_fit(build, message):
    with pytest.raises(InputError, match=message):
        build(Prompts()).validate((5, 20, 30))


def test_bad_ids_and_swapped_box_corners():
    with pytest.raises(InputError, match="object ids are label values and start at 1"):
        Prompts().add_point(0, 0, 0, 0)
    with pytest.raises(InputError, match="box on slice 2 has its corners swapped"):
        Prompts().add_box(1, 2, 5, 5, 1, 9)


def test_parts_of_a_label_round_trip_and_pool_per_label():
    prompts = Prompts()
    prompts.object(3, "kidney", label=3).points.append(PointPrompt(2, 4.0, 5.0))
    prompts.object(4, "kidney", label=3)
    prompts.add_box(4, 6, 1, 20, 8, 28).add_point(1, 0, 1, 1)
    assert prompts.objects[3].label is None and prompts.objects[4].label == 3  # a label equal to the id is no part
    data = json.loads(json.dumps(prompts.to_dict()))
    assert "label" not in data["3"] and data["4"]["label"] == 3
    back = Prompts.from_dict(data)
    assert back.to_dict() == prompts.to_dict() and back.label_of() == {1: 1, 3: 3, 4: 3}
    pooled = back.by_label()
    assert sorted(pooled.objects) == [1, 3] and pooled.objects[3].name == "kidney"
    assert pooled.objects[3].points == prompts.objects[3].points and pooled.objects[3].boxes == prompts.objects[4].boxes
    with pytest.raises(InputError, match="an object's label must be a label value"):
        Prompts().object(4, label=0)
    with pytest.raises(InputError, match=r"^prompts: object 4: an object's label must be a label value .* got '3'"):
        Prompts.from_dict({"4": {"label": "3", "points": [[0, 1, 1, 1]]}})


def test_prompts_are_found_in_every_record_medseg_writes_with_them():
    prompts = Prompts().add_point(1, 4, 2.5, 7.0).add_box(2, 6, 1, 2, 8, 9).add_mask(2, 0, _mask())
    logged = json.loads(json.dumps(prompts.to_dict()))
    records = {
        "Prompts.to_dict": logged,
        "a pipeline case's prompts.json": {"prompts": logged},
        "a pipeline case's result.json": {"status": "ok", "provenance": {"model": "m", "prompts": logged}},
        "medseg segment --qc": {"scores": {"1": 0.5}, "qc": {}, "provenance": {"prompts": logged}},
    }
    for kind, record in records.items():
        assert Prompts.from_record(record, source=kind).to_dict() == prompts.to_dict(), kind


@pytest.mark.parametrize(("record", "message"), [
    ([1, 2], r"f\.json: is a JSON list; expected prompts as \{\"1\""),
    ({"prompts": {}, "support": {"slices": []}}, r"f\.json: holds no prompts \(it logs reference slices"),
    ({"status": "failed", "error": {"type": "WeightsError"}}, r"f\.json: holds no prompts; expected prompts as"),
    ({"1": {"points": [[1, 2]]}}, r"f\.json: object 1 does not read as prompts \(ValueError: .*\); expected"),
    ({"1": {"point": [[1, 2, 3]]}}, r"f\.json: object 1: unknown key\(s\) \['point'\]"),
    ({"1": "liver"}, r"f\.json: object 1: is a JSON str"),
    ({"0": {"points": [[1, 2, 3, 1]]}}, r"f\.json: object 0: object ids are label values and start at 1"),
    ({"1": {"points": [[1, 2, 3, 1]]}, "liver": {}}, r"f\.json: key 'liver' is not an object id"),
    ({"1": {"boxes": [[1, 9, 9, 2, 2]]}}, r"f\.json: object 1: box on slice 1 has its corners swapped"),
])
def test_a_record_that_is_not_prompts_is_refused_naming_the_form(record, message):
    with pytest.raises(InputError, match=message) as info:
        Prompts.from_record(record, source="--prompts f.json")
    assert "\n" not in str(info.value)


def test_scribbles_round_trip_and_a_stroke_in_any_view_is_cut_per_slice():
    stroke = np.zeros((5, 20, 30), bool)
    stroke[1:4, 7, 10:20] = True  # drawn on a coronal plane: crosses slices 1, 2 and 3
    prompts = Prompts().add_scribble_volume(2, stroke).add_scribble(2, 0, _mask(), positive=False)
    scribbles = prompts.objects[2].scribbles
    assert [(s.z, s.positive, int(s.mask.sum())) for s in scribbles] == [(1, True, 10), (2, True, 10), (3, True, 10),
                                                                        (0, False, int(_mask().sum()))]
    assert prompts.slices == [0, 1, 2, 3]
    prompts.validate((5, 20, 30))
    back = Prompts.from_dict(json.loads(json.dumps(prompts.to_dict())))
    assert [(s.z, s.positive) for s in back.objects[2].scribbles] == [(s.z, s.positive) for s in scribbles]
    for a, b in zip(back.objects[2].scribbles, scribbles):
        np.testing.assert_array_equal(a.mask, b.mask)
    assert "scribbles" not in Prompts().add_point(1, 0, 1, 1).to_dict()["1"]  # older records are unchanged


def test_scribble_points_spread_along_the_stroke_and_empty_strokes_are_refused():
    from medseg.prompts import ScribblePrompt

    mask = np.zeros((20, 30), bool)
    mask[5, 2:28] = True  # a horizontal stroke, 26 voxels long
    # nearest the centroid (x = 14.5; the first of a tie) first, then both ends, then the middle of the longest gap
    assert ScribblePrompt(0, mask).points(4) == [(5, 14), (5, 27), (5, 2), (5, 8)]
    assert len(ScribblePrompt(0, mask).points(100)) == 26  # never more points than voxels
    with pytest.raises(InputError, match="object 1: scribble on slice 2 covers no voxel"):
        Prompts().add_scribble(1, 2, np.zeros((20, 30), bool)).validate((5, 20, 30))
    with pytest.raises(InputError, match=r"scribble on slice 7 of shape \(20, 30\) does not fit"):
        Prompts().add_scribble(1, 7, mask).validate((5, 20, 30))
