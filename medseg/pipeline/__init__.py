"""Batch evaluation of segmentation methods over a cohort: resumable, local or on Ray, with a report.

>>> from medseg.pipeline import load_pipeline, run_pipeline
>>> summary = run_pipeline(load_pipeline("pipelines/demo.yaml"), "results/demo")  # doctest: +SKIP

Modules: ``config`` (the YAML schema), ``methods`` (plug-ins), ``prompt_policy`` (prompts simulated from ground
truth), ``runner`` (validation and the run), ``case`` (one case: the task, the worker, its record), ``executors``
(in process, local worker processes, Ray; worker death, timeouts, retries), ``results`` (the results folder),
``report`` / ``plots`` / ``stats`` (the report), ``replay`` (re-run one case from its log).
"""

from medseg.pipeline.config import PipelineConfig, load_pipeline
from medseg.pipeline.executors import LocalExecutor, RayExecutor
from medseg.pipeline.methods import METHODS, Method, ReferenceMethod, Segmentation
from medseg.pipeline.replay import ReplayResult, replay_case
from medseg.pipeline.report import write_report
from medseg.pipeline.runner import RunSummary, run_pipeline

__all__ = [
    "METHODS",
    "LocalExecutor",
    "Method",
    "PipelineConfig",
    "RayExecutor",
    "ReferenceMethod",
    "ReplayResult",
    "RunSummary",
    "Segmentation",
    "load_pipeline",
    "replay_case",
    "run_pipeline",
    "write_report",
]
