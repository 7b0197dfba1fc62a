"""``medseg fewshot``: reference prompting (RevSAM2-style) from annotated slices of other volumes."""

from __future__ import annotations

import argparse
import sys

from medseg.cli.segment import add_sam2_runtime_options


def add_fewshot(sub: argparse._SubParsersAction) -> None:
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
    add_sam2_runtime_options(p)
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
    from medseg.outputs import check_outputs
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
    check_outputs({"--out": args.out, "--qc": args.qc}, inputs=[args.query, args.model, *(p for s in specs for p in s[:2])])
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
