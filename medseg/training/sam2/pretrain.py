"""Pretraining of the base model that ships with medseg (``medseg-micro``), on synthetic scenes only.

No SAM2 checkpoint can be downloaded where medseg is built, and a model that follows prompts on any
structure needs more training than a demo can spend. So medseg ships one: ``hiera-micro`` at image
size 128, trained from random initialisation on synthetic scenes of generic objects
(``medseg.synthetic``) with SAM2's losses, clip augmentation and simulated clicks, boxes and masks
(``medseg.training.sam2``). ``PRETRAIN`` is the whole recipe: anyone can run it again
(``medseg sam2 pretrain --out DIR``; bit-for-bit on the same kind of CPU with the same thread count,
and it resumes bit for bit after an interruption), then ``export_base`` writes the float16 model
directory that is shipped (``medseg/models/medseg-micro``) and registered in ``medseg.weights``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from medseg.io.model_dir import MODEL_JSON, read_model_weights, write_model_dir
from medseg.runtime import Progress, ShouldStop
from medseg.sam2.model_dir import FORMAT, read_model_json
from medseg.training.sam2.config import Sam2TrainConfig
from medseg.training.sam2.train import train_sam2

PRETRAIN = Sam2TrainConfig(
    start="untrained", architecture="hiera-micro", image_size=128, steps=5_000, lr=3e-4, warmup_steps=300,
    clip_length=4, max_objects=4, p_synthetic=1.0, structures=False, prompt_prior=True, seed=0,
    val_every=2500, checkpoint_every=100, snapshot_every=1000, threads=1, device="cpu",
)
"""The base model's recipe (the defaults of ``Sam2TrainConfig`` for everything not named here)."""


def pretrain_base(out_dir: str | Path, *, config: Sam2TrainConfig = PRETRAIN, progress: Progress | None = None,
                  should_stop: ShouldStop | None = None) -> Path:
    """Train a base model on synthetic scenes into ``out_dir`` (resumes an interrupted run there)."""
    return train_sam2(None, out_dir, config=replace(config, p_synthetic=1.0), progress=progress,
                      should_stop=should_stop)


def export_base(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``model_dir``'s model as a shippable directory: float16 weights and its ``model.json``
    (the same description, with the new weights' SHA-256). Returns ``out_dir``.

    The shipped model tracks with the decoder's single-mask output (``single_mask_tracking``, see
    ``medseg.sam2.model_dir.Architecture``), although ``PRETRAIN`` trains it with SAM 2.1's multimask
    tracking: on the finished model, one click then propagates better on every set and a box as well
    (README, "The base model"), and a fine-tune from it trains the tracking it uses.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    info = read_model_json(model_dir)
    if info is None:
        raise FileNotFoundError(f"{model_dir} has no {MODEL_JSON}: finish the pretraining first")
    state = read_model_weights(model_dir, info, what="trained SAM2 weights")
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
    arch = {**info["architecture"], "single_mask_tracking": True}
    write_model_dir(out_dir, half, {**info, "architecture": arch, "dtype": "float16",
                                    "loss_curve": info["loss_curve"][::50]}, format=FORMAT)
    return out_dir
