"""The cycle check of SAM2 propagation (``medseg.sam2.cycle``) with the real architecture, untrained.

The untrained model's masks mean nothing, so these tests check the rule, not its quality: what is
never cut, that a cut runs from its first slice outward, the extremes of the threshold, and the
provenance and errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from medseg import ConfigError
from medseg.phantom import make_phantom
from medseg.prompts import Prompts
from medseg.sam2 import FeatureCache, VolumeFrames, load_model
from medseg.sam2.cycle import cut_inconsistent
from medseg.sam2.predictor import Sam2VolumePredictor


@pytest.fixture(scope="module")
def model():
    return load_model("untrained", image_size=128, device="cpu")


def _painted(depth: int = 10) -> np.ndarray:
    """Object 1 painted as a square on every slice, object 2 on slices 3..6."""
    labels = np.zeros((depth, 48, 48), np.int32)
    labels[:, 10:30, 10:30] = 1
    labels[3:7, 34:44, 34:44] = 2
    return labels


def test_prompted_range_is_kept_and_a_cut_runs_outward_from_its_first_slice(model):
    volume, _ = make_phantom(0, shape=(10, 48, 48))
    frames, cache = VolumeFrames(volume, "ct-soft-tissue"), FeatureCache(model)
    prompted = {1: [4, 6], 2: [5]}
    for threshold in (1e-6, 0.5, 1 - 1e-6):
        labels = _painted()
        cut = cut_inconsistent(model, cache, frames, labels, prompted, threshold)
        original = _painted()
        for obj, slices in prompted.items():
            kept = np.flatnonzero((labels == obj).any(axis=(1, 2)))
            lost = sorted(set(np.flatnonzero((original == obj).any(axis=(1, 2)))) - set(kept))
            assert lost == cut.get(obj, [])
            assert set(range(min(slices), max(slices) + 1)) <= set(kept)  # the prompted range stays
            below, above = [z for z in lost if z < min(slices)], [z for z in lost if z > max(slices)]
            painted = np.flatnonzero((original == obj).any(axis=(1, 2)))
            assert below == [z for z in painted if z <= max(below, default=-1)]  # from the cut to the first slice
            assert above == [z for z in painted if z >= min(above, default=len(painted) + 99)]
        np.testing.assert_array_equal(labels[(labels != original)], 0)  # cut voxels become background
    # a Dice below 1 - 1e-6 everywhere: nothing outside the prompted ranges survives
    assert {obj: zs for obj, zs in cut.items()} == {1: [0, 1, 2, 3, 7, 8, 9], 2: [3, 4, 6]}


def test_the_pipeline_and_predictor_record_the_check_and_refuse_bad_thresholds(model):
    volume, truth = make_phantom(0, shape=(10, 48, 48))
    prompts = Prompts()
    mask = truth.array == 1
    prompts.add_mask(1, 5, mask[5])
    predictor = Sam2VolumePredictor(model, preset="ct-soft-tissue", store=False)
    checked = predictor.segment(volume, prompts, cycle_threshold=1 - 1e-6)
    assert checked.provenance["cycle_check"]["threshold"] == 1 - 1e-6
    assert np.flatnonzero((checked.array == 1).any(axis=(1, 2))).tolist() == [5]
    assert set(checked.provenance["cycle_check"]["cut"]) <= {"1"}
    plain = predictor.segment(volume, prompts)
    assert "cycle_check" not in plain.provenance
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="cycle_threshold must be between 0 and 1"):
            predictor.segment(volume, prompts, cycle_threshold=bad)
