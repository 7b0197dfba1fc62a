"""Load a SAM2 video model by registry name, checkpoint path or ``"untrained"``; pick the device.

The architecture is Meta's (``sam2`` package, Hydra configs shipped with it); only the class
is swapped for ``medseg.sam2.meta_internals.VolumeVideoPredictor``, which reads frames lazily
through a feature cache. Checkpoints come from ``medseg.weights`` (download, verification) and
are read by ``medseg.runtime.read_checkpoint`` (``weights_only=True``).

Devices: CUDA runs under bfloat16 autocast (as Meta's demos do), Apple MPS and CPU in
float32. ``Sam2Model.inference()`` is the context every model call runs in.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from medseg.errors import InputError, WeightsError
from medseg.runtime import Progress, ShouldStop, read_checkpoint, resolve_device, sha256_file
from medseg.sam2.model_dir import is_model_dir_weights, load_model_dir
from medseg.sam2.network import Sam2Model, build, load_state
from medseg.weights import REGISTRY, ModelSpec, fetch_checkpoint, get_spec, verify_checkpoint

log = logging.getLogger(__name__)


def load_model(
    model: str | Path = "sam2.1-tiny",
    *,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    config: str | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Sam2Model:
    """Build a SAM2 video model.

    Parameters
    ----------
    model
        A registry name (``medseg.weights.REGISTRY``: ``sam2.1-tiny``, ``sam2.1-small``,
        ``sam2.1-base-plus``, ``sam2.1-large``, ``medsam2``, ``untrained``) or the path of a
        checkpoint file. A registry checkpoint is downloaded into the cache on first use. A
        path is taken as Hiera-T at image size 1024 unless ``config`` / ``image_size`` say
        otherwise (a MedSAM2 file given by path wants ``image_size=512``).
    image_size
        Model input size, a multiple of 32. Default: the size the weights were trained at (1024
        SAM 2.1, 512 MedSAM2, 128 untrained).
    device
        ``"cuda"``, ``"mps"``, ``"cpu"``; the best available by default (``medseg.runtime.resolve_device``).
    seed
        Seed of the random initialisation of ``untrained`` (ignored otherwise).
    config
        SAM2 config for a checkpoint given by path (default: the Hiera-T SAM 2.1 config).
    progress, should_stop
        Byte progress and cancellation of a checkpoint download (``medseg.runtime``).
    """
    if Path(model).is_dir():  # a model directory written by medseg.training.sam2.train
        return load_model_dir(model, image_size=image_size, device=device)
    if is_model_dir_weights(model):  # its weights file: the directory says what they are
        return load_model_dir(Path(model).parent, image_size=image_size, device=device)
    device = resolve_device(device)
    path = Path(model) if not isinstance(model, str) or model not in REGISTRY else None
    if path is not None:
        if not path.is_file():
            raise WeightsError(
                f"model {str(model)!r} is neither a checkpoint file nor a known name; known names: {sorted(REGISTRY)}"
            )
        spec = ModelSpec(path.stem, config or "configs/sam2.1/sam2.1_hiera_t.yaml", 1024, path.name, None,
                         "see the checkpoint's source", f"checkpoint {path}")
        checkpoint, sha = path, sha256_file(path)
    else:
        spec = get_spec(str(model))
        if spec.model_dir is not None:  # shipped with medseg: a model directory, its weights pinned in the registry
            fetch_checkpoint(spec)
            return load_model_dir(spec.model_dir, image_size=image_size, device=device, name=spec.name,
                                  licence=spec.licence)
        checkpoint = None if spec.untrained else fetch_checkpoint(spec, progress=progress, should_stop=should_stop)
        sha = None if checkpoint is None else verify_checkpoint(checkpoint, spec)
    size = int(image_size or spec.image_size)
    if size % 32 or size < 64:
        raise InputError(f"image_size must be a multiple of 32 and at least 64, got {size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build(spec.config, size)
    if checkpoint is not None:
        load_state(net, read_checkpoint(checkpoint), source=f"checkpoint {checkpoint}",
                   network=f"{spec.config} architecture",
                   remedy="it is another model or another SAM2 size: pick the matching model name or config "
                          "(for a model trained by medseg, pass its directory)")
    net = net.to(device).eval()
    untrained = checkpoint is None
    if untrained:
        log.warning("model %r has RANDOM weights: its masks are meaningless (tests and smoke runs only)", spec.name)
    else:
        log.info("model %s (%s), image size %d on %s; licence: %s", spec.name, checkpoint, size, device, spec.licence)
    return Sam2Model(net, spec.name if path is None else str(path), size, device, untrained, checkpoint, sha,
                     spec.licence, seed if untrained else None, spec.config)
