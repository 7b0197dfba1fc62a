"""Model directories and training checkpoints: how every engine's trained model lies on disk.

A model directory is self-describing, whichever engine made it (SAM2: ``medseg.sam2.model_dir``,
Mask R-CNN: ``medseg.maskrcnn.store``)::

    model.json   {"format": <the engine's format>, ...the engine's description...,
                  "weights": "weights.pt", "weights_sha256": <SHA-256>, "versions": {...}}
    weights.pt   the network's state dict (``torch.save``; read with ``weights_only=True``)

``weights.pt`` is written first and ``model.json`` last, each atomically
(``medseg.io.files.atomic_output``): a directory with a ``model.json`` is complete. Mask R-CNN
directories of format ``medseg-maskrcnn/1`` kept the weights as ``{"weights": {"file", "sha256"}}``;
``read_model_json`` reads them as the current layout.

A training run's resumable state (``write_checkpoint``) is written atomically as well, so an
interruption never leaves a half-written checkpoint in place of a good one; it is read back with
``medseg.runtime.read_training_state``.
"""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from medseg.errors import WeightsError
from medseg.io.files import atomic_output
from medseg.runtime import read_checkpoint, sha256_file

MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"
_LEGACY_FORMATS = {"medseg-maskrcnn/1"}  # {"weights": {"file", "sha256"}}


def write_model_dir(directory: str | Path, state: dict[str, torch.Tensor], description: dict[str, Any], *, format: str,
                    packages: tuple[str, ...] = ("medseg", "torch")) -> dict[str, Any]:
    """Write ``state`` as ``weights.pt``, then ``model.json``: ``description`` with the format, the
    weights' file name and SHA-256, and the versions of ``packages`` (unless it has its own
    ``versions``: a re-export keeps those of the run that trained the weights). Returns what
    ``model.json`` holds."""
    directory = Path(directory)
    with atomic_output(directory / WEIGHTS) as tmp:
        _save(tmp, {k: v.detach().cpu() for k, v in state.items()})
        sha256 = sha256_file(tmp)
    info = {"format": format, **description, "weights": WEIGHTS, "weights_sha256": sha256}
    info.setdefault("versions", versions(packages))
    with atomic_output(directory / MODEL_JSON) as tmp:
        tmp.write_text(json.dumps(info, indent=1, allow_nan=False), encoding="utf-8")
    return info


def read_model_json(directory: str | Path, *, formats: tuple[str, ...], what: str) -> dict[str, Any] | None:
    """The ``model.json`` of ``directory`` (None when it has none: no model, or training not finished).

    ``WeightsError`` naming the file when it is damaged or of a format not in ``formats``
    (``what`` says which kind of model was expected).
    """
    path = Path(directory) / MODEL_JSON
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"cannot read {path} ({error}); the model directory is damaged: train it again") from None
    if not isinstance(info, dict) or info.get("format") not in formats:
        found = info.get("format") if isinstance(info, dict) else None
        raise WeightsError(f"{path} is not a {what} model description (format {found!r}, expected one of "
                           f"{list(formats)})")
    if info["format"] in _LEGACY_FORMATS and isinstance(info.get("weights"), dict):
        info = {**info, "weights": info["weights"]["file"], "weights_sha256": info["weights"]["sha256"]}
    return info


def read_model_weights(directory: str | Path, info: dict[str, Any], *, what: str) -> dict[str, torch.Tensor]:
    """The state dict ``info`` (``read_model_json``) names, checked against its SHA-256."""
    path = Path(directory) / info["weights"]
    if not path.is_file():
        raise WeightsError(f"{path} is missing; the model directory is incomplete (copy {path.name} with {MODEL_JSON})")
    return read_checkpoint(path, sha256=info["weights_sha256"], what=what)


def write_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save a training run's resumable state (or a snapshot of its weights) atomically."""
    with atomic_output(path) as tmp:
        _save(tmp, state)


def _save(path: Path, obj: Any) -> None:
    """``torch.save`` through a file object: given a path, torch names the archive's records after the
    file, and a temporary file's random name would make the same weights differ byte for byte."""
    with open(path, "wb") as file:
        torch.save(obj, file)


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Versions of Python and of ``packages`` (what produced the weights)."""
    found = {"python": platform.python_version()}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found
