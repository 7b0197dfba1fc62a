"""Train the Mask R-CNN baseline on the labelled cases of a cohort.

Laid out like torchvision's detection reference: ``train`` reads top to bottom (check the
inputs, return a finished model if there is one, start or resume a run, loop over
``train_one_step``, validate, save); the run's state and its checkpointing live beside it
in ``_Run``.

Stability from scratch (torchvision's defaults diverge within a few steps without
pretrained weights): GroupNorm (see ``model``), AdamW, a linear LR warm-up followed by a
cosine decay, gradient-norm clipping, and a check that stops on a non-finite loss.

Resuming: the checkpoint holds the network, optimiser, LR schedule, step and the torch
random state; batches are a function of ``(seed, step)``. A resumed run therefore
continues exactly as the uninterrupted one would have (on the same device and thread
count). Stopping, by ``should_stop`` between steps or by Ctrl-C anywhere, writes a
checkpoint at the last completed step first.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medseg.errors import Cancelled, ConfigError
from medseg.io.model_dir import MODEL_JSON, write_checkpoint
from medseg.maskrcnn.config import TrainConfig
from medseg.maskrcnn.dataset import CaseLike, SliceDataset, StepBatchSampler, prepare_cases
from medseg.maskrcnn.model import build_model, load_pretrained
from medseg.maskrcnn.predict import predict_instances
from medseg.maskrcnn.store import MaskRCNNModel, load_model, save_model
from medseg.metrics import evaluate, mask_ap, mean_dice
from medseg.preprocess import default_preset, get_preset
from medseg.runtime import Progress, ShouldStop, read_training_state, resolve_device, seeded, torch_threads
from medseg.training.loop import run_steps
from medseg.training.schedule import warmup_cosine

log = logging.getLogger(__name__)

TRAINING_DIR = "training"
CHECKPOINT = "checkpoint.pt"
# Settings that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = ("val_every", "checkpoint_every", "num_workers", "device", "threads")


def train_from_cohort(
    cohort, out_dir: str | Path, *, config: TrainConfig, progress: Progress | None = None,
    should_stop: ShouldStop | None = None
) -> Path:
    """Train on ``cohort``'s ``train`` split, validate on its ``val`` split; return the model directory.

    ``cohort`` is a ``medseg.manifest.Cohort``; its data are validated (files, grids, label
    values) before any training starts. ``progress`` and ``should_stop``: see ``train``.
    """
    cohort.validate_data()
    model = train(
        cohort.split("train"), out_dir, labels=cohort.labels, val_cases=cohort.split("val"), config=config,
        progress=progress, should_stop=should_stop,
    )
    return model.directory


def train(
    train_cases: Sequence[CaseLike],
    out_dir: str | Path,
    *,
    labels: dict[int, str],
    config: TrainConfig,
    val_cases: Sequence[CaseLike] = (),
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
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
        ``progress(step, steps)`` after every step.
    should_stop
        Asked before every step; True writes a checkpoint at the last completed step and
        raises ``medseg.errors.Cancelled`` (a later call with the same settings resumes).

    Returns
    -------
    MaskRCNNModel
        The trained model, also saved in ``out_dir``. When ``out_dir`` already holds a
        model finished with the same settings, it is loaded and returned as it is; when it
        holds an interrupted run, training resumes from its checkpoint.
    """
    out_dir = Path(out_dir)
    config = _checked_inputs(train_cases, val_cases, labels, config)
    finished = _finished_model(out_dir, config, labels)
    if finished is not None:
        return finished
    with torch_threads(config.threads), seeded(config.seed):  # the caller's thread count and random state come back
        return _train(train_cases, val_cases, out_dir, labels, config, progress, should_stop)


def _train(train_cases, val_cases, out_dir: Path, labels: dict[int, str], config: TrainConfig,
           progress: Progress | None, should_stop: ShouldStop | None) -> MaskRCNNModel:
    run = _Run.start(train_cases, val_cases, out_dir, labels, config)
    run_steps(run, steps=config.steps, what="Mask R-CNN training",
              finish=lambda: _validate(run.model, val_cases, run.device), progress=progress, should_stop=should_stop)
    run.model.network.eval()
    save_model(run.model, out_dir)
    shutil.rmtree(out_dir / TRAINING_DIR)  # the checkpoint and slice cache served their purpose
    log.info("Mask R-CNN trained for %d steps, saved to %s", run.model.steps, out_dir)
    return run.model


def train_one_step(run: _Run, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]) -> float:
    """One optimiser step on one batch; returns its loss.

    A non-finite loss or gradient raises ``ConfigError`` before the weights change.
    """
    network, config = run.model.network, run.model.config
    network.train()
    run.rng_at_step_start = torch.get_rng_state()
    images = [image.to(run.device) for image in images]
    targets = [{k: v.to(run.device) for k, v in target.items()} for target in targets]
    losses = network(images, targets)
    loss = sum(losses.values())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gradient_norm = torch.nn.utils.clip_grad_norm_(run.parameters, config.grad_clip)
    if not (torch.isfinite(loss) and torch.isfinite(gradient_norm)):
        _diverged(run.model.steps + 1, losses, gradient_norm, config)
    run.updating = True
    run.optimizer.step()
    run.scheduler.step()
    run.model.steps += 1
    run.model.losses.append(round(loss.item(), 5))
    run.updating, run.rng_at_step_start = False, None
    log.debug("step %d: loss %.4f, lr %.2e", run.model.steps, loss.item(), run.scheduler.get_last_lr()[0])
    return loss.item()


@dataclass(eq=False)
class _Run:
    """One training run between steps (``medseg.training.loop``): model, optimiser, schedule, its batches,
    its validation cases, and where it checkpoints."""

    model: MaskRCNNModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    checkpoint: Path
    val_cases: Sequence[CaseLike] = ()
    batches: Iterator[tuple] | None = None
    resumed_rng: torch.Tensor | None = None
    rng_at_step_start: torch.Tensor | None = None  # set while a step runs
    updating: bool = False  # True only while the optimiser changes the weights

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.network.parameters() if p.requires_grad]

    @property
    def step(self) -> int:
        return self.model.steps

    def train_step(self) -> None:
        train_one_step(self, *next(self.batches))

    def after_step(self) -> None:
        config = self.model.config
        if config.val_every and self.step % config.val_every == 0 and self.step < config.steps:
            _validate(self.model, self.val_cases, self.device)
        if self.step % config.checkpoint_every == 0:
            self.save_checkpoint(torch.get_rng_state())

    @classmethod
    def start(cls, train_cases, val_cases, out_dir: Path, labels: dict[int, str], config: TrainConfig) -> _Run:
        """Build the network (a bad checkpoint fails in a second), then the data (a bad case
        fails while the slices are prepared); resume from the checkpoint if there is one. Runs inside
        ``seeded(config.seed)``."""
        device = resolve_device(config.device)
        network = build_model(num_classes=len(labels), backbone=config.backbone, norm=config.norm,
                              image_size=config.image_size)
        if config.pretrained is not None:
            load_pretrained(network, config.pretrained)
        label_values = sorted(labels)
        prepared = prepare_cases(train_cases, out_dir / TRAINING_DIR / "slices", preset=get_preset(config.preset),
                                 label_values=label_values)
        dataset = SliceDataset(prepared, label_values=label_values, instances=config.instances,
                               min_area=config.min_area)
        network.to(device)
        parameters = [p for p in network.parameters() if p.requires_grad]
        if config.optimizer == "adamw":
            optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
        scheduler = warmup_cosine(optimizer, warmup_steps=config.warmup_steps, steps=config.steps)
        model = MaskRCNNModel(network, config, dict(labels), train_cases=[c.id for c in train_cases],
                              val_cases=[c.id for c in val_cases])
        run = cls(model, optimizer, scheduler, device, out_dir / TRAINING_DIR / CHECKPOINT, val_cases)
        if run.checkpoint.is_file():
            run.resumed_rng = run.resume()
            log.info("resuming %s at step %d of %d", out_dir, model.steps, config.steps)
        sampler = StepBatchSampler(
            dataset, batch_size=config.batch_size, empty_ratio=config.empty_ratio, seed=config.seed,
            start_step=model.steps, steps=config.steps
        )
        log.info(
            "training on %d cases: %d slices with objects, %d without (%d of them per epoch)",
            len(train_cases), len(dataset.positive), len(dataset.empty), sampler.n_empty,
        )
        # the loader's batches from the run's step on; iter() draws a seed from torch's random state: restore it after
        run.batches = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate,
                                      num_workers=config.num_workers))
        if run.resumed_rng is not None:
            torch.set_rng_state(run.resumed_rng)
        return run

    @contextmanager
    def checkpoint_on_stop(self) -> Iterator[None]:
        """On ``Cancelled`` or Ctrl-C, checkpoint the last completed step, then let it go on up.

        Weights change only inside the optimiser update: stopped there, the last checkpoint
        stays; stopped elsewhere in a step, the state from before that step is saved.
        """
        try:
            yield
        except (Cancelled, KeyboardInterrupt):
            if not self.updating:
                in_step = self.rng_at_step_start is not None
                self.save_checkpoint(self.rng_at_step_start if in_step else torch.get_rng_state())
                log.warning("stopped: checkpoint at step %d written to %s; run again to resume", self.model.steps,
                            self.checkpoint)
            raise

    def save_checkpoint(self, rng_state: torch.Tensor) -> None:
        model = self.model
        state = {
            "step": model.steps,
            "config": model.config.to_dict(),
            "classes": {str(k): v for k, v in model.classes.items()},
            "validation": model.validation,
            "losses": model.losses,
            "model": model.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state,
        }
        write_checkpoint(self.checkpoint, state)

    def resume(self) -> torch.Tensor:
        """Load the checkpoint into the model, optimiser and schedule; return its torch random state."""
        path, model = self.checkpoint, self.model
        state = read_training_state(path)
        changed = TrainConfig.from_dict(state["config"]).differences(model.config, ignore=_RESUMABLE_CHANGES)
        classes = {int(k): v for k, v in state["classes"].items()}
        if changed or classes != model.classes:
            what = "; ".join(changed) if changed else f"classes {classes} -> {model.classes}"
            raise ConfigError(
                f"{path} is an interrupted run with other settings ({what}); resume it with the same settings, "
                "or give another output folder"
            )
        model.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        model.steps = int(state["step"])
        model.validation = list(state["validation"])
        model.losses = list(state["losses"])
        return state["rng"]


def _checked_inputs(train_cases: Sequence[CaseLike], val_cases: Sequence[CaseLike], labels: dict[int, str],
                    config: TrainConfig) -> TrainConfig:
    """Refuse empty or overlapping splits and bad labels; the config with its preset resolved."""
    train_ids, val_ids = [c.id for c in train_cases], [c.id for c in val_cases]
    if not train_cases:
        raise ConfigError("no training cases: the cohort's \"train\" split is empty")
    if not labels or min(labels) < 1:
        raise ConfigError(f"labels must map label values >= 1 (background 0 excluded) to names; got {labels}")
    leaked = sorted(set(train_ids) & set(val_ids))
    if leaked:
        raise ConfigError(f"cases {leaked} are in both the training and the validation split; a case belongs to "
                          "one split")
    if len(set(train_ids)) != len(train_ids):
        raise ConfigError("training case ids must be unique")
    if config.preset is None:
        config = replace(config, preset=default_preset(train_cases[0].load()[0]).name)
    return config


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


def _json_number(value: float) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 6)


def _validate(model: MaskRCNNModel, val_cases: Sequence[CaseLike], device: torch.device) -> None:
    """Dice and surface Dice per label (means over cases) and 3D mask AP on the validation
    cases (``medseg.metrics.evaluate``), appended to ``model.validation``."""
    if not val_cases:
        log.info("no validation cases: skipping validation at step %d", model.steps)
        return
    model.network.eval()
    cases = []
    for case in val_cases:
        volume, truth = case.load()
        if truth is None:
            raise ConfigError(f"validation case {case.id!r} has no label map; give it a \"label\" or move it to the "
                              "test split")
        prediction = predict_instances(model, volume, device=device)
        cases.append(evaluate(prediction.labels, truth, labels=model.label_values, instances=prediction.instances,
                              hausdorff=False))
    ap = mask_ap([c.ap_pair for c in cases], labels=model.label_values, mode="3d", instances=model.config.instances)
    dice = _mean_over_cases([c.dice for c in cases], model.label_values)
    record: dict[str, Any] = {
        "step": model.steps,
        "cases": len(val_cases),
        "dice": {str(v): _json_number(d) for v, d in dice.items()},
        "mean_dice": _json_number(mean_dice(dice)),
        "surface_dice": {str(v): _json_number(d)
                         for v, d in _mean_over_cases([c.surface_dice for c in cases], model.label_values).items()},
        "mask_ap_3d": _json_number(ap.ap),
        "mask_ap50_3d": _json_number(ap.ap50),
        "mask_ap75_3d": _json_number(ap.ap75),
    }
    model.validation.append(record)
    log.info("validation at step %d: mean Dice %s, 3D mask AP %s", model.steps, record["mean_dice"],
             record["mask_ap_3d"])


def _mean_over_cases(per_case: Sequence[dict[int, float]], label_values: Sequence[int]) -> dict[int, float]:
    """Per label, the mean over the cases where it is defined (NaN: the label is in neither map)."""
    means = {}
    for value in label_values:
        scores = [case[value] for case in per_case if not np.isnan(case[value])]
        means[value] = float(np.mean(scores)) if scores else float("nan")
    return means
