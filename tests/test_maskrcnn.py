"""Mask R-CNN baseline: instances, slices and split by case, sampling, 3D stitching, network
construction, pretrained checkpoints, bad input; then end to end: overfit a tiny phantom cohort,
the model directory, prediction on the input's geometry, resuming an interrupted run, and the
``medseg baseline`` commands."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from medseg.cli import main
from medseg.errors import Cancelled, ConfigError, InputError, WeightsError
from medseg.geometry import Geometry
from medseg.maskrcnn import (
    MaskRCNNModel,
    TrainConfig,
    build_model,
    load_model,
    load_pretrained,
    predict_instances,
    predict_volume,
    save_model,
)
from medseg.maskrcnn.dataset import SliceDataset, StepBatchSampler, instance_targets, prepare_cases
from medseg.maskrcnn.model import group_norm
from medseg.maskrcnn.predict import stitch_detections
from medseg.metrics import dice_per_label, mask_ap, mean_dice
from medseg.phantom import make_phantom, write_demo_cohort
from medseg.preprocess import get_preset
from medseg.runtime import seeded
from medseg.training.maskrcnn import train
from medseg.volume import LabelVolume, Volume

LABELS = {1: "liver", 2: "spleen", 3: "kidney"}


class PhantomCase:
    """A case as training sees one: an id and ``load()``."""

    def __init__(self, seed: int, shape=(6, 64, 64), labels_override: np.ndarray | None = None) -> None:
        self.id, self.seed, self.shape, self.override = f"phantom-{seed}", seed, shape, labels_override

    def load(self):
        volume, labels = make_phantom(self.seed, shape=self.shape)
        if self.override is not None:
            labels = LabelVolume(self.override, volume.geometry)
        return volume, labels


# --- instances on a slice -----------------------------------------------------------------
def test_instances_are_components_per_class_with_exact_boxes():
    label_slice = np.zeros((20, 30), dtype=np.int32)
    label_slice[2:6, 3:9] = 3  # left kidney
    label_slice[2:7, 20:25] = 3  # right kidney: a second component of the same class
    label_slice[10:18, 5:15] = 1
    label_slice[19, 29] = 1  # a one-pixel speck, below min_area

    target = instance_targets(label_slice, [1, 2, 3], instances="components", min_area=4)
    assert target["labels"].tolist() == [1, 3, 3]  # class indices: liver 1, kidney 3
    assert target["boxes"].tolist() == [[5, 10, 15, 18], [3, 2, 9, 6], [20, 2, 25, 7]]
    assert [int(m.sum()) for m in target["masks"]] == [80, 24, 25]
    assert target["masks"].shape == (3, 20, 30) and target["masks"].dtype == torch.uint8

    per_class = instance_targets(label_slice, [1, 2, 3], instances="per_class", min_area=4)
    assert per_class["labels"].tolist() == [1, 3]
    assert per_class["boxes"].tolist() == [[5, 10, 30, 20], [3, 2, 25, 7]]
    assert int(per_class["masks"][0].sum()) == 81  # the speck belongs to the liver's one instance


def test_instance_classes_follow_sorted_label_values_and_diagonal_pixels_connect():
    label_slice = np.zeros((10, 10), dtype=np.int32)
    label_slice[1:3, 1:3] = 7
    label_slice[3:5, 3:5] = 7  # touches the first square at a corner: 8-connected, one instance
    target = instance_targets(label_slice, [2, 7], min_area=1)
    assert target["labels"].tolist() == [2]  # value 7 is the second class
    assert target["boxes"].tolist() == [[1, 1, 5, 5]]


def test_empty_slice_gives_empty_target():
    target = instance_targets(np.zeros((8, 9), dtype=np.int32), [1])
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["masks"].shape == (0, 8, 9)


# --- slices, split by case, sampling ----------------------------------------------------------
def test_slices_come_from_the_training_cases_only(tmp_path):
    cases = [PhantomCase(0), PhantomCase(1)]
    prepared = prepare_cases(cases, tmp_path / "cache", preset=get_preset("ct-soft-tissue"), label_values=[1, 2, 3])
    dataset = SliceDataset(prepared, label_values=[1, 2, 3])
    assert dataset.case_ids == ["phantom-0", "phantom-1"]
    assert len(dataset) == 12 and sorted(dataset.positive + dataset.empty) == list(range(12))

    # A slice of the dataset is exactly that case's slice: windowed frame and its instances.
    volume, labels = cases[1].load()
    image, target = dataset[6 + 3]
    window = np.clip((volume.array[3] + 160.0) / 400.0, 0, 1)
    np.testing.assert_allclose(image[0].numpy(), np.round(window * 255) / 255, atol=1e-6)
    assert torch.equal(image[0], image[2])
    assert target["labels"].tolist() == instance_targets(labels.array[3], [1, 2, 3])["labels"].tolist()

    with pytest.raises(ConfigError, match=r"phantom-1.*both the training and the validation"):
        train(cases, tmp_path / "model", labels=LABELS, val_cases=[PhantomCase(1)], config=TrainConfig(steps=1))


def test_batches_depend_only_on_seed_and_step_and_keep_the_empty_ratio(tmp_path):
    cases = [PhantomCase(0, shape=(12, 48, 48))]
    prepared = prepare_cases(cases, tmp_path / "cache", preset=get_preset("ct-soft-tissue"), label_values=[1, 2, 3])
    dataset = SliceDataset(prepared, label_values=[1, 2, 3])
    assert dataset.empty, "the phantom has slices without organs at its ends"
    full = list(StepBatchSampler(dataset, batch_size=3, empty_ratio=0.5, seed=4, start_step=0, steps=10))
    resumed = list(StepBatchSampler(dataset, batch_size=3, empty_ratio=0.5, seed=4, start_step=6, steps=10))
    assert resumed == full[6:]
    other_seed = list(StepBatchSampler(dataset, batch_size=3, empty_ratio=0.5, seed=5, start_step=0, steps=10))
    assert other_seed != full

    sampler = StepBatchSampler(dataset, batch_size=3, empty_ratio=0.5, seed=4, start_step=0, steps=10)
    epoch = sampler.epoch(0)
    n_empty = min(len(dataset.empty), round(0.5 * len(dataset.positive)))
    assert sorted(set(epoch) & set(dataset.positive)) == sorted(dataset.positive)  # every positive once
    assert len(epoch) == len(set(epoch)) == len(dataset.positive) + n_empty
    flat = [i for batch in full for i in batch]
    assert flat[: len(epoch)] == epoch.tolist()


# --- bad input ------------------------------------------------------------------------------
def test_label_values_not_in_the_manifest_are_refused_before_training(tmp_path):
    volume, labels = make_phantom(0, shape=(6, 64, 64))
    stray = labels.array.copy()
    stray[0, :3, :3] = 9
    with pytest.raises(ConfigError, match=r"phantom-0.*\[9\].*do not declare"):
        train([PhantomCase(0, labels_override=stray)], tmp_path / "model", labels=LABELS, config=TrainConfig(steps=1))
    assert not (tmp_path / "model" / "model.json").exists()


def test_training_cases_without_any_foreground_are_refused(tmp_path):
    empty = np.zeros((6, 64, 64), dtype=np.int32)
    with pytest.raises(InputError, match=r"no labelled object .* 1 training case"):
        train([PhantomCase(0, labels_override=empty)], tmp_path / "model", labels=LABELS, config=TrainConfig(steps=1))


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="backbone: 'resnet51' is not one of"):
        TrainConfig(backbone="resnet51")
    with pytest.raises(ConfigError, match="image_size must be a multiple of 32"):
        TrainConfig(image_size=100)
    with pytest.raises(ConfigError, match="unknown intensity preset"):
        TrainConfig(preset="ct-lunge")
    with pytest.raises(ConfigError, match=r"unknown Mask R-CNN setting\(s\) \['stepz'\]"):
        TrainConfig.from_dict({"stepz": 3})


def test_settings_keep_reading_their_old_names():
    """Model directories and YAML written before the rename (input_size, clip_grad_norm) still load."""
    config = TrainConfig.from_dict({"input_size": 64, "clip_grad_norm": 2.0, "steps": 3})
    assert (config.image_size, config.grad_clip, config.steps) == (64, 2.0, 3)
    assert TrainConfig.from_dict(config.to_dict()) == config and "input_size" not in config.to_dict()
    with pytest.raises(ConfigError, match="'image_size' is given twice"):
        TrainConfig.from_dict({"input_size": 64, "image_size": 64})


# --- network and checkpoints -------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_large"])
def test_networks_train_from_scratch_with_group_norm(backbone):
    torch.manual_seed(0)
    model = build_model(num_classes=3, backbone=backbone, image_size=64)
    norms = {type(m).__name__ for m in model.modules() if type(m).__name__.endswith(("Norm", "Norm2d"))}
    assert norms == {"GroupNorm"}  # no (frozen) batch norm anywhere
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    with torch.inference_mode():
        (output,) = model([torch.rand(3, 64, 80)])
    assert output["masks"].shape[1:] == (1, 64, 80)  # masks come back at the slice's own size


def test_pretrained_checkpoints_load_or_fail_clearly(tmp_path):
    torch.manual_seed(0)
    source = build_model(num_classes=2, backbone="resnet18", image_size=64)
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "detector.pth")  # torchvision references layout

    # Same architecture, other class count: everything but the class-specific heads is copied.
    target = build_model(num_classes=3, backbone="resnet18", image_size=64)
    kept = load_pretrained(target, tmp_path / "detector.pth")
    assert kept and all(k.startswith(("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits."))
                        for k in kept)
    for name, tensor in source.state_dict().items():
        if name not in kept:
            assert torch.equal(target.state_dict()[name], tensor), name

    # An ImageNet-style backbone alone (its classifier is ignored).
    backbone = resnet18(weights=None, norm_layer=group_norm)
    torch.save(backbone.state_dict(), tmp_path / "resnet18.pth")
    load_pretrained(target, tmp_path / "resnet18.pth")
    assert torch.equal(target.backbone.body.layer4[1].conv2.weight, backbone.layer4[1].conv2.weight)

    with pytest.raises(WeightsError, match=r"detector.pth does not fit .*backbone.body.layer1.0.conv1.weight"):
        load_pretrained(build_model(num_classes=3, backbone="resnet50", image_size=64), tmp_path / "detector.pth")
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "resnet18-bn.pth")
    with pytest.raises(WeightsError, match=r"batch-norm statistics .* norm='frozen-bn'"):
        load_pretrained(target, tmp_path / "resnet18-bn.pth")
    load_pretrained(build_model(num_classes=3, backbone="resnet18", norm="frozen-bn", image_size=64),
                    tmp_path / "resnet18-bn.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint", encoding="utf-8")
    with pytest.raises(WeightsError, match="cannot read pretrained checkpoint .*notes.pth .*not a PyTorch checkpoint"):
        load_pretrained(target, tmp_path / "notes.pth")
    with pytest.raises(WeightsError, match="missing.pth does not exist"):
        load_pretrained(target, tmp_path / "missing.pth")


def test_a_model_that_never_trained_says_so_in_its_directory_and_outputs(tmp_path, caplog):
    torch.manual_seed(0)
    config = TrainConfig(backbone="resnet18", image_size=64, preset="ct-soft-tissue", device="cpu")
    fresh = MaskRCNNModel(build_model(num_classes=3, backbone="resnet18", image_size=64), config, dict(LABELS))
    save_model(fresh, tmp_path / "random")
    card = json.loads((tmp_path / "random" / "model.json").read_text(encoding="utf-8"))
    assert card["untrained"] is True and card["steps"] == 0 and card["validation"] is None
    model = load_model(tmp_path / "random")
    assert "UNTRAINED MODEL" in caplog.text
    volume, _ = make_phantom(0, shape=(2, 64, 64))
    labels = predict_volume(model, volume)
    assert labels.untrained is True and labels.provenance["untrained"] is True
    assert labels.provenance["weights_sha256"] == card["weights_sha256"]


def test_a_model_directory_of_the_first_format_still_loads(tmp_path):
    """medseg-maskrcnn/1: weights under {"file", "sha256"}, settings input_size and clip_grad_norm."""
    config = TrainConfig(backbone="resnet18", image_size=64, grad_clip=2.0, preset="ct-soft-tissue", device="cpu")
    with seeded(0):
        save_model(MaskRCNNModel(build_model(num_classes=3, backbone="resnet18", image_size=64), config, dict(LABELS)),
                   tmp_path)
    card = json.loads((tmp_path / "model.json").read_text(encoding="utf-8"))
    settings = {("input_size" if k == "image_size" else "clip_grad_norm" if k == "grad_clip" else k): v
                for k, v in card.pop("config").items()}
    old = {**card, "format": "medseg-maskrcnn/1", "config": settings,
           "weights": {"file": card["weights"], "sha256": card.pop("weights_sha256")}}
    (tmp_path / "model.json").write_text(json.dumps(old), encoding="utf-8")
    model = load_model(tmp_path)
    assert model.config == config and model.weights_sha256 == old["weights"]["sha256"]
    old["weights"]["sha256"] = "0" * 64
    (tmp_path / "model.json").write_text(json.dumps(old), encoding="utf-8")
    with pytest.raises(WeightsError, match="weights.pt fails its checksum"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({**old, "format": "medseg-maskrcnn/9"}), encoding="utf-8")
    with pytest.raises(WeightsError, match="not a Mask R-CNN model description .*'medseg-maskrcnn/9'"):
        load_model(tmp_path)


# --- 3D stitching -------------------------------------------------------------------------
def _detections(*objects):
    """torchvision-style outputs: ``objects`` are ``(class index, score, mask)`` per slice."""
    outputs = []
    for per_slice in objects:
        masks = (torch.stack([torch.from_numpy(m).float() for _, _, m in per_slice])[:, None] if per_slice
                 else torch.zeros(0, 1, 8, 8))
        outputs.append(
            {
                "labels": torch.tensor([c for c, _, _ in per_slice], dtype=torch.int64),
                "scores": torch.tensor([s for _, s, _ in per_slice], dtype=torch.float32),
                "masks": masks,
            }
        )
    return list(enumerate(outputs))


def _box(y0, x0, y1, x1):
    mask = np.zeros((8, 8))
    mask[y0:y1, x0:x1] = 0.9
    return mask


def test_stitching_links_overlapping_detections_of_one_class_across_slices():
    geometry = Geometry((4, 8, 8), (2.0, 1.0, 1.0))
    detections = _detections(
        [(1, 0.9, _box(0, 0, 4, 4)), (2, 0.8, _box(0, 5, 2, 8))],
        [(1, 0.6, _box(1, 1, 3, 3)), (2, 0.3, _box(0, 5, 2, 8))],  # the class-2 one is below the threshold
        [(1, 0.7, _box(2, 2, 6, 6)), (2, 0.95, _box(4, 0, 8, 8))],  # overlap: the higher score keeps rows 4-5
        [(2, 0.8, _box(0, 5, 2, 8))],
    )
    instances = stitch_detections(detections, geometry=geometry, label_values=[1, 5], score_threshold=0.5)
    # Ids by first appearance (within a slice, in pasting order: lowest score first).
    # Slice 0 -> 1 of class 1 share all 4 pixels of the smaller: linked (instance 2). Slice 1 -> 2
    # share 1 pixel of 4 (< 0.5): not linked. Class-5 objects on slices 2 and 3 do not touch.
    assert instances.labels == {1: 5, 2: 1, 3: 1, 4: 5, 5: 5}
    expected = np.zeros((4, 8, 8), dtype=np.int32)
    expected[0, 0:4, 0:4] = 2
    expected[0, 0:2, 5:8] = 1
    expected[1, 1:3, 1:3] = 2
    expected[2, 2:4, 2:6] = 3
    expected[2, 4:8, :] = 4
    expected[3, 0:2, 5:8] = 5
    np.testing.assert_array_equal(instances.array, expected)
    assert instances.scores[2] == pytest.approx((16 * 0.9 + 4 * 0.6) / 20)  # area-weighted
    assert instances.scores[3] == pytest.approx(0.7)
    np.testing.assert_allclose(instances.slice_scores[2], [0.9, 0.6, np.nan, np.nan], rtol=1e-6)
    assert instances.geometry is geometry


def test_stitching_nothing_above_threshold_gives_an_empty_map():
    geometry = Geometry((2, 8, 8), (1.0, 1.0, 1.0))
    instances = stitch_detections(_detections([(1, 0.2, _box(0, 0, 4, 4))], []), geometry=geometry, label_values=[1])
    assert instances.labels == {} and not instances.array.any()


# --- end to end ----------------------------------------------------------------------------
SHAPE = (8, 128, 128)
# 40 steps left the kidney unlearned on some machines (Dice 0.0 with 2 threads there; 0.51-0.79 here).
# 80 steps, threads pinned: see the observed ranges beside the assertions below.
OVERFIT = TrainConfig(
    backbone="resnet18", image_size=128, steps=80, batch_size=2, lr=3e-4, warmup_steps=5,
    val_every=40, checkpoint_every=40, seed=0, device="cpu", threads=1,
)


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A model trained on two 128x128 phantoms, validated on a third (the budget of the issue's overfit test)."""
    out = tmp_path_factory.mktemp("maskrcnn") / "model"
    cases, val = [PhantomCase(0, shape=SHAPE), PhantomCase(1, shape=SHAPE)], [PhantomCase(2, shape=SHAPE)]
    model = train(cases, out, labels=LABELS, val_cases=val, config=OVERFIT)
    return model, cases, val


@pytest.mark.slow
def test_overfit_drives_the_loss_down_and_segments_a_training_case(overfit):
    model, cases, _ = overfit
    assert model.steps == 80 and len(model.losses) == 80 and all(np.isfinite(model.losses))
    # Measured over 10 runs here (threads 1 and 2, seeds 0-4): the last 5 losses are 0.13-0.23 of the first 5;
    # Dice liver 0.93-0.97, spleen 0.92-0.96, kidney 0.78-0.87, mean 0.888-0.919; 3D AP50 0.945-1.0.
    assert np.mean(model.losses[-5:]) < 0.5 * np.mean(model.losses[:5])
    volume, truth = cases[0].load()
    prediction = predict_instances(model, volume)
    dice = dice_per_label(prediction.labels, truth, labels=LABELS)
    assert mean_dice(dice) > 0.75 and min(dice.values()) > 0.6, dice
    # The scored 3D instances feed 3D mask AP directly.
    ap = mask_ap([(prediction.instances, truth)], labels=LABELS, mode="3d")
    assert ap.n_predicted == len(prediction.instances.labels) and not ap.constant_score
    assert ap.ap50 > 0.7, ap


@pytest.mark.slow
def test_model_directory_describes_the_model_and_reloads_anywhere(overfit, tmp_path):
    model, cases, val = overfit
    card = json.loads((model.directory / "model.json").read_text(encoding="utf-8"))
    assert card["format"] == "medseg-maskrcnn/2"
    assert card["classes"] == {"1": "liver", "2": "spleen", "3": "kidney"}
    assert card["config"]["backbone"] == "resnet18" and card["config"]["image_size"] == 128
    assert card["config"]["preset"] == "ct-soft-tissue"  # resolved from the CT modality
    assert card["steps"] == 80 and card["undertrained"] is True and card["untrained"] is False
    assert card["train_cases"] == ["phantom-0", "phantom-1"] and card["val_cases"] == ["phantom-2"]
    assert [v["step"] for v in card["validation_history"]] == [40, 80]
    last = card["validation"]
    assert last["cases"] == 1 and set(last["dice"]) == {"1", "2", "3"}
    assert 0 <= last["mean_dice"] <= 1 and 0 <= last["mask_ap_3d"] <= 1
    assert card["loss_per_step"] == model.losses

    # Only model.json and weights.pt are needed; the reloaded model predicts identically.
    moved = tmp_path / "shipped"
    moved.mkdir()
    for name in ("model.json", "weights.pt"):
        shutil.copy(model.directory / name, moved / name)
    reloaded = load_model(moved)
    volume, _ = val[0].load()
    first, again = predict_instances(model, volume), predict_instances(reloaded, volume)
    np.testing.assert_array_equal(first.labels.array, again.labels.array)
    np.testing.assert_array_equal(first.instances.array, again.instances.array)
    assert first.labels.scores == again.labels.scores and first.instances.scores == again.instances.scores
    assert again.labels.provenance["weights_sha256"] == card["weights_sha256"]

    weights = bytearray((moved / "weights.pt").read_bytes())
    weights[-100] ^= 0xFF
    (moved / "weights.pt").write_bytes(bytes(weights))
    with pytest.raises(WeightsError, match="weights.pt fails its checksum"):
        load_model(moved)
    with pytest.raises(WeightsError, match="model.json is missing"):
        load_model(tmp_path)


@pytest.mark.slow
def test_prediction_lies_on_the_input_geometry_with_consistent_instances(overfit):
    model, cases, _ = overfit
    volume, _ = cases[1].load()
    # A crop that is not square, with its own origin: the output must follow it exactly.
    crop = volume.array[1:7, 10:110, 4:124]
    origin = volume.geometry.index_to_world([1, 10, 4])[0]
    geometry = Geometry(crop.shape, volume.spacing, tuple(origin), volume.direction)
    cropped = Volume(crop, geometry, "CT")
    prediction = predict_instances(model, cropped)
    labels, instances = prediction.labels, prediction.instances
    assert labels.geometry is cropped.geometry and labels.array.shape == (6, 100, 120)
    assert labels.untrained is False and labels.provenance["undertrained"] is True
    assert labels.provenance["training_steps"] == 80 and labels.label_names == LABELS

    # Semantic labels are the instances' classes, voxel for voxel.
    assert set(labels.labels) <= {1, 2, 3} and labels.labels
    assert np.array_equal(labels.array > 0, instances.array > 0)
    for instance, value in instances.labels.items():
        assert np.all(labels.array[instances.array == instance] == value)
        assert 0.5 <= instances.scores[instance] <= 1
    for value in labels.labels:
        present = (labels.array == value).any(axis=(1, 2))
        np.testing.assert_array_equal(np.isfinite(labels.slice_scores[value]), present)
        assert 0.5 <= labels.scores[value] <= 1


@pytest.mark.slow
def test_a_volume_without_foreground_gives_an_empty_label_map(overfit):
    model, cases, _ = overfit
    volume, _ = cases[0].load()
    air = volume.with_array(np.full(volume.shape, -1000.0, dtype=np.float32))
    labels = predict_volume(model, air)
    assert labels.labels == [] and labels.scores == {} and labels.geometry is air.geometry


@pytest.mark.slow
def test_a_finished_model_is_returned_as_is_and_other_settings_are_refused(overfit):
    model, cases, val = overfit
    weights = (model.directory / "weights.pt").stat().st_mtime_ns
    again = train(cases, model.directory, labels=LABELS, val_cases=val, config=OVERFIT)
    assert again.steps == 80 and (model.directory / "weights.pt").stat().st_mtime_ns == weights
    with pytest.raises(ConfigError, match=r"other settings \(lr: 0.0003 -> 0.001\)"):
        train(cases, model.directory, labels=LABELS, config=TrainConfig(**{**OVERFIT.to_dict(), "lr": 1e-3}))


@pytest.mark.parametrize("stop", ["should_stop", "ctrl-c"])
def test_a_stopped_run_resumes_to_exactly_the_uninterrupted_weights(tmp_path, stop):
    cases = [PhantomCase(3, shape=(4, 64, 64))]
    config = TrainConfig(backbone="resnet18", image_size=64, steps=6, batch_size=2, warmup_steps=2, val_every=0,
                         checkpoint_every=100, device="cpu")
    straight = train(cases, tmp_path / "straight", labels=LABELS, config=config)

    steps_done = []
    if stop == "should_stop":  # asked before each step: the fourth step never starts
        with pytest.raises(Cancelled, match="Mask R-CNN training stopped"):
            train(cases, tmp_path / "resumed", labels=LABELS, config=config, progress=lambda s, n: steps_done.append(s),
                  should_stop=lambda: len(steps_done) == 3)
    else:
        def ctrl_c_after_three(step: int, total: int) -> None:
            if step == 3:
                raise KeyboardInterrupt  # what Ctrl-C does

        with pytest.raises(KeyboardInterrupt):
            train(cases, tmp_path / "resumed", labels=LABELS, config=config, progress=ctrl_c_after_three)
    checkpoint = tmp_path / "resumed" / "training" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["step"] == 3
    assert not (tmp_path / "resumed" / "model.json").exists() and not (tmp_path / "resumed" / "weights.pt").exists()
    with pytest.raises(ConfigError, match=r"interrupted run with other settings \(seed: 0 -> 1\)"):
        train(cases, tmp_path / "resumed", labels=LABELS, config=TrainConfig(**{**config.to_dict(), "seed": 1}))

    steps_seen = []
    resumed = train(cases, tmp_path / "resumed", labels=LABELS, config=config,
                    progress=lambda s, n: steps_seen.append(s))
    assert steps_seen == [4, 5, 6]
    assert resumed.losses == straight.losses
    expected = straight.network.state_dict()
    for name, tensor in resumed.network.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_prediction_stops_between_batches_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    config = TrainConfig(backbone="resnet18", image_size=64, preset="ct-soft-tissue", score_threshold=0.3, device="cpu")
    model = MaskRCNNModel(build_model(num_classes=3, backbone="resnet18", image_size=64), config, dict(LABELS))
    network = model.network.train()
    network.roi_heads.score_thresh = 0.05
    volume, _ = make_phantom(0, shape=(5, 64, 64))
    calls = []
    with pytest.raises(Cancelled, match="Mask R-CNN prediction stopped"):
        predict_instances(model, volume, batch_size=2, device="cpu", progress=lambda d, n: calls.append((d, n)),
                          should_stop=lambda: len(calls) == 2)
    assert calls == [(2, 5), (4, 5)]  # two batches, then the stop: no result
    # neither the stopped call nor a full one moves the model, changes its mode or its threshold
    assert (predict_instances(model, volume, score_threshold=0.9, device="cpu").labels.provenance["score_threshold"]
            == 0.9)
    assert model.network is network and network.training and network.roi_heads.score_thresh == 0.05
    assert {p.device.type for p in network.parameters()} == {"cpu"}


def test_a_diverging_run_stops_with_advice_instead_of_training_on_nan(tmp_path):
    config = TrainConfig(
        backbone="resnet18", image_size=64, steps=6, batch_size=1, optimizer="sgd", lr=1e9, warmup_steps=0, val_every=0,
        device="cpu"
    )
    with pytest.raises(ConfigError, match=r"diverged at step [2-6]: losses .* Lower lr \(now 1000000000.0\)"):
        train([PhantomCase(3, shape=(4, 64, 64))], tmp_path / "model", labels=LABELS, config=config)
    assert not (tmp_path / "model" / "model.json").exists()


def test_baseline_commands_train_and_predict_from_a_manifest(tmp_path, capsys):
    manifest = write_demo_cohort(tmp_path / "data", n_cases=3, n_test=1, shape=(4, 64, 64))
    model_dir, out = tmp_path / "model", tmp_path / "pred.nii.gz"
    code = main([
        "baseline", "train", "--manifest", str(manifest), "--out", str(model_dir), "--backbone", "resnet18",
        "--steps", "2", "--batch-size", "2", "--input-size", "64", "--no-progress",
    ])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "2 steps" in printed.out and "no validation" in printed.out and "smoke test" in printed.err
    assert json.loads((model_dir / "model.json").read_text(encoding="utf-8"))["config"]["threads"] == 1  # the default

    image = tmp_path / "data" / "demo" / "phantom_002.nii.gz"
    code = main([
        "baseline", "predict", str(image), "--model", str(model_dir), "--out", str(out),
        "--instances", str(tmp_path / "instances.nii.gz"), "--qc", str(tmp_path / "qc.json"), "--no-progress",
    ])
    assert code == 0, capsys.readouterr().err
    written, source = nib.load(out), nib.load(image)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert written.shape == source.shape and (tmp_path / "instances.nii.gz").is_file()
    qc = json.loads((tmp_path / "qc.json").read_text(encoding="utf-8"))
    assert qc["provenance"]["method"] == "maskrcnn" and qc["provenance"]["training_steps"] == 2


def test_baseline_train_names_a_missing_file_and_trains_nothing(tmp_path, capsys):
    manifest = tmp_path / "cohort.json"
    manifest.write_text(json.dumps({
        "name": "broken", "modality": "CT", "labels": {"0": "background", "1": "liver"},
        "cases": [{"id": "a", "image": "missing/a.nii.gz", "label": "missing/a_labels.nii.gz", "split": "train"}],
    }), encoding="utf-8")
    code = main(["baseline", "train", "--manifest", str(manifest), "--out", str(tmp_path / "model"), "--steps", "1"])
    assert code == 2
    assert "missing/a.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
