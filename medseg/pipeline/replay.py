"""Re-run one finished case from its log and check that the labels come out the same.

``result.json`` holds the method's settings and prepared state (model name and checksum,
trained model directory, preset), the seed and the cohort; ``prompts.json`` the exact prompts.
The replay feeds exactly those again with the run's torch thread count (floating-point sums,
and so masks near the threshold, depend on it), writes its own case folder (default
``<case>/replay``) and compares the two label maps voxel by voxel. Labels are reproduced
exactly on the same kind of hardware (CPU vs GPU, and GPU models, sum differently). The model loaders verify
checksums on load; a different checksum in the new provenance is reported as an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputError, WeightsError
from medseg.io import load_labels, read_geometry
from medseg.manifest import load_manifest
from medseg.pipeline import results as rs
from medseg.pipeline.config import MetricSettings
from medseg.pipeline.case import CaseTask, Worker, setup_from_dict
from medseg.pipeline.methods import method_class
from medseg.prompt_simulation import PromptSettings
from medseg.runtime import torch_threads

log = logging.getLogger(__name__)

_CHECKSUM_KEYS = ("checkpoint_sha256", "weights_sha256")


@dataclass(frozen=True)
class ReplayResult:
    case_dir: Path
    replay_dir: Path
    differing_voxels: int
    total_voxels: int

    @property
    def identical(self) -> bool:
        return self.differing_voxels == 0


def replay_case(case_dir: str | Path, *, out: str | Path | None = None) -> ReplayResult:
    """Re-run ``RESULTS/<method>/<case>`` with its logged prompts; compare the labels."""
    case_dir = Path(case_dir).resolve()
    if not (case_dir / rs.RESULT).is_file():
        raise InputError(f"{case_dir}: no {rs.RESULT}; give a case folder of a results folder "
                         "(RESULTS/<method>/<case>)")
    result = rs.read_json(case_dir / rs.RESULT)
    if result.get("status") != "ok":
        raise InputError(f"{case_dir}: this case failed ({result.get('error', {}).get('message')}); there are "
                         "no labels to reproduce")
    current = rs.code_version()
    if current != result["code"]:
        log.warning("code version differs from the run's: now %s, then %s", current, result["code"])
    replay_dir = Path(out).resolve() if out is not None else case_dir / "replay"
    case = load_manifest(result["cohort"]).case(result["case"])
    task = CaseTask(
        setup=setup_from_dict(result["setup"]), method=method_class(result["type"]), case=case,
        cohort=Path(result["cohort"]), case_dir=replay_dir, prompts=PromptSettings(**result["prompt_policy"]),
        metrics=MetricSettings(**result["metrics_settings"]), fingerprint=result["fingerprint"], code=current,
        replay_prompts=rs.read_json(case_dir / rs.PROMPTS)["prompts"],
    )
    with torch_threads(result.get("torch_threads")):  # the same float summation order as the run
        replayed = Worker().run(task)
    if replayed["status"] != "ok":
        error = replayed["error"]
        raise InputError(f"replay of {case_dir} failed: {error['type']}: {error['message']}")
    for key in _CHECKSUM_KEYS:
        before, after = result["provenance"].get(key), replayed["provenance"].get(key)
        if before != after:
            raise WeightsError(f"replay of {case_dir} used other weights: {key} {after} instead of {before}")
    geometry = read_geometry(case_dir / rs.LABELS)
    original = load_labels(case_dir / rs.LABELS, geometry).array
    again = load_labels(replay_dir / rs.LABELS, geometry).array
    return ReplayResult(case_dir, replay_dir, int(np.count_nonzero(original != again)), int(original.size))
