"""The ``medseg`` command: one subcommand per library call, nothing more.

Each subcommand has an ``_add_<name>`` function that declares its arguments and a
``_run_<name>`` function that calls the library; errors of the ``MedsegError`` family are
printed as one readable line (exit code 2), anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medseg.errors import MedsegError


# --- medseg info -------------------------------------------------------------------------
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="load a volume and print its geometry, metadata and intensity range")
    p.add_argument("path", help="DICOM folder, DICOM file, NIfTI, NRRD or MHA")
    p.add_argument("--series-uid", help="pick this series when the DICOM folder holds several")
    p.add_argument("--pick-largest", action="store_true", help="pick the series with the most slices when the folder holds several")
    p.add_argument("--labels", help="also load this label map and check that it lies on the volume's grid")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> None:
    import nibabel as nib
    import numpy as np

    from medseg.io import load_labels, load_volume

    volume = load_volume(args.path, series_uid=args.series_uid, pick_largest=args.pick_largest)
    extent = tuple(round(n * s, 1) for n, s in zip(volume.shape, volume.spacing))
    print(f"{args.path}: {volume.modality} volume ({volume.metadata.get('format', '?')})")
    print(f"  shape (z, y, x): {volume.shape}   extent mm: {extent}")
    print(f"  spacing (z, y, x) mm: {tuple(round(s, 4) for s in volume.spacing)}")
    print(f"  origin (LPS mm): {tuple(round(o, 3) for o in volume.origin)}")
    print(f"  direction (columns = x, y, z axes, LPS): {np.round(volume.direction, 4).tolist()}")
    print(f"  orientation (nibabel axis codes of i, j, k): {''.join(nib.aff2axcodes(volume.affine))}")
    print(f"  intensity min / median / max: {volume.array.min():.1f} / {np.median(volume.array):.1f} / {volume.array.max():.1f}")
    for key, value in sorted(volume.metadata.items()):
        if key != "format":
            print(f"  {key}: {value}")
    if args.labels:
        labels = load_labels(args.labels, volume)
        counts = {value: int(np.count_nonzero(labels.array == value)) for value in labels.labels}
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        print(f"{args.labels}: on the volume's grid; {len(counts)} label value(s)")
        for value, count in counts.items():
            print(f"  label {value}: {count} voxels, {count * voxel_ml:.2f} ml")


# --- medseg demo-data --------------------------------------------------------------------
def _add_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write the synthetic demo cohort and the real MNI152 cohort (from nilearn) with their manifests",
    )
    p.add_argument("directory", nargs="?", default="data_manifests", help="where the manifests go (default: data_manifests)")
    p.add_argument("--cases", type=int, default=6, help="number of phantom cases (default 6; the last 2 are the test split)")
    p.set_defaults(run=_run_demo_data)


def _run_demo_data(args: argparse.Namespace) -> None:
    from medseg.datasets import write_real_cohort
    from medseg.errors import ConfigError, InputError
    from medseg.phantom import write_demo_cohort

    if args.cases < 3:
        raise ConfigError(f"--cases must be at least 3 (2 of them are the test split), got {args.cases}")
    print(f"demo cohort: {write_demo_cohort(args.directory, n_cases=args.cases)}")
    try:
        print(f"real cohort: {write_real_cohort(args.directory)}")
    except InputError as error:
        print(f"real cohort skipped: {error} (install nilearn, e.g. pip install 'medseg[data]', to get it)")


# --- medseg segment -----------------------------------------------------------------------
def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment objects through a volume with SAM2 from point / box / mask prompts (voxel z,y,x)",
        description="Prompts are voxel indices (z, y, x) of VOLUME. Prefix a prompt with ID: to give it to "
        "object ID (label value; default 1), e.g. --point 2:14,80,97,0 is a negative click for object 2.",
    )
    p.add_argument("volume", help="DICOM folder or file, NIfTI, NRRD or MHA")
    p.add_argument("--model", default="sam2.1-tiny", help="registry name: sam2.1-tiny|small|base-plus|large (Apache-2.0), medsam2 (weights CC-BY-SA-4.0), untrained (random, tests only); or a checkpoint path (default sam2.1-tiny)")
    p.add_argument("--point", action="append", default=[], metavar="[ID:]Z,Y,X[,LABEL]", help="click; LABEL 1 positive (default), 0 negative; repeatable")
    p.add_argument("--box", action="append", default=[], metavar="[ID:]Z,Y0,X0,Y1,X1", help="box with inclusive corners; repeatable")
    p.add_argument("--mask", metavar="FILE", help="label map on the volume's grid: label k on slice z becomes a mask prompt of object k there")
    p.add_argument("--prompts", metavar="FILE.json", help="prompts as written in a result's provenance (Prompts.to_dict)")
    p.add_argument("--name", action="append", default=[], metavar="ID=NAME", help="name of an object (label value); repeatable")
    p.add_argument("--out", required=True, help="label file to write (.nii.gz, .nii, .nrrd, .mha)")
    p.add_argument("--qc", metavar="FILE.json", help="also write scores, per-slice QC and provenance as JSON")
    p.add_argument("--preset", help="intensity preset, e.g. ct-soft-tissue, mri, ct:50,350 (default: by modality)")
    p.add_argument("--series-uid", help="pick this series when the DICOM folder holds several")
    _add_sam2_runtime_options(p)
    p.set_defaults(run=_run_segment)


def _add_sam2_runtime_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that run SAM2 (segment, fewshot)."""
    p.add_argument("--image-size", type=int, help="model input size (default: the model's own)")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained model's random weights")
    p.add_argument("--offload-state-to-cpu", action="store_true", help="keep cached features and SAM2's memory in CPU memory (long volumes, small GPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_prompt_option(option: str, text: str, sizes: tuple[int, ...]) -> tuple[int, list[float]]:
    """``[ID:]v1,v2,...`` -> (object id, values); ConfigError naming the option otherwise."""
    from medseg.errors import ConfigError

    obj, _, values = text.rpartition(":")
    try:
        numbers = [float(v) for v in values.split(",")]
        obj_id = int(obj) if obj else 1
    except ValueError:
        numbers, obj_id = [], 0
    if len(numbers) not in sizes or obj_id < 1:
        raise ConfigError(f"{option} {text!r}: expected [ID:]{','.join(['N'] * sizes[0])} with {' or '.join(map(str, sizes))} numbers and ID >= 1")
    return obj_id, numbers


def _run_segment(args: argparse.Namespace) -> None:
    import json

    import numpy as np

    from medseg.errors import ConfigError
    from medseg.io import load_labels, load_volume, save_labels
    from medseg.prompts import Prompts
    from medseg.sam2 import Sam2VolumePredictor
    from medseg.sam2.qc import qc_summary
    from medseg.volume import UNTRAINED_BANNER

    volume = load_volume(args.volume, series_uid=args.series_uid)
    if args.prompts:
        with open(args.prompts, encoding="utf-8") as f:
            prompts = Prompts.from_dict(json.load(f))
    else:
        prompts = Prompts()
    for text in args.point:
        obj_id, v = _parse_prompt_option("--point", text, (3, 4))
        prompts.add_point(obj_id, int(v[0]), v[1], v[2], positive=bool(v[3]) if len(v) == 4 else True)
    for text in args.box:
        obj_id, v = _parse_prompt_option("--box", text, (5,))
        prompts.add_box(obj_id, int(v[0]), *v[1:])
    if args.mask:
        painted = load_labels(args.mask, volume)
        for obj_id in painted.labels:
            for z in np.flatnonzero((painted.array == obj_id).any(axis=(1, 2))):
                prompts.add_mask(obj_id, int(z), painted.array[z] == obj_id)
    for text in args.name:
        obj, _, name = text.partition("=")
        if not obj.isdigit() or not name:
            raise ConfigError(f"--name {text!r}: expected ID=NAME, e.g. 1=liver")
        prompts.object(int(obj)).name = name
    prompts.validate(volume.shape)  # before the model loads

    predictor = Sam2VolumePredictor(
        args.model, image_size=args.image_size, device=args.device, preset=args.preset, seed=args.seed,
        offload_state_to_cpu=args.offload_state_to_cpu,
    )
    labels = predictor.segment(volume, prompts, progress=not args.no_progress)
    print(f"wrote {save_labels(labels, volume, args.out)}")
    qc = qc_summary(labels)
    print(qc.to_text())
    if args.qc:
        with open(args.qc, "w", encoding="utf-8") as f:
            json.dump({"scores": labels.scores, "qc": qc.to_dict(), "provenance": labels.provenance}, f, indent=1)
        print(f"wrote {args.qc}")
    if labels.untrained:
        print(UNTRAINED_BANNER, file=sys.stderr)


# --- medseg fewshot -----------------------------------------------------------------------
def _add_fewshot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fewshot",
        help="segment a query volume from annotated reference slices with frozen SAM2 (RevSAM2-style reference prompting)",
        description="Each --support is IMAGE:LABELS[:Z1,Z2,...]: a reference image, its label map, and optionally the "
        "slices to use (default: --k slices per label spread over its extent). The query itself may be a reference "
        "(labels drawn on a few of its slices). NIfTI has no modality: give --preset ct-soft-tissue (or another CT "
        "window) for CT, otherwise MRI percentiles are used.",
    )
    p.add_argument("--support", action="append", required=True, metavar="IMAGE:LABELS[:Z,...]", help="labelled reference; repeatable")
    p.add_argument("--query", required=True, help="volume to segment: DICOM folder or file, NIfTI, NRRD or MHA")
    p.add_argument("--out", required=True, help="label file to write (.nii.gz, .nii, .nrrd, .mha)")
    p.add_argument("--mode", choices=["revsam2", "baseline", "baseline-middle"], default="revsam2",
                   help="revsam2: forward, reverse scoring, re-prompt (default); baseline: supports before the query; "
                   "baseline-middle: supports in the query's middle, propagation both ways")
    p.add_argument("--model", default="sam2.1-tiny", help="registry name (sam2.1-tiny|small|base-plus|large, medsam2, untrained) or a checkpoint path (default sam2.1-tiny)")
    p.add_argument("--label", action="append", default=[], metavar="ID=NAME", help="segment this label (value=name); repeatable (default: every label of the references)")
    p.add_argument("--k", type=int, default=3, help="support slices sampled per label and reference (default 3)")
    p.add_argument("--top-k", type=_none_or(int), default=3, metavar="N|none", help="revsam2: re-prompt with at most N query slices (default 3)")
    p.add_argument("--threshold", type=_none_or(float), default=0.5, metavar="DICE|none", help="revsam2: minimum reverse score of a selected slice (default 0.5)")
    p.add_argument("--min-spacing", type=_none_or(int), default=None, metavar="SLICES|none", help="revsam2: minimum z distance between selected slices (default: automatic)")
    p.add_argument("--include-supports", action=argparse.BooleanOptionalAction, default=True, help="revsam2: keep the supports as conditioning frames when re-prompting (default yes)")
    p.add_argument("--qc", metavar="FILE.json", help="also write scores, reverse scores, selected slices and provenance as JSON")
    p.add_argument("--preset", help="intensity preset of query and references, e.g. ct-soft-tissue, mri, ct:50,350 (default: by modality)")
    p.add_argument("--series-uid", help="pick this series when the query's DICOM folder holds several")
    _add_sam2_runtime_options(p)
    p.set_defaults(run=_run_fewshot)


def _none_or(kind: type):
    """An argparse type: ``none`` -> None, anything else -> ``kind(text)``."""

    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _parse_support_option(text: str) -> tuple[str, str, list[int] | None]:
    """``IMAGE:LABELS[:Z1,Z2,...]`` -> (image path, labels path, slices or None)."""
    from medseg.errors import ConfigError

    parts = text.split(":")
    slices = None
    if len(parts) == 3:
        try:
            slices = [int(z) for z in parts[2].split(",")]
        except ValueError:
            parts = []
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise ConfigError(f"--support {text!r}: expected IMAGE:LABELS or IMAGE:LABELS:Z1,Z2,... (slice indices)")
    return parts[0], parts[1], slices


def _run_fewshot(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from medseg.errors import ConfigError
    from medseg.io import load_labels, load_volume, save_labels
    from medseg.revsam2 import SupportSet, segment_with_references
    from medseg.sam2 import load_model
    from medseg.volume import UNTRAINED_BANNER

    specs = [_parse_support_option(text) for text in args.support]
    label_map = {}
    for text in args.label:
        value, _, name = text.partition("=")
        if not value.isdigit() or not name:
            raise ConfigError(f"--label {text!r}: expected ID=NAME, e.g. 1=liver")
        label_map[int(value)] = name
    query = load_volume(args.query, series_uid=args.series_uid)
    entries = []
    for image, labels, slices in specs:
        same_as_query = Path(image).resolve() == Path(args.query).resolve()
        reference = query if same_as_query else load_volume(image)
        entries.append((reference, load_labels(labels, reference), slices))
    support = SupportSet.from_volumes(entries, k=args.k, labels=label_map or None, names=[s[0] for s in specs])
    support.check_query(query)  # before the model loads

    model = load_model(args.model, image_size=args.image_size, device=args.device, seed=args.seed)
    labels = segment_with_references(
        query, support, mode=args.mode, model=model, preset=args.preset, top_k=args.top_k, threshold=args.threshold,
        min_spacing=args.min_spacing, include_supports=args.include_supports,
        offload_state_to_cpu=args.offload_state_to_cpu, progress=not args.no_progress,
    )
    print(f"wrote {save_labels(labels, query, args.out)}")
    for value, name in labels.label_names.items():
        detail = labels.provenance["labels"].get(str(value), {})
        selected = f", re-prompted from slices {detail['selected_slices']}" if detail.get("selected_slices") else ""
        fallback = ", no slice passed the threshold: forward prediction kept" if detail.get("fell_back_to_forward") else ""
        voxels = int((labels.array == value).sum())
        print(f"  {value} {name}: {voxels} voxels, score {labels.scores[value]:.3f}{selected}{fallback}")
    if args.qc:
        with open(args.qc, "w", encoding="utf-8") as f:
            json.dump({"scores": labels.scores, "provenance": labels.provenance}, f, indent=1)
        print(f"wrote {args.qc}")
    if labels.untrained:
        print(UNTRAINED_BANNER, file=sys.stderr)


# --- medseg baseline train / predict -------------------------------------------------------
def _add_baseline(sub: argparse._SubParsersAction) -> None:
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
    t.add_argument("--backbone", help="resnet50 (as in the paper), resnet34, resnet18 or mobilenet_v3_large (lighter, for CPU)")
    t.add_argument("--steps", type=int, help="optimiser steps")
    t.add_argument("--batch-size", type=int, help="slices per step")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--optimizer", choices=["adamw", "sgd"])
    t.add_argument("--warmup-steps", type=int, help="linear LR warm-up steps (at most a quarter of --steps)")
    t.add_argument("--input-size", type=int, help="longer slice side inside the network, a multiple of 32")
    t.add_argument("--preset", help="intensity preset, e.g. ct-soft-tissue, mri, ct:50,350 (default: by modality)")
    t.add_argument("--instances", choices=["components", "per_class"], help="instances per slice: connected components of each class (default), or one per class")
    t.add_argument("--empty-ratio", type=float, help="slices without objects per slice with one, each epoch")
    t.add_argument("--pretrained", metavar="CHECKPOINT", help="start from this state dict (a medseg/torchvision Mask R-CNN or an ImageNet backbone)")
    t.add_argument("--norm", choices=["group", "frozen-bn"], help="GroupNorm to train from scratch (default); frozen-bn to fine-tune a torchvision checkpoint")
    t.add_argument("--score-threshold", type=float, help="default detection threshold stored for prediction")
    t.add_argument("--val-every", type=int, help="validate every N steps; 0 = only at the end")
    t.add_argument("--seed", type=int)
    t.add_argument("--workers", dest="num_workers", metavar="N", type=int, help="data loader processes (default 0: in the main process)")
    t.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(run=_run_baseline_train)

    q = actions.add_parser("predict", help="segment a volume with a trained model directory")
    q.add_argument("volume", help="DICOM folder or file, NIfTI, NRRD or MHA")
    q.add_argument("--model", required=True, help="model directory written by `medseg baseline train`")
    q.add_argument("--out", required=True, help="label file to write (.nii.gz, .nii, .nrrd, .mha)")
    q.add_argument("--instances", metavar="FILE", help="also write the 3D instance map (instance ids) to this label file")
    q.add_argument("--qc", metavar="FILE.json", help="also write per-label and per-instance scores and provenance as JSON")
    q.add_argument("--score-threshold", type=float, help="drop detections below this score (default: the model's)")
    q.add_argument("--batch-size", type=int, default=4, help="slices per forward pass (default 4)")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    q.add_argument("--series-uid", help="pick this series when the DICOM folder holds several")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(run=_run_baseline_predict)


_TRAIN_OPTIONS = (
    "backbone", "steps", "batch_size", "lr", "optimizer", "warmup_steps", "input_size", "preset", "instances",
    "empty_ratio", "pretrained", "norm", "score_threshold", "val_every", "seed", "num_workers", "device",
)


def _run_baseline_train(args: argparse.Namespace) -> None:
    from medseg.manifest import load_manifest
    from medseg.maskrcnn import TrainConfig, load_model, train_from_cohort

    config = TrainConfig(**{name: getattr(args, name) for name in _TRAIN_OPTIONS if getattr(args, name) is not None})
    model = load_model(train_from_cohort(load_manifest(args.manifest), args.out, config=config, progress_bar=not args.no_progress))
    print(f"model: {model.directory} ({model.config.backbone}, {model.steps} steps, classes {model.classes})")
    if model.validation:
        last = model.validation[-1]
        print(f"validation ({last['cases']} cases): mean Dice {last['mean_dice']}, Dice per label {last['dice']}, 3D mask AP {last['mask_ap_3d']}")
    else:
        print("no validation: the cohort has no val split")
    if model.undertrained:
        print(f"note: trained for only {model.steps} steps; its results are a smoke test, not a baseline", file=sys.stderr)


def _run_baseline_predict(args: argparse.Namespace) -> None:
    import json

    from medseg.io import load_volume, save_labels
    from medseg.maskrcnn import load_model, predict_instances
    from medseg.volume import UNTRAINED_BANNER, LabelVolume

    model = load_model(args.model)
    volume = load_volume(args.volume, series_uid=args.series_uid)
    prediction = predict_instances(
        model, volume, score_threshold=args.score_threshold, batch_size=args.batch_size, device=args.device,
        progress_bar=not args.no_progress,
    )
    labels, instances = prediction.labels, prediction.instances
    print(f"wrote {save_labels(labels, volume, args.out)}")
    for value in labels.labels:
        print(f"  {value} {labels.label_names.get(value, '')}: {int((labels.array == value).sum())} voxels, score {labels.scores[value]:.3f}")
    if args.instances:
        print(f"wrote {save_labels(LabelVolume(instances.array, volume.geometry), volume, args.instances)} ({len(instances.labels)} instances)")
    if args.qc:
        with open(args.qc, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "scores": labels.scores,
                    "instances": {k: {"label": instances.labels[k], "score": instances.scores[k]} for k in instances.labels},
                    "provenance": labels.provenance,
                },
                f,
                indent=1,
            )
        print(f"wrote {args.qc}")
    if labels.untrained:
        print(UNTRAINED_BANNER, file=sys.stderr)
    elif model.undertrained:
        print(f"note: {args.model} was trained for only {model.steps} steps; treat this as a smoke test", file=sys.stderr)


# --- medseg run / medseg replay ------------------------------------------------------------
def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a batch pipeline (pipelines/*.yaml) over a cohort and write a report")
    p.add_argument("pipeline", help="pipeline YAML, e.g. pipelines/demo.yaml")
    p.add_argument("--out", required=True, help="results folder (re-running into it resumes)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="where cases run (default: local)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes, one model each (default 1)")
    p.add_argument("--address", help="Ray cluster address (e.g. auto or ray://head:10001); default: start Ray locally")
    p.add_argument("--cpus-per-case", type=float, default=1, help="Ray CPUs requested per case (default 1)")
    p.add_argument("--gpus-per-case", type=float, default=0, help="Ray GPUs requested per case (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=_run_run)


def _run_run(args: argparse.Namespace) -> None:
    from medseg.pipeline import LocalExecutor, RayExecutor, load_pipeline, run_pipeline
    from medseg.volume import UNTRAINED_BANNER

    config = load_pipeline(args.pipeline)
    if args.executor == "ray":
        executor = RayExecutor(address=args.address, num_cpus=args.cpus_per_case, num_gpus=args.gpus_per_case)
    else:
        executor = LocalExecutor(workers=args.workers)
    summary = run_pipeline(config, args.out, executor=executor, progress_bar=not args.no_progress)
    for method, counts in summary.counts.items():
        print(f"{method}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} already done")
    print(f"report: {summary.report}")
    if summary.untrained:
        print(f"{UNTRAINED_BANNER} Methods: {', '.join(summary.untrained)}.", file=sys.stderr)
    if summary.failed:
        print(f"{summary.failed} case run(s) failed: see the Failures section of the report", file=sys.stderr)


def _add_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="re-run one case of a results folder from its log and compare the labels")
    p.add_argument("case_dir", help="RESULTS/<method>/<case>")
    p.add_argument("--out", help="where the replayed case goes (default: <case_dir>/replay)")
    p.set_defaults(run=_run_replay)


def _run_replay(args: argparse.Namespace) -> None:
    from medseg.errors import MedsegError
    from medseg.pipeline import replay_case

    result = replay_case(args.case_dir, out=args.out)
    if not result.identical:
        raise MedsegError(
            f"replay differs from the recorded labels in {result.differing_voxels} of {result.total_voxels} voxels "
            f"(replayed labels in {result.replay_dir})"
        )
    print(f"reproduced: identical labels ({result.total_voxels} voxels); replay in {result.replay_dir}")


# --- subcommands are registered here, in the order `medseg --help` lists them --------------
_SUBCOMMANDS = [_add_info, _add_demo_data, _add_segment, _add_fewshot, _add_baseline, _add_run, _add_replay]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="Segment CT and MRI volumes: SAM2 propagation, reference prompting, a Mask R-CNN baseline, batch evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except MedsegError as error:
        print(f"medseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medseg {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
