"""Run a pipeline: validate everything, prepare each method, then the resumable per-case loop.

``run_case`` is the one per-case function every executor runs (in this process, in a local
process pool or as a Ray task). It loads the case, simulates the prompts from the ground
truth, segments, writes the label map and the prompt log, scores the case and writes
``result.json`` last, each file atomically. Any error inside a case is recorded in its
``result.json`` (type, message, traceback) and the run goes on; Ctrl-C stops the run and
loses only the cases in flight. A re-run skips the cases whose result is ``ok`` under the
same fingerprint (method settings, prepared model, prompt policy, seed, labels).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from medseg.errors import ConfigError, InputError
from medseg.manifest import Case, Cohort, load_manifest
from medseg.metrics import dice_per_label, hausdorff95_per_label, mean_dice, surface_dice_per_label
from medseg.pipeline import results as rs
from medseg.pipeline.config import MetricSettings, PipelineConfig, PromptSettings, fingerprint
from medseg.pipeline.methods import METHODS, Method, MethodSetup, build_method
from medseg.pipeline.prompt_policy import PromptPolicy
from medseg.prompts import Prompts
from medseg.volume import UNTRAINED_BANNER

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseTask:
    """One (method, case) to run; picklable, so any executor can ship it to a worker."""

    setup: MethodSetup
    case: Case
    cohort: Path  # the manifest, so that a replay finds the case again
    case_dir: Path
    prompts: PromptSettings
    metrics: MetricSettings
    fingerprint: str
    code: dict[str, Any]
    replay_prompts: dict | None = None  # the logged prompts, when replaying


@dataclass
class RunSummary:
    out_dir: Path
    counts: dict[str, dict[str, int]]  # method -> {"ok", "failed", "skipped"}
    untrained: list[str]
    report: Path | None = None

    @property
    def failed(self) -> int:
        return sum(c["failed"] for c in self.counts.values())


# --- the per-case function --------------------------------------------------------------------
_LOADED: dict[str, Method] = {}  # one model per worker process, by setup fingerprint


def _method(setup: MethodSetup) -> Method:
    key = fingerprint(setup_dict(setup))
    if key not in _LOADED:
        _LOADED.clear()  # keep one model in memory per worker
        _LOADED[key] = build_method(setup)
    return _LOADED[key]


def setup_dict(setup: MethodSetup) -> dict[str, Any]:
    data = dataclasses.asdict(setup)
    data["method_dir"] = str(setup.method_dir)
    return data


def setup_from_dict(data: dict[str, Any]) -> MethodSetup:
    options = METHODS[data["kind"]].Options(**data["options"])
    return MethodSetup(
        name=data["name"], kind=data["kind"], options=options, labels={int(k): v for k, v in data["labels"].items()},
        seed=int(data["seed"]), reference_slices=int(data["reference_slices"]), method_dir=Path(data["method_dir"]),
        state=dict(data["state"]),
    )


def case_metrics(pred, truth, labels: dict[int, str], settings: MetricSettings) -> dict[str, dict[str, float]]:
    """Dice, 95% Hausdorff (mm), surface Dice and voxel counts per label of one case."""
    dice = dice_per_label(pred, truth, labels=labels)
    hd = hausdorff95_per_label(pred, truth, labels=labels) if settings.hausdorff else {}
    nsd = surface_dice_per_label(pred, truth, labels=labels, tolerance_mm=settings.surface_tolerance_mm)
    return {
        str(v): {"dice": dice[v], "hd95_mm": hd.get(v, float("nan")), "nsd": nsd[v],
                 "truth_voxels": int((truth.array == v).sum()), "pred_voxels": int((pred.array == v).sum())}
        for v in labels
    }


def run_case(task: CaseTask) -> dict[str, Any]:
    """Segment and score one case; write its folder; return its ``result.json`` content."""
    import torch

    from medseg.io import save_labels

    setup, case = task.setup, task.case
    started = time.perf_counter()
    result: dict[str, Any] = {
        "format": rs.FORMAT, "method": setup.name, "type": setup.kind, "case": case.id, "split": case.split, "cohort": task.cohort,
        "fingerprint": task.fingerprint, "seed": setup.seed, "labels": setup.labels,
        "prompt_policy": dataclasses.asdict(task.prompts), "code": task.code, "setup": setup_dict(setup),
        "metrics_settings": dataclasses.asdict(task.metrics),
    }
    try:
        volume, truth = case.load()
        if truth is None:
            raise InputError(f"case {case.id} has no label map to score against")
        method = _method(setup)
        if task.replay_prompts is not None:
            prompts = Prompts.from_dict(task.replay_prompts)
        elif method.uses_prompts:
            prompts = PromptPolicy(task.prompts, seed=setup.seed).prompts(truth, labels=setup.labels, case_id=case.id)
        else:
            prompts = Prompts()
        torch.manual_seed(setup.seed)
        result["torch_threads"] = torch.get_num_threads()  # float sums, hence masks, depend on it
        seg = method.segment(volume, prompts=prompts, truth=truth, case_id=case.id)
        task.case_dir.mkdir(parents=True, exist_ok=True)
        rs.write_json(task.case_dir / rs.PROMPTS, {"prompts": prompts.to_dict(), **seg.prompt_log})
        save_labels(seg.labels, volume, task.case_dir / rs.LABELS)
        if seg.instances is not None:
            from medseg.volume import LabelVolume

            save_labels(LabelVolume.like(volume, seg.instances.array), volume, task.case_dir / rs.INSTANCES)
            result["instances"] = {"file": rs.INSTANCES, "labels": seg.instances.labels, "scores": seg.instances.scores,
                                   "slice_scores": {k: v.tolist() for k, v in seg.instances.slice_scores.items()}}
        metrics = case_metrics(seg.labels, truth, setup.labels, task.metrics)
        result.update(
            status="ok", metrics=metrics, mean_dice=mean_dice({int(k): m["dice"] for k, m in metrics.items()}),
            scores=seg.labels.scores, slice_scores={k: v.tolist() for k, v in seg.labels.slice_scores.items()},
            untrained=bool(seg.labels.untrained or setup.state.get("untrained", False)),
            provenance={**setup.state, **seg.labels.provenance},
        )
    except Exception as error:  # a failing case is recorded and the cohort goes on
        logger.error("%s / %s failed: %s: %s", setup.name, case.id, type(error).__name__, error)
        result.update(status="failed", error={"type": type(error).__name__, "message": str(error), "traceback": traceback.format_exc()})
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rs.write_json(task.case_dir / rs.RESULT, result)
    return rs.read_json(task.case_dir / rs.RESULT)


# --- the run ------------------------------------------------------------------------------------
@dataclass
class Plan:
    """A validated pipeline: the cohort, the cases to evaluate and one setup per method."""

    config: PipelineConfig
    cohort: Cohort
    cases: list[Case]
    labels: dict[int, str]
    setups: list[MethodSetup]


def validate(config: PipelineConfig, out_dir: Path) -> Plan:
    """Every check that can fail before compute: cohort, files, grids, labels, methods, old results."""
    cohort = load_manifest(config.cohort)
    where = f"{config.path}"
    if config.labels is None:
        labels = dict(cohort.labels)
    else:
        unknown = sorted(set(config.labels) - set(cohort.labels))
        if unknown:
            raise ConfigError(f"{where}: labels: {unknown} are not labels of the cohort {cohort.path} ({cohort.labels})")
        labels = {v: cohort.labels[v] for v in config.labels}
    cases = cohort.split(config.split)
    if config.cases is not None:
        known = {c.id for c in cases}
        missing = [c for c in config.cases if c not in known]
        if missing:
            raise ConfigError(f"{where}: cases: {missing} are not in the {config.split!r} split of {cohort.path}")
        cases = [c for c in cases if c.id in set(config.cases)]
    if not cases:
        raise ConfigError(f"{where}: split: the {config.split!r} split of {cohort.path} has no cases")
    unlabelled = [c.id for c in cases if c.label is None]
    if unlabelled:
        raise ConfigError(f"{where}: split: cases {unlabelled} have no label map, so they cannot be scored")
    cohort.validate_data()

    setups = []
    for method in config.methods:
        setup = MethodSetup(method.name, method.type, method.options, labels, config.seed,
                            config.prompts.reference_slices, Path(out_dir).resolve() / method.name)
        if METHODS[method.type].uses_prompts and config.prompts.point == "none" and config.prompts.box == "none":
            raise ConfigError(f"{where}: prompts: method {method.name!r} is interactive but the policy gives neither a point nor a box")
        METHODS[method.type].check(setup, cohort)
        _check_old_results(setup)
        setups.append(setup)
    return Plan(config, cohort, cases, labels, setups)


def _settings_fingerprint(setup: MethodSetup) -> str:
    return fingerprint({k: v for k, v in setup_dict(setup).items() if k != "state"})


def _check_old_results(setup: MethodSetup) -> None:
    path = setup.method_dir / rs.METHOD
    if path.exists() and rs.read_json(path).get("settings_fingerprint") != _settings_fingerprint(setup):
        raise ConfigError(
            f"{setup.method_dir} holds results of method {setup.name!r} made with other settings; "
            "write to another --out folder or delete that method folder to start it again"
        )


def _is_done(task: CaseTask) -> bool:
    path = task.case_dir / rs.RESULT
    if not path.exists() or not (task.case_dir / rs.LABELS).exists():
        return False
    result = rs.read_json(path)
    return result.get("status") == "ok" and result.get("fingerprint") == task.fingerprint


def run_pipeline(config: PipelineConfig, out_dir: str | Path, *, executor=None, progress_bar: bool = True, report: bool = True) -> RunSummary:
    """Run ``config`` into ``out_dir`` (resumable) and write the report.

    ``executor``: a ``LocalExecutor`` (default: one worker, in this process) or ``RayExecutor``.
    """
    from medseg.pipeline.executors import LocalExecutor

    out_dir = Path(out_dir).resolve()
    executor = executor or LocalExecutor(workers=1)
    plan = validate(config, out_dir)
    executor.check()
    code = rs.code_version()
    out_dir.mkdir(parents=True, exist_ok=True)
    rs.write_json(out_dir / rs.PIPELINE, {"pipeline": config.to_dict(), "pipeline_file": str(config.path), "code": code,
                                          "executor": executor.describe()})

    counts: dict[str, dict[str, int]] = {}
    untrained: list[str] = []
    tasks: list[CaseTask] = []
    for setup, method in zip(plan.setups, config.methods):
        counts[setup.name] = {"ok": 0, "failed": 0, "skipped": 0}
        logger.info("preparing method %s (%s)", setup.name, setup.kind)
        info = {"name": setup.name, "type": setup.kind, "baseline": method.baseline, "options": dataclasses.asdict(setup.options),
                "settings_fingerprint": _settings_fingerprint(setup), "code": code}
        try:
            state = build_method(setup).prepare(plan.cohort, progress_bar=progress_bar)
        except Exception as error:  # a method that cannot be prepared fails all its cases, others go on
            logger.error("method %s could not be prepared: %s: %s", setup.name, type(error).__name__, error)
            rs.write_json(setup.method_dir / rs.METHOD, {**info, "status": "failed",
                                                         "error": {"type": type(error).__name__, "message": str(error)}})
            counts[setup.name]["failed"] = len(plan.cases)
            continue
        setup = dataclasses.replace(setup, state=state)
        described = build_method(setup).describe()
        rs.write_json(setup.method_dir / rs.METHOD, {**info, "status": "ok", "state": state, "model": described})
        if state.get("untrained"):
            untrained.append(setup.name)
        task_fingerprint = fingerprint({"setup": setup_dict(setup), "prompts": dataclasses.asdict(config.prompts),
                                        "metrics": dataclasses.asdict(config.metrics)})
        for case in plan.cases:
            task = CaseTask(setup, case, plan.cohort.path, setup.method_dir / case.id, config.prompts, config.metrics, task_fingerprint, code)
            if _is_done(task):
                counts[setup.name]["skipped"] += 1
            else:
                tasks.append(task)
    if untrained:
        logger.warning("%s Methods: %s.", UNTRAINED_BANNER, ", ".join(untrained))

    skipped = sum(c["skipped"] for c in counts.values())
    logger.info("%d case runs to do, %d already finished", len(tasks), skipped)
    with tqdm(total=len(tasks), desc=f"{config.name}", unit="case", disable=not progress_bar) as bar:
        for result in executor.map(run_case, tasks):
            counts[result["method"]][result["status"]] += 1
            bar.set_postfix_str(f"{result['method']}/{result['case']} {result['status']}")
            bar.update()
    summary = RunSummary(out_dir, counts, untrained)
    if report:
        from medseg.pipeline.report import write_report

        summary.report = write_report(out_dir, progress_bar=progress_bar)
    return summary
