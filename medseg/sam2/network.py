"""The SAM2 network medseg runs: building it from Meta's configs, loading weights, ``Sam2Model``.

The architecture is Meta's (``sam2`` package, Hydra configs shipped with it); only the class
is swapped for ``medseg.sam2.meta_internals.VolumeVideoPredictor``, which reads frames lazily
through a feature cache. ``medseg.sam2.model`` (registry names, checkpoint files) and
``medseg.sam2.model_dir`` (trained model directories) both build here.

Devices: CUDA runs under bfloat16 autocast (as Meta's demos do), Apple MPS and CPU in
float32. ``Sam2Model.inference()`` is the context every model call runs in.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

import sam2  # noqa: F401  (registers the package's Hydra config module)
from medseg.errors import WeightsError
from medseg.sam2.meta_internals import VolumeVideoPredictor  # checks the sam2 version on import

_PREDICTOR_CLASS = f"{VolumeVideoPredictor.__module__}.{VolumeVideoPredictor.__qualname__}"


@dataclass(frozen=True, eq=False)
class Sam2Model:
    """A loaded SAM2 video model and what is needed to reproduce it.

    ``net`` is a ``VolumeVideoPredictor`` (a ``SAM2VideoPredictor``); engine code calls it
    inside ``inference()``. ``preset``: the intensity preset a trained model directory was
    trained with (``medseg.preprocess.choose_preset`` uses it unless the caller gives one); None
    for registry and checkpoint weights. ``undertrained``: trained from random weights for too
    few steps (``model.json``), so its masks are a smoke test.
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
    preset: str | None = None
    undertrained: bool = False

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
            "undertrained": self.undertrained,
            "seed": self.seed,
            "device": str(self.device),
        }


def build(config: str, image_size: int, architecture: tuple[str, ...] = ()) -> torch.nn.Module:
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


def load_state(net: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str, network: str, remedy: str) -> None:
    """Load ``state`` into ``net`` (the ``network`` architecture), or say plainly which weights do not fit
    and what to do (``remedy``)."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        raise WeightsError(
            f"{source} does not fit the {network}: {len(missing)} weights missing [{head(missing)}], "
            f"{len(unexpected)} unexpected [{head(unexpected)}], {len(mismatched)} of another shape "
            f"[{head(mismatched)}]; {remedy}"
        )
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
