"""Reference prompting with the model that ships with medseg (``medseg-micro``): labels stay on
their own organ, reverse scores rank candidates, and a cohort runs from references alone.

Small phantoms (few slices) keep each test at seconds of CPU. Thresholds come from runs on this
machine; the measured values are written beside each.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import InputError
from medseg.metrics import dice_per_label
from medseg.phantom import make_phantom, write_demo_cohort
from medseg.revsam2 import ReferenceSession, SupportSet, reverse_scores
from medseg.pipeline import replay_case
from medseg.revsam2.baseline import ObjectTrack
from medseg.revsam2.register import register_reference
from medseg.revsam2.zmatch import matched_slice
from medseg.runtime import torch_threads
from medseg.sam2 import load_model
from medseg.volume import LabelVolume, Volume

SHAPE = (12, 128, 128)  # the model's own image size: no resampling in the frames
SPLEEN, KIDNEY = 2, 3


@pytest.fixture(scope="module")
def model():
    with torch_threads(1):
        yield load_model("medseg-micro", device="cpu")


@pytest.fixture(scope="module")
def spleen_and_kidney():
    """Reference phantom 0 with spleen and kidney supports (3 slices each), query phantom 5."""
    reference = make_phantom(0, shape=SHAPE)
    support = SupportSet.from_volumes([reference], k=3, labels={SPLEEN: "spleen", KIDNEY: "kidney"})
    return support, make_phantom(5, shape=SHAPE)


def test_a_spleen_reference_finds_the_spleen_not_the_kidney(model, spleen_and_kidney):
    support, (query, truth) = spleen_and_kidney
    result = ReferenceSession(query, support, model=model).segment()
    # every slice the re-prompt started from shows the organ of its label, not the other one
    for label, other in ((SPLEEN, KIDNEY), (KIDNEY, SPLEEN)):
        for z in result.provenance["labels"][str(label)]["selected_slices"]:
            painted = result.array[z] == label
            assert (np.count_nonzero(painted & (truth.array[z] == label))
                    > np.count_nonzero(painted & (truth.array[z] == other)))
    spleen, truth_spleen = result.array == SPLEEN, truth.array == SPLEEN
    # share of the voxels painted as spleen that are truly kidney: measured 0.041 (0.175 on phantom 6 with gate
    # margin 1: the spleen's mask spills onto the kidney next to it; not solved without retraining)
    assert np.count_nonzero(spleen & (truth.array == KIDNEY)) / np.count_nonzero(spleen) < 0.12
    # the spleen is found where it is: Dice measured 0.698
    assert 2 * np.count_nonzero(spleen & truth_spleen) / (spleen.sum() + truth_spleen.sum()) > 0.6


def test_reverse_scores_rank_the_true_organ_above_a_wrong_one(model, spleen_and_kidney):
    support, (query, truth) = spleen_and_kidney
    session = ReferenceSession(query, support, model=model)
    external = session._supports_of(SPLEEN)[1]
    rivals = session._rivals_of(SPLEEN)
    n = query.array.shape[0]
    # three candidates on slices showing spleen and kidney: the true spleen, the true kidney,
    # and a disc of fat of the spleen's area where no organ is
    both = [z for z in range(n) if (truth.array[z] == SPLEEN).any() and (truth.array[z] == KIDNEY).any()]
    good, wrong, empty = both[len(both) // 2], both[0], both[-1]
    area = np.count_nonzero(truth.array[good] == SPLEEN)
    y, x = np.mgrid[: SHAPE[1], : SHAPE[2]]
    disc = (y - 100) ** 2 + (x - 64) ** 2 < area / np.pi
    assert not np.isin(truth.array[empty][disc], [1, 2, 3]).any()
    exact = {good: truth.array[good] == SPLEEN, wrong: truth.array[wrong] == KIDNEY, empty: disc}
    track = ObjectTrack(np.zeros((n, 32, 32), np.float16), np.ones(n, np.float32), exact, SHAPE[1:])
    scores, rejected = reverse_scores(model, session.cache, session.query_frames, track, SPLEEN, external,
                                      candidates=sorted(exact), rivals=rivals)
    # measured: true spleen 0.857, kidney 0.044, fat disc 0.000
    assert scores[good] > scores[wrong] + 0.2 and scores[good] > scores[empty] + 0.2
    assert rejected == {wrong: KIDNEY}  # the kidney segments the kidney supports better: no spleen candidate


def test_matched_slice_keeps_the_relative_position():
    assert [matched_slice(z, 32, 12) for z in (0, 16, 31)] == [0, 6, 11]


@pytest.mark.slow
def test_a_cohort_is_segmented_from_references_alone(tmp_path):
    cohort = write_demo_cohort(tmp_path / "cohort", n_cases=3, n_test=1, shape=(8, 128, 128))
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        name: promptless
        cohort: {cohort}
        prompts: {{point: none, box: none, reference_slices: 2}}
        methods:
          rev: {{type: revsam2, model: medseg-micro, device: cpu, references: 2}}
          reg: {{type: revsam2, model: medseg-micro, device: cpu, references: 2, register: true}}
        """), encoding="utf-8")
    out = tmp_path / "out"
    with torch_threads(1):
        assert main(["run", str(pipeline), "--out", str(out), "--no-progress"]) == 0
    case = out / "rev" / "phantom_002"
    result = json.loads((case / "result.json").read_text(encoding="utf-8"))
    assert result["status"] == "ok" and result["prompt_policy"]["point"] == "none"
    assert set(result["metrics"]) == {"1", "2", "3"}
    # measured mean Dice 0.495 (liver 0.748, spleen 0.543, kidney 0.195): far from an empty or a wrong mask
    assert result["mean_dice"] > 0.3
    support = json.loads((case / "prompts.json").read_text(encoding="utf-8"))["support"]
    assert support["references"] == ["phantom_000", "phantom_001"]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| rev" in report
    registered = out / "reg" / "phantom_002"
    logged = json.loads((registered / "prompts.json").read_text(encoding="utf-8"))["support"]
    assert logged["registered_onto_query"] and logged["references"] == ["phantom_000", "phantom_001"]
    assert json.loads((registered / "result.json").read_text(encoding="utf-8"))["status"] == "ok"
    with torch_threads(2):
        assert replay_case(registered).identical  # the registration gives the same supports every time


def test_a_reference_registered_onto_the_query_lands_on_its_organs():
    query_image, query_labels = make_phantom(3, shape=(10, 64, 64))
    shifted = Volume(np.roll(query_image.array, (5, -4), axis=(1, 2)), query_image.geometry, modality="CT")
    shifted_labels = LabelVolume(np.roll(query_labels.array, (5, -4), axis=(1, 2)), query_image.geometry)
    kept = shifted.array.copy()
    image, labels = register_reference(query_image, shifted, shifted_labels)
    assert image.geometry == query_image.geometry and labels.geometry == query_image.geometry
    before = dice_per_label(shifted_labels, query_labels, labels=[1, 2, 3])
    after = dice_per_label(labels, query_labels, labels=[1, 2, 3])
    # measured: before 0.72 / 0.14 / 0.14, after 1.0 for every organ (the shift recovered exactly)
    assert all(after[v] > 0.9 for v in after) and min(before.values()) < 0.6, (before, after)
    assert np.array_equal(shifted.array, kept)  # the reference is not changed
    assert np.array_equal(register_reference(query_image, shifted, shifted_labels)[1].array, labels.array)


def test_a_reference_that_cannot_be_registered_is_refused_in_one_line():
    query_image, query_labels = make_phantom(3, shape=(10, 64, 64))
    flat = Volume(np.zeros(query_image.shape, np.float32), query_image.geometry)
    with pytest.raises(InputError, match="the reference image is one constant value: there is nothing to register"):
        register_reference(query_image, flat, query_labels)
    tiny, tiny_labels = make_phantom(1, shape=(2, 8, 8))
    with pytest.raises(InputError, match="the reference could not be registered onto the query: .*minimum of four"):
        register_reference(query_image, tiny, tiny_labels)
