"""medseg.sam2 with the real SAM2 architecture (random weights, image size 128, tiny volumes).

Masks from random weights are meaningless: these tests check mechanics and invariants
(exact prompt masks, coverage, label values, geometry, coordinates, memory bounds, errors).
"""

from __future__ import annotations

import json
from contextlib import closing

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.errors import Cancelled, InputError, WeightsError
from medseg.geometry import Geometry
from medseg.prompts import Prompts
from medseg.sam2 import FeatureCache, Sam2VolumePredictor, Tracker, VolumeFrames, load_model
from medseg.sam2 import meta_internals
from medseg.sam2.engine import carry_mask_prompts
from medseg.sam2.frames import model_input, to_model_xy, upsample_logits
from medseg.sam2.meta_internals import Sam2VersionError
from medseg.sam2.qc import qc_summary
from medseg.sam2.session import plan_runs
from medseg.volume import LabelVolume, Volume

SHAPE = (10, 40, 56)  # non-square slices
SPACING = (3.0, 0.7, 0.9)  # anisotropic


def make_volume(nz: int = SHAPE[0], seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 10, (nz, *SHAPE[1:])).astype(np.float32)
    array[:, 10:26, 14:36] += 200  # a bright block through all slices
    direction = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]], dtype=float)
    return Volume(array, Geometry((nz, *SHAPE[1:]), SPACING, (-20.0, 5.5, 100.0), direction), modality="MR")


def block_mask(y0: int = 12, y1: int = 22, x0: int = 18, x1: int = 30) -> np.ndarray:
    mask = np.zeros(SHAPE[1:], dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture(scope="module")
def predictor() -> Sam2VolumePredictor:
    return Sam2VolumePredictor("untrained", image_size=128, device="cpu")


@pytest.fixture(scope="module")
def volume() -> Volume:
    return make_volume()


# --- planning (pure) ----------------------------------------------------------------------
@pytest.mark.parametrize("prompted,n", [([0], 7), ([6], 7), ([3], 7), ([0, 6], 7), ([0, 3, 6], 7), ([2, 3], 9),
                                        ([1, 4, 8], 12)])
def test_runs_cover_every_slice_once_from_the_nearest_prompt(prompted, n):
    reached = {}
    for start, end in plan_runs(prompted, n):
        assert start in prompted
        step = -1 if end < start else 1
        for z in range(start, end + step, step):
            if z != start:
                assert z not in reached, f"slice {z} reached twice"
                reached[z] = start
    for z in set(range(n)) - set(prompted):
        assert abs(reached[z] - z) == min(abs(p - z) for p in prompted)


# --- segment ------------------------------------------------------------------------------
def test_parts_of_one_label_are_tracked_apart_and_come_back_as_that_label(predictor, volume):
    left, right = block_mask(12, 22, 4, 12), block_mask(12, 22, 40, 50)
    separate = Prompts().add_mask(1, 4, block_mask(26, 34, 18, 30)).add_mask(2, 4, left).add_mask(5, 4, right)
    parts = Prompts.from_dict(separate.to_dict())
    parts.objects[5].label = 2  # the second kidney of label 2
    apart = predictor.segment(volume, separate)
    merged = predictor.segment(volume, parts)
    assert merged.labels == [1, 2] and sorted(merged.slice_scores) == [1, 2] and merged.label_names[2] == "object 2"
    np.testing.assert_array_equal(merged.array, np.where(apart.array == 5, 2, apart.array))
    assert np.array_equal(merged.array[4] == 2, left | right)  # both mask prompts exactly
    area = {k: (apart.array == k).sum(axis=(1, 2)) for k in (2, 5)}
    weighted = sum(np.nan_to_num(apart.slice_scores[k]) * area[k] for k in (2, 5)) / np.maximum(area[2] + area[5], 1)
    np.testing.assert_allclose(merged.slice_scores[2], np.where(area[2] + area[5] > 0, weighted, np.nan))
    np.testing.assert_allclose(merged.slice_scores[1], apart.slice_scores[1])
    voxels = (merged.array == 2).sum(axis=(1, 2))
    assert merged.scores[2] == pytest.approx(np.nansum(merged.slice_scores[2] * voxels) / voxels.sum())
    assert merged.provenance["prompts"]["5"]["label"] == 2  # what reproduces it says it was a part


def test_mask_prompt_comes_back_exactly_and_geometry_is_kept(predictor, volume):
    mask = block_mask()
    labels = predictor.segment(volume, Prompts().add_mask(1, 4, mask))
    assert np.array_equal(labels.array[4] == 1, mask)
    assert labels.geometry is volume.geometry
    assert labels.array.shape == volume.shape and labels.array.dtype == np.int32


@pytest.mark.parametrize("slices", [[0], [9], [4], [0, 4, 9]])
def test_every_slice_predicted_once_per_object(predictor, volume, slices):
    prompts = Prompts()
    for z in slices:
        prompts.add_mask(1, z, block_mask())
    prompts.add_point(2, 5, 30, 8)  # a second object prompted elsewhere: its own pass
    calls = []
    session = predictor.session(volume)
    session.set_prompts(prompts)
    labels = session.propagate(progress=lambda done, total: calls.append((done, total)))
    total = 2 * volume.shape[0]
    assert calls == [(i, total) for i in range(1, total + 1)]
    for obj_id in (1, 2):
        present = (labels.array == obj_id).any(axis=(1, 2))
        assert np.array_equal(np.isfinite(labels.slice_scores[obj_id]), present)
    for z in slices:
        assert np.array_equal(labels.array[z] == 1, block_mask())


def test_object_ids_are_label_values_and_stay_separate(predictor, volume):
    a, b = block_mask(5, 15, 5, 20), block_mask(20, 35, 30, 50)
    prompts = Prompts()
    prompts.object(3, "left")  # names travel to label_names
    prompts.object(7, "right")
    prompts.add_mask(3, 6, a).add_mask(7, 6, b)
    labels = predictor.segment(volume, prompts)
    assert np.array_equal(labels.array[6] == 3, a) and np.array_equal(labels.array[6] == 7, b)
    assert set(np.unique(labels.array)) <= {0, 3, 7}
    assert labels.label_names == {3: "left", 7: "right"}
    assert set(labels.scores) == {3, 7} and all(0 <= s <= 1 for s in labels.scores.values())


def test_output_is_labelled_untrained_with_provenance(predictor, volume):
    prompts = Prompts().add_box(1, 2, 10, 12, 25, 40).add_point(1, 2, 15, 20, positive=False)
    labels = predictor.segment(volume, prompts)
    assert labels.untrained is True
    p = labels.provenance
    assert ((p["model"], p["image_size"], p["seed"], p["untrained"], p["checkpoint_sha256"])
            == ("untrained", 128, 0, True, None))
    assert p["prompts"] == prompts.to_dict()
    assert p["preset"]["name"] == "mri"
    json.dumps(p)  # provenance is JSON-able as is


def test_point_lands_at_the_right_model_coordinates(predictor, volume):
    y, x = 31.0, 7.0
    model = predictor.model
    frames = VolumeFrames(volume)
    tracker = Tracker(model, frames)
    tracker.set_prompts(3, 1, points_yx=[(y, x)], labels=[1])
    coords = tracker._state.raw["point_inputs_per_obj"][0][3]["point_coords"][0, 0].numpy()
    expected = ((x + 0.5) * 128 / 56 - 0.5, (y + 0.5) * 128 / 40 - 0.5)
    np.testing.assert_allclose(coords, expected, atol=1e-4)
    # and that model pixel shows the voxel: a single bright voxel peaks there after the resize
    dot = np.zeros(volume.shape, dtype=np.float32)
    dot[3, int(y), int(x)] = 1.0
    image = model_input(VolumeFrames(volume.with_array(dot), "mri:0,100")[3].load(), 128)[0, 0].numpy()
    peak = np.unravel_index(np.argmax(image), image.shape)
    assert np.allclose(peak, np.round(to_model_xy([(y, x)], volume.shape[1:], 128)[0, ::-1]), atol=1)


def test_bad_prompts_are_clear_errors(predictor, volume):
    with pytest.raises(InputError, match="outside the volume"):
        predictor.segment(volume, Prompts().add_point(1, 10, 5, 5))
    with pytest.raises(InputError, match="outside the volume"):
        predictor.segment(volume, Prompts().add_box(1, 2, 0, 0, 40, 10))
    with pytest.raises(InputError, match="empty"):
        predictor.segment(volume, Prompts().add_mask(1, 2, np.zeros(SHAPE[1:], bool)))
    with pytest.raises(InputError, match="no prompts"):
        predictor.segment(volume, Prompts())
    with pytest.raises(InputError, match="one box per object"):
        predictor.segment(volume, Prompts().add_box(1, 2, 1, 1, 5, 5).add_box(1, 2, 6, 6, 9, 9))


def test_unknown_model_name():
    with pytest.raises(WeightsError, match="unknown model 'sam2.1-gigantic'|neither a checkpoint file nor a "
                                           "known name"):
        Sam2VolumePredictor("sam2.1-gigantic")


def test_checkpoint_by_path_and_wrong_architecture(tmp_path, predictor):
    path = tmp_path / "tiny_fp16.pt"
    torch.save({"model": {k: v.half() for k, v in predictor.model.net.state_dict().items()}}, path)
    model = load_model(path, image_size=128, device="cpu")
    assert not model.untrained and model.checkpoint_sha256 and len(model.checkpoint_sha256) == 64
    torch.testing.assert_close(
        model.net.sam_mask_decoder.iou_token.weight,
        predictor.model.net.sam_mask_decoder.iou_token.weight.half().float()
    )
    with pytest.raises(WeightsError, match="does not fit the configs/sam2.1/sam2.1_hiera_s.yaml architecture"):
        load_model(path, image_size=128, device="cpu", config="configs/sam2.1/sam2.1_hiera_s.yaml")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="cut.pt"):
        load_model(tmp_path / "cut.pt", image_size=128, device="cpu")


def test_untrained_weights_are_seeded():
    a = load_model("untrained", image_size=64, device="cpu", seed=3)
    b = load_model("untrained", image_size=64, device="cpu", seed=3)
    c = load_model("untrained", image_size=64, device="cpu", seed=4)
    w = [m.net.obj_ptr_proj.layers[0].weight for m in (a, b, c)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


# --- session: corrections, undo ------------------------------------------------------------
def test_correction_on_another_slice_changes_the_result(predictor, volume):
    session = predictor.session(volume)
    session.add_mask(1, 1, block_mask())
    before = session.propagate()
    correction = block_mask(25, 38, 2, 12)
    session.add_mask(1, 8, correction)
    after = session.propagate()
    assert np.array_equal(after.array[8] == 1, correction)
    assert np.array_equal(after.array[1] == 1, block_mask())
    changed = [z for z in range(volume.shape[0]) if not np.array_equal(before.array[z], after.array[z])]
    assert 8 in changed and {7, 9} <= set(changed)  # the correction reached its neighbours


def test_click_on_propagated_slice_refines_it_and_undo_takes_it_back(predictor, volume):
    session = predictor.session(volume)
    session.add_mask(1, 2, block_mask())
    result = session.propagate()
    snapshot = result.array.copy()
    propagated = result.array[6] == 1
    assert propagated.any()
    session.add_point(1, 6, 20, 20, positive=False)
    assert np.array_equal(result.array, snapshot)  # a returned result never changes afterwards
    assert not np.array_equal(session.labels, snapshot)
    obj = session.prompts.objects[1]
    seed = [m for m in obj.masks if m.z == 6]
    assert len(seed) == 1 and np.array_equal(seed[0].mask, propagated)  # seeded from the propagation
    assert [(p.z, p.y, p.x, p.positive) for p in obj.points] == [(6, 20.0, 20.0, False)]
    assert session.undo() == 6
    assert [m.z for m in obj.masks] == [2] and obj.points == []
    assert session.undo() == 2 and session.prompts.objects == {} and session.undo() is None
    assert not session.labels[2].any()


def test_predict_slice_reuses_the_slice_embedding(predictor, volume):
    session = predictor.session(volume)
    session.add_point(1, 4, 15, 20)
    calls = session.cache.encoder_calls
    session.add_point(1, 4, 18, 25)
    session.add_point(2, 4, 30, 45)
    labels = session.predict_slice(4)
    assert session.cache.encoder_calls == calls
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_clicks_on_one_slice_refine_its_mask_step_by_step_and_replay_alike(predictor, volume):
    # SAM2 feeds a frame's previous mask with each new click (and trains corrections so); the
    # session's second click must refine the first click's output, not start over with both points.
    session = predictor.session(volume)
    session.add_point(1, 4, 15, 20)
    labels = session.add_point(1, 4, 30, 45, positive=False)
    tracker = predictor.session(volume).tracker
    first = tracker.set_prompts(4, 1, points_yx=[(15, 20)], labels=[1])
    chained = tracker.set_prompts(4, 1, points_yx=[(15, 20), (30, 45)], labels=[1, 0], previous=first)
    afresh = tracker.set_prompts(4, 1, points_yx=[(15, 20), (30, 45)], labels=[1, 0])
    assert not torch.equal(chained.logits, afresh.logits)  # the previous mask reached the decoder
    assert np.array_equal(labels == 1, chained.masks()[0])
    replay = predictor.session(volume)
    replay.set_prompts(session.prompts)
    assert np.array_equal(replay.predict_slice(4), labels)
    assert np.array_equal(replay.propagate().array, session.propagate().array)
    assert session.undo() == 4 and np.array_equal(session.labels[4] == 1, first.masks()[0])


def test_stop_raises_cancelled_leaves_labels_and_a_later_propagate_works(predictor, volume):
    session = predictor.session(volume)
    session.add_mask(1, 0, block_mask())
    session.propagate()
    session.add_mask(1, 9, block_mask(2, 8, 2, 8))
    before = session.labels.copy()
    steps = []
    with pytest.raises(Cancelled, match="after 3 of 10 slices"):
        session.propagate(progress=lambda d, t: steps.append(d), should_stop=lambda: len(steps) >= 3)
    assert steps == [1, 2, 3]
    assert np.array_equal(session.labels, before)
    assert session.tracker.memory_frames()["pointers"] == 0  # no run memory left behind
    fresh = predictor.session(volume)
    fresh.add_mask(1, 0, block_mask())
    fresh.add_mask(1, 9, block_mask(2, 8, 2, 8))
    assert np.array_equal(session.propagate().array, fresh.propagate().array)


def test_segment_stops_between_slices(predictor, volume):
    steps = []
    with pytest.raises(Cancelled):
        predictor.segment(volume, Prompts().add_mask(1, 4, block_mask()), progress=lambda d, t: steps.append((d, t)),
                          should_stop=lambda: len(steps) == 5)
    assert steps == [(i, volume.shape[0]) for i in range(1, 6)]


def test_unsupported_sam2_version_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(meta_internals, "installed_sam2_version", lambda: "9.9")
    with pytest.raises(Sam2VersionError, match=r"tested with sam2 1\.1\.0 only, and sam2 9\.9 is installed.*"
                                               r"SAM2_BUILD_CUDA=0 pip install sam2==1\.1\.0"):
        meta_internals.check_sam2_version()
    monkeypatch.setattr(meta_internals, "installed_sam2_version", lambda: None)
    with pytest.raises(Sam2VersionError, match="sam2 is not installed"):
        meta_internals.check_sam2_version()
    monkeypatch.undo()
    meta_internals.check_sam2_version()  # the installed one passes


# --- engine: memory bounds, shared cache --------------------------------------------------
@pytest.mark.parametrize("nz", [12, 30])
def test_state_holds_a_bounded_number_of_frames(predictor, nz):
    model = predictor.model
    tracker = Tracker(model, VolumeFrames(make_volume(nz)))
    tracker.set_prompts(0, 1, mask=block_mask())
    tracker.set_prompts(0, 2, points_yx=[(30, 40)], labels=[1])
    held = []
    with closing(tracker.propagate(0, nz - 1)) as run:
        for _ in run:
            held.append(tracker.memory_frames())
    net = model.net
    assert max(h["spatial"] for h in held) == net.num_maskmem - 1
    assert max(h["pointers"] for h in held) == min(nz - 1, net.max_obj_ptrs_in_encoder - 1)
    assert max(h["cached_features"] for h in held) <= 3 and all(h["conditioning"] == 1 for h in held)
    assert tracker.memory_frames()["pointers"] == 0  # nothing left behind after the run


def test_bounded_memory_gives_exactly_sam2s_own_propagation(predictor):
    """Pruning keeps everything SAM2 reads: same logits as its unbounded propagate_in_video."""
    model, nz = predictor.model, 20  # longer than the pointer window (16)
    frames = VolumeFrames(make_volume(nz, seed=3))
    ours, official = Tracker(model, frames), Tracker(model, frames)
    for tracker in (ours, official):
        tracker.set_prompts(2, 1, mask=block_mask())
        tracker.set_prompts(2, 2, points_yx=[(30, 40), (5, 5)], labels=[1, 0])
    mine = {o.frame_idx: upsample_logits(o.logits, (128, 128)) for o in ours.propagate(2, nz - 1)}
    theirs = {t: m[:, 0] for t, _, m in model.net.propagate_in_video(official._state.raw, start_frame_idx=2)}
    assert sorted(mine) == sorted(theirs) == list(range(2, nz))
    for t in mine:
        torch.testing.assert_close(mine[t], theirs[t], rtol=0, atol=1e-5)


def test_feature_cache_shared_across_trackers_encodes_each_slice_once(predictor):
    model = predictor.model
    support, query = VolumeFrames(make_volume(4, seed=1)), VolumeFrames(make_volume(6, seed=2))
    cache = FeatureCache(model)
    for s in range(3):  # three small states: one support slice followed by the query slices
        tracker = Tracker(model, [support[s], *query], cache)
        tracker.set_prompts(0, 1, mask=block_mask())
        outputs = list(tracker.propagate(0, len(query)))
        assert [o.frame_idx for o in outputs] == list(range(len(query) + 1))
        got = outputs[0].masks()[0]  # the mask prompt, through SAM2's image_size / 4 storage
        assert (got & block_mask()).sum() / (got | block_mask()).sum() > 0.9
    assert cache.encoder_calls == 3 + len(query)
    backwards = Tracker(model, [*query, support[0]], cache)
    backwards.set_prompts(len(query), 1, mask=block_mask())
    assert [o.frame_idx for o in backwards.propagate(len(query), 0)] == list(range(len(query), -1, -1))
    assert cache.encoder_calls == 3 + len(query)


def test_mask_prompts_carried_in_one_batch_equal_one_tracker_each(predictor):
    """Reverse scoring's batch: objects prompted by a mask each on its own frame, each tracked from there
    alone onto shared frames, give what one tracker per object gives."""
    model = predictor.model
    query, support = VolumeFrames(make_volume(6, seed=4)), VolumeFrames(make_volume(4, seed=5))
    cache = FeatureCache(model, store=False)
    prompts = [(query[0], block_mask()), (query[2], block_mask(5, 30, 10, 40)), (query[5], block_mask(20, 35, 2, 20))]
    targets = [support[1], support[3], query[1]]
    batched = carry_mask_prompts(model, cache, prompts, targets)
    assert [o.frame_idx for o in batched] == [1, 2, 3] and all(o.obj_ids == (0, 1, 2) for o in batched)
    calls = cache.encoder_calls
    for b, (frame, mask) in enumerate(prompts):
        tracker = Tracker(model, [frame, *targets], cache)
        tracker.set_prompts(0, 7, mask=mask)
        for i, out in enumerate(batched, start=1):
            (alone,) = list(tracker.propagate(i, i))
            torch.testing.assert_close(out.logits[b], alone.logits[0], rtol=0, atol=1e-4)
            np.testing.assert_allclose(out.object_scores[b], alone.object_scores[0], rtol=0, atol=1e-5)
            np.testing.assert_allclose(out.ious[b], alone.ious[0], rtol=0, atol=1e-5)
    assert cache.encoder_calls == calls  # the batch had encoded every frame the trackers read
    with pytest.raises(InputError, match="mask prompt 1: empty on a frame of shape"):
        carry_mask_prompts(model, cache, [prompts[0], (query[1], np.zeros(SHAPE[1:], bool))], targets)


# --- QC and CLI ---------------------------------------------------------------------------
def test_qc_names_the_least_confident_slice():
    geometry = Geometry((4, 3, 3), (2.0, 0.5, 0.5))
    array = np.zeros((4, 3, 3), dtype=np.int32)
    array[1, :2, :2] = 1
    array[2, :, :] = 1
    array[3, 0, 0] = 2
    scores = {1: np.array([np.nan, 0.9, 0.4, np.nan]), 2: np.array([np.nan, np.nan, np.nan, 0.7])}
    qc = qc_summary(LabelVolume(array, geometry, {1: "liver", 2: "lesion"}, slice_scores=scores))
    liver, lesion = qc.objects
    assert liver.slices.tolist() == [1, 2] and liver.area_voxels.tolist() == [0, 4, 9, 0]
    assert liver.area_mm2.tolist() == [0, 1.0, 2.25, 0] and liver.volume_ml == pytest.approx(13 * 0.5 / 1000)
    assert liver.least_confident_slice == 2 and lesion.least_confident_slice == 3
    assert qc.correct_next() == (1, 2)
    assert "least confident slice z=2 (0.40" in qc.to_text() and "correct here next" in qc.to_text()


def test_cli_segment_writes_labels_on_the_input_grid(tmp_path, volume):
    image = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(volume.array.transpose(2, 1, 0), volume.affine), image)
    painted = np.zeros(volume.shape, dtype=np.int16)
    painted[7][block_mask(2, 9, 2, 12)] = 4
    nib.save(nib.Nifti1Image(painted.transpose(2, 1, 0), volume.affine), tmp_path / "painted.nii.gz")
    out, qc = tmp_path / "labels.nii.gz", tmp_path / "qc.json"
    code = main([
        "segment", str(image), "--model", "untrained", "--image-size", "128", "--device", "cpu",
        "--point", "5,20,30", "--point", "2:3,30,45,1", "--box", "2:3,25,38,38,54", "--name", "2=lesion",
        "--mask", str(tmp_path / "painted.nii.gz"), "--out", str(out), "--qc", str(qc), "--no-progress",
        "--postprocess", "objects",
    ])
    assert code == 0
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, volume.affine, atol=1e-5)
    assert written.shape == volume.shape[::-1]
    assert np.array_equal(np.asarray(written.dataobj).transpose(2, 1, 0)[7] == 4, block_mask(2, 9, 2, 12))
    report = json.loads(qc.read_text(encoding="utf-8"))
    assert report["provenance"]["untrained"] is True and report["provenance"]["model"] == "untrained"
    assert report["provenance"]["prompts"]["2"]["name"] == "lesion"
    assert report["provenance"]["prompts"]["2"]["boxes"] == [[3, 25.0, 38.0, 38.0, 54.0]]
    assert report["provenance"]["postprocess"]["rule"] == "objects"  # the painted mask anchors object 4: kept exactly


def test_cli_segment_rejects_bad_prompt_text(tmp_path, volume, capsys):
    image = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(volume.array.transpose(2, 1, 0), volume.affine), image)
    assert main(["segment", str(image), "--point", "5,20", "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "argument --point: '5,20'" in capsys.readouterr().err
    assert main(["segment", str(image), "--point", "5,20,300", "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "outside the volume" in capsys.readouterr().err


def test_a_scribble_is_the_points_spread_along_it(predictor, volume):
    """SAM2 gets a scribble as the points ``ScribblePrompt.points`` picks, all in one step (one stroke,
    one refinement of the slice's mask, as a click is)."""
    from medseg.prompts import ScribblePrompt

    stroke = np.zeros(SHAPE[1:], bool)
    stroke[16, 16:34] = True
    stroke[12:20, 25] = True
    scribbled = predictor.session(volume)
    scribbled.add_scribble(1, 4, stroke)
    scribbled.add_scribble(1, 4, block_mask(30, 34, 40, 50), positive=False)
    tracker = predictor.session(volume).tracker
    points = ScribblePrompt(4, stroke).points()
    first = tracker.set_prompts(4, 1, points_yx=points, labels=[1] * len(points))
    negative = ScribblePrompt(4, block_mask(30, 34, 40, 50)).points()
    both = tracker.set_prompts(4, 1, points_yx=points + negative, labels=[1] * len(points) + [0] * len(negative),
                               previous=first)
    np.testing.assert_array_equal(scribbled.labels[4] == 1, both.masks()[0])
    assert [s.positive for s in scribbled.prompts.objects[1].scribbles] == [True, False]
    assert scribbled.undo() == 4 and len(scribbled.prompts.objects[1].scribbles) == 1


def test_cli_segment_takes_scribbles_drawn_in_any_view(tmp_path, volume):
    image = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(volume.array.transpose(2, 1, 0), volume.affine), image)
    strokes = np.zeros(volume.shape, dtype=np.int16)
    strokes[3:7, 18, 16:34] = 2  # a coronal stroke on object 2: slices 3 to 6
    nib.save(nib.Nifti1Image(strokes.transpose(2, 1, 0), volume.affine), tmp_path / "strokes.nii.gz")
    out, qc = tmp_path / "labels.nii.gz", tmp_path / "qc.json"
    code = main([
        "segment", str(image), "--model", "untrained", "--image-size", "128", "--device", "cpu",
        "--scribbles", str(tmp_path / "strokes.nii.gz"), "--out", str(out), "--qc", str(qc), "--no-progress",
    ])
    assert code == 0
    prompts = Prompts.from_dict(json.loads(qc.read_text(encoding="utf-8"))["provenance"]["prompts"])
    assert ([(s.z, s.positive, int(s.mask.sum())) for s in prompts.objects[2].scribbles]
            == [(z, True, 18) for z in range(3, 7)])


def test_a_pixel_goes_to_the_surest_object_whichever_run_wrote_first():
    """Objects prompted on different slices propagate in separate runs; the later run takes a pixel only
    where its logit beats the one the pixel's label won with (an inner lesion is not kept out by its organ)."""
    from medseg.sam2.session import paint

    labels = np.zeros((2, 4), np.int32)
    best = np.full((2, 4), -np.inf, np.float16)
    organ = np.array([[[3.0, 3.0, 3.0, -2.0], [1.0, 1.0, -1.0, -1.0]]])
    paint(labels, best, organ, (1,))  # the organ's run comes first
    lesion = np.array([[[5.0, 2.0, -1.0, 4.0], [2.0, 0.5, -3.0, -1.0]]])
    paint(labels, best, lesion, (2,))
    np.testing.assert_array_equal(labels, [[2, 1, 1, 2], [2, 1, 0, 0]])
    np.testing.assert_array_equal(best, np.array([[5, 3, 3, 4], [2, 1, -np.inf, -np.inf]], np.float16))
    both = np.stack([organ[0], lesion[0]])  # one run, both objects: the same answer
    labels2, best2 = np.zeros((2, 4), np.int32), np.full((2, 4), -np.inf, np.float16)
    paint(labels2, best2, both, (1, 2))
    np.testing.assert_array_equal(labels2, labels)


def test_single_mask_tracking_gives_candidates_only_on_prompted_slices():
    import torch

    from medseg.sam2.model_dir import Architecture, architecture, build_network

    arch = architecture("hiera-micro", 64, single_mask_tracking=True)
    assert Architecture.from_dict(arch.to_dict()) == arch
    old = {k: v for k, v in arch.to_dict().items() if k != "single_mask_tracking"}  # a model.json from before
    assert Architecture.from_dict(old).single_mask_tracking is False
    one_click = {"point_labels": torch.ones(1, 1, dtype=torch.int32)}
    for single in (False, True):
        net = build_network(architecture("hiera-micro", 64, single_mask_tracking=single))
        assert net._use_multimask(True, one_click)  # a prompted slice: three candidates either way
        assert net._use_multimask(False, None) is not single  # a tracked slice: token 0 alone when single


def test_prompt_prior_marks_boxes_and_clicks_and_reaches_only_networks_trained_with_it():
    import torch

    from medseg.sam2.model_dir import architecture, build_network
    from medseg.sam2.network import Sam2Model
    from medseg.sam2.prompt_prior import CLICK_RADIUS, PRIOR_LOGIT, prompt_prior
    from medseg.sam2.session import Sam2Session

    coords = torch.tensor([[[10.0, 20.0], [30.0, 40.0]], [[64.0, 64.0], [0.0, 0.0]]])
    labels = torch.tensor([[2, 3], [1, -1]])
    prior = prompt_prior(coords, labels, 128)[:, 0]
    assert prior.shape == (2, 128, 128) and set(prior.unique().tolist()) == {-PRIOR_LOGIT, PRIOR_LOGIT}
    box = prior[0] > 0
    assert box[20:41, 10:31].all() and box.sum() == 21 * 21  # the inclusive box, nothing else
    disc = prior[1] > 0
    assert disc[64, 64] and disc.sum() == int(
        (torch.arange(-3, 4) ** 2 + torch.arange(-3, 4)[:, None] ** 2 <= CLICK_RADIUS ** 2).sum())

    volume = Volume(np.random.default_rng(0).normal(0, 100, (4, 40, 48)).astype(np.float32),
                    Geometry((4, 40, 48), (2, 1, 1)), "CT")

    def first_logits(prior_on: bool, add) -> np.ndarray:
        torch.manual_seed(0)
        net = build_network(architecture("hiera-micro", 64, prompt_prior=prior_on)).eval()
        model = Sam2Model(net, "test", 64, torch.device("cpu"), True, None, None, "", 0)
        session = Sam2Session(model, volume, store=False)
        add(session)
        return session._slice_outputs[(1, 2)].mask_logits()

    def by_box(s):
        s.add_box(1, 2, 5, 5, 20, 30)

    def by_mask(s):
        mask = np.zeros((40, 48), bool)
        mask[5:20, 5:30] = True
        s.add_mask(1, 2, mask)

    # the prior changes the decoder input
    assert not np.allclose(first_logits(True, by_box), first_logits(False, by_box))
    np.testing.assert_array_equal(first_logits(True, by_mask), first_logits(False, by_mask))  # masks never get one
