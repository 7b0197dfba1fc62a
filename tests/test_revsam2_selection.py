"""Support set construction, reverse scoring and slice selection (no model involved)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg import ConfigError, Geometry, GeometryError, InputError, LabelVolume, Volume
from medseg.revsam2.reverse import auto_min_spacing, reverse_score, select_slices
from medseg.prompt_simulation import sample_slices
from medseg.revsam2.support import SupportEntry, SupportSet


def _reference(depth: int = 20, *, modality: str = "CT", names: dict | None = None) -> tuple[Volume, LabelVolume]:
    """A CT volume with a liver (1) on slices 4..15 and a spleen (2) on slices 10..12."""
    geometry = Geometry((depth, 16, 12), (2.5, 0.8, 0.8))
    image = np.full(geometry.shape, -100, np.float32)
    labels = np.zeros(geometry.shape, np.int32)
    labels[4:16, 2:8, 2:6] = 1
    labels[10:13, 10:14, 6:10] = 2
    image[labels == 1] = 60
    image[labels == 2] = 45
    return Volume(image, geometry, modality), LabelVolume(labels, geometry, label_names=names or {})


# --- sampling -------------------------------------------------------------------------------
def test_sample_slices_are_chunk_centres_of_the_extent():
    mask = np.zeros((30, 2, 2), bool)
    mask[6:18] = True  # extent 12 -> chunks of 4: centres 7.5, 11.5, 15.5 -> nearest drawn 7, 11, 15
    assert sample_slices(mask, k=3) == [7, 11, 15]
    assert sample_slices(mask, k=1) == [11]


def test_sample_slices_land_on_drawn_slices_and_fill_up_to_k():
    mask = np.zeros((40, 2, 2), bool)
    mask[5:9] = True
    mask[30:32] = True  # the middle of the extent is a gap
    chosen = sample_slices(mask, k=3)
    assert chosen == [5, 8, 30]
    assert all(mask[z].any() for z in chosen)


def test_sample_slices_returns_every_drawn_slice_when_fewer_than_k():
    mask = np.zeros((10, 2, 2), bool)
    mask[[2, 7]] = True
    assert sample_slices(mask, k=5) == [2, 7]


# --- SupportSet -----------------------------------------------------------------------------
def test_from_volumes_samples_k_slices_per_label_with_names():
    volume, labels = _reference(names={1: "liver", 2: "spleen"})
    support = SupportSet.from_volumes([(volume, labels)], k=3, names=["ref.nii.gz"])
    assert support.label_names == {1: "liver", 2: "spleen"}
    assert [s.z for s in support.for_label(1)] == [5, 9, 13]  # extent 4..15: centres 5.5, 9.5, 13.5
    assert [s.z for s in support.for_label(2)] == [10, 11, 12]
    for s in support.slices:
        mask = support.mask(s)
        assert mask.shape == (16, 12) and mask.any()
        assert np.array_equal(mask, labels.array[s.z] == s.label)
    assert support.to_dict()["slices"][0] == {"reference": "ref.nii.gz", "z": 5, "label": 1}


def test_explicit_slices_make_one_support_per_label_drawn_on_them():
    volume, labels = _reference()
    support = SupportSet.from_volumes([(volume, labels, [11, 5])], labels={1: "liver", 2: "spleen"})
    assert [(s.z, s.label) for s in support.slices] == [(5, 1), (11, 1), (11, 2)]


def test_labels_restrict_the_objects_and_several_references_each_contribute():
    a, b = _reference(), _reference(24)
    support = SupportSet.from_volumes([a, b], k=2, labels=[2])
    assert support.labels == [2]
    assert [(s.reference, s.z) for s in support.slices] == [(0, 10), (0, 12), (1, 10), (1, 12)]
    assert support.label_names == {2: "label 2"}


# --- geometry: references onto the query's in-plane grid --------------------------------------
def test_a_reference_on_the_query_s_in_plane_grid_is_used_as_it_is():
    query, _ = _reference()
    support = SupportSet.from_volumes([_reference(24)], k=1)  # other depth: z does not matter
    assert support.for_query(query).references[0] is support.references[0]
    assert support.for_query(query).to_dict()["resampled_in_plane"] == {}


def test_a_reference_with_twice_the_pixel_spacing_is_resampled_to_the_query_s():
    query, fine = _reference()
    coarse_geometry = Geometry((20, 8, 6), (2.5, 1.6, 1.6), origin=(40.0, -7.0, 300.0))  # same field of view
    coarse = LabelVolume(fine.array[:, ::2, ::2], coarse_geometry, label_names={1: "liver"})
    image = Volume(query.array[:, ::2, ::2], coarse_geometry, "CT")
    support = SupportSet.from_volumes([(image, coarse)], k=2, names=["coarse.nii.gz"]).for_query(query)
    (reference,) = support.references
    assert reference.volume.shape == reference.labels.array.shape == (20, 16, 12)
    assert reference.volume.spacing == (2.5, 0.8, 0.8)
    np.testing.assert_array_equal(reference.labels.array, fine.array)  # the organs' edges fall on coarse pixel edges
    assert reference.volume.array[8, 4, 3] == pytest.approx(60.0)  # inside the liver
    assert reference.labels.label_names == {1: "liver"}
    assert support.to_dict()["resampled_in_plane"]["coarse.nii.gz"] == {
        "in_plane_spacing": [[1.6, 1.6], [0.8, 0.8]],
        "in_plane_shape": [[8, 6], [16, 12]],
        "in_plane_axes": [[1.0, 0.0], [0.0, 1.0]],
        "alignment": "fields of view centred",
    }
    # the resampled voxels keep their place in the reference patient's space
    np.testing.assert_allclose(reference.volume.geometry.index_to_world([[0, 7.5, 5.5]]),
                               coarse_geometry.index_to_world([[0, 3.5, 2.5]]), atol=1e-9)


def test_a_reference_with_flipped_columns_is_flipped_back():
    query, labels = _reference()
    flipped = np.diag([-1.0, 1.0, 1.0])  # columns run right to left
    geometry = Geometry(query.shape, query.spacing, direction=flipped)
    reference = Volume(query.array[:, :, ::-1], geometry, "CT")
    support = SupportSet.from_volumes([(reference, LabelVolume(labels.array[:, :, ::-1], geometry))],
                                      k=1).for_query(query)
    np.testing.assert_array_equal(support.references[0].labels.array, labels.array)
    np.testing.assert_allclose(support.references[0].volume.array, query.array, atol=1e-4)
    assert support.to_dict()["resampled_in_plane"]["reference 1"]["in_plane_axes"] == [[-1.0, 0.0], [0.0, 1.0]]
    assert [support.mask(s).sum() for s in support.slices] == [24, 16]


def test_references_that_cannot_match_the_query_are_refused_naming_both():
    query, labels = _reference()
    sagittal = Geometry(query.shape, query.spacing, direction=[[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    support = SupportSet.from_volumes([(Volume(query.array, sagittal, "CT"), LabelVolume(labels.array, sagittal))],
                                      names=["sag.nii.gz"])
    with pytest.raises(GeometryError, match=r"sag.nii.gz: its slices lie 90 degrees off the query's slices \(slice "
                                            r"normal \[1.0, 0.0, 0.0\] vs \[0.0, 0.0, 1.0\]"):
        support.for_query(query)
    drawn = SupportSet.from_volumes([SupportEntry(labels, slices=[5], from_query=True)], labels=[1], names=["drawn"])
    drawn.for_query(query)  # on the query's grid: fine
    other = Volume(np.zeros((20, 16, 10), np.float32), Geometry((20, 16, 10), (2.5, 0.8, 0.8)), "CT")
    with pytest.raises(GeometryError, match=r"drawn is marked as drawn on the query but is not on the query's "
                                            r"grid \(shape"):
        drawn.for_query(other)
    with pytest.raises(InputError, match="drawn on the query, so it takes the query's image; leave its volume out"):
        SupportSet.from_volumes([SupportEntry(labels, volume=query, from_query=True)], names=["drawn"])
    small_fov = Volume(np.zeros((20, 4, 4), np.float32), Geometry((20, 4, 4), (2.5, 0.8, 0.8)), "CT")
    with pytest.raises(GeometryError, match=r"label 2 on support slice 11 lies outside the query's field of view"):
        SupportSet.from_volumes([(query, labels, [11])], labels=[2]).for_query(small_fov)  # the spleen is off-centre


# --- bad input ------------------------------------------------------------------------------
def test_image_and_label_grids_must_match():
    volume, labels = _reference()
    _, other = _reference(18)
    with pytest.raises(GeometryError, match=r"ref\.nii\.gz.*label map has shape \(18, 16, 12\)"
                                            r".*image has shape \(20, 16, 12\)"):
        SupportSet.from_volumes([(volume, other)], names=["ref.nii.gz"])
    shifted = LabelVolume(labels.array, Geometry(volume.shape, volume.spacing, origin=(0.0, 0.0, 5.0)))
    with pytest.raises(GeometryError, match=r"ref\.nii\.gz: the label map is not on its image's grid \(origin"):
        SupportSet.from_volumes([(volume, shifted)], names=["ref.nii.gz"])


def test_empty_support_labels_are_refused():
    volume, labels = _reference()
    empty = LabelVolume.like(volume)
    with pytest.raises(InputError, match="reference 2: the label map is empty"):
        SupportSet.from_volumes([(volume, labels), (volume, empty)])


def test_support_labels_outside_the_label_map_are_refused():
    volume, labels = _reference()
    with pytest.raises(InputError, match=r"reference 1: its labels \[1, 2\] are none of the labels to segment 3 "
                                         r"\(kidney\)"):
        SupportSet.from_volumes([(volume, labels)], labels={3: "kidney"})


def test_a_label_no_reference_annotates_is_refused():
    volume, labels = _reference()
    with pytest.raises(InputError, match=r"label\(s\) 2 \(spleen\) have no support slice"):
        SupportSet.from_volumes([(volume, labels, [5])], labels={1: "liver", 2: "spleen"})


def test_label_names_must_agree_with_the_label_map():
    volume, labels = _reference(names={1: "spleen"})
    with pytest.raises(InputError, match="calls label 1 'spleen' but the label map calls it 'liver'"):
        SupportSet.from_volumes([(volume, labels)], labels={1: "liver"})


def test_explicit_slice_errors_name_the_slice():
    volume, labels = _reference()
    with pytest.raises(InputError, match="support slice 25 is outside the volume"):
        SupportSet.from_volumes([(volume, labels, [25])])
    with pytest.raises(InputError, match="support slice 0 shows none of the labels"):
        SupportSet.from_volumes([(volume, labels, [0])])


def test_reference_modality_must_match_the_query():
    volume, labels = _reference(modality="MR")
    support = SupportSet.from_volumes([(volume, labels)], names=["t1.nii.gz"])
    query, _ = _reference(modality="CT")
    with pytest.raises(InputError, match="t1.nii.gz is MR but the query is CT"):
        support.check_query(query)
    support.check_query(Volume(query.array, query.geometry, "OT"))  # unknown modality passes


def test_k_must_be_positive():
    with pytest.raises(ConfigError, match="k .* at least 1"):
        SupportSet.from_volumes([_reference()], k=0)


# --- reverse score --------------------------------------------------------------------------
def test_reverse_score_is_mean_dice_over_supports():
    truth = [np.zeros((4, 4), bool), np.zeros((4, 4), bool)]
    truth[0][:2] = True  # 8 pixels
    truth[1][:, :1] = True  # 4 pixels
    predicted = [truth[0].copy(), np.zeros((4, 4), bool)]
    predicted[1][:2, :1] = True  # 2 of 4 -> Dice 2*2/(2+4) = 2/3
    assert reverse_score(predicted, truth) == pytest.approx((1.0 + 2 / 3) / 2)
    with pytest.raises(InputError, match="one prediction per support"):
        reverse_score(predicted[:1], truth)


# --- selection ------------------------------------------------------------------------------
def test_selection_honours_top_k_threshold_and_spacing():
    scores = np.full(20, np.nan)
    scores[[2, 3, 4, 10, 11, 17]] = [0.7, 0.9, 0.85, 0.6, 0.8, 0.3]
    assert select_slices(scores, top_k=2, threshold=None, min_spacing=1) == [3, 4]
    assert select_slices(scores, top_k=3, threshold=None, min_spacing=3) == [3, 11, 17]
    assert select_slices(scores, top_k=None, threshold=0.65, min_spacing=1) == [2, 3, 4, 11]
    assert select_slices(scores, top_k=None, threshold=0.65, min_spacing=5) == [3, 11]
    assert select_slices(scores, top_k=5, threshold=0.95, min_spacing=1) == []


def test_selection_ties_go_to_the_lower_slice_and_auto_spacing_spreads():
    scores = np.full(40, np.nan)
    scores[5:35] = 0.8
    # auto spacing: extent 30 // (2 * 3) = 5
    assert auto_min_spacing(list(range(5, 35)), 3) == 5
    assert select_slices(scores, top_k=3, threshold=0.5) == [5, 10, 15]
    assert select_slices(np.full(5, np.nan), top_k=3, threshold=None) == []


def test_selection_settings_are_validated():
    with pytest.raises(ConfigError, match="top_k"):
        select_slices(np.ones(3), top_k=0)
    with pytest.raises(ConfigError, match="threshold"):
        select_slices(np.ones(3), threshold=1.5)
    with pytest.raises(ConfigError, match="min_spacing"):
        select_slices(np.ones(3), min_spacing=0)
