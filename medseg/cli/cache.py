"""``medseg precompute`` and ``medseg cache``: the SAM2 embedding store (``medseg.sam2.embeddings``)."""

from __future__ import annotations

import argparse

from medseg.cli import values


def add_precompute(sub: argparse._SubParsersAction) -> None:
    from medseg.cli.segment import MODEL_DEFAULT, add_sam2_runtime_options, default_model_option

    p = sub.add_parser(
        "precompute",
        help="encode every slice of a volume with SAM2's image encoder into the embedding store",
        description="Run it once per volume (e.g. while reading the scan): later segment runs, napari sessions "
        "and pipeline methods with the same volume, preset, model and image size skip the image encoder.",
    )
    p.add_argument("volume", help="DICOM folder or file, NIfTI, NRRD or MHA")
    p.add_argument("--model", type=default_model_option, default="",
                   help=f"registry name, model directory or checkpoint path (as for segment) ({MODEL_DEFAULT})")
    p.add_argument("--preset", type=values.preset, help="intensity preset, as for segment (default: as for segment)")
    p.add_argument("--series-uid", help="pick this series when the DICOM folder holds several")
    add_sam2_runtime_options(p)
    p.set_defaults(run=_run_precompute)


def add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="show or empty the SAM2 embedding store ($MEDSEG_HOME/embeddings)")
    p.add_argument("action", choices=["info", "clear"],
                   help="info: what is stored; clear: remove medseg's stored embeddings")
    p.set_defaults(run=_run_cache)


def _store():
    from medseg.errors import ConfigError
    from medseg.sam2.embeddings import EmbeddingStore

    store = EmbeddingStore.default()
    if store is None:
        raise ConfigError("the embedding store is off (MEDSEG_EMBEDDINGS=off); unset it to use the store")
    return store


def _run_precompute(args: argparse.Namespace) -> None:
    from medseg.cli.progress import tqdm_progress
    from medseg.cli.segment import load_sam2_model
    from medseg.io import load_volume
    from medseg.sam2 import Sam2Session

    store = _store()
    volume = load_volume(args.volume, series_uid=args.series_uid)
    session = Sam2Session(load_sam2_model(args), volume, preset=args.preset, store=store,
                          offload_state_to_cpu=args.offload_state_to_cpu)
    with tqdm_progress("SAM2 image encoder", "slice", disable=args.no_progress) as progress:
        encoded = session.precompute(progress=progress)
    print(f"{encoded} of {volume.shape[0]} slices encoded now (the rest were stored already) in {store.root}")


def _run_cache(args: argparse.Namespace) -> None:
    store = _store()
    if args.action == "clear":
        print(f"removed {store.clear() / 2**20:.1f} MB of embeddings from {store.root}")
        return
    entries = store.entries()
    total = sum(e.bytes for e in entries)
    print(f"{store.root}: {len(entries)} volume(s), {total / 2**20:.1f} MB of {store.max_bytes / 2**30:.1f} GB "
          f"(least recently used first)")
    for e in entries:
        d = e.description
        print(f"  {e.path.name[:16]}…  {e.slices} slices  {e.bytes / 2**20:.1f} MB  model {d.get('model')} "
              f"size {d.get('image_size')} on {d.get('device')}, {d.get('dtype', 'float16')}")
