"""The results folder: layout, and reading / writing its JSON files atomically.

Layout::

    RESULTS/
      pipeline.json            the resolved pipeline (defaults filled in) and code version
      <method>/
        method.json            settings, fingerprint, model name + checksum, untrained flag
        model/                 a model trained by the run (Mask R-CNN), resumable
        <case>/
          labels.nii.gz        the predicted label map, on the image's geometry
          instances.nii.gz     the method's own 3D instances (when it has them, e.g. Mask R-CNN or
                               ``postprocess: objects``)
          raw_labels.nii.gz    the method's output before ``postprocess: objects`` (labels.nii.gz
                               then holds the objects)
          prompts.json         the prompt log: the exact prompts / reference slices used
          result.json          written last: status, metrics, scores, provenance, error
      report.md  report.html  metrics.csv  metrics.json  plots/

A case is finished when its ``result.json`` says ``"status": "ok"`` under the current
fingerprint. JSON holds no NaN or infinity: NaN is written as null and an infinite distance
as the string "inf".
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.io.files import atomic_output

RESULT = "result.json"
METHOD = "method.json"
PIPELINE = "pipeline.json"
LABELS = "labels.nii.gz"
INSTANCES = "instances.nii.gz"
RAW_LABELS = "raw_labels.nii.gz"
PROMPTS = "prompts.json"
FORMAT = "medseg-result/1"


def _encode(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return _encode(value.item())
    return value


def as_float(value: Any) -> float:
    """A metric read back from JSON: null -> NaN, "inf" -> infinity."""
    if value is None:
        return float("nan")
    return float(value)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON, atomically (the file is complete or absent)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(_encode(data), indent=1, allow_nan=False), encoding="utf-8")


def read_json(path: Path) -> Any:
    """The JSON at ``path``; a truncated or corrupt file is an ``InputError`` naming file, line and column."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}:{error.lineno}:{error.colno}: damaged JSON ({error.msg}): the file was cut short or "
                         "corrupted; delete it (a re-run of `medseg run` redoes that case)") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: damaged JSON (not UTF-8 text); delete it (a re-run of `medseg run` redoes "
                         "that case)") from None


def code_version() -> dict[str, Any]:
    """medseg's version and, when it runs from a git checkout, the commit and whether it was modified."""
    import medseg

    version: dict[str, Any] = {"medseg": medseg.__version__, "git_commit": None, "git_dirty": None}
    root = Path(medseg.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return version
    try:
        run = lambda *args: subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                           timeout=10, check=True).stdout
        version["git_commit"] = run("rev-parse", "HEAD").strip()
        version["git_dirty"] = bool(run("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def case_dirs(method_dir: Path) -> list[Path]:
    """The case folders of a method that hold a result, sorted by name."""
    return sorted(p.parent for p in method_dir.glob(f"*/{RESULT}") if not p.parent.name.startswith("."))


def method_dirs(results: Path) -> list[Path]:
    return sorted(p.parent for p in Path(results).glob(f"*/{METHOD}"))


def relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)
