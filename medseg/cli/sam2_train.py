"""``medseg sam2 train`` / ``pretrain``: train or fine-tune SAM2 on a cohort, or pretrain a base model
on synthetic scenes (``medseg.training.sam2``)."""

from __future__ import annotations

import argparse
import sys

from medseg.cli import values


def add_sam2(sub: argparse._SubParsersAction) -> None:
    # Defaults live in medseg.training.sam2.config.Sam2TrainConfig; options left out are not passed.
    p = sub.add_parser("sam2", help="SAM2 models: train or fine-tune on a cohort, pretrain a base model")
    actions = p.add_subparsers(dest="sam2_command", required=True)
    t = actions.add_parser(
        "train",
        help="train SAM2 on the cohort's train split (validating on its val split); the model directory "
        "works wherever a model is asked for (--model DIR, pipeline `model: DIR`)",
        description="Options left out take the defaults of medseg.training.sam2.config.Sam2TrainConfig "
        "(from medseg-micro, the base model that ships with medseg: architecture hiera-micro, image size 128, "
        "800 steps of one 4-slice clip, lr 1e-4, half of the clips synthetic scenes).",
    )
    t.add_argument("--manifest", required=True, help="cohort manifest (medseg JSON or a Decathlon dataset.json)")
    t.add_argument("--out", required=True, help="model directory to write (an interrupted run there resumes)")
    t.add_argument("--from", dest="start", metavar="MODEL",
                   help="start weights: medseg-micro (default; ships with medseg), untrained (random), sam2.1-tiny, "
                   "medsam2, a model directory or a checkpoint path")
    t.add_argument("--architecture", help="hiera-micro (small, CPU-trainable) or sam2.1-tiny (what registry "
                                          "checkpoints fit)")
    t.add_argument("--image-size", type=int, help="model input size, a multiple of 32")
    t.add_argument("--steps", type=int, help="optimiser steps")
    t.add_argument("--batch-size", type=int, help="clips per step")
    t.add_argument("--clip-length", type=int, help="consecutive slices per clip")
    t.add_argument("--train", nargs="+", choices=["image_encoder", "memory", "decoder"],
                   help="parts that learn (default all; leave out image_encoder to fine-tune cheaply)")
    t.add_argument("--lr", type=float, help="peak learning rate of the memory and decoder")
    t.add_argument("--lr-image-encoder", type=float, help="peak learning rate of the image encoder (default --lr)")
    t.add_argument("--lr-memory", type=float,
                   help="peak learning rate of the memory attention and encoder (default --lr)")
    t.add_argument("--warmup-steps", type=int)
    t.add_argument("--dice-weight", type=float,
                   help="dice loss weight next to the focal loss's 20 (default 5; SAM2 uses 1)")
    t.add_argument("--p-reference", type=float,
                   help="share of reference clips: another train case's annotated slices condition an unprompted clip "
                        "(teaches what reference prompting needs; default 0)")
    t.add_argument("--references", type=int, help="at most this many annotated slices per reference clip (default 3)")
    t.add_argument("--p-synthetic", type=float,
                   help="share of clips from synthetic scenes of generic objects (keeps the model following prompts "
                        "rather than learning the cohort's layout; default 0.5)")
    t.add_argument("--p-parts", type=float,
                   help="chance that a label's connected parts are tracked alone (default 0.3)")
    t.add_argument("--no-structures", dest="structures", action="store_false", default=None,
                   help="do not track the unlabelled compartments found from the intensities")
    t.add_argument("--preset", help="intensity preset, e.g. ct-soft-tissue, mri, ct:50,350 "
                   "(default: by modality, else by the intensities: HU-like ct-soft-tissue, otherwise mri); "
                   "recorded in model.json and used wherever the model runs")
    t.add_argument("--val-every", type=int, help="validate on the val split every N steps (0: never)")
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=values.positive_int,
                   help="torch CPU threads while training (default 1: the fastest on a busy CPU, reproducible)")
    t.add_argument("--device", help="auto, cpu (default), cuda, cuda:1, mps")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(run=_run_train)
    pre = actions.add_parser(
        "pretrain",
        help="pretrain a base SAM2 on synthetic scenes (the recipe of the shipped medseg-micro; hours on a CPU, "
             "resumable)",
        description="Runs medseg.training.sam2.pretrain.PRETRAIN (options given here replace its values). "
        "Stop it any time: the same command resumes bit for bit.",
    )
    pre.add_argument("--out", required=True, help="model directory to write (an interrupted run there resumes)")
    pre.add_argument("--steps", type=int, help="optimiser steps (default 5000, the recipe's)")
    pre.add_argument("--seed", type=int)
    pre.add_argument("--threads", type=values.positive_int,
                     help="torch CPU threads (default 1; the recipe is bit-reproducible per count)")
    pre.add_argument("--device", help="cpu (default), cuda, mps")
    pre.add_argument("--export", metavar="DIR",
                     help="also write the float16 directory that medseg ships (medseg-micro)")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    pre.set_defaults(run=_run_pretrain)


_OPTIONS = ("start", "architecture", "image_size", "steps", "batch_size", "clip_length", "train", "lr",
            "lr_image_encoder", "lr_memory", "warmup_steps", "dice_weight", "p_reference", "references", "p_synthetic",
            "p_parts", "structures", "preset", "val_every", "seed", "threads", "device")


def _run_train(args: argparse.Namespace) -> None:
    from medseg.cli.progress import tqdm_progress
    from medseg.manifest import load_manifest
    from medseg.training.sam2.config import Sam2TrainConfig
    from medseg.training.sam2.train import train_sam2

    options = {name: getattr(args, name) for name in _OPTIONS if getattr(args, name) is not None}
    if "train" in options:
        options["train"] = tuple(options["train"])
    config = Sam2TrainConfig(**options)
    with tqdm_progress("SAM2 training", "step", disable=args.no_progress) as progress:
        directory = train_sam2(load_manifest(args.manifest), args.out, config=config, progress=progress)
    _print_model(directory)


def _run_pretrain(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from medseg.cli.progress import tqdm_progress
    from medseg.training.sam2.pretrain import PRETRAIN, export_base, pretrain_base

    options = {name: getattr(args, name) for name in ("steps", "seed", "threads", "device")
               if getattr(args, name) is not None}
    config = replace(PRETRAIN, **options)  # checked before the progress bar shows
    with tqdm_progress("SAM2 pretraining", "step", disable=args.no_progress) as progress:
        directory = pretrain_base(args.out, config=config, progress=progress)
    _print_model(directory)
    if args.export:
        print(f"float16 model directory to ship: {export_base(directory, args.export)}")


def _print_model(directory) -> None:
    from medseg.sam2.model_dir import read_model_json

    info = read_model_json(directory)
    print(f"model: {directory} — {info['statement']}")
    if info["validation"]:
        last = info["validation"][-1]
        print(f"validation at step {last['step']}: mean Dice from a box {last['box']['mean_dice']}, "
              f"from a click {last['point']['mean_dice']}")
    if info["undertrained"]:
        print(f"note: trained for only {info['steps']} steps: an undertrained model", file=sys.stderr)
