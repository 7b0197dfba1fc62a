"""Train the Mask R-CNN baseline on the labelled cases of a cohort.

Read ``train`` from top to bottom: validate the inputs, prepare the slices, build the
network (optionally from a pretrained checkpoint), resume from the last checkpoint if
there is one, then loop over steps with periodic validation and atomic checkpoints, and
finally write the model directory (see ``medseg.maskrcnn.store``).

Stability from scratch (torchvision's defaults diverge within a few steps without
pretrained weights): GroupNorm (see ``model``), AdamW, a linear LR warm-up followed by a
cosine decay, gradient-norm clipping, and a check that stops on a non-finite loss.

Resuming: the checkpoint holds the network, optimiser, LR schedule, step and the torch
random state; batches are a function of ``(seed, step)``. A resumed run therefore
continues exactly as the uninterrupted one would have (on the same device and thread
count). Ctrl-C writes a checkpoint at the last completed step before it stops.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medseg.errors import ConfigError, WeightsError
from medseg.io.files import atomic_output
from medseg.maskrcnn.config import TrainConfig
from medseg.maskrcnn.dataset import CaseLike, SliceDataset, StepBatchSampler, prepare_cases
from medseg.maskrcnn.model import build_model, load_pretrained, resolve_device
from medseg.maskrcnn.predict import predict_instances
from medseg.maskrcnn.store import MODEL_JSON, MaskRCNNModel, load_model, save_model
from medseg.metrics import dice_per_label, mask_ap, mean_dice
from medseg.preprocess import default_preset, get_preset

log = logging.getLogger(__name__)

TRAINING_DIR = "training"
CHECKPOINT = "checkpoint.pt"
# Settings that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = ("val_every", "checkpoint_every", "num_workers", "device")


def train_from_cohort(cohort, out_dir: str | Path, *, config: TrainConfig, progress: Callable[[int, int], None] | None = None, progress_bar: bool = True) -> Path:
    """Train on ``cohort``'s ``train`` split, validate on its ``val`` split; return the model directory.

    ``cohort`` is a ``medseg.manifest.Cohort``; its data are validated (files, grids, label
    values) before any training starts.
    """
    cohort.validate_data()
    model = train(
        cohort.split("train"), out_dir, labels=cohort.labels, val_cases=cohort.split("val"), config=config,
        progress=progress, progress_bar=progress_bar,
    )
    return model.directory


def train(
    train_cases: Sequence[CaseLike],
    out_dir: str | Path,
    *,
    labels: dict[int, str],
    config: TrainConfig,
    val_cases: Sequence[CaseLike] = (),
    progress: Callable[[int, int], None] | None = None,
    progress_bar: bool = True,
) -> MaskRCNNModel:
    """Train a Mask R-CNN on ``train_cases`` and write it to ``out_dir``.

    Parameters
    ----------
    train_cases, val_cases
        Cases with ``id`` and ``load() -> (Volume, LabelVolume)``; split by case, so no
        slice of a validation case is ever trained on (overlapping ids are an error).
    labels
        Label value -> class name (background 0 excluded): the classes to learn.
    config
        Model and training settings.
    progress
        Called with ``(step, steps)`` after every step.

    Returns
    -------
    MaskRCNNModel
        The trained model, also saved in ``out_dir``. When ``out_dir`` already holds a
        model finished with the same settings, it is loaded and returned as it is; when it
        holds an interrupted run, training resumes from its checkpoint.
    """
    out_dir = Path(out_dir)
    train_ids, val_ids = [c.id for c in train_cases], [c.id for c in val_cases]
    if not train_cases:
        raise ConfigError("no training cases: the cohort's \"train\" split is empty")
    if not labels or min(labels) < 1:
        raise ConfigError(f"labels must map label values >= 1 (background 0 excluded) to names; got {labels}")
    leaked = sorted(set(train_ids) & set(val_ids))
    if leaked:
        raise ConfigError(f"cases {leaked} are in both the training and the validation split; a case belongs to one split")
    if len(set(train_ids)) != len(train_ids):
        raise ConfigError("training case ids must be unique")
    if config.preset is None:
        config = replace(config, preset=default_preset(train_cases[0].load()[0]).name)
    label_values = sorted(labels)

    finished = _finished_model(out_dir, config, labels)
    if finished is not None:
        return finished

    # The network first (a bad checkpoint fails in a second), then the data (a bad case
    # fails while the slices are prepared); training starts only when both are right.
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    network = build_model(num_classes=len(labels), backbone=config.backbone, norm=config.norm, input_size=config.input_size)
    if config.pretrained is not None:
        load_pretrained(network, config.pretrained)
    prepared = prepare_cases(train_cases, out_dir / TRAINING_DIR / "slices", preset=get_preset(config.preset), label_values=label_values)
    dataset = SliceDataset(prepared, label_values=label_values, instances=config.instances, min_area=config.min_area)
    network.to(device)
    parameters = [p for p in network.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    model = MaskRCNNModel(network, config, dict(labels), train_cases=train_ids, val_cases=val_ids)

    checkpoint_path = out_dir / TRAINING_DIR / CHECKPOINT
    resumed_rng = None
    if checkpoint_path.is_file():
        resumed_rng = _resume(checkpoint_path, model, optimizer, scheduler)
        log.info("resuming %s at step %d of %d", out_dir, model.steps, config.steps)

    sampler = StepBatchSampler(
        dataset, batch_size=config.batch_size, empty_ratio=config.empty_ratio, seed=config.seed, start_step=model.steps, steps=config.steps
    )
    log.info(
        "training on %d cases: %d slices with objects, %d without (%d of them per epoch)",
        len(train_cases), len(dataset.positive), len(dataset.empty), sampler.n_empty,
    )
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate, num_workers=config.num_workers)
    batches = iter(loader)  # this draws a seed from torch's random state: restore it after
    if resumed_rng is not None:
        torch.set_rng_state(resumed_rng)
    bar = tqdm(total=config.steps, initial=model.steps, desc="Mask R-CNN training", unit="step", disable=not progress_bar)
    rng_at_step_start = torch.get_rng_state()
    in_step = updating = False
    try:
        for images, targets in batches:
            in_step = True
            network.train()
            rng_at_step_start = torch.get_rng_state()
            images = [image.to(device) for image in images]
            targets = [{k: v.to(device) for k, v in target.items()} for target in targets]
            losses = network(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gradient_norm = torch.nn.utils.clip_grad_norm_(parameters, config.clip_grad_norm)
            if not (torch.isfinite(loss) and torch.isfinite(gradient_norm)):
                _diverged(model.steps + 1, losses, gradient_norm, config)
            updating = True
            optimizer.step()
            scheduler.step()
            model.steps += 1
            model.losses.append(round(loss.item(), 5))
            in_step = updating = False

            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if config.val_every and model.steps % config.val_every == 0 and model.steps < config.steps:
                _validate(model, val_cases, device)
            if model.steps % config.checkpoint_every == 0:
                _save_checkpoint(checkpoint_path, model, optimizer, scheduler, torch.get_rng_state())
            if progress is not None:
                progress(model.steps, config.steps)
        _validate(model, val_cases, device)
    except KeyboardInterrupt:
        # Weights change only inside the optimiser update: interrupted there, keep the last
        # checkpoint; interrupted elsewhere in a step, save the state from before that step.
        if not updating:
            _save_checkpoint(checkpoint_path, model, optimizer, scheduler, rng_at_step_start if in_step else torch.get_rng_state())
            log.warning("interrupted: checkpoint at step %d written to %s; run again to resume", model.steps, checkpoint_path)
        raise
    finally:
        bar.close()

    network.eval()
    save_model(model, out_dir)
    shutil.rmtree(out_dir / TRAINING_DIR)  # the checkpoint and slice cache served their purpose
    log.info("Mask R-CNN trained for %d steps, saved to %s", model.steps, out_dir)
    return model


def _collate(batch: list) -> tuple:
    """``[(image, target), ...]`` -> ``(images, targets)``: detection batches are lists, not stacks."""
    return tuple(zip(*batch))


def _diverged(step: int, losses: dict[str, torch.Tensor], gradient_norm: torch.Tensor, config: TrainConfig) -> None:
    detail = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
    raise ConfigError(
        f"training diverged at step {step}: losses {detail}, gradient norm {gradient_norm.item():.4g}; the weights "
        f"were not updated with it. Lower lr (now {config.lr}) or lengthen warmup_steps (now {config.warmup_steps}); "
        "the last checkpoint, if any, is from before"
    )


def _lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up from 1% to 100% of ``lr``, then cosine decay to 0 at ``steps``.

    The warm-up lasts ``warmup_steps`` but at most a quarter of the run, so that a short run
    still trains at its peak rate for a while.
    """
    warmup = min(config.warmup_steps, config.steps // 4)
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    decay_steps = max(1, config.steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / decay_steps)))


def _finished_model(out_dir: Path, config: TrainConfig, labels: dict[int, str]) -> MaskRCNNModel | None:
    """The model already finished in ``out_dir`` with ``config``; None when there is none."""
    if not (out_dir / MODEL_JSON).is_file():
        return None
    model = load_model(out_dir)
    changed = model.config.differences(config, ignore=_RESUMABLE_CHANGES)
    if model.classes != labels:
        changed.append(f"classes {model.classes} -> {labels}")
    if changed:
        raise ConfigError(
            f"{out_dir} already holds a model trained with other settings ({'; '.join(changed)}); "
            "give another output folder or delete this one"
        )
    log.info("%s already holds this model, trained for %d steps; nothing to do", out_dir, model.steps)
    return model


def _save_checkpoint(path: Path, model: MaskRCNNModel, optimizer, scheduler, rng_state: torch.Tensor) -> None:
    state = {
        "step": model.steps,
        "config": model.config.to_dict(),
        "classes": {str(k): v for k, v in model.classes.items()},
        "validation": model.validation,
        "losses": model.losses,
        "model": model.network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state,
    }
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def _resume(path: Path, model: MaskRCNNModel, optimizer, scheduler) -> torch.Tensor:
    """Load the checkpoint's state into ``model``, ``optimizer`` and ``scheduler``; return its torch random state."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise WeightsError(f"cannot read the training checkpoint {path} ({error}); delete it to start over") from error
    changed = TrainConfig.from_dict(state["config"]).differences(model.config, ignore=_RESUMABLE_CHANGES)
    classes = {int(k): v for k, v in state["classes"].items()}
    if changed or classes != model.classes:
        what = "; ".join(changed) if changed else f"classes {classes} -> {model.classes}"
        raise ConfigError(
            f"{path} is an interrupted run with other settings ({what}); resume it with the same settings, "
            "or give another output folder"
        )
    model.network.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    model.steps = int(state["step"])
    model.validation = list(state["validation"])
    model.losses = list(state["losses"])
    return state["rng"]


def _json_number(value: float) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 6)


def _validate(model: MaskRCNNModel, val_cases: Sequence[CaseLike], device: torch.device) -> None:
    """Dice per label (mean over cases) and 3D mask AP on the validation cases, appended to ``model.validation``."""
    if not val_cases:
        log.info("no validation cases: skipping validation at step %d", model.steps)
        return
    model.network.eval()
    dice: dict[int, list[float]] = {v: [] for v in model.label_values}
    pairs = []
    for case in val_cases:
        volume, truth = case.load()
        if truth is None:
            raise ConfigError(f"validation case {case.id!r} has no label map; give it a \"label\" or move it to the test split")
        prediction = predict_instances(model, volume, device=str(device))
        for value, score in dice_per_label(prediction.labels, truth, labels=model.label_values).items():
            if not np.isnan(score):  # NaN: the label is in neither map
                dice[value].append(score)
        pairs.append((prediction.instances, truth))
    ap = mask_ap(pairs, labels=model.label_values, mode="3d", instances=model.config.instances)
    per_label = {v: float(np.mean(s)) if s else float("nan") for v, s in dice.items()}
    record: dict[str, Any] = {
        "step": model.steps,
        "cases": len(val_cases),
        "dice": {str(v): _json_number(d) for v, d in per_label.items()},
        "mean_dice": _json_number(mean_dice(per_label)),
        "mask_ap_3d": _json_number(ap.ap),
        "mask_ap50_3d": _json_number(ap.ap50),
        "mask_ap75_3d": _json_number(ap.ap75),
    }
    model.validation.append(record)
    log.info("validation at step %d: mean Dice %s, 3D mask AP %s", model.steps, record["mean_dice"], record["mask_ap_3d"])
