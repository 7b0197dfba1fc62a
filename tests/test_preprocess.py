"""Intensity presets: CT windows exact in HU, MRI percentiles over the volume, 3-channel frames."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.geometry import Geometry
from medseg.preprocess import (
    PRESETS,
    SliceFrames,
    Window,
    choose_preset,
    default_preset,
    display_volume,
    get_preset,
    looks_like_hu,
)
from medseg.volume import Volume


def _volume(array, modality="CT") -> Volume:
    array = np.asarray(array, dtype=np.float32)
    return Volume(array, Geometry(array.shape, (2.5, 0.8, 0.8)), modality)


def test_soft_tissue_window_is_exact_in_hu():
    hu = np.array([[[-1000.0, -160.0, 40.0, 240.0, 1000.0]]])
    frame = SliceFrames(_volume(hu), "ct-soft-tissue")[0]
    assert frame.shape == (3, 1, 5) and frame.dtype == np.float32
    np.testing.assert_allclose(frame[0, 0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(frame[0], frame[1])  # one window, replicated
    np.testing.assert_array_equal(frame[0], frame[2])


def test_ct_multi_packs_lung_soft_tissue_and_bone_windows():
    hu = np.array([[[0.0, -600.0, 400.0]]])
    frame = SliceFrames(_volume(hu), "ct-multi")[0]
    # 0 HU: lung window [-1350, 150] -> 0.9; soft tissue [-160, 240] -> 0.4; bone [-500, 1300] -> 0.2778
    np.testing.assert_allclose(frame[:, 0, 0], [0.9, 0.4, 500 / 1800], atol=1e-6)
    np.testing.assert_allclose(frame[:, 0, 1], [0.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(frame[:, 0, 2], [1.0, 1.0, 0.5], atol=1e-6)


def test_custom_window_and_named_presets():
    preset = get_preset("ct:50,350")
    assert preset.windows == (Window(50.0, 350.0),)
    frame = SliceFrames(_volume([[[-125.0, 50.0, 225.0]]]), preset)[0]
    np.testing.assert_allclose(frame[0, 0], [0.0, 0.5, 1.0], atol=1e-6)
    assert get_preset("mri:1,99").percentiles == (1.0, 99.0)
    assert get_preset(PRESETS["ct-lung"]) is PRESETS["ct-lung"]


@pytest.mark.parametrize("spec", ["ct-nope", "ct:40", "mri:99,1", "ct:40,-5"])
def test_bad_presets_are_config_errors(spec):
    with pytest.raises(ConfigError, match="preset"):
        get_preset(spec)


def test_mri_percentiles_are_computed_over_the_volume_not_per_slice():
    rng = np.random.default_rng(0)
    dark = rng.uniform(0, 100, (1, 20, 20))
    bright = rng.uniform(900, 1000, (1, 20, 20))
    volume = _volume(np.concatenate([dark, bright]), "MR")
    low, high = np.percentile(volume.array, (0.5, 99.5))
    frames = SliceFrames(volume)
    assert frames.preset.name == "mri"
    expected = np.clip((volume.array - low) / (high - low), 0, 1)
    np.testing.assert_allclose(frames[0][0], expected[0], atol=1e-5)
    np.testing.assert_allclose(frames[1][0], expected[1], atol=1e-5)
    assert frames[0][0].max() < 0.15 and frames[1][0].min() > 0.85  # a per-slice stretch would fill [0, 1] on both


def test_ct_window_does_not_depend_on_the_slice_content():
    flat = _volume(np.stack([np.full((4, 4), 40.0), np.full((4, 4), 140.0)]))
    frames = SliceFrames(flat)
    assert frames.preset.name == "ct-soft-tissue"  # default for CT
    assert frames[0][0, 0, 0] == pytest.approx(0.5) and frames[1][0, 0, 0] == pytest.approx(0.75)


def test_frames_are_lazy_bounded_and_finite():
    array = np.zeros((3, 4, 4), np.float32)
    array[1, 0, 0] = np.nan
    frames = SliceFrames(_volume(array))
    assert len(frames) == 3 and frames[-1].shape == (3, 4, 4)
    assert np.all(np.isfinite(frames[1]))
    with pytest.raises(IndexError, match="slice 3 is outside the volume"):
        frames[3]


def test_display_volume_and_default_presets():
    volume = _volume(np.full((2, 3, 3), 240.0))
    np.testing.assert_allclose(display_volume(volume), 1.0)
    assert default_preset(_volume(np.zeros((1, 1, 1)), "MR")).name == "mri"
    assert default_preset(_volume(np.zeros((1, 1, 1)), "CT")).name == "ct-soft-tissue"


# --- which preset a volume gets (choose_preset) -------------------------------------------------
def _without_modality(volume: Volume) -> Volume:
    return Volume(volume.array, volume.geometry, "OT")


def _nifti_phantom(tmp_path) -> Volume:
    from medseg.io import load_volume
    from medseg.io.nifti import write_nifti
    from medseg.phantom import make_phantom

    volume, _ = make_phantom(0, shape=(8, 48, 48))
    write_nifti(volume.array.astype(np.int16), volume.geometry, tmp_path / "phantom.nii.gz")
    return load_volume(tmp_path / "phantom.nii.gz")


def _pydicom_file(name: str) -> Volume:
    from medseg.datasets import pydicom_test_file
    from medseg.io import load_volume

    return load_volume(pydicom_test_file(name))


def _mni152_t1() -> Volume:
    from medseg.datasets import MNI152_T1, package_file
    from medseg.io import load_volume

    return load_volume(package_file(MNI152_T1))


def test_preset_decision_order_given_then_trained_then_modality_then_content(tmp_path):
    ct = _nifti_phantom(tmp_path)
    assert ct.modality == "OT"  # NIfTI does not say
    assert (choose_preset(ct).name, choose_preset(ct).reason) == (
        "ct-soft-tissue", "modality unknown: the intensities are HU-like (air and soft tissue), so CT")
    assert choose_preset(ct, trained="ct-liver").name == "ct-liver"
    assert choose_preset(ct, preset="mri", trained="ct-liver").name == "mri"
    assert choose_preset(ct, preset="ct:50,350").preset.windows == (Window(50.0, 350.0),)
    mr_labelled = Volume(ct.array, ct.geometry, "MR")  # the modality wins over the content
    assert (choose_preset(mr_labelled).name, choose_preset(mr_labelled).reason) == ("mri", "default for MR")
    assert default_preset(ct).name == "ct-soft-tissue"
    with pytest.raises(ConfigError, match="unknown intensity preset 'ct-nope'"):
        choose_preset(ct, trained="ct-nope")


@pytest.mark.parametrize(("load", "hu_like"), [
    (_nifti_phantom, True),  # about 43% air, 52% fat and soft tissue
    (lambda _: _without_modality(_pydicom_file("CT_small.dcm")), True),  # a real CT slice: 21% at or below -500 HU
    (lambda _: _without_modality(_pydicom_file("MR_small.dcm")), False),  # real MRI, 127 to 2145
    (lambda _: _mni152_t1(), False),  # nilearn's MNI152 T1, 0 to 255
    (lambda _: _volume(np.full((4, 8, 8), -1000.0), "OT"), False),  # all air: no tissue to window
    (lambda _: _volume(np.random.default_rng(0).uniform(0, 900, (4, 8, 8)), "OT"), False),  # positive, MRI-like
], ids=["phantom-nifti", "pydicom-CT_small", "pydicom-MR_small", "mni152-t1", "air-only", "positive-uniform"])
def test_content_check_tells_hu_from_other_intensities(tmp_path, load, hu_like):
    volume = load(tmp_path)
    assert volume.modality == "OT"
    assert looks_like_hu(volume) is hu_like
    assert choose_preset(volume).name == ("ct-soft-tissue" if hu_like else "mri")
