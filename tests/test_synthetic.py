"""medseg.synthetic: scenes are deterministic, render any slices exactly, hold the kinds asked for, and
bad settings fail before any training."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.synthetic import KINDS, TRAINING_KINDS, SyntheticConfig, check_config, make_scene, synthetic_volume


def test_same_seed_same_scene_and_slices_render_as_in_the_whole():
    first = make_scene(np.random.default_rng(5), (12, 64, 80))
    again = make_scene(np.random.default_rng(5), (12, 64, 80))
    image, labels = first.render()
    image2, labels2 = again.render()
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(labels, labels2)
    part_image, part_labels = first.render([7, 3, 4])  # any order, any subset: exactly those slices
    np.testing.assert_array_equal(part_image, image[[7, 3, 4]])
    np.testing.assert_array_equal(part_labels, labels[[7, 3, 4]])
    assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
    assert not np.array_equal(image, make_scene(np.random.default_rng(6), (12, 64, 80)).render()[0])


def test_volume_carries_its_grid_and_names_each_object_by_kind():
    volume, labels = synthetic_volume(3, shape=(10, 48, 72), spacing=(3.0, 1.0, 0.5))
    assert volume.shape == labels.array.shape == (10, 48, 72) and volume.spacing == (3.0, 1.0, 0.5)
    assert labels.labels and set(labels.label_names.values()) <= set(KINDS) | {"body"}
    for value in labels.labels:  # every named object is visible: at least min_pixels on some slice
        assert (labels.array == value).reshape(10, -1).sum(axis=1).max() >= SyntheticConfig().min_pixels


def test_training_kinds_leave_out_the_held_out_ones_and_held_out_scenes_use_them():
    seen = {n for s in range(12) for n in synthetic_volume(s, shape=(8, 64, 64))[1].label_names.values()}
    assert seen <= set(TRAINING_KINDS) | {"body"} and "cuboid" not in seen and "rim" not in seen
    held_out = SyntheticConfig(kinds=("cuboid", "rim"))
    names = {n for s in range(6) for n in synthetic_volume(s, shape=(8, 64, 64),
                                                           config=held_out)[1].label_names.values()}
    assert {"cuboid", "rim"} <= names


def test_nested_objects_lie_inside_their_parent():
    """A lesion covers part of its organ: every lesion voxel has organ voxels around it in its slice."""
    config = SyntheticConfig(kinds=("lesion",), objects=(1, 1), p_body=0.0)
    for seed in range(4):
        scene = make_scene(np.random.default_rng(seed), (6, 64, 64), config)
        organ, lesion = scene.objects
        assert lesion.parent == 0 and lesion.kind == "lesion"
        _, labels = scene.render()
        lesion_voxels, organ_voxels = labels == 2, labels == 1
        if lesion_voxels.any():
            ys, xs = np.nonzero(lesion_voxels.any(axis=0))
            assert organ_voxels[:, ys.min():ys.max() + 1, :].any()


def test_bad_settings_fail_with_the_setting_named():
    with pytest.raises(ConfigError, match=r"kinds must name some of .*'blob'"):
        SyntheticConfig(kinds=("blob", "star"))
    with pytest.raises(ConfigError, match="radius must be a \\(min, max\\) pair"):
        SyntheticConfig(radius=(0.3, 0.1))
    with pytest.raises(ConfigError, match="at least 1 object per scene"):
        SyntheticConfig(objects=(0, 2))
    with pytest.raises(ConfigError, match="contrast must lie in \\(0, 1\\]"):
        SyntheticConfig(contrast=(0.0, 0.5))
    with pytest.raises(ConfigError, match="unknown synthetic settings \\['radii'\\]"):
        SyntheticConfig.from_dict({"radii": [0.1, 0.2]})


def test_settings_that_only_make_empty_objects_are_refused_before_training():
    tiny = SyntheticConfig(kinds=("blob",), radius=(0.001, 0.002), min_pixels=12)
    with pytest.raises(ConfigError, match="made no object of at least 12 pixels on a 128x128 slice"):
        check_config(tiny, size=128)
    check_config(SyntheticConfig(), size=128)  # the defaults make objects
