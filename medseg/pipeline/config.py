"""Pipeline YAML: schema, defaults and validation (before any compute starts).

A pipeline says which cohort to evaluate, with which methods, under which prompt policy, and
how to score. Paths are relative to the YAML file. Every problem is reported with the file
and the field (``pipelines/x.yaml: methods.sam2.image_sise: unknown key; did you mean
'image_size'?``).

Example::

    name: abdomen-ct
    cohort: ../data_manifests/demo.json   # a medseg manifest or a Decathlon dataset.json
    split: test                           # the cases evaluated
    labels: [1, 2, 3]                     # default: every label of the cohort
    seed: 0
    prompts: {point: centroid, box: middle, reference_slices: 3}
    methods:
      maskrcnn: {type: maskrcnn, train: {steps: 200}, baseline: true}
      sam2: {type: sam2, model: sam2.1-tiny, image_size: 512, postprocess: objects}
      revsam2: {type: revsam2, model: sam2.1-tiny, references: 1}
    metrics: {surface_tolerance_mm: 2.0, ap_instances: components}
    report: {overlays: 3, bootstrap: 2000}
    push: {format: seg}                   # store each result on the PACS its image came from
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medseg.errors import ConfigError, MedsegError, syntax_error, user_message
from medseg.prompt_simulation import PromptSettings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class MetricSettings:
    """``surface_tolerance_mm``: the tolerance of normalised surface Dice.
    ``ap_instances``: how label maps become instances for mask AP (see ``medseg.metrics.coco``)."""

    surface_tolerance_mm: float = 2.0
    hausdorff: bool = True
    ap_instances: Literal["components", "per_class"] = "components"


@dataclass(frozen=True)
class ReportSettings:
    """``overlays``: cases shown as prediction-vs-truth snapshots; ``bootstrap``: resamples for CIs."""

    overlays: int = 3
    bootstrap: int = 2000


Postprocess = Literal["none", "objects"]


@dataclass(frozen=True)
class PushSettings:
    """Results back to a PACS (``medseg.pipeline.push``): each finished case as a DICOM SEG or
    RTSTRUCT (``format``), stored with STOW-RS on ``server`` (a DICOMweb address; default: the
    server the case's image came from)."""

    format: Literal["seg", "rtstruct"] = "seg"
    server: str | None = None

    def __post_init__(self) -> None:
        if self.server is not None:
            from medseg.io.dicomweb import parse_dicomweb_url

            try:
                object.__setattr__(self, "server", str(parse_dicomweb_url(self.server, level="server")))
            except MedsegError as error:
                raise ConfigError(f"server: {error}") from None


@dataclass(frozen=True)
class MethodConfig:
    """One method of the pipeline: its name (results folder), plug-in ``type`` and options.

    ``postprocess``: ``none`` keeps the method's output as it is; ``objects`` turns it into
    clean scored 3D objects (``medseg.objects.clean_objects``: specks dropped, one scored
    instance per kept component), saves the raw labels beside them and scores the objects.
    """

    name: str
    type: str
    options: Any
    baseline: bool = False
    postprocess: Postprocess = "none"

    def to_dict(self) -> dict:
        return {"type": self.type, "baseline": self.baseline, "postprocess": self.postprocess,
                **dataclasses.asdict(self.options)}


@dataclass(frozen=True)
class PipelineConfig:
    path: Path
    name: str
    cohort: Path
    split: str
    labels: list[int] | None
    cases: list[str] | None
    seed: int
    prompts: PromptSettings
    methods: list[MethodConfig]
    metrics: MetricSettings = field(default_factory=MetricSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    description: str = ""
    push: PushSettings | None = None

    def to_dict(self) -> dict:
        """The resolved pipeline (defaults filled in, absolute cohort path), JSON-able."""
        return {
            "name": self.name,
            "description": self.description,
            "cohort": str(self.cohort),
            "split": self.split,
            "labels": self.labels,
            "cases": self.cases,
            "seed": self.seed,
            "prompts": dataclasses.asdict(self.prompts),
            "methods": {m.name: m.to_dict() for m in self.methods},
            "metrics": dataclasses.asdict(self.metrics),
            "report": dataclasses.asdict(self.report),
            "push": dataclasses.asdict(self.push) if self.push else None,
        }


def fingerprint(data: Any) -> str:
    """A short stable hash of JSON-able settings: results made under other settings are not reused."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


_TOP_KEYS = {"name", "description", "cohort", "split", "labels", "cases", "seed", "prompts", "methods", "metrics",
             "report", "push"}


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML; ``ConfigError`` naming the file and field otherwise.

    Only the file itself is checked here (keys, types, method types and options); the cohort
    and the methods' resources are checked by ``runner.validate`` before any case runs.
    """
    path = Path(path).resolve()
    raw = _read_yaml(path)
    where = _Where(path)
    where.check_keys("", raw, _TOP_KEYS)
    for key in ("cohort", "methods"):
        if key not in raw:
            raise where.error(key, "is required")
    top = _top_level(where, raw)
    methods = _methods(where, raw["methods"])
    return PipelineConfig(
        path=path,
        **top,
        prompts=where.build(PromptSettings, raw.get("prompts", {}), "prompts"),
        methods=methods,
        metrics=where.build(MetricSettings, raw.get("metrics", {}), "metrics"),
        report=where.build(ReportSettings, raw.get("report", {}), "report"),
        description=str(raw.get("description", "")),
        push=where.build(PushSettings, raw["push"], "push") if raw.get("push") is not None else None,
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the pipeline file ({user_message(error)})") from None
    except yaml.YAMLError as error:
        raise syntax_error(path, error) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a pipeline is a YAML mapping with at least 'cohort' and 'methods'")
    return raw


def _top_level(where: _Where, raw: dict[str, Any]) -> dict[str, Any]:
    """The scalar settings: name, cohort, split, labels, cases, seed."""
    cohort = raw["cohort"]
    if not isinstance(cohort, str) or not cohort:
        raise where.error("cohort", "must be the path of a manifest (relative to the pipeline file)")
    split = raw.get("split", "test")
    if split not in ("train", "val", "test"):
        raise where.error("split", f"is {split!r}; use train, val or test")
    labels = raw.get("labels")
    if labels is not None and (not isinstance(labels, list) or not labels
                               or not all(_is_int(v) and v >= 1 for v in labels)):
        raise where.error("labels", f"must be a list of label values >= 1, got {labels!r}")
    cases = raw.get("cases")
    if cases is not None and (not isinstance(cases, list) or not all(isinstance(c, str) for c in cases)):
        raise where.error("cases", "must be a list of case ids")
    seed = raw.get("seed", 0)
    if not _is_int(seed):
        raise where.error("seed", f"must be an integer, got {seed!r}")
    name = raw.get("name", where.path.stem)
    if not isinstance(name, str) or not name:
        raise where.error("name", "must be a non-empty string")
    return {"name": name, "cohort": (where.path.parent / cohort).resolve(), "split": split,
            "labels": [int(v) for v in labels] if labels is not None else None, "cases": cases, "seed": int(seed)}


def _methods(where: _Where, methods_raw: Any) -> list[MethodConfig]:
    from medseg.pipeline.methods import METHODS

    if not isinstance(methods_raw, dict) or not methods_raw:
        raise where.error("methods", "must map method names to their settings, e.g. {sam2: {type: sam2, model: "
                                     "sam2.1-tiny}}")
    methods = []
    for method_name, spec in methods_raw.items():
        key = f"methods.{method_name}"
        if not isinstance(method_name, str) or not _NAME.match(method_name):
            raise where.error(key, "method names become folder names: use letters, digits, '.', '_' and '-'")
        if not isinstance(spec, dict) or "type" not in spec:
            raise where.error(key, f"needs a 'type', one of {sorted(METHODS)}")
        kind = spec["type"]
        if kind not in METHODS:
            raise where.error(f"{key}.type",
                              f"unknown method {kind!r}; {_suggest(kind, METHODS)}known: {sorted(METHODS)}")
        baseline = spec.get("baseline", False)
        if not isinstance(baseline, bool):
            raise where.error(f"{key}.baseline", "must be true or false")
        postprocess = where.coerce(Postprocess, spec.get("postprocess", "none"), f"{key}.postprocess")
        options = {k: v for k, v in spec.items() if k not in ("type", "baseline", "postprocess")}
        plugin = METHODS[kind]
        methods.append(MethodConfig(method_name, kind,
                                    plugin.resolve_paths(where.build(plugin.Options, options, key), where.path.parent),
                                    baseline, postprocess))
    if sum(m.baseline for m in methods) > 1:
        raise where.error("methods", "at most one method can be the baseline (baseline: true)")
    return methods


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _suggest(word: Any, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f"did you mean {close[0]!r}? " if close else ""


class _Where:
    """Builds settings dataclasses from YAML mappings, raising errors that name file and field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key + ': ' if key else ''}{message}")

    def check_keys(self, key: str, raw: dict, allowed) -> None:
        for name in raw:
            if name not in allowed:
                field_name = f"{key}.{name}" if key else str(name)
                raise self.error(field_name, f"unknown key; {_suggest(name, allowed)}allowed: {sorted(allowed)}")

    def build(self, cls, raw: Any, key: str):
        """An instance of the dataclass ``cls`` from ``raw``, with each value's type checked."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self.error(key, f"must be a mapping, got {raw!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        self.check_keys(key, raw, fields)
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in raw.items():
            values[name] = self.coerce(hints[name], value, f"{key}.{name}")
        missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise self.error(f"{key}.{missing[0]}", "is required")
        try:
            return cls(**values)
        except ConfigError as error:
            raise self.error(key, str(error)) from None

    def coerce(self, hint: Any, value: Any, key: str) -> Any:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is Literal:
            if value not in args:
                raise self.error(key, f"is {value!r}; {_suggest(value, args)}use one of {list(args)}")
            return value
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            errors = []
            for option in (a for a in args if a is not type(None)):
                try:
                    return self.coerce(option, value, key)
                except ConfigError as error:
                    errors.append(error)
            raise errors[0]
        if origin is list:
            if not isinstance(value, list):
                raise self.error(key, f"must be a list, got {value!r}")
            return [self.coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is dict or hint is dict:
            if not isinstance(value, dict):
                raise self.error(key, f"must be a mapping, got {value!r}")
            return dict(value)
        if dataclasses.is_dataclass(hint):
            return self.build(hint, value, key)
        if hint is bool:
            if not isinstance(value, bool):
                raise self.error(key, f"must be true or false, got {value!r}")
            return value
        if hint is int:
            if not _is_int(value):
                raise self.error(key, f"must be an integer, got {value!r}")
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.error(key, f"must be a number, got {value!r}")
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise self.error(key, f"must be a string, got {value!r}")
            return value
        raise TypeError(f"unsupported option type {hint!r} for {key}")  # a plug-in bug, not a user error
