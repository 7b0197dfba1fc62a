"""``medseg fewshot``: reference prompting (RevSAM2-style) from annotated slices of other volumes."""

from __future__ import annotations

import argparse

from medseg.cli.outputs import add_dicom_format, add_postprocess_option, postprocess
from medseg.cli import values
from medseg.cli.segment import (MODEL_DEFAULT, PRESET_DEFAULT, add_sam2_runtime_options, default_model_option,
                                print_model_note)
from medseg.revsam2.defaults import (DEFAULT_GATE_MARGIN, DEFAULT_INCLUDE_SUPPORTS, DEFAULT_PLACEMENT,
                                     DEFAULT_REJECT_RIVALS, DEFAULT_REPROMPT, DEFAULT_THRESHOLD, DEFAULT_TOP_K,
                                     REPROMPTS)


def add_fewshot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fewshot",
        help="segment a query volume from annotated reference slices with frozen SAM2 (RevSAM2-style reference "
             "prompting)",
        description="Each --support is IMAGE LABELS [Z1,Z2,...]: another volume, its label map, and optionally the "
        "slices to use (default: --k slices per label spread over its extent); it is resampled onto the query's "
        "in-plane grid when its pixel spacing, matrix or orientation differ. Labels drawn on a few slices of the query "
        "itself are given with --support-from-query LABELS [Z1,Z2,...].",
    )
    p.add_argument("--support", action="append", default=[], nargs="+", metavar="ITEM",
                   help="IMAGE LABELS [Z1,Z2,...]: a labelled reference volume (paths may contain ':'); repeatable")
    p.add_argument("--support-from-query", action="append", default=[], nargs="+", metavar="ITEM",
                   help="LABELS [Z1,Z2,...]: a label map drawn on the query itself (on its grid); those slices "
                   "come back exactly as drawn; repeatable")
    p.add_argument("--query", required=True, help="volume to segment: DICOM folder or file, NIfTI, NRRD or MHA")
    p.add_argument("--out", required=True,
                   help="label file to write (.nii.gz, .nii, .nrrd, .mha; .dcm: see --dicom-format)")
    add_dicom_format(p)
    p.add_argument("--mode", choices=["revsam2", "baseline", "baseline-middle"], default="revsam2",
                   help="revsam2: forward, reverse scoring, re-prompt (default); baseline: supports before the query; "
                   "baseline-middle: supports in the query's middle, propagation both ways")
    p.add_argument("--model", type=default_model_option, default="",
                   help="registry name (sam2.1-tiny|small|base-plus|large, medsam2, medseg-micro, untrained), a model "
                        f"directory or a checkpoint path ({MODEL_DEFAULT})")
    p.add_argument("--label", action="append", default=[], metavar="ID=NAME",
                   help="segment this label (value=name); repeatable (default: every label of the references)")
    p.add_argument("--k", type=values.positive_int, default=3,
                   help="support slices sampled per label and reference (default 3)")
    p.add_argument("--top-k", type=_none_or(int), default=DEFAULT_TOP_K, metavar="N|none",
                   help=f"revsam2: re-prompt with at most N query slices (default {DEFAULT_TOP_K})")
    p.add_argument("--threshold", type=_none_or(values.fraction), default=DEFAULT_THRESHOLD, metavar="DICE|none",
                   help=f"revsam2: minimum reverse score of a selected slice (default {DEFAULT_THRESHOLD})")
    p.add_argument("--min-spacing", type=_none_or(int), default=None, metavar="SLICES|none",
                   help="revsam2: minimum z distance between selected slices (default: automatic)")
    p.add_argument("--placement", choices=["matched", "before", "middle"], default=DEFAULT_PLACEMENT,
                   help="revsam2: where the supports from other volumes go in the query's slice stack: matched "
                   "(each next to the query slice at its relative z), before (ahead of slice 0) or middle (default "
                   f"{DEFAULT_PLACEMENT})")
    p.add_argument("--gate-margin", type=_none_or(values.non_negative_int), default=DEFAULT_GATE_MARGIN,
                   metavar="SLICES|none",
                   help="keep each label to the query slices at the relative z where its references have it, plus "
                   f"this many slices; none: no gate (default {DEFAULT_GATE_MARGIN})")
    p.add_argument("--reject-rivals", action=argparse.BooleanOptionalAction, default=DEFAULT_REJECT_RIVALS,
                   help="revsam2: refuse a candidate slice that segments another label's references better than its "
                   "own (default yes)")
    p.add_argument("--include-supports", action=argparse.BooleanOptionalAction, default=DEFAULT_INCLUDE_SUPPORTS,
                   help="revsam2: keep the supports of other volumes as conditioning frames when re-prompting "
                   f"(default {'yes' if DEFAULT_INCLUDE_SUPPORTS else 'no'})")
    p.add_argument("--reprompt", choices=REPROMPTS, default=DEFAULT_REPROMPT,
                   help="revsam2: a selected slice re-prompts with its forward mask (mask) or with that mask segmented "
                   f"again from its parts' boxes on the query slice alone (box; default {DEFAULT_REPROMPT})")
    p.add_argument("--parts", action="store_true",
                   help="each connected part of a reference label (two kidneys under one label) its own object, "
                   "merged back into the label")
    p.add_argument("--register", action="store_true",
                   help="register each --support volume onto the query (affine) and take its slices from that "
                   "(medseg.revsam2.register; no slices may be given then)")
    p.add_argument("--qc", metavar="FILE.json",
                   help="also write scores, reverse scores, selected slices and provenance as JSON")
    add_postprocess_option(p)
    p.add_argument("--preset", type=values.preset,
                   help=f"intensity preset of query and references, e.g. ct-soft-tissue, mri ({PRESET_DEFAULT})")
    p.add_argument("--series-uid", help="pick this series when the query's DICOM folder holds several")
    add_sam2_runtime_options(p)
    p.set_defaults(run=_run_fewshot)


def _none_or(kind: type):
    """An argparse type: ``none`` -> None, anything else -> ``kind(text)``."""

    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _parse_support_option(option: str, items: list[str], paths: tuple[str, ...]) -> tuple[list[str], list[int] | None]:
    """``PATH... [Z1,Z2,...]`` -> (the paths, slices or None); ConfigError naming the option otherwise."""
    from medseg.errors import ConfigError

    form = f"{option} {' '.join(paths)} [Z1,Z2,...]"
    if len(items) not in (len(paths), len(paths) + 1) or not all(items[: len(paths)]):
        raise ConfigError(f"{option} {' '.join(items)}: expected {form}")
    if len(items) == len(paths):
        return items, None
    try:  # [12,20,28] as well as 12,20,28: the brackets of a list, or of the synopsis, are allowed
        return items[: len(paths)], [int(z) for z in items[-1].removeprefix("[").removesuffix("]").split(",")]
    except ValueError:
        raise ConfigError(f"{option} {' '.join(items)}: {items[-1]!r} is not a list of slice indices; "
                          f"expected {form}") from None


def _selection_note(obj: int, detail: dict, part: bool) -> str:
    """What the re-prompt started from, for one object of a label (``part``: one of several)."""
    who = f" part {obj}" if part else ""
    if detail.get("selected_slices"):
        return f",{who} re-prompted from slices {detail['selected_slices']}"
    if detail.get("fell_back_to_forward"):
        return f",{who} forward prediction kept (no slice passed the threshold)"
    return ""


def _run_fewshot(args: argparse.Namespace) -> None:
    from pathlib import Path

    from medseg.errors import ConfigError
    from medseg.io import load_labels, load_volume, save_labels
    from medseg.cli.progress import tqdm_progress
    from medseg.outputs import check_outputs
    from medseg.pipeline.results import write_json
    from medseg.revsam2 import SupportEntry, SupportSet, anchor_prompts, segment_with_references
    from medseg.revsam2.parts import labels_of_objects
    from medseg.revsam2.register import register_reference
    from medseg.sam2 import load_model

    others = [_parse_support_option("--support", items, ("IMAGE", "LABELS")) for items in args.support]
    drawn = [_parse_support_option("--support-from-query", items, ("LABELS",)) for items in args.support_from_query]
    if not others and not drawn:
        raise ConfigError("no reference: give --support IMAGE LABELS and/or --support-from-query LABELS")
    check_outputs({"--out": args.out, "--qc": args.qc},
                  inputs=[args.query, args.model, *(p for paths, _ in others + drawn for p in paths)])
    label_map = {}
    for text in args.label:
        value, _, name = text.partition("=")
        if not value.isdigit() or not name:
            raise ConfigError(f"--label {text!r}: expected ID=NAME, e.g. 1=liver")
        label_map[int(value)] = name
    if args.register and any(slices is not None for _, slices in others):
        raise ConfigError("--register takes each reference's slices from the reference registered onto the query: "
                          "give --support IMAGE LABELS without slices")
    query = load_volume(args.query, series_uid=args.series_uid)
    entries, names = [], []
    for (image, labels), slices in others:
        reference = load_volume(image)
        reference_labels = load_labels(labels, reference)
        if args.register:
            reference, reference_labels = register_reference(query, reference, reference_labels)
        entries.append(SupportEntry(reference_labels, volume=reference, slices=slices))
        names.append(image)
    for (labels,), slices in drawn:
        entries.append(SupportEntry(load_labels(labels, query), slices=slices, from_query=True))
        names.append(f"{labels} (on the query)")
    support = SupportSet.from_volumes(entries, k=args.k, labels=label_map or None, names=names, parts=args.parts)
    support = support.for_query(query)  # refusals and resampling before the model loads

    model = load_model(args.model, image_size=args.image_size, device=args.device, seed=args.seed)
    with tqdm_progress(f"reference prompting ({args.mode})", "step", disable=args.no_progress) as progress:
        labels = segment_with_references(
            query, support, mode=args.mode, model=model, preset=args.preset, top_k=args.top_k, threshold=args.threshold,
            min_spacing=args.min_spacing, include_supports=args.include_supports, placement=args.placement,
            gate_margin=args.gate_margin, reject_rivals=args.reject_rivals, reprompt=args.reprompt,
            offload_state_to_cpu=args.offload_state_to_cpu, progress=progress,
        )
    if args.register:
        labels.provenance["support"]["registered_onto_query"] = True
    labels, _ = postprocess(args, labels, anchors=anchor_prompts(labels))
    print(f"wrote {save_labels(labels, query, args.out, format=args.dicom_format)}")
    label_of = labels_of_objects(labels.provenance)
    for value, name in labels.label_names.items():
        details = {int(obj): d for obj, d in labels.provenance["labels"].items() if label_of[int(obj)] == value}
        voxels = int((labels.array == value).sum())
        print(f"  {value} {name}: {voxels} voxels, score {labels.scores[value]:.3f}"
              + "".join(_selection_note(obj, detail, len(details) > 1) for obj, detail in details.items()))
    if args.qc:
        write_json(Path(args.qc), {"scores": labels.scores, "provenance": labels.provenance})
        print(f"wrote {args.qc}")
    print_model_note(labels)
