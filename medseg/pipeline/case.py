"""One (method, case): the task every executor ships, the worker that runs it, its record.

``Worker`` is the worker-side object, one per worker process (or one for an in-process
run): it builds and loads a method once and keeps it while the tasks it gets share that
method's settings, so each worker holds one model. ``Worker.run`` loads the case, gives
the method what it may see (the volume, and the prompt policy's prompts when it takes
prompts; never the truth, except to a ``ReferenceMethod``), writes the case folder and
scores it with ``medseg.metrics.evaluate``.

A case folder is built under a hidden ``.<case>.partial`` folder and moved into place
whole, ``result.json`` included: a case folder is complete or absent, whatever stops the
worker (an error, Ctrl-C, a kill). A failure inside a case is recorded in its
``result.json`` (type, one-line message, traceback, whether a retry could help); a worker
that dies or overruns its time is recorded by the executor through ``lost_result``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medseg.errors import InputError, MedsegError, ServerUnreachable, user_message
from medseg.manifest import Case
from medseg.metrics import evaluate
from medseg.pipeline import results as rs
from medseg.pipeline.config import MetricSettings, fingerprint
from medseg.pipeline.methods import Method, MethodSetup, ReferenceMethod, Segmentation, method_class
from medseg.prompt_simulation import PromptPolicy, PromptSettings
from medseg.prompts import Prompts
from medseg.runtime import seeded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseTask:
    """One (method, case) to run; picklable, so any executor can ship it to a worker.

    ``method`` is the plug-in class itself (looked up in ``METHODS`` by the main process),
    so a worker needs no registry.
    """

    setup: MethodSetup
    method: type[Method]
    case: Case
    cohort: Path  # the manifest, so that a replay finds the case again
    case_dir: Path
    prompts: PromptSettings
    metrics: MetricSettings
    fingerprint: str
    code: dict[str, Any]
    replay_prompts: dict | None = None  # the logged prompts, when replaying


def setup_dict(setup: MethodSetup) -> dict[str, Any]:
    data = dataclasses.asdict(setup)
    data["method_dir"] = str(setup.method_dir)
    return data


def setup_from_dict(data: dict[str, Any]) -> MethodSetup:
    options = method_class(data["kind"]).Options(**data["options"])
    return MethodSetup(
        name=data["name"], kind=data["kind"], options=options, labels={int(k): v for k, v in data["labels"].items()},
        seed=int(data["seed"]), reference_slices=int(data["reference_slices"]), method_dir=Path(data["method_dir"]),
        state=dict(data["state"]), postprocess=data.get("postprocess", "none"),
    )


class Worker:
    """The worker-side state of an executor: one built, loaded method at a time."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._method: Method | None = None
        self._model: Any = None

    def method(self, task: CaseTask) -> tuple[Method, Any]:
        """The method of ``task`` and its loaded model, built on first use of these settings."""
        key = fingerprint(setup_dict(task.setup))
        if key != self._key:
            self._method = self._model = self._key = None  # free the previous model before loading the next
            method = task.method(task.setup)
            self._model = None if isinstance(method, ReferenceMethod) else method.load()
            self._method, self._key = method, key
        return self._method, self._model

    def run(self, task: CaseTask) -> dict[str, Any]:
        """Segment and score one case; write its folder; return its ``result.json`` content."""
        return run_case(task, self)


def partial_dir(case_dir: Path) -> Path:
    return case_dir.with_name(f".{case_dir.name}.partial")


def run_case(task: CaseTask, worker: Worker) -> dict[str, Any]:
    """See ``Worker.run``."""
    started = time.perf_counter()
    result = _base_result(task)
    building = partial_dir(task.case_dir)
    shutil.rmtree(building, ignore_errors=True)  # left by a worker that was killed
    try:
        try:
            result.update(_segment_and_score(task, worker, building))
        except Exception as error:  # a failing case is recorded and the cohort goes on
            log.error("%s / %s failed: %s: %s", task.setup.name, task.case.id, type(error).__name__, error)
            shutil.rmtree(building, ignore_errors=True)
            result.update(status="failed", error=error_record(error))
        result["seconds"] = round(time.perf_counter() - started, 3)
        return _publish(task, building, result)
    except BaseException:  # Ctrl-C, Cancelled: no half-written case folder stays behind
        shutil.rmtree(building, ignore_errors=True)
        raise


def error_record(error: BaseException, *, retryable: bool | None = None) -> dict[str, Any]:
    """The ``error`` of a failed ``result.json``: the CLI's one-line message, and whether a retry could help.

    A ``MedsegError`` is the input's fault (a retry gives the same), except a server that did not
    answer (``ServerUnreachable``); anything else (a crash, a device error) may be transient.
    """
    transient = not isinstance(error, MedsegError) or isinstance(error, ServerUnreachable)
    return {"type": type(error).__name__, "message": user_message(error), "traceback": traceback.format_exc(),
            "retryable": transient if retryable is None else retryable}


def lost_result(task: CaseTask, cause: str, *, attempts: int) -> dict[str, Any]:
    """The record of a case whose worker died or overran its time (written by the main process)."""
    result = _base_result(task)
    result.update(status="failed", attempts=attempts,
                  error={"type": "WorkerLost", "message": cause, "traceback": "", "retryable": True})
    building = partial_dir(task.case_dir)
    shutil.rmtree(building, ignore_errors=True)
    return _publish(task, building, result)


def _base_result(task: CaseTask) -> dict[str, Any]:
    setup, case = task.setup, task.case
    return {
        "format": rs.FORMAT, "method": setup.name, "type": setup.kind, "case": case.id, "split": case.split,
        "cohort": task.cohort, "fingerprint": task.fingerprint, "seed": setup.seed, "labels": setup.labels,
        "prompt_policy": dataclasses.asdict(task.prompts), "code": task.code, "setup": setup_dict(setup),
        "metrics_settings": dataclasses.asdict(task.metrics),
    }


def _publish(task: CaseTask, building: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write ``result.json`` into the folder being built and move the folder into place whole."""
    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rs.write_json(building / rs.RESULT, result)
    shutil.rmtree(task.case_dir, ignore_errors=True)  # an earlier failed or damaged attempt
    os.replace(building, task.case_dir)
    return rs.read_json(task.case_dir / rs.RESULT)


def _prompts(task: CaseTask, method: Method, truth) -> Prompts | None:
    """What the user would give this method: the logged prompts (replay), the policy's, or none."""
    if task.replay_prompts is not None:
        return Prompts.from_dict(task.replay_prompts)
    if not method.uses_prompts:
        return None
    return PromptPolicy(task.prompts, seed=task.setup.seed).prompts(truth, labels=task.setup.labels,
                                                                    case_id=task.case.id)


def _segment_and_score(task: CaseTask, worker: Worker, building: Path) -> dict[str, Any]:
    import torch

    from medseg.io import save_labels
    from medseg.volume import LabelVolume

    setup, case = task.setup, task.case
    volume, truth = case.load()
    if truth is None:
        raise InputError(f"case {case.id} has no label map to score against")
    method, model = worker.method(task)
    with seeded(setup.seed):
        if isinstance(method, ReferenceMethod):
            prompts, seg = None, method.from_truth(volume, truth, case_id=case.id)
        else:
            prompts = _prompts(task, method, truth)
            seg = method.segment(model, volume, prompts=prompts, case_id=case.id)
    rs.write_json(building / rs.PROMPTS, {"prompts": (prompts or Prompts()).to_dict(), **seg.prompt_log})
    out: dict[str, Any] = {"torch_threads": torch.get_num_threads()}  # float sums, hence masks, depend on it
    definition = "Mask R-CNN detections linked across slices" if seg.instances is not None else None
    if setup.postprocess == "objects":
        save_labels(seg.labels, volume, building / rs.RAW_LABELS)
        seg, definition, out["postprocess"] = _objects(seg)
    save_labels(seg.labels, volume, building / rs.LABELS)
    if seg.instances is not None:
        save_labels(LabelVolume.like(volume, seg.instances.array), volume, building / rs.INSTANCES)
        out["instances"] = {"file": rs.INSTANCES, "definition": definition, "labels": seg.instances.labels,
                            "scores": seg.instances.scores,
                            "slice_scores": {k: v.tolist() for k, v in seg.instances.slice_scores.items()}}
    metrics = evaluate(seg.labels, truth, labels=setup.labels, hausdorff=task.metrics.hausdorff,
                       surface_tolerance_mm=task.metrics.surface_tolerance_mm)
    out.update(
        status="ok", metrics=metrics.to_dict(), mean_dice=metrics.mean_dice,
        scores=seg.labels.scores, slice_scores={k: v.tolist() for k, v in seg.labels.slice_scores.items()},
        untrained=bool(seg.labels.untrained or setup.state.get("untrained", False)),
        provenance={**setup.state, **seg.labels.provenance},
    )
    return out


def _objects(seg: Segmentation) -> tuple[Segmentation, str, dict[str, Any]]:
    """``postprocess: objects``: the method's objects cleaned (``medseg.objects``), how its instances are
    defined, and what was dropped (the raw labels are saved beside them)."""
    from medseg.objects import clean_objects

    objects = clean_objects(seg.labels, instances=seg.instances, prompts=seg.anchors)
    settings = objects.labels.provenance["postprocess"]
    units = "Mask R-CNN instances" if seg.instances is not None else "3D components"
    definition = (f"objects: {units} touching a prompt, or at least {settings['min_fraction']:g} × "
                  "the prompted one's voxels (medseg.objects)")
    return (dataclasses.replace(seg, labels=objects.labels, instances=objects.instances), definition,
            {"raw_file": rs.RAW_LABELS, **settings})
