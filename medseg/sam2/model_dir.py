"""Trained SAM2 model directories: what ``medseg.training.sam2.train`` writes and ``load_model(DIR)`` reads.

A model directory is self-describing, so a model found on disk months later says what it is
(the layout every engine shares: ``medseg.io.model_dir``)::

    model.json   architecture (SAM2 config + Hydra overrides + image size), start weights and
                 their SHA-256, training settings, steps, loss curve, validation history,
                 cohort name and case ids, weights SHA-256, library versions, and the plain
                 statement "trained on cohort X only"
    weights.pt   the network's state dict (``torch.save``; read with ``weights_only=True``)

Architectures are named (``ARCHITECTURES``): ``sam2.1-tiny`` is Meta's Hiera-T config, the
one registry checkpoints (SAM 2.1 tiny, MedSAM2) fit; ``hiera-micro`` is the same model code
with a much smaller image encoder and a 2-layer memory attention, which trains from random
initialisation on 2 CPU cores in minutes. The overrides are stored in ``model.json`` itself,
so a directory rebuilds even if the names here change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg.errors import WeightsError
from medseg.io import model_dir
from medseg.io.model_dir import MODEL_JSON
from medseg.runtime import resolve_device
from medseg.sam2.network import Sam2Model, build, load_state

log = logging.getLogger(__name__)

FORMAT = "medseg-sam2-model"
PACKAGES = ("medseg", "sam2", "torch")  # whose versions model.json records
TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@dataclass(frozen=True)
class Architecture:
    """A SAM2 network shape: Meta's config plus Hydra overrides, and the input size.

    ``prompt_prior``: whether the network takes clicks and boxes also as dense masks
    (``medseg.sam2.prompt_prior``). ``single_mask_tracking``: on a slice it tracks (one without a
    prompt of its own), the mask decoder gives its single-mask output (token 0) instead of three
    candidates of which its IoU head picks one, as SAM 2.1 does (``multimask_output_for_tracking``).
    The IoU head of a small network mis-ranks the candidates on tracked slices, so a single click
    stops propagating (README, "The base model"); Meta's checkpoints keep their own setting.
    """

    name: str
    config: str
    overrides: tuple[str, ...]
    image_size: int
    prompt_prior: bool = False
    single_mask_tracking: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "overrides": list(self.overrides),
                "image_size": self.image_size, "prompt_prior": self.prompt_prior,
                "single_mask_tracking": self.single_mask_tracking}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        return cls(str(data["name"]), str(data["config"]), tuple(data["overrides"]), int(data["image_size"]),
                   bool(data.get("prompt_prior", False)), bool(data.get("single_mask_tracking", False)))


ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "sam2.1-tiny": (),
    # Hiera with 48 channels and 5 blocks (Hiera-T: 96 and 12), memory attention with 2
    # layers of feed-forward width 512 (4 of 2048): the same modules, about 1/4 of the parameters and far less compute.
    "hiera-micro": (
        "++model.image_encoder.trunk.embed_dim=48",
        "++model.image_encoder.trunk.stages=[1,1,2,1]",
        "++model.image_encoder.trunk.global_att_blocks=[3]",
        "++model.image_encoder.neck.backbone_channel_list=[384,192,96,48]",
        "++model.memory_attention.num_layers=2",
        "++model.memory_attention.layer.dim_feedforward=512",
    ),
}


def architecture(name: str, image_size: int, *, prompt_prior: bool = False,
                 single_mask_tracking: bool = False) -> Architecture:
    """The named architecture at ``image_size`` (``WeightsError`` naming the known ones otherwise)."""
    if name not in ARCHITECTURES:
        raise WeightsError(f"unknown SAM2 architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return Architecture(name, TINY_CONFIG, ARCHITECTURES[name], image_size, prompt_prior, single_mask_tracking)


def build_network(arch: Architecture) -> torch.nn.Module:
    """A randomly initialised network of ``arch`` (the inference class; ``.train()`` to train it)."""
    net = build(arch.config, arch.image_size, arch.overrides)
    net.prompt_prior = arch.prompt_prior
    if arch.single_mask_tracking:
        net.multimask_output_for_tracking = False  # SAM2Base._use_multimask: candidates only on prompted slices
    return net


def load_weights(net: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str, arch: Architecture) -> None:
    """Load ``state`` into ``net``, or say plainly that it belongs to another architecture."""
    load_state(net, state, source=source, network=f"SAM2 architecture {arch.name!r}",
               remedy="it is another model or another SAM2 size: choose the architecture it was trained with")


def write_model_dir(directory: Path, net: torch.nn.Module, description: dict[str, Any]) -> Path:
    """Write ``weights.pt`` then ``model.json`` (the description plus the weights' SHA-256), each atomically:
    a directory that has a ``model.json`` is complete."""
    model_dir.write_model_dir(directory, net.state_dict(), description, format=FORMAT, packages=PACKAGES)
    return directory


def read_model_json(directory: str | Path) -> dict[str, Any] | None:
    """The description of a finished model directory, or None when it has none yet."""
    return model_dir.read_model_json(directory, formats=(FORMAT,), what="medseg SAM2")


def load_model_dir(directory: str | Path, *, image_size: int | None = None, device: str | torch.device | None = None,
                   name: str | None = None, licence: str | None = None) -> Sam2Model:
    """A ``Sam2Model`` from a trained model directory (``medseg.sam2.load_model(DIR)`` lands here).

    ``image_size`` other than the trained one is refused: the model has only seen that size.
    ``name``: what reports call the model (a registry name for a shipped one; by default the
    directory and what it was trained on); ``licence``: the weights' licence where one is known
    (a shipped model's), else the directory's statement of what it was trained on.
    """
    directory = Path(directory)
    info = read_model_json(directory)
    if info is None:
        raise WeightsError(f"{directory} is a directory without {MODEL_JSON}: not a trained SAM2 model "
                           f"(or its training has not finished; run `medseg sam2 train` again to resume it)")
    arch = Architecture.from_dict(info["architecture"])
    if image_size is not None and int(image_size) != arch.image_size:
        raise WeightsError(f"model {directory} was trained at image size {arch.image_size}, not {image_size}; "
                           f"leave the image size unset")
    device = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        net = build_network(arch)
    weights = directory / info["weights"]
    load_weights(net, model_dir.read_model_weights(directory, info, what="trained SAM2 weights"),
                 source=str(weights), arch=arch)
    net = net.to(device).eval()
    log.info("SAM2 model %s: %s", directory, info["statement"])
    return Sam2Model(net, name or describe(directory, info), arch.image_size, device, False, weights,
                     info["weights_sha256"], licence or info["statement"], None, preset=info.get("preset"),
                     undertrained=bool(info.get("undertrained")))


def is_model_dir_weights(path: str | Path) -> bool:
    """Whether ``path`` is the weights file of a model directory (a ``model.json`` beside it names it)."""
    path = Path(path)
    if not path.is_file() or not (path.parent / MODEL_JSON).is_file():
        return False
    info = read_model_json(path.parent)
    return info is not None and info.get("weights") == path.name


def describe(directory: str | Path, info: dict[str, Any]) -> str:
    """``"<dir> (trained on <cohort> (N steps))"``: the name reports and provenance show."""
    return f"{directory} (trained on {info['cohort']['name']} ({info['steps']} steps))"
