"""``medseg baseline train`` / ``predict``: the Mask R-CNN supervised baseline."""

from __future__ import annotations

import argparse
import sys

from medseg.cli.outputs import add_dicom_format, add_postprocess_option, postprocess
from medseg.cli import values


def add_baseline(sub: argparse._SubParsersAction) -> None:
    # Defaults live in medseg.maskrcnn.TrainConfig (importing it here would load torch for
    # every `medseg` call): options left out are not passed, so TrainConfig's apply.
    p = sub.add_parser("baseline", help="Mask R-CNN supervised baseline: train on a cohort, segment volumes")
    actions = p.add_subparsers(dest="baseline_command", required=True)

    t = actions.add_parser(
        "train",
        help="train on the cohort's train split (validating on its val split)",
        description="Options left out take the defaults of medseg.maskrcnn.TrainConfig (backbone resnet50, "
        "5000 steps of 4 slices, AdamW at 3e-4 with warm-up, input size 256).",
    )
    t.add_argument("--manifest", required=True, help="cohort manifest (medseg JSON or a Decathlon dataset.json)")
    t.add_argument("--out", required=True, help="model directory to write (an interrupted run there resumes)")
    t.add_argument("--backbone", help="resnet50 (as in the paper), resnet34, resnet18 or mobilenet_v3_large (lighter, "
                                      "for CPU)")
    t.add_argument("--steps", type=values.positive_int, help="optimiser steps")
    t.add_argument("--batch-size", type=values.positive_int, help="slices per step")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--optimizer", choices=["adamw", "sgd"])
    t.add_argument("--warmup-steps", type=int, help="linear LR warm-up steps (at most a quarter of --steps)")
    t.add_argument("--image-size", "--input-size", dest="image_size", type=values.image_size,
                   help="longer slice side inside the network, a multiple of 32 (--input-size: its old name)")
    t.add_argument("--preset", help="intensity preset, e.g. ct-soft-tissue, mri, ct:50,350 "
                   "(default: by modality, else by the intensities: HU-like ct-soft-tissue, otherwise mri)")
    t.add_argument("--instances", choices=["components", "per_class"],
                   help="instances per slice: connected components of each class (default), or one per class")
    t.add_argument("--empty-ratio", type=float, help="slices without objects per slice with one, each epoch")
    t.add_argument("--pretrained", metavar="CHECKPOINT",
                   help="start from this state dict (a medseg/torchvision Mask R-CNN or an ImageNet backbone)")
    t.add_argument("--norm", choices=["group", "frozen-bn"],
                   help="GroupNorm to train from scratch (default); frozen-bn to fine-tune a torchvision checkpoint")
    t.add_argument("--score-threshold", type=values.fraction, help="default detection threshold stored for prediction")
    t.add_argument("--val-every", type=int, help="validate every N steps; 0 = only at the end")
    t.add_argument("--seed", type=int)
    t.add_argument("--workers", dest="num_workers", metavar="N", type=int,
                   help="data loader processes (default 0: in the main process)")
    t.add_argument("--device", type=values.device, help="auto (default), cpu, cuda, cuda:1 ...")
    t.add_argument("--threads", type=values.positive_int,
                   help="torch CPU threads while training (default 1: the fastest on a busy CPU, reproducible)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(run=_run_baseline_train)

    q = actions.add_parser("predict", help="segment a volume with a trained model directory")
    q.add_argument("volume", help="DICOM folder or file, NIfTI, NRRD or MHA")
    q.add_argument("--model", required=True, help="model directory written by `medseg baseline train`")
    q.add_argument("--out", required=True,
                   help="label file to write (.nii.gz, .nii, .nrrd, .mha; .dcm: see --dicom-format)")
    add_dicom_format(q)
    q.add_argument("--instances", metavar="FILE",
                   help="also write the 3D instance map (instance ids) to this label file")
    q.add_argument("--qc", metavar="FILE.json",
                   help="also write per-label and per-instance scores and provenance as JSON")
    q.add_argument("--score-threshold", type=values.fraction,
                   help="drop detections below this score (default: the model's)")
    add_postprocess_option(q)
    q.add_argument("--batch-size", type=values.positive_int, default=4, help="slices per forward pass (default 4)")
    q.add_argument("--device", type=values.device, default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    q.add_argument("--series-uid", help="pick this series when the DICOM folder holds several")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(run=_run_baseline_predict)


_TRAIN_OPTIONS = (
    "backbone", "steps", "batch_size", "lr", "optimizer", "warmup_steps", "image_size", "preset", "instances",
    "empty_ratio", "pretrained", "norm", "score_threshold", "val_every", "seed", "num_workers", "device", "threads",
)


def _run_baseline_train(args: argparse.Namespace) -> None:
    from medseg.cli.progress import tqdm_progress
    from medseg.manifest import load_manifest
    from medseg.maskrcnn import TrainConfig, load_model
    from medseg.outputs import check_output
    from medseg.training.maskrcnn import train_from_cohort

    check_output(args.out, inputs=[args.manifest], what="--out")
    config = TrainConfig(**{name: getattr(args, name) for name in _TRAIN_OPTIONS if getattr(args, name) is not None})
    cohort = load_manifest(args.manifest)
    with tqdm_progress("Mask R-CNN training", "step", disable=args.no_progress) as progress:
        model = load_model(train_from_cohort(cohort, args.out, config=config, progress=progress))
    print(f"model: {model.directory} ({model.config.backbone}, {model.steps} steps, classes {model.classes})")
    if model.validation:
        last = model.validation[-1]
        print(f"validation ({last['cases']} cases): mean Dice {last['mean_dice']}, Dice per label {last['dice']}, 3D "
              f"mask AP {last['mask_ap_3d']}")
    else:
        print("no validation: the cohort has no val split")
    if model.undertrained:
        print(f"note: trained for only {model.steps} steps; its results are a smoke test, not a baseline",
              file=sys.stderr)


def _run_baseline_predict(args: argparse.Namespace) -> None:
    from pathlib import Path

    from medseg.cli.progress import tqdm_progress
    from medseg.io import load_volume, save_labels
    from medseg.maskrcnn import load_model, predict_instances
    from medseg.outputs import check_outputs
    from medseg.pipeline.results import write_json
    from medseg.volume import UNTRAINED_BANNER, LabelVolume

    check_outputs({"--out": args.out, "--instances": args.instances, "--qc": args.qc}, inputs=[args.volume, args.model])
    model = load_model(args.model)
    volume = load_volume(args.volume, series_uid=args.series_uid)
    with tqdm_progress("Mask R-CNN", "slice", disable=args.no_progress) as progress:
        prediction = predict_instances(
            model, volume, score_threshold=args.score_threshold, batch_size=args.batch_size, device=args.device,
            progress=progress,
        )
    labels, instances = postprocess(args, prediction.labels, instances=prediction.instances)
    print(f"wrote {save_labels(labels, volume, args.out, format=args.dicom_format)}")
    for value in labels.labels:
        print(f"  {value} {labels.label_names.get(value, '')}: {int((labels.array == value).sum())} voxels, score "
              f"{labels.scores[value]:.3f}")
    if args.instances:
        print(f"wrote {save_labels(LabelVolume(instances.array, volume.geometry), volume, args.instances)} "
              f"({len(instances.labels)} instances)")
    if args.qc:
        write_json(Path(args.qc), {
            "scores": labels.scores,
            "instances": {k: {"label": instances.labels[k], "score": instances.scores[k]} for k in instances.labels},
            "provenance": labels.provenance,
        })
        print(f"wrote {args.qc}")
    if labels.untrained:
        print(UNTRAINED_BANNER, file=sys.stderr)
    elif model.undertrained:
        print(f"note: {args.model} was trained for only {model.steps} steps; treat this as a smoke test",
              file=sys.stderr)
