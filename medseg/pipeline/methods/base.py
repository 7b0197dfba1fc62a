"""The method plug-in contract (``Method``, ``MethodSetup``, ``Segmentation``) and the ``METHODS`` registry.

See ``medseg.pipeline.methods`` for what a plug-in sees and does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from medseg.errors import ConfigError
from medseg.prompts import Prompts
from medseg.runtime import Progress, ShouldStop
from medseg.volume import InstanceMap, LabelVolume, Volume



@dataclass(frozen=True)
class Segmentation:
    """What a method returns for one case: labels (with scores, provenance), its own scored 3D instances
    when it has them (mask AP uses them) and the prompts marking its objects (``medseg.objects`` anchors)."""

    labels: LabelVolume
    instances: InstanceMap | None = None
    prompt_log: dict[str, Any] = field(default_factory=dict)
    anchors: Prompts | None = None


@dataclass(frozen=True)
class MethodSetup:
    """Everything a worker needs to build a method: picklable, and fingerprinted for resumption.

    ``state`` is what ``prepare`` produced in the main process (a trained model directory,
    the weights actually used).
    """

    name: str
    kind: str
    options: Any
    labels: dict[int, str]
    seed: int
    reference_slices: int
    method_dir: Path
    state: dict[str, Any] = field(default_factory=dict)
    postprocess: str = "none"  # medseg.pipeline.config.Postprocess


class Method:
    """Base class of the plug-ins; see the module docstring."""

    kind: ClassVar[str]
    Options: ClassVar[type]
    uses_prompts: ClassVar[bool] = False  # segment gets the prompt policy's prompts (else None)

    def __init__(self, setup: MethodSetup) -> None:
        self.setup = setup
        self.options = setup.options

    @classmethod
    def resolve_paths(cls, options: Any, base: Path) -> Any:
        """``options`` with relative file paths made absolute against ``base`` (the YAML's folder)."""
        return options

    @classmethod
    def check(cls, setup: MethodSetup, cohort) -> None:
        """Raise a ``MedsegError`` when the method cannot run on ``cohort`` (before any compute)."""

    def prepare(self, cohort, *, progress: Progress | None = None,
                should_stop: ShouldStop | None = None) -> dict[str, Any]:
        """One-off work in the main process; returns ``MethodSetup.state`` for the workers."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Model name, checksum, preset... as known before any case runs (for method.json)."""
        return {}

    def load(self) -> Any:
        """The model (and whatever else ``segment`` needs), built once per worker from ``setup.state``."""
        return None

    def segment(self, model: Any, volume: Volume, *, prompts: Prompts | None, case_id: str) -> Segmentation:
        """Segment one case with ``model`` (what ``load`` returned). No ground truth, by design."""
        raise NotImplementedError


class ReferenceMethod(Method):
    """A self-check that is *given the truth*: never a method to compare.

    The runner calls ``from_truth`` instead of ``segment``; ``segment`` refuses, so the
    truth reaches nothing else through this class.
    """

    def from_truth(self, volume: Volume, truth: LabelVolume, *, case_id: str) -> Segmentation:
        raise NotImplementedError

    def segment(self, model: Any, volume: Volume, *, prompts: Prompts | None, case_id: str) -> Segmentation:
        raise ConfigError(f"method type {self.kind!r} is a reference built from the ground truth; it cannot segment "
                          "on its own")


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Make ``cls`` available as YAML ``type: <cls.kind>``."""
    METHODS[cls.kind] = cls
    return cls


def method_class(kind: str) -> type[Method]:
    """The plug-in class of a YAML ``type`` (looked up in the main process; workers get the class)."""
    try:
        return METHODS[kind]
    except KeyError:
        raise ConfigError(f"unknown method type {kind!r}; known: {sorted(METHODS)}") from None


def build_method(setup: MethodSetup) -> Method:
    return method_class(setup.kind)(setup)


def absolute(path: str, base: Path) -> str:
    """A path option of the YAML (relative to its folder ``base``, or with ``~``) made absolute."""
    return str((base / Path(path).expanduser()).resolve())
