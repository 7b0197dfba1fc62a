"""``medseg segment``: SAM2 propagation from voxel prompts (and the SAM2 options ``fewshot`` shares)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from medseg.cli import values
from medseg.cli.outputs import add_dicom_format, add_postprocess_option, postprocess

if TYPE_CHECKING:
    from medseg.volume import LabelVolume

#: What ``--preset`` defaults to (``medseg.preprocess.choose_preset``), for the help of every SAM2 command.
PRESET_DEFAULT = ("default: the preset a trained model directory was trained with, else by modality "
                  "(CT: ct-soft-tissue, MR: mri), else by the intensities "
                  "(HU-like NIfTI: ct-soft-tissue, otherwise mri)")


def add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment objects through a volume with SAM2 from point / box / mask / scribble prompts (voxel z,y,x)",
        description="Prompts are voxel indices (z, y, x) of VOLUME. Prefix a prompt with ID: to give it to "
        "object ID (label value; default 1), e.g. --point 2:14,80,97,0 is a negative click for object 2.",
    )
    p.add_argument("volume", type=values.volume_source,
                   help="DICOM folder or file, NIfTI, NRRD or MHA, or a series' DICOMweb address (dicomweb://...)")
    p.add_argument("--model", type=default_model_option, default="",
                   help="registry name: sam2.1-tiny|small|base-plus|large (Apache-2.0), medsam2 (weights "
                        "CC-BY-SA-4.0), medseg-micro (ships with medseg), untrained (random, tests only); a model "
                        f"directory or a checkpoint path ({MODEL_DEFAULT})")
    p.add_argument("--point", type=values.point, action="append", default=[], metavar="[ID:]Z,Y,X[,LABEL]",
                   help="click; LABEL 1 positive (default), 0 negative; repeatable")
    p.add_argument("--box", type=values.box, action="append", default=[], metavar="[ID:]Z,Y0,X0,Y1,X1",
                   help="box with inclusive corners; repeatable")
    p.add_argument("--mask", type=values.existing_path, metavar="FILE",
                   help="label map on the volume's grid: label k on slice z becomes a mask prompt of object k there")
    p.add_argument("--scribbles", type=values.existing_path, metavar="FILE",
                   help="label map on the volume's grid: label k marks brush strokes on object k (drawn in any view; "
                        "each slice they cross gets a scribble)")
    p.add_argument("--negative-scribbles", type=values.existing_path, metavar="FILE",
                   help="the same for background strokes: label k marks what is not object k")
    p.add_argument("--prompts", type=values.json_file, metavar="FILE.json",
                   help="prompts to replay: a pipeline case's prompts.json or result.json, a --qc file of this "
                   "command, or the prompts alone "
                   "({\"1\": {\"points\": [[z, y, x, 1]], \"boxes\": [[z, y0, x0, y1, x1]]}})")
    p.add_argument("--name", action="append", default=[], metavar="ID=NAME",
                   help="name of an object (label value); repeatable")
    p.add_argument("--out", required=True,
                   help="label file to write (.nii.gz, .nii, .nrrd, .mha; .dcm: see --dicom-format)")
    add_dicom_format(p)
    p.add_argument("--qc", metavar="FILE.json", help="also write scores, per-slice QC and provenance as JSON")
    add_postprocess_option(p)
    p.add_argument("--preset", type=values.preset,
                   help=f"intensity preset, e.g. ct-soft-tissue, mri, ct:50,350 ({PRESET_DEFAULT})")
    p.add_argument("--series-uid", help="pick this series when the DICOM folder holds several")
    add_sam2_runtime_options(p)
    p.set_defaults(run=_run_segment)


def add_sam2_runtime_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that run SAM2 (segment, fewshot)."""
    p.add_argument("--image-size", type=values.image_size, help="model input size (default: the model's own)")
    p.add_argument("--device", type=values.device, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained model's random weights")
    p.add_argument("--offload-state-to-cpu", action="store_true",
                   help="keep cached features and SAM2's memory in CPU memory (long volumes, small GPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


MODEL_DEFAULT = "default: sam2.1-tiny once downloaded, else medseg-micro, which needs no download"


def default_model_option(text: str) -> str:
    """An argparse type for ``--model``: the text, or for an empty default the model a face offers
    first (``medseg.weights.default_model``, as napari does)."""
    from medseg.weights import default_model

    return text or default_model()


def load_sam2_model(args: argparse.Namespace):
    """The SAM2 model the options of ``add_sam2_runtime_options`` name, with a download bar."""
    from medseg.cli.progress import tqdm_progress
    from medseg.sam2 import load_model

    with tqdm_progress(f"download {args.model}", "B", disable=args.no_progress) as progress:
        return load_model(args.model, image_size=args.image_size, device=args.device, seed=args.seed, progress=progress)


def _run_segment(args: argparse.Namespace) -> None:
    from pathlib import Path

    import numpy as np

    from medseg.errors import ConfigError
    from medseg.io import load_labels, load_volume, save_labels
    from medseg.cli.progress import tqdm_progress
    from medseg.outputs import check_outputs
    from medseg.pipeline.results import write_json
    from medseg.prompts import Prompts
    from medseg.sam2 import Sam2VolumePredictor
    from medseg.sam2.qc import qc_summary

    volume = load_volume(args.volume, series_uid=args.series_uid)
    check_outputs({"--out": args.out, "--qc": args.qc},
                  inputs=[args.volume, args.mask, args.scribbles, args.negative_scribbles, args.model,
                          args.prompts.path if args.prompts else None])
    prompts = Prompts()
    if args.prompts:
        prompts = Prompts.from_record(args.prompts.data, source=f"--prompts {args.prompts.path}")
    for obj_id, v in args.point:
        prompts.add_point(obj_id, int(v[0]), v[1], v[2], positive=bool(v[3]) if len(v) == 4 else True)
    for obj_id, v in args.box:
        prompts.add_box(obj_id, int(v[0]), *v[1:])
    if args.mask:
        painted = load_labels(args.mask, volume)
        for obj_id in painted.labels:
            for z in np.flatnonzero((painted.array == obj_id).any(axis=(1, 2))):
                prompts.add_mask(obj_id, int(z), painted.array[z] == obj_id)
    for path, positive in ((args.scribbles, True), (args.negative_scribbles, False)):
        if path:
            strokes = load_labels(path, volume)
            for obj_id in strokes.labels:
                prompts.add_scribble_volume(obj_id, strokes.array == obj_id, positive=positive)
    for text in args.name:
        obj, _, name = text.partition("=")
        if not obj.isdigit() or not name:
            raise ConfigError(f"--name {text!r}: expected ID=NAME, e.g. 1=liver")
        prompts.object(int(obj)).name = name
    prompts.validate(volume.shape)  # before the model loads

    predictor = Sam2VolumePredictor(
        load_sam2_model(args), preset=args.preset, offload_state_to_cpu=args.offload_state_to_cpu,
    )
    with tqdm_progress("SAM2 propagation", "slice", disable=args.no_progress) as progress:
        labels = predictor.segment(volume, prompts, progress=progress)
    labels, _ = postprocess(args, labels, anchors=prompts)
    print(f"wrote {save_labels(labels, volume, args.out, format=args.dicom_format)}")
    qc = qc_summary(labels)
    print(qc.to_text())
    if args.qc:  # valid JSON (NaN -> null), written atomically
        write_json(Path(args.qc), {"scores": labels.scores, "qc": qc.to_dict(), "provenance": labels.provenance})
        print(f"wrote {args.qc}")
    print_model_note(labels)


def print_model_note(labels: LabelVolume) -> None:
    """The intensity preset used and why; on stderr, the untrained banner or the undertrained note."""
    from medseg.volume import UNTRAINED_BANNER, undertrained_note

    print(f"intensity preset {labels.provenance['preset']['name']}: {labels.provenance['preset_reason']}")
    if labels.untrained:
        print(UNTRAINED_BANNER, file=sys.stderr)
    elif note := undertrained_note(labels.provenance):
        print(note, file=sys.stderr)
