"""Load a SAM2 video model by registry name, checkpoint path or ``"untrained"``; pick the device.

The architecture is Meta's (``sam2`` package, Hydra configs shipped with it); only the class
is swapped for ``medseg.sam2.meta_internals.VolumeVideoPredictor``, which reads frames lazily
through a feature cache. Checkpoints come from ``medseg.weights`` (download, verification) and
are read by ``medseg.runtime.read_checkpoint`` (``weights_only=True``).

Devices: CUDA runs under bfloat16 autocast (as Meta's demos do), Apple MPS and CPU in
float32. ``Sam2Model.inference()`` is the context every model call runs in.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

import sam2  # noqa: F401  (registers the package's Hydra config module)
from medseg.errors import InputError, WeightsError
from medseg.runtime import Progress, ShouldStop, read_checkpoint, resolve_device, sha256_file
from medseg.sam2.meta_internals import VolumeVideoPredictor  # checks the sam2 version on import
from medseg.weights import REGISTRY, ModelSpec, fetch_checkpoint, get_spec, verify_checkpoint

log = logging.getLogger(__name__)

_PREDICTOR_CLASS = f"{VolumeVideoPredictor.__module__}.{VolumeVideoPredictor.__qualname__}"


@dataclass(frozen=True, eq=False)
class Sam2Model:
    """A loaded SAM2 video model and what is needed to reproduce it.

    ``net`` is a ``VolumeVideoPredictor`` (a ``SAM2VideoPredictor``); engine code calls it
    inside ``inference()``.
    """

    net: torch.nn.Module
    name: str
    image_size: int
    device: torch.device
    untrained: bool
    checkpoint: Path | None
    checkpoint_sha256: str | None
    licence: str
    seed: int | None
    config: str = ""

    def inference(self) -> contextlib.AbstractContextManager:
        """``torch.inference_mode`` plus bfloat16 autocast on CUDA."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.device.type == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        return stack

    @property
    def weights_id(self) -> str | None:
        """What identifies the weights: the checkpoint's SHA-256, or ``untrained:<seed>:<config>``.

        None for weights that exist only in memory (a model being trained or validated):
        nothing names them, so no embedding store may hold their features.
        """
        if self.checkpoint_sha256:
            return self.checkpoint_sha256
        return f"untrained:{self.seed}:{self.config}" if self.seed is not None else None

    def provenance(self) -> dict:
        return {
            "model": self.name,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "checkpoint_sha256": self.checkpoint_sha256,
            "image_size": self.image_size,
            "licence": self.licence,
            "untrained": self.untrained,
            "seed": self.seed,
            "device": str(self.device),
        }


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
        Model input size, a multiple of 32. Default: the size the weights were trained at (1024 SAM 2.1, 512 MedSAM2, 128 untrained).
    device
        ``"cuda"``, ``"mps"``, ``"cpu"``; the best available by default (``medseg.runtime.resolve_device``).
    seed
        Seed of the random initialisation of ``untrained`` (ignored otherwise).
    config
        SAM2 config for a checkpoint given by path (default: the Hiera-T SAM 2.1 config).
    progress, should_stop
        Byte progress and cancellation of a checkpoint download (``medseg.runtime``).
    """
    if Path(model).is_dir():  # a model directory written by medseg.sam2.train
        from medseg.sam2.model_dir import load_model_dir

        return load_model_dir(model, image_size=image_size, device=device)
    device = resolve_device(device)
    path = Path(model) if not isinstance(model, str) or model not in REGISTRY else None
    if path is not None:
        if not path.is_file():
            raise WeightsError(
                f"model {str(model)!r} is neither a checkpoint file nor a known name; known names: {sorted(REGISTRY)}"
            )
        spec = ModelSpec(path.stem, config or "configs/sam2.1/sam2.1_hiera_t.yaml", 1024, path.name, None, "see the checkpoint's source", f"checkpoint {path}")
        checkpoint, sha = path, sha256_file(path)
    else:
        spec = get_spec(str(model))
        checkpoint = None if spec.untrained else fetch_checkpoint(spec, progress=progress, should_stop=should_stop)
        sha = None if checkpoint is None else verify_checkpoint(checkpoint, spec)
    size = int(image_size or spec.image_size)
    if size % 32 or size < 64:
        raise InputError(f"image_size must be a multiple of 32 and at least 64, got {size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _build(spec.config, size)
    if checkpoint is not None:
        _load_weights(net, checkpoint, spec)
    net = net.to(device).eval()
    untrained = checkpoint is None
    if untrained:
        log.warning("model %r has RANDOM weights: its masks are meaningless (tests and smoke runs only)", spec.name)
    else:
        log.info("model %s (%s), image size %d on %s; licence: %s", spec.name, checkpoint, size, device, spec.licence)
    return Sam2Model(net, spec.name if path is None else str(path), size, device, untrained, checkpoint, sha,
                     spec.licence, seed if untrained else None, spec.config)


def _build(config: str, image_size: int, architecture: tuple[str, ...] = ()) -> torch.nn.Module:
    """Instantiate the config's architecture with Meta's video-inference settings.

    ``architecture``: Hydra overrides of the config (a smaller Hiera, see ``medseg.sam2.model_dir``).
    """
    overrides = [*architecture,
        f"++model._target_={_PREDICTOR_CLASS}",
        f"++model.image_size={image_size}",
        # the post-processing build_sam2_video_predictor applies
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
        "++model.binarize_mask_from_pts_for_mem_enc=true",
        # hole filling needs sam2's optional CUDA extension; without it sam2 warns on every frame
        f"++model.fill_hole_area={8 if importlib.util.find_spec('sam2._C') else 0}",
    ]
    try:
        cfg = compose(config_name=config, overrides=overrides)
    except Exception as error:  # Hydra raises its own MissingConfigException and friends
        raise WeightsError(f"cannot read SAM2 config {config!r}: {error}") from error
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True)


def _load_weights(net: torch.nn.Module, checkpoint: Path, spec: ModelSpec) -> None:
    state = read_checkpoint(checkpoint)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        raise WeightsError(
            f"checkpoint {checkpoint} does not fit the {spec.config} architecture of {spec.name!r}: "
            f"{len(missing)} missing weights [{head(missing)}], {len(unexpected)} unexpected [{head(unexpected)}], "
            f"{len(mismatched)} of another shape [{head(mismatched)}]. It is another model or another SAM2 size: "
            f"pick the matching model name or config"
        )
    net.load_state_dict(state)
