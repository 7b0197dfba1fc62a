"""medseg.training.sam2.train: SAM2 training resumes bit for bit, refuses bad input, and its model loads everywhere.

One small model is trained once per session (``trained``): a ``hiera-micro`` SAM2 at image
size 64 on one non-square, anisotropic phantom, for a few steps; the API, CLI and pipeline
tests load it. A second one (``overfit``: the shipped base model fine-tuned 80 steps at 128 px, lr
1e-4, about a minute) learns that phantom well enough that a box propagates every organ through it,
a click on each organ gives that organ, which checks the whole coordinate path (anisotropic voxels,
non-square slices, resize to the model frame and back), and reference prompting picks slices inside
the object; a negative click over a mask prompt is not learned yet (xfail).

The thresholds of those tests sit beside the range ``benchmarks/sam2_fine_tune_margin.py`` measured
over 10 fine-tunes (seeds 0-4, threads 1 and 2; the fixture is seed 0, 1 thread).
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.errors import Cancelled, ConfigError, WeightsError
from medseg.io.nifti import write_nifti
from medseg.manifest import load_manifest, write_manifest
from medseg.metrics import dice_per_label
from medseg.phantom import LABELS, make_phantom
from medseg.pipeline import load_pipeline, run_pipeline
from medseg.prompt_simulation import bounding_box, centroid_voxel, largest_slice, middle_slice
from medseg.prompts import Prompts
from medseg.runtime import sha256_file
from medseg.sam2 import Sam2VolumePredictor, load_model
from medseg.sam2.model_dir import architecture, build_network, read_model_json
from medseg.training.sam2.clips import MIN_PIXELS, ClipSampler, prepare_case
from medseg.training.sam2.config import Sam2TrainConfig
from medseg.training.sam2.loss import clip_loss, correction_count
from medseg.training.sam2.pretrain import PRETRAIN, export_base, pretrain_base
from medseg.training.sam2.train import _clip_settings, train_sam2

SHAPE = (10, 48, 72)  # non-square slices
SPACING = (3.0, 0.9, 0.6)  # anisotropic
TRAINED = Sam2TrainConfig(start="untrained", image_size=64, steps=3, clip_length=2, warmup_steps=1, threads=1)
# A short fine-tune of the shipped base model on phantom 0 (the user's path: medseg sam2 train --from medseg-micro).
FINE_TUNE = Sam2TrainConfig(start="medseg-micro", steps=80, clip_length=3, lr=1e-4, warmup_steps=5,
                            val_every=0, threads=1)


def write_cohort(directory: Path, splits: dict[int, str], *, shape=SHAPE, extra_label: bool = False,
                 unlabelled: bool = False) -> Path:
    """A cohort of phantoms ``seed -> split`` written as NIfTI, with its manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    cases = []
    for seed, split in splits.items():
        volume, labels = make_phantom(seed, shape=shape, spacing=SPACING)
        array = labels.array.copy()
        if extra_label:
            array[0, 0, 0] = 7
        write_nifti(volume.array.astype(np.int16), volume.geometry, directory / f"p{seed}.nii.gz")
        write_nifti(array, volume.geometry, directory / f"p{seed}_labels.nii.gz", labels=True)
        case = {"id": f"p{seed}", "image": f"p{seed}.nii.gz", "split": split}
        if not unlabelled:
            case["label"] = f"p{seed}_labels.nii.gz"
        cases.append(case)
    manifest = {"name": "tiny-phantoms", "modality": "CT",
                "labels": {"0": "background", **{str(k): v for k, v in LABELS.items()}}, "cases": cases}
    return write_manifest(directory / "cohort.json", manifest)


def train_on_phantom_0(root: Path, config: Sam2TrainConfig) -> Path:
    manifest = write_cohort(root / "cohort", {0: "train", 1: "test"})
    return train_sam2(load_manifest(manifest), root / "model", config=config)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A SAM2 model directory trained for a few steps on phantom 0 (provenance, loading)."""
    return train_on_phantom_0(tmp_path_factory.mktemp("sam2-train"), TRAINED)


@pytest.fixture(scope="session")
def overfit(tmp_path_factory) -> Path:
    """The shipped base model fine-tuned on phantom 0 (the behavioural tests)."""
    return train_on_phantom_0(tmp_path_factory.mktemp("sam2-fine-tune"), FINE_TUNE)


@pytest.fixture(scope="session")
def phantom():
    return make_phantom(0, shape=SHAPE, spacing=SPACING)


@pytest.fixture(scope="session")
def predictor(overfit) -> Sam2VolumePredictor:
    return Sam2VolumePredictor(overfit, device="cpu")


# --- learning ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_fine_tuned_box_prompt_segments_the_training_phantom(predictor, phantom):
    volume, truth = phantom
    prompts = Prompts()
    for label in truth.labels:
        mask = truth.array == label
        z = middle_slice(mask)
        prompts.add_box(label, z, *bounding_box(mask[z]))
    result = predictor.segment(volume, prompts)
    dice = dice_per_label(result, truth, labels=truth.labels)
    # 10 fine-tunes (seeds 0-4, 1 and 2 threads): mean 0.749-0.854 (liver 0.80-0.94, spleen 0.84-0.91, kidneys
    # 0.54-0.83); before the base model tracked with the single-mask output 0.809-0.859.
    assert np.mean(list(dice.values())) > 0.7, dice
    assert not result.untrained


@pytest.mark.slow
def test_click_on_an_organ_gives_that_organ_not_its_neighbour(predictor, phantom):
    """On a non-square, anisotropic volume: a wrong x/y or resize mapping picks another organ.

    In 10 fine-tunes (seeds 0-4, 1 and 2 threads) the clicked voxel was always in the mask and the
    clicked organ always had the largest share of it. That share was 0.68-0.78 for the spleen and
    0.75-0.82 for the kidneys, but 0.05-0.88 for the liver: on 2 of 5 seeds a click on the big liver
    grows over the body (#22's click quality), so the liver's share is not asserted.
    """
    volume, truth = phantom
    for label in truth.labels:
        mask = truth.array == label
        z = largest_slice(mask)
        y, x = centroid_voxel(mask[z])
        session = predictor.session(volume)
        predicted = session.add_point(label, z, y, x)
        inside = predicted == label
        overlap = {other: int((inside & (truth.array[z] == other)).sum()) for other in truth.labels}
        assert inside[y, x] and max(overlap, key=overlap.get) == label, (label, overlap)
        if label != 1:
            assert overlap[label] > 0.5 * inside.sum(), (label, overlap)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="not learned yet: the base model trains correction clicks after a click, never "
                   "on top of a mask prompt (in 10 fine-tunes of 80 steps the negative click's own voxel stayed in the "
                   "mask and 91-100 % of the spleen stayed)")
def test_negative_click_removes_a_region(predictor, phantom):
    """A mask drawn over the liver and the spleen, then a click on the liver and a negative click
    on the spleen: the points refine the slice's mask (SAM2's correction clicks, fed with the
    previous logits, as trained), so the spleen leaves and the liver stays."""
    volume, truth = phantom
    liver, spleen = truth.array == 1, truth.array == 2
    z = largest_slice(liver & spleen.any(axis=(1, 2))[:, None, None])
    session = predictor.session(volume)
    before = session.add_mask(1, z, liver[z] | spleen[z]) == 1
    assert (before & spleen[z]).sum() == spleen[z].sum()
    session.add_point(1, z, *centroid_voxel(liver[z]))
    y, x = centroid_voxel(spleen[z])
    after = session.add_point(1, z, y, x, positive=False) == 1
    assert not after[y, x]
    assert (after & spleen[z]).sum() < 0.2 * spleen[z].sum()
    assert (after & liver[z]).sum() > 0.8 * liver[z].sum()  # the liver stays


@pytest.mark.slow
def test_reference_prompting_selects_slices_inside_the_object(overfit, phantom):
    from medseg.revsam2 import SupportSet, segment_with_references

    volume, truth = phantom
    support = SupportSet.from_volumes([phantom], k=2, labels={1: "liver"}, names=["p0"])
    result = segment_with_references(volume, support, mode="revsam2", model=load_model(overfit, device="cpu"))
    selected = result.provenance["labels"]["1"]["selected_slices"]
    liver_slices = set(np.flatnonzero((truth.array == 1).reshape(SHAPE[0], -1).any(axis=1)).tolist())
    assert selected and set(selected) <= liver_slices, (selected, liver_slices)


# --- clips: class-agnostic objects, prompts on what is visible ----------------------------------
def _sampler(cases, **settings) -> ClipSampler:
    config = Sam2TrainConfig.from_dict({"image_size": 64, "clip_length": 3, **settings})
    return ClipSampler(cases, _clip_settings(config, cases), image_size=64)


@pytest.fixture(scope="module")
def prepared():
    return [prepare_case(f"p{seed}", *make_phantom(seed, shape=SHAPE, spacing=SPACING), 64, "ct-soft-tissue",
                         structures=True)
            for seed in (0, 1)]


def test_prompts_lie_on_the_objects_they_prompt(prepared):
    """After augmentation, every click is on its object and every box holds it (frame 0, model frame)."""
    sampler = _sampler(prepared, p_synthetic=0.5, p_point=0.5, p_box=0.5)
    kinds = {"point": 0, "box": 0}
    for step in range(12):
        clip = sampler.clip(np.random.default_rng([7, step]))
        first = clip.targets[:, 0] > 0.5
        assert clip.images.shape[0] == 3 and first.flatten(1).sum(-1).min() >= MIN_PIXELS
        if clip.point_labels[0, 0] == 1:
            kinds["point"] += 1
            for mask, (x, y) in zip(first, clip.points[:, 0]):
                assert mask[int(y), int(x)]
        else:
            kinds["box"] += 1
            for mask, corners in zip(first, clip.points):
                ys, xs = np.nonzero(mask.numpy())
                (x0, y0), (x1, y1) = corners.numpy()
                side = max(np.ptp(ys), np.ptp(xs)) + 1  # jitter: each corner within 5 % of the side (and rounding)
                assert abs(y0 - ys.min()) <= 0.05 * side + 1 and abs(x1 - xs.max()) <= 0.05 * side + 1
    assert kinds["point"] and kinds["box"]


def test_cohort_objects_are_class_agnostic(prepared):
    """Labels, a label's parts alone (one kidney of the two) and unlabelled compartments (the vertebra,
    never labelled) all become objects of training clips."""
    case = prepared[0]
    kidneys = sorted(set(np.unique(case.parts[case.labels == 3])) - {0})
    assert len(kidneys) == 2  # label 3 is two organs
    vertebra = make_phantom(0, shape=SHAPE, spacing=SPACING, label_vertebra=True)[1].array == 5
    small = torch.nn.functional.interpolate(torch.from_numpy(vertebra.astype(np.float32))[:, None],
                                            size=(64, 64))[:, 0] > 0
    [spine] = [v for v in np.unique(case.structures) if v and (case.structures == v)[small.numpy()].mean() > 0.5]

    def is_one_of(mask: np.ndarray, volumes: list[np.ndarray]) -> bool:
        return any(np.array_equal(mask, v[z]) for v in volumes for z in range(len(v)) if v[z].any())

    one_kidney = [case.parts == k for k in kidneys]
    sampler = _sampler([case], p_synthetic=0.0, p_parts=1.0, augment={"flip": 0, "affine": 0, "elastic": 0})
    seen = {"one kidney": False, "vertebra": False}
    for step in range(30):
        clip = sampler.clip(np.random.default_rng([8, step]))
        assert clip.source == "p0" and clip.targets.shape[0] <= Sam2TrainConfig().max_objects
        for mask in clip.targets[:, 0].numpy() > 0.5:
            both_kidneys_here = any(np.array_equal(mask, k[z]) and (case.labels[z] == 3).sum() > k[z].sum()
                                    for k in one_kidney for z in range(len(k)))
            seen["one kidney"] |= both_kidneys_here
            seen["vertebra"] |= is_one_of(mask, [case.structures == spine])
    assert all(seen.values()), seen


def test_reference_clip_conditions_the_query_on_another_case(prepared):
    sampler = _sampler(prepared, p_synthetic=0.0, p_reference=1.0, references=2)
    clip = sampler.clip(np.random.default_rng(3))
    assert clip.source in ("p0->p1", "p1->p0") and clip.points is None and clip.masks.shape[0] == 1
    assert 1 <= clip.cond_frames <= 2 and clip.images.shape[0] == clip.cond_frames + 3
    torch.testing.assert_close(clip.masks[0], clip.targets[0, :clip.cond_frames])

    torch.manual_seed(0)
    net = build_network(architecture("hiera-micro", 64)).train()
    loss, _ = clip_loss(net, clip, np.random.default_rng(0), correction_clicks=1, dice_weight=5.0, image_prompts=False)
    loss.backward()
    memory = [p.grad for n, p in net.named_parameters() if n.startswith("memory_attention.")]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in memory)
    # the tracked frames read the references: other reference masks, another loss (eval: no dropout)
    flipped = dataclasses.replace(clip, masks=1 - clip.masks)
    net.eval()
    with torch.no_grad():
        same, _ = clip_loss(net, clip, np.random.default_rng(0), correction_clicks=1, dice_weight=5.0,
                            image_prompts=False)
        again, _ = clip_loss(net, clip, np.random.default_rng(0), correction_clicks=1, dice_weight=5.0,
                             image_prompts=False)
        other, _ = clip_loss(net, flipped, np.random.default_rng(0), correction_clicks=1, dice_weight=5.0,
                             image_prompts=False)
    assert float(same) == float(again) and abs(float(other) - float(same)) > 1e-4


def test_dice_weight_scales_the_dice_loss(prepared):
    torch.manual_seed(0)
    net = build_network(architecture("hiera-micro", 64)).eval()
    clip = _sampler(prepared, p_synthetic=0.0, p_point=0.0, p_box=1.0).clip(np.random.default_rng(1))
    with torch.no_grad():
        losses = {w: clip_loss(net, clip, np.random.default_rng(0), correction_clicks=0, dice_weight=w)
                  for w in (0.0, 5.0)}
    for weight, (loss, parts) in losses.items():
        expected = 20 * parts["focal"] + weight * parts["dice"] + parts["iou"] + parts["object"]
        assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert losses[5.0][1]["dice"] > 0.1 and float(losses[5.0][0]) > float(losses[0.0][0])


def test_reference_clips_need_two_train_cases(tmp_path):
    cohort = load_manifest(write_cohort(tmp_path / "c", {0: "train", 1: "test"}, shape=(6, 32, 48)))
    with pytest.raises(ConfigError, match="p_reference 0.3 needs two train cases sharing a label"):
        train_sam2(cohort, tmp_path / "m",
                   config=Sam2TrainConfig(start="untrained", image_size=64, steps=2, p_reference=0.3))
    assert not (tmp_path / "m").exists()


# --- resumption and reuse ---------------------------------------------------------------------
def test_resume_after_interruption_gives_bit_identical_weights(tmp_path):
    cohort = load_manifest(write_cohort(tmp_path / "cohort", {0: "train", 1: "train"}, shape=(6, 32, 48)))
    # p_reference 0.5: step 3 is a reference clip (p0's slices condition p1 or the other way round)
    config = Sam2TrainConfig(start="untrained", image_size=64, steps=4, clip_length=2, checkpoint_every=3,
                             warmup_steps=1, threads=1, p_reference=0.5, references=2)
    whole = train_sam2(cohort, tmp_path / "whole", config=config)
    asked = []

    def stop_after_two() -> bool:
        asked.append(True)
        return len(asked) > 2

    with pytest.raises(Cancelled):
        train_sam2(cohort, tmp_path / "split", config=config, should_stop=stop_after_two)
    assert not (tmp_path / "split" / "model.json").exists()  # nothing half-done looks finished
    assert read_model_json(tmp_path / "split") is None
    resumed = train_sam2(cohort, tmp_path / "split", config=config)
    assert sha256_file(whole / "weights.pt") == sha256_file(resumed / "weights.pt")
    assert read_model_json(whole)["loss_curve"] == read_model_json(resumed)["loss_curve"]

    stamp = (whole / "weights.pt").stat().st_mtime_ns
    assert train_sam2(cohort, whole, config=dataclasses.replace(config, val_every=2)) == whole
    assert (whole / "weights.pt").stat().st_mtime_ns == stamp  # reused, not retrained
    with pytest.raises(ConfigError, match=r"other settings.*\['lr'\]"):
        train_sam2(cohort, whole, config=dataclasses.replace(config, lr=5e-4))


def test_pretraining_twice_gives_identical_weights_and_exports_float16(tmp_path):
    """Synthetic scenes, augmentation, prompts: the same settings twice give the same weights, bit for
    bit (threads pinned); the exported float16 directory loads anywhere a model is asked for."""
    config = dataclasses.replace(PRETRAIN, image_size=64, steps=3, warmup_steps=1, val_every=0, snapshot_every=2)
    first = pretrain_base(tmp_path / "a", config=config)
    second = pretrain_base(tmp_path / "c", config=config)
    assert sha256_file(first / "weights.pt") == sha256_file(second / "weights.pt")
    info = read_model_json(first)
    assert info["cohort"]["name"] == "synthetic" and info["preset"] is None
    assert info["statement"].startswith("trained on synthetic scenes only")
    assert sorted(p.name for p in (first / "training" / "snapshots").iterdir()) == ["step-000002.pt"]
    shipped = export_base(first, tmp_path / "fp16")
    state = torch.load(shipped / "weights.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model = load_model(shipped, device="cpu")
    reference = load_model(first, device="cpu")
    key = "sam_mask_decoder.iou_token.weight"
    torch.testing.assert_close(model.net.state_dict()[key], reference.net.state_dict()[key].half().float())
    assert read_model_json(shipped)["weights_sha256"] == sha256_file(shipped / "weights.pt")
    # trained with SAM 2.1's multimask tracking, shipped to track with the single-mask output
    assert reference.net.multimask_output_for_tracking is True and model.net.multimask_output_for_tracking is False
    assert read_model_json(shipped)["architecture"]["single_mask_tracking"] is True


def test_half_the_prompted_clips_keep_the_first_prompt_alone():
    draws = [correction_count(np.random.default_rng([7, i]), 7) for i in range(4000)]
    counts = np.bincount(draws, minlength=8) / len(draws)
    assert abs(counts[0] - 0.5) < 0.03 and np.all(np.abs(counts[1:] - 1 / 14) < 0.015) and max(draws) == 7
    # One correction at most draws as the earlier rule did (integers(2)), so models trained with the
    # default (and the margins measured on them) are unchanged.
    assert [correction_count(np.random.default_rng([7, i]), 1) for i in range(200)] == \
        [int(np.random.default_rng([7, i]).integers(2)) for i in range(200)]
    assert correction_count(np.random.default_rng(0), 0) == 0


def test_pretrain_help_states_the_recipes_steps(capsys):
    assert main(["sam2", "pretrain", "--help"]) == 0
    assert f"optimiser steps (default {PRETRAIN.steps}, the recipe's)" in " ".join(capsys.readouterr().out.split())


def test_fine_tuning_follows_the_start_models_prompt_prior(tmp_path):
    base = pretrain_base(tmp_path / "base", config=dataclasses.replace(PRETRAIN, image_size=64, steps=2, warmup_steps=1,
                                                                       val_every=0, snapshot_every=0))
    assert read_model_json(base)["architecture"]["prompt_prior"] is True
    cohort = load_manifest(write_cohort(tmp_path / "c", {0: "train"}, shape=(6, 32, 48)))
    tuned = train_sam2(cohort, tmp_path / "tuned", config=Sam2TrainConfig(start=str(base), image_size=64, steps=1,
                                                                           clip_length=2, warmup_steps=0, threads=1))
    info = read_model_json(tuned)
    assert info["architecture"]["prompt_prior"] is True
    assert info["start"]["sha256"] == read_model_json(base)["weights_sha256"]
    assert load_model(tuned, device="cpu").net.prompt_prior
    with pytest.raises(WeightsError, match="with prompt priors; train with .* and prompt_prior true"):
        train_sam2(cohort, tmp_path / "x", config=Sam2TrainConfig(start=str(base), image_size=64, prompt_prior=False))
    with pytest.raises(WeightsError, match="at image size 64 with prompt priors; train with --architecture hiera-micro "
                                           "--image-size 64$"):
        train_sam2(cohort, tmp_path / "y", config=Sam2TrainConfig(start=str(base / "weights.pt"), image_size=128))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_fine_tuning_tracks_as_the_start_model_does_unless_told_otherwise(tmp_path):
    base = pretrain_base(tmp_path / "base", config=dataclasses.replace(PRETRAIN, image_size=64, steps=1, warmup_steps=1,
                                                                       val_every=0, snapshot_every=0))
    shipped = export_base(base, tmp_path / "shipped")  # tracks with the single-mask output, as medseg-micro
    cohort = load_manifest(write_cohort(tmp_path / "c", {0: "train"}, shape=(6, 32, 48)))
    config = Sam2TrainConfig(start=str(shipped), image_size=64, steps=1, clip_length=2, warmup_steps=0, threads=1)
    followed = train_sam2(cohort, tmp_path / "followed", config=config)
    told = train_sam2(cohort, tmp_path / "told", config=dataclasses.replace(config, single_mask_tracking=False))
    assert read_model_json(followed)["architecture"]["single_mask_tracking"] is True
    assert load_model(followed, device="cpu").net.multimask_output_for_tracking is False
    assert read_model_json(told)["architecture"]["single_mask_tracking"] is False
    assert load_model(told, device="cpu").net.multimask_output_for_tracking is True
    # the tracking changes what training computes: the two runs' weights differ after one step
    assert read_model_json(followed)["weights_sha256"] != read_model_json(told)["weights_sha256"]
    assert train_sam2(cohort, followed, config=config) == followed  # finished: reused
    # the start model switches its tracking (as medseg-micro did, weights unchanged): the same settings now
    # train another network, so the finished directory is not taken for it
    info = json.loads((shipped / "model.json").read_text(encoding="utf-8"))
    info["architecture"]["single_mask_tracking"] = False
    (shipped / "model.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"as another network \(differs in: \['single_mask_tracking'\]; the start "):
        train_sam2(cohort, followed, config=config)


# --- the model directory, through every face ----------------------------------------------------
@pytest.mark.slow
def test_trained_model_directory_describes_itself_and_loads_through_the_api(trained):
    info = read_model_json(trained)
    assert info["statement"].startswith("trained on cohort tiny-phantoms (1 train cases) and synthetic scenes (50% of "
                                        "the clips)")
    assert info["cohort"]["train_cases"] == ["p0"] and info["steps"] == TRAINED.steps and info["undertrained"]
    assert info["weights_sha256"] == sha256_file(trained / "weights.pt")
    assert info["architecture"]["name"] == "hiera-micro" and info["start"]["model"] == "untrained"
    assert len(info["loss_curve"]) == TRAINED.steps and info["versions"]["sam2"]
    model = load_model(trained, device="cpu")
    assert model.image_size == 64 and not model.untrained
    assert "trained on tiny-phantoms (3 steps)" in model.provenance()["model"]
    with pytest.raises(WeightsError, match="trained at image size 64"):
        load_model(trained, image_size=128)


@pytest.mark.slow
def test_trained_model_directory_through_cli_and_pipeline(trained, tmp_path):
    manifest = trained.parent / "cohort" / "cohort.json"
    cohort = load_manifest(manifest)
    image = cohort.case("p1").image
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(image), "--model", str(trained), "--box", "1:5,10,10,40,60", "--out", str(out),
                 "--qc", str(tmp_path / "qc.json"), "--no-progress"]) == 0
    qc = json.loads((tmp_path / "qc.json").read_text(encoding="utf-8"))
    assert "trained on tiny-phantoms" in json.dumps(qc)

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        name: trained
        cohort: {manifest}
        prompts: {{point: none, box: middle}}
        methods:
          s: {{type: sam2, model: {trained}}}
        """))
    results = tmp_path / "results"
    run_pipeline(load_pipeline(pipeline), results)
    method = json.loads((results / "s" / "method.json").read_text(encoding="utf-8"))
    assert "trained on tiny-phantoms (3 steps)" in json.dumps(method)
    assert "(untrained)" not in (results / "report.md").read_text(encoding="utf-8")


def test_pipeline_train_block_trains_once_and_shares_the_model(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", {0: "train", 1: "test"}, shape=(6, 32, 48))
    pipeline = tmp_path / "pipeline.yaml"
    train = "{start: untrained, image_size: 64, steps: 2, clip_length: 2, warmup_steps: 1, threads: 1}"
    pipeline.write_text(textwrap.dedent(f"""\
        name: trained
        cohort: {manifest}
        prompts: {{point: centroid, box: none}}
        methods:
          s: {{type: sam2, train: {train}}}
          r: {{type: revsam2, train: {train}}}
        """))
    results = tmp_path / "results"
    run_pipeline(load_pipeline(pipeline), results)
    models = list((results / "sam2-model").iterdir())
    assert len(models) == 1  # one model for both methods
    for name in ("s", "r"):
        method = json.loads((results / name / "method.json").read_text(encoding="utf-8"))
        assert "trained on tiny-phantoms (2 steps)" in json.dumps(method)
        assert str(models[0]) in json.dumps(method)
    report = (results / "report.md").read_text(encoding="utf-8")
    assert "(untrained)" not in report and "trained for 2 steps only" in report


# --- bad input: clear errors before training ----------------------------------------------------
def test_no_labelled_train_case_is_refused(tmp_path):
    cohort = load_manifest(write_cohort(tmp_path / "c", {0: "train", 1: "test"}, shape=(6, 32, 48), unlabelled=True))
    with pytest.raises(ConfigError, match="no labelled case in the \"train\" split"):
        train_sam2(cohort, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_labels_not_in_the_manifest_are_refused(tmp_path):
    cohort = load_manifest(write_cohort(tmp_path / "c", {0: "train"}, shape=(6, 32, 48), extra_label=True))
    with pytest.raises(ConfigError, match=r"label values \[7\] are not declared"):
        train_sam2(cohort, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_start_checkpoint_of_another_architecture_is_refused(tmp_path, overfit_free_micro_weights):
    cohort = load_manifest(write_cohort(tmp_path / "c", {0: "train"}, shape=(6, 32, 48)))
    config = Sam2TrainConfig(start=str(overfit_free_micro_weights), architecture="sam2.1-tiny", image_size=64)
    with pytest.raises(WeightsError, match="does not fit the SAM2 architecture 'sam2.1-tiny'"):
        train_sam2(cohort, tmp_path / "m", config=config)
    assert not (tmp_path / "m").exists()


def test_fine_tuning_from_a_checkpoint_records_it_and_is_not_flagged_undertrained(tmp_path, overfit_free_micro_weights):
    cohort = load_manifest(write_cohort(tmp_path / "c", {0: "train"}, shape=(6, 32, 48)))
    config = Sam2TrainConfig(start=str(overfit_free_micro_weights), image_size=64, steps=2, clip_length=2,
                             warmup_steps=1, train=("memory", "decoder"), threads=1)
    info = read_model_json(train_sam2(cohort, tmp_path / "m", config=config))
    assert info["start"] == {"model": str(overfit_free_micro_weights), "checkpoint": str(overfit_free_micro_weights),
                             "sha256": sha256_file(overfit_free_micro_weights)}
    assert not info["undertrained"]  # a fine-tune: the flag is for models trained from scratch
    assert "starting from " + str(overfit_free_micro_weights) in info["statement"]


def test_each_part_learns_at_its_own_rate(tmp_path):
    cohort = load_manifest(write_cohort(tmp_path / "c", {0: "train"}, shape=(6, 32, 48)))
    config = Sam2TrainConfig(start="untrained", image_size=64, steps=1, clip_length=2, warmup_steps=0, lr=1e-4,
                             lr_image_encoder=1e-5, lr_memory=3e-4, threads=1)
    train_sam2(cohort, tmp_path / "m", config=config)
    groups = torch.load(tmp_path / "m" / "training" / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert {g["name"]: g["initial_lr"] for g in groups} == {"image_encoder": 1e-5, "decoder": 1e-4, "memory": 3e-4}
    with pytest.raises(ConfigError, match="learning rates must be positive"):
        Sam2TrainConfig(lr_memory=0.0)


@pytest.fixture
def overfit_free_micro_weights(tmp_path) -> Path:
    """A hiera-micro state dict (random weights) saved as a checkpoint file."""
    from medseg.sam2.model_dir import architecture, build_network

    path = tmp_path / "micro.pt"
    torch.save(build_network(architecture("hiera-micro", 64)).state_dict(), path)
    return path


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown SAM2 training settings \\['stepz'\\]"):
        Sam2TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="multiple of 32"):
        Sam2TrainConfig(image_size=100)
    with pytest.raises(ConfigError, match="train must name some of"):
        Sam2TrainConfig(train=("everything",))
    with pytest.raises(ConfigError, match="dice_weight must be >= 0, got -1"):
        Sam2TrainConfig(dice_weight=-1)
    # a YAML "maybe" or 1 would otherwise pass as true
    with pytest.raises(ConfigError, match=r"^single_mask_tracking must be true or false \(or unset\), got 'maybe'$"):
        Sam2TrainConfig.from_dict({"single_mask_tracking": "maybe"})
    with pytest.raises(ConfigError, match=r"^structures must be true or false, got 1$"):
        Sam2TrainConfig.from_dict({"structures": 1})
    assert Sam2TrainConfig.from_dict({"single_mask_tracking": None, "prompt_prior": False}).prompt_prior is False


def test_training_threads_default_to_one_and_come_back(tmp_path):
    """`medseg sam2 train` without --threads trains with 1 thread (on a busy CPU more threads made a
    step about 10x slower; README "CPU threads") and leaves the caller's thread count as it was."""
    from medseg.phantom import write_demo_cohort

    cohort = write_demo_cohort(tmp_path / "cohort", n_cases=3, n_test=1, shape=(6, 32, 32))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["sam2", "train", "--manifest", str(cohort), "--out", str(tmp_path / "m"), "--from", "untrained",
                     "--image-size", "64", "--steps", "1", "--clip-length", "2", "--warmup-steps", "0",
                     "--no-progress"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert read_model_json(tmp_path / "m")["training"]["threads"] == 1
    assert Sam2TrainConfig().threads == 1
