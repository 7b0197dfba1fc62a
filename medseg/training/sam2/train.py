"""Train or fine-tune SAM2 on a cohort's ``train`` split and on synthetic scenes (``train_sam2``).

Read ``train_sam2`` top to bottom: check the cohort and the settings, reuse a finished model
directory (or refuse one trained otherwise), build the network and load the start weights
(a checkpoint of another architecture fails here, before any data is read), prepare the
training volumes, resume from the last checkpoint when there is one, then run the step loop
(``_train_step``) with periodic checkpoints, snapshots and validation, and write the model
directory (``medseg.sam2.model_dir``). Without a cohort every clip is a synthetic scene: that is
how the shipped base model is pretrained (``medseg.training.sam2.pretrain``).

Stability: AdamW, a linear warm-up then a cosine decay, gradient-norm clipping, and a check
before every update: a non-finite loss or gradient stops training with advice, leaving the
last good checkpoint to resume from.

Resuming is bit-for-bit: the clips of step ``k`` (scenes, augmentation, prompts) come from a
generator seeded with ``(seed, k)`` and torch's generator (dropout) is re-seeded with
``(seed, k)`` at every step, so the checkpoint (network, optimiser, schedule, step, curves) is the
whole state. Torch's global random state is restored when training returns. Ctrl-C or
``should_stop`` saves it at the last completed step, then ``Cancelled`` / ``KeyboardInterrupt``
propagates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import ConfigError, MedsegError, WeightsError
from medseg.io.model_dir import write_checkpoint
from medseg.manifest import Case, Cohort
from medseg.preprocess import default_preset
from medseg.runtime import (Progress, ShouldStop, read_checkpoint, read_training_state, resolve_device, sha256_file,
                            torch_threads)
from medseg.sam2.model_dir import (MODEL_JSON, Architecture, architecture, build_network, describe,
                                  is_model_dir_weights, load_weights, read_model_json, write_model_dir)
from medseg.synthetic import check_config
from medseg.training.sam2.clips import ClipSampler, ClipSettings, PreparedCase, prepare_case
from medseg.training.sam2.config import Sam2TrainConfig
from medseg.training.sam2.loss import clip_loss
from medseg.training.sam2.validate import validate, validation_cases
from medseg.training.loop import run_steps
from medseg.training.schedule import warmup_cosine
from medseg.weights import REGISTRY, fetch_checkpoint, get_spec

log = logging.getLogger(__name__)

CHECKPOINT = "training/checkpoint.pt"
SNAPSHOTS = "training/snapshots"
UNDERTRAINED_STEPS = 600
"""Below this many steps a model trained *from random initialisation* is flagged undertrained (a
smoke-test model). From scratch on the demo cohort, a box propagated to Dice 0.43 after 400 steps
and 0.94 after 600 (README). Fine-tuning from trained weights is not flagged whatever its steps."""

_ENCODER_PREFIX = "image_encoder."
_DECODER_PREFIXES = ("sam_prompt_encoder.", "sam_mask_decoder.")


class TrainingDiverged(MedsegError):
    """The loss or a gradient became non-finite; the last good checkpoint is kept."""


def train_sam2(
    cohort: Cohort | None,
    out_dir: str | Path,
    *,
    config: Sam2TrainConfig = Sam2TrainConfig(),
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Path:
    """Train SAM2 on ``cohort``'s train split (validating on ``val``); return the model directory.

    ``cohort`` None trains on synthetic scenes only (``config.synthetic``; validation on held-out
    scenes). A directory holding a model finished with the same settings on the same cases is
    returned as it is; one trained otherwise is refused (choose another directory). An interrupted
    run in ``out_dir`` resumes from its checkpoint. ``progress(step, steps)`` after every step;
    ``should_stop`` is asked between steps.
    """
    out_dir = Path(out_dir)
    train_cases = _labelled(cohort, "train") if cohort is not None else []
    if cohort is not None:
        if not train_cases:
            raise ConfigError(f"{cohort.path}: no labelled case in the \"train\" split; SAM2 training needs some")
        cohort.validate_data()
    elif config.p_reference:
        raise ConfigError("p_reference needs a cohort (reference clips pair two of its cases); set it to 0 to pretrain")
    check_config(config.synthetic, size=config.image_size)
    arch = network_architecture(config)
    finished = _finished(out_dir, cohort, config, train_cases, arch)
    if finished is not None:
        return finished
    device = resolve_device(config.device)
    with torch_threads(config.threads), torch.random.fork_rng(devices=[]):
        net, start = _network(arch, config)
        net = net.to(device)
        preset = (config.preset or default_preset(train_cases[0].load()[0]).name) if train_cases else None
        prepared = [_prepare(case, arch, preset, config) for case in train_cases]
        sampler = ClipSampler(prepared, _clip_settings(config, prepared), image_size=config.image_size)
        if config.p_reference and not sampler.reference_pairs:
            raise ConfigError(f"{cohort.path}: p_reference {config.p_reference} needs two train cases sharing a label; "
                              f"the train split has {len(prepared)} case(s) and none share one (set p_reference, "
                              "--p-reference, to 0)")
        optimizer, scheduler = _optimizer(net, config)
        state = {"step": 0, "loss_curve": [], "validation": [], "seconds": 0.0}
        checkpoint = out_dir / CHECKPOINT
        if checkpoint.is_file():
            state = _resume(checkpoint, net, optimizer, scheduler, config)
            log.info("resuming SAM2 training in %s at step %d of %d", out_dir, state["step"], config.steps)
        run = _Run(net, optimizer, scheduler, sampler, validation_cases(cohort, config), config, preset, state, out_dir)
        net.train()
        run_steps(run, steps=config.steps, what="SAM2 training", finish=run.save_checkpoint, progress=progress,
                  should_stop=should_stop)
        description = _description(arch, start, config, preset, state, cohort, train_cases)
        write_model_dir(out_dir, net, description)
    log.info("SAM2 model written to %s", describe(out_dir, description))
    return out_dir


@dataclass(eq=False)
class _Run:
    """One SAM2 training run between steps (``medseg.training.loop``): the network, its optimiser and
    schedule, where its clips come from, and its record (``state``: step, loss curve, validation, seconds)."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: ClipSampler
    val: list
    config: Sam2TrainConfig
    preset: str | None
    state: dict
    out_dir: Path

    @property
    def step(self) -> int:
        return self.state["step"]

    def train_step(self) -> None:
        started = time.perf_counter()
        loss = _train_step(self.net, self.optimizer, self.sampler, self.config, self.step)
        self.scheduler.step()
        self.state["step"] += 1
        self.state["seconds"] += time.perf_counter() - started
        self.state["loss_curve"].append(round(loss, 5))

    def after_step(self) -> None:
        step, config = self.step, self.config
        if config.val_every and self.val and (step % config.val_every == 0 or step == config.steps):
            self.state["validation"].append({"step": step, **validate(self.net, config, self.preset, self.val)})
            self.net.train()
        if config.snapshot_every and step % config.snapshot_every == 0:
            _snapshot(self.out_dir / SNAPSHOTS / f"step-{step:06d}.pt", self.net)
        if step % config.checkpoint_every == 0:
            self.save_checkpoint()

    @contextmanager
    def checkpoint_on_stop(self) -> Iterator[None]:
        """Any interruption (Ctrl-C, ``should_stop``, a diverged step) keeps what was done: a step's
        clips depend only on ``(seed, step)``, so the completed steps are all a resumption needs."""
        try:
            yield
        except BaseException:
            if self.step > 0:
                self.save_checkpoint()
            raise

    def save_checkpoint(self) -> None:
        _save(self.out_dir / CHECKPOINT, self.net, self.optimizer, self.scheduler, self.config, self.state)


def _train_step(net: torch.nn.Module, optimizer, sampler: ClipSampler, config: Sam2TrainConfig, step: int) -> float:
    """One optimiser step on ``batch_size`` clips; the clips depend only on ``(seed, step)``."""
    rng = np.random.default_rng([config.seed, step])
    torch.manual_seed(config.seed * 1_000_003 + step)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    device = next(net.parameters()).device
    for _ in range(config.batch_size):
        clip = sampler.clip(rng).to(device)
        loss, _ = clip_loss(net, clip, rng, correction_clicks=config.correction_clicks, dice_weight=config.dice_weight,
                            image_prompts=config.image_prompts, encoder_grad="image_encoder" in config.train)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"step {step + 1}: the loss is {float(loss)}; lower lr (now {config.lr}) or raise "
                                   f"warmup_steps, then run again: training resumes from the last checkpoint")
        (loss / config.batch_size).backward()
        total += float(loss.detach()) / config.batch_size
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    if not torch.isfinite(norm):
        raise TrainingDiverged(f"step {step + 1}: a gradient is not finite; lower lr (now {config.lr}) or grad_clip, "
                               f"then run again: training resumes from the last checkpoint")
    optimizer.step()
    return total


def _clip_settings(config: Sam2TrainConfig, prepared: list[PreparedCase]) -> ClipSettings:
    return ClipSettings(length=config.clip_length, p_point=config.p_point, p_box=config.p_box,
                        p_synthetic=config.p_synthetic if prepared else 1.0, p_reference=config.p_reference,
                        references=config.references, p_parts=config.p_parts, max_objects=config.max_objects,
                        synthetic=config.synthetic, augment=config.augment)


def _description(arch: Architecture, start: dict, config: Sam2TrainConfig, preset: str | None, state: dict,
                 cohort: Cohort | None, train_cases: list[Case]) -> dict[str, Any]:
    """What ``model.json`` says about the model: how it was made and on what."""
    if cohort is None:
        data = {"name": "synthetic", "manifest": None, "labels": {}, "train_cases": [], "val_cases": []}
        statement = (f"trained on synthetic scenes only (medseg.synthetic, kinds {list(config.synthetic.kinds)}; no "
                     f"patient data; {state['step']} steps, starting from {start['model']})")
    else:
        data = {"name": cohort.name, "manifest": str(cohort.path),
                "labels": {str(k): v for k, v in cohort.labels.items()},
                "train_cases": [c.id for c in train_cases], "val_cases": [c.id for c in _labelled(cohort, "val")]}
        statement = (f"trained on cohort {cohort.name} ({len(train_cases)} train cases) and synthetic scenes "
                     f"({config.p_synthetic:.0%} of the clips), {state['step']} steps, starting from {start['model']}")
    return {
        "architecture": arch.to_dict(), "start": start, "training": config.to_dict(), "preset": preset,
        "steps": state["step"], "training_seconds": round(state["seconds"], 1), "loss_curve": state["loss_curve"],
        "validation": state["validation"],
        "undertrained": config.start == "untrained" and state["step"] < UNDERTRAINED_STEPS, "cohort": data,
        "statement": statement,
    }


def _labelled(cohort: Cohort, split: str) -> list[Case]:
    return [c for c in cohort.split(split) if c.label is not None]


def _finished(out_dir: Path, cohort: Cohort | None, config: Sam2TrainConfig, train_cases: list[Case],
              arch: Architecture) -> Path | None:
    """``out_dir`` when it holds a model trained with ``config`` on these cases as the network ``arch``;
    an error when another (the same settings give another network when the start model's changed)."""
    info = read_model_json(out_dir)
    if info is None:
        return None
    saved = Sam2TrainConfig.from_dict(info["training"])
    name = cohort.name if cohort is not None else "synthetic"
    same_cases = info["cohort"]["train_cases"] == [c.id for c in train_cases] and info["cohort"]["name"] == name
    if not (saved.same_model(config) and same_cases):
        differ = sorted(k for k, v in config.to_dict().items() if saved.to_dict()[k] != v)
        raise ConfigError(f"{out_dir} already holds a SAM2 model trained with other settings or cases "
                          f"(differs in: {differ or ['cohort/cases']}); choose another output directory or delete it")
    trained = Architecture.from_dict(info["architecture"]).to_dict()
    other = sorted(k for k, v in arch.to_dict().items() if trained[k] != v)
    if other:
        raise ConfigError(f"{out_dir} already holds a SAM2 model trained with these settings as another network "
                          f"(differs in: {other}; the start model {config.start!r} has changed since); choose another "
                          "output directory or delete it")
    log.info("reusing the finished SAM2 model in %s", out_dir)
    return out_dir


def network_architecture(config: Sam2TrainConfig) -> Architecture:
    """The network to train: ``config``'s, with the prompt prior and tracking the start weights were
    trained with unless the settings say otherwise (``WeightsError`` when they contradict the start weights)."""
    start = _start_model_dir(config.start)
    trained = Architecture.from_dict(read_model_json(start)["architecture"]) if start is not None else None
    prior = config.prompt_prior if config.prompt_prior is not None else bool(trained and trained.prompt_prior)
    single = (config.single_mask_tracking if config.single_mask_tracking is not None
              else bool(trained and trained.single_mask_tracking))
    arch = architecture(config.architecture, config.image_size, prompt_prior=prior, single_mask_tracking=single)
    if trained is not None and ((trained.name, trained.image_size, trained.prompt_prior)
                                != (arch.name, arch.image_size, prior)):
        raise WeightsError(f"start model {config.start!r} is a {trained.name!r} network at image size "
                           f"{trained.image_size}{' with prompt priors' if trained.prompt_prior else ''}; train with "
                           f"--architecture {trained.name} --image-size {trained.image_size}"
                           + ("" if trained.prompt_prior == prior else
                              f" and prompt_prior {str(trained.prompt_prior).lower()}"))
    return arch


def _network(arch: Architecture, config: Sam2TrainConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network with its start weights, and a record of where they came from."""
    torch.manual_seed(config.seed)
    net = build_network(arch)
    if config.start == "untrained":
        return net, {"model": "untrained", "checkpoint": None, "sha256": None, "seed": config.seed}
    path, sha = _start_weights(config.start, arch)
    load_weights(net, read_checkpoint(path, sha256=sha, what="start weights"),
                 source=f"start weights {path}", arch=arch)
    return net, {"model": config.start, "checkpoint": str(path), "sha256": sha or sha256_file(path)}


def _start_weights(start: str, arch: Architecture) -> tuple[Path, str | None]:
    """The weights file ``start`` names (a registry name, a model directory or its weights, a checkpoint
    file) and its expected SHA-256 where one is known; refuses a Meta checkpoint for another architecture
    (a model directory's architecture was checked by ``network_architecture``)."""
    directory = _start_model_dir(start)
    if directory is not None:
        info = read_model_json(directory)
        return directory / info["weights"], info["weights_sha256"]
    if start in REGISTRY:
        spec = get_spec(start)
        if spec.config != arch.config or arch.overrides:
            raise WeightsError(f"start checkpoint {start!r} is a {spec.config} model; train it with "
                               f"architecture 'sam2.1-tiny' (or start from 'untrained')")
        return fetch_checkpoint(spec), None
    return Path(start), None


def _start_model_dir(start: str) -> Path | None:
    """The model directory ``start`` names: a shipped registry model's, a directory, or the one a weights
    file lies in; None for ``untrained``, Meta's checkpoints and plain checkpoint files."""
    if start in REGISTRY:
        spec = get_spec(start)
        if spec.model_dir is None:
            return None
        fetch_checkpoint(spec)  # verifies the shipped weights against the registry
        return spec.model_dir
    path = Path(start)
    directory = path if path.is_dir() else path.parent if is_model_dir_weights(path) else None
    if directory is not None and read_model_json(directory) is None:
        raise WeightsError(f"start model {directory} has no {MODEL_JSON}: not a trained SAM2 model directory")
    return directory


def _prepare(case: Case, arch: Architecture, preset: str, config: Sam2TrainConfig) -> PreparedCase:
    volume, labels = case.load()
    return prepare_case(case.id, volume, labels, arch.image_size, preset, structures=config.structures)


def _optimizer(net: torch.nn.Module, config: Sam2TrainConfig):
    """AdamW over the trained parts (the others frozen), warm-up then cosine schedule."""
    groups: dict[str, list[torch.nn.Parameter]] = {"image_encoder": [], "decoder": [], "memory": []}
    for name, param in net.named_parameters():
        part = ("image_encoder" if name.startswith(_ENCODER_PREFIX)
                else "decoder" if name.startswith(_DECODER_PREFIXES) else "memory")
        param.requires_grad_(part in config.train)
        if part in config.train:
            groups[part].append(param)
    lrs = {"image_encoder": config.lr_image_encoder, "memory": config.lr_memory}
    param_groups = [{"params": p, "lr": lrs.get(part) or config.lr, "name": part} for part, p in groups.items() if p]
    optimizer = torch.optim.AdamW(param_groups, weight_decay=config.weight_decay)
    return optimizer, warmup_cosine(optimizer, warmup_steps=config.warmup_steps, steps=config.steps)


def _save(path: Path, net, optimizer, scheduler, config: Sam2TrainConfig, state: dict) -> None:
    """Write the resumable state atomically (a half-written checkpoint never replaces a good one)."""
    write_checkpoint(path, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "config": config.to_dict(), "state": state})


def _snapshot(path: Path, net: torch.nn.Module) -> None:
    """The weights as they are now, float16 (as the shipped base model), for evaluation along a long run."""
    write_checkpoint(path, {k: v.detach().to(torch.float16) for k, v in net.state_dict().items()})


def _resume(path: Path, net, optimizer, scheduler, config: Sam2TrainConfig) -> dict:
    """Load an interrupted run's state; refuse one started with other model settings."""
    saved = read_training_state(path)
    if not Sam2TrainConfig.from_dict(saved["config"]).same_model(config):
        raise ConfigError(f"{path} belongs to a run with other settings; use the same settings to resume, "
                          f"or delete {path.parent} to start over")
    net.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return saved["state"]
