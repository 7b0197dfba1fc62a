"""Run a pipeline: validate everything, prepare each method, then the resumable per-case loop.

Every executor runs ``medseg.pipeline.case.Worker.run`` on each (method, case) task; a
case's folder is complete or absent, and any error inside a case is recorded in its
``result.json`` while the run goes on. A worker that dies or overruns ``case_timeout`` is
recorded as a failed case (after ``retries`` further attempts). ``should_stop`` stops the
run between cases (the cases in flight finish) and raises ``Cancelled``; Ctrl-C loses only
the cases in flight. A re-run skips the cases whose result is ``ok`` under the same
fingerprint (method settings, prepared model, prompt policy, seed, labels) and redoes the
others, including cases whose ``result.json`` is damaged.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import ConfigError, InputError, ServerError, user_message
from medseg.manifest import Case, Cohort, load_manifest
from medseg.outputs import check_output
from medseg.pipeline import results as rs
from medseg.pipeline.case import CaseTask, Worker, lost_result, setup_dict
from medseg.pipeline.config import PipelineConfig, fingerprint
from medseg.pipeline.methods import MethodSetup, method_class
from medseg.runtime import Progress, ShouldStop, check_stop
from medseg.runtime import report as report_progress
from medseg.volume import UNTRAINED_BANNER

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did: counts per method, the failures and why, the untrained methods, the report."""

    out_dir: Path
    counts: dict[str, dict[str, int]]  # method -> {"ok", "failed", "skipped"}
    untrained: list[str]
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (method, case or "(all)", message)
    report: Path | None = None
    pushed: list[dict] = field(default_factory=list)  # the push.json records (see medseg.pipeline.push)

    @property
    def failed(self) -> int:
        return sum(c["failed"] for c in self.counts.values())


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
    labels = _labels(config, cohort)
    cases = _cases(config, cohort)
    check_output(out_dir, inputs=[config.path, cohort.path,
                                  *(p for c in cohort.cases for p in (c.image, c.label) if isinstance(p, Path))],
                 what="results folder")
    if config.push is not None:
        from medseg.pipeline.push import check_push

        check_push(config.push, cases)
    cohort.validate_data()
    setups = [_setup(config, method, labels, out_dir, cohort) for method in config.methods]
    return Plan(config, cohort, cases, labels, setups)


def _labels(config: PipelineConfig, cohort: Cohort) -> dict[int, str]:
    if config.labels is None:
        return dict(cohort.labels)
    unknown = sorted(set(config.labels) - set(cohort.labels))
    if unknown:
        raise ConfigError(f"{config.path}: labels: {unknown} are not labels of the cohort {cohort.path} "
                          f"({cohort.labels})")
    return {v: cohort.labels[v] for v in config.labels}


def _cases(config: PipelineConfig, cohort: Cohort) -> list[Case]:
    cases = cohort.split(config.split)
    if config.cases is not None:
        missing = [c for c in config.cases if c not in {case.id for case in cases}]
        if missing:
            raise ConfigError(f"{config.path}: cases: {missing} are not in the {config.split!r} split of {cohort.path}")
        cases = [c for c in cases if c.id in set(config.cases)]
    if not cases:
        raise ConfigError(f"{config.path}: split: the {config.split!r} split of {cohort.path} has no cases")
    unlabelled = [c.id for c in cases if c.label is None]
    if unlabelled:
        raise ConfigError(f"{config.path}: split: cases {unlabelled} have no label map, so they cannot be scored")
    return cases


def _setup(config: PipelineConfig, method, labels: dict[int, str], out_dir: Path, cohort: Cohort) -> MethodSetup:
    setup = MethodSetup(method.name, method.type, method.options, labels, config.seed,
                        config.prompts.reference_slices, Path(out_dir).resolve() / method.name,
                        postprocess=method.postprocess)
    cls = method_class(method.type)
    if cls.uses_prompts and config.prompts.point == "none" and config.prompts.box == "none":
        raise ConfigError(f"{config.path}: prompts: method {method.name!r} is interactive but the policy gives neither "
                          "a point nor a box")
    cls.check(setup, cohort)
    _check_old_results(setup)
    return setup


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
    """Whether the case finished ``ok`` under this fingerprint; a damaged ``result.json`` means redo it."""
    path = task.case_dir / rs.RESULT
    if not path.exists() or not (task.case_dir / rs.LABELS).exists():
        return False
    try:
        result = rs.read_json(path)
    except InputError as error:
        log.warning("%s; the case runs again", error)
        return False
    return result.get("status") == "ok" and result.get("fingerprint") == task.fingerprint


def run_pipeline(
    config: PipelineConfig,
    out_dir: str | Path,
    *,
    executor=None,
    report: bool = True,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> RunSummary:
    """Run ``config`` into ``out_dir`` (resumable) and write the report.

    ``executor``: a ``LocalExecutor`` (default: one worker, in this process) or ``RayExecutor``.
    With ``config.push``, finished cases then go to the PACS (``medseg.pipeline.push``).
    ``progress(done, total)`` counts case runs; ``should_stop()`` is asked between cases
    (see ``medseg.runtime``): the cases in flight finish, then ``Cancelled`` is raised and a
    re-run resumes from there.
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
    summary = RunSummary(out_dir, {s.name: {"ok": 0, "failed": 0, "skipped": 0} for s in plan.setups}, [])
    tasks = [task for setup, method in zip(plan.setups, config.methods)
             for task in _prepare(plan, setup, method.baseline, code, summary, should_stop)]
    if summary.untrained:
        log.warning("%s Methods: %s.", UNTRAINED_BANNER, ", ".join(summary.untrained))
    log.info("%d case runs to do, %d already finished", len(tasks), sum(c["skipped"] for c in summary.counts.values()))
    _run_tasks(executor, tasks, summary, progress, should_stop)
    if config.push is not None:
        from medseg.pipeline.push import push_results

        summary.pushed = push_results(config.push, plan.setups, plan.cases)
        summary.failures += [(r["method"], r["case"], f"push: {r['error']}") for r in summary.pushed
                             if r["status"] == "failed"]
    if report:
        from medseg.pipeline.report import write_report

        try:
            summary.report = write_report(out_dir)
        except ServerError as error:  # AP and overlays read the truth of cases kept on a PACS
            log.error("the report was not written: %s; run again when the server answers", user_message(error))
            summary.failures.append(("(report)", "(all)", user_message(error)))
    return summary


def _prepare(plan: Plan, setup: MethodSetup, baseline: bool, code: dict, summary: RunSummary,
             should_stop: ShouldStop | None) -> list[CaseTask]:
    """Prepare one method (main process) and return its case tasks still to run."""
    check_stop(should_stop, "the pipeline run")
    log.info("preparing method %s (%s)", setup.name, setup.kind)
    info = {"name": setup.name, "type": setup.kind, "baseline": baseline, "options": dataclasses.asdict(setup.options),
            "settings_fingerprint": _settings_fingerprint(setup), "code": code}
    cls = method_class(setup.kind)
    try:
        state = cls(setup).prepare(plan.cohort, should_stop=should_stop)
    except Exception as error:  # a method that cannot be prepared fails all its cases, others go on
        log.error("method %s could not be prepared: %s", setup.name, user_message(error))
        rs.write_json(setup.method_dir / rs.METHOD, {**info, "status": "failed",
                                                     "error": {"type": type(error).__name__,
                                                               "message": user_message(error)}})
        summary.counts[setup.name]["failed"] = len(plan.cases)
        summary.failures.append((setup.name, "(all)", user_message(error)))
        return []
    setup = dataclasses.replace(setup, state=state)
    rs.write_json(setup.method_dir / rs.METHOD,
                  {**info, "status": "ok", "state": state, "model": cls(setup).describe()})
    if state.get("untrained"):
        summary.untrained.append(setup.name)
    config = plan.config
    task_fingerprint = fingerprint({"setup": setup_dict(setup), "prompts": dataclasses.asdict(config.prompts),
                                    "metrics": dataclasses.asdict(config.metrics)})
    tasks = [CaseTask(setup, cls, case, plan.cohort.path, setup.method_dir / case.id, config.prompts, config.metrics,
                      task_fingerprint, code) for case in plan.cases]
    todo = [task for task in tasks if not _is_done(task)]
    summary.counts[setup.name]["skipped"] = len(tasks) - len(todo)
    return todo


def _run_tasks(executor, tasks: list[CaseTask], summary: RunSummary, progress: Progress | None,
               should_stop: ShouldStop | None) -> None:
    report_progress(progress, 0, len(tasks))
    for done, result in enumerate(executor.map(Worker, tasks, lost=lost_result, should_stop=should_stop), start=1):
        summary.counts[result["method"]][result["status"]] += 1
        if result["status"] == "failed":
            summary.failures.append((result["method"], result["case"], result["error"]["message"]))
        report_progress(progress, done, len(tasks))
