"""The ``revsam2`` method: reference prompting from annotated slices of reference cases (``medseg.revsam2``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from medseg.errors import ConfigError
from medseg.pipeline.methods.base import MethodSetup, Segmentation, register
from medseg.pipeline.methods.sam2 import Sam2Family, Sam2Options
from medseg.prompts import Prompts
from medseg.revsam2.defaults import (
    DEFAULT_GATE_MARGIN,
    DEFAULT_INCLUDE_SUPPORTS,
    DEFAULT_PLACEMENT,
    DEFAULT_REJECT_RIVALS,
    DEFAULT_REPROMPT,
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
)
from medseg.runtime import Progress, ShouldStop
from medseg.volume import Volume


@dataclass(frozen=True)
class RevSam2Options(Sam2Options):
    """The SAM2 options, plus: ``mode`` (``revsam2``, ``baseline``, ``baseline-middle``; see
    ``medseg.revsam2``), ``references`` (how many labelled cases of ``reference_split``, in
    manifest order, give the support slices: ``prompts.reference_slices`` per label each) and
    the re-prompt selection ``top_k`` / ``threshold`` / ``min_spacing`` (None = no limit / no
    floor / automatic), the supports' ``placement``, the z-gate's ``gate_margin`` (None: no gate),
    ``reject_rivals``, how selected slices re-prompt (``reprompt``) and whether the supports stay in
    that pass (``include_supports``; see ``ReferenceSession.segment``). ``register``: register each
    reference case onto each query first (``medseg.revsam2.register``) and take the supports from
    it. ``parts``: each connected part of a reference label its own object (two kidneys under one
    label; ``medseg.revsam2.parts``), as ``prompts: {parts: true}`` does for prompts. With
    ``prompts: {point: none, box: none}`` a pipeline of such methods segments the cohort from the
    references alone."""

    mode: Literal["revsam2", "baseline", "baseline-middle"] = "revsam2"
    references: int = 1
    reference_split: Literal["train", "val"] = "train"
    top_k: int | None = DEFAULT_TOP_K
    threshold: float | None = DEFAULT_THRESHOLD
    min_spacing: int | None = None
    placement: Literal["matched", "before", "middle"] = DEFAULT_PLACEMENT
    gate_margin: int | None = DEFAULT_GATE_MARGIN
    reject_rivals: bool = DEFAULT_REJECT_RIVALS
    reprompt: Literal["mask", "box"] = DEFAULT_REPROMPT
    include_supports: bool = DEFAULT_INCLUDE_SUPPORTS
    register: bool = False
    parts: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.references < 1:
            raise ConfigError(f"references must be at least 1, got {self.references}")


@register
class RevSam2(Sam2Family):
    """Reference prompting (``medseg.revsam2``): annotated slices of reference cases, frozen SAM2."""

    kind = "revsam2"
    Options = RevSam2Options

    @classmethod
    def _reference_cases(cls, setup: MethodSetup, cohort) -> list:
        labelled = [c for c in cohort.split(setup.options.reference_split) if c.label is not None]
        if len(labelled) < setup.options.references:
            raise ConfigError(
                f"method {setup.name}: references: {setup.options.references} reference case(s) wanted but the "
                f"{setup.options.reference_split!r} split of {cohort.path} has {len(labelled)} labelled case(s)"
            )
        return labelled[: setup.options.references]

    @classmethod
    def check(cls, setup: MethodSetup, cohort) -> None:
        super().check(setup, cohort)
        cls._reference_cases(setup, cohort)

    def prepare(self, cohort, *, progress: Progress | None = None,
                should_stop: ShouldStop | None = None) -> dict[str, Any]:
        """The checkpoint, and the reference cases (ids of the reference split, never the query's)."""
        references = [c.id for c in self._reference_cases(self.setup, cohort)]
        return {**super().prepare(cohort, progress=progress, should_stop=should_stop), "cohort": str(cohort.path),
                "references": references}

    def load(self) -> Any:
        """The SAM2 predictor and the reference cases chosen in ``prepare`` (loaded once)."""
        from medseg.manifest import load_manifest

        cohort = load_manifest(self.setup.state["cohort"])
        return super().load(), [cohort.case(i).load() for i in self.setup.state["references"]]

    def segment(self, model: Any, volume: Volume, *, prompts: Prompts | None, case_id: str) -> Segmentation:
        from medseg.revsam2 import SupportSet, anchor_prompts, segment_with_references
        from medseg.revsam2.register import register_reference

        predictor, references = model
        if self.options.register:
            references = [register_reference(volume, image, labels) for image, labels in references]
        support = SupportSet.from_volumes(references, k=self.setup.reference_slices, labels=self.setup.labels,
                                          names=self.setup.state["references"], parts=self.options.parts)
        labels = segment_with_references(
            volume, support, mode=self.options.mode, model=predictor, top_k=self.options.top_k,
            threshold=self.options.threshold, min_spacing=self.options.min_spacing, placement=self.options.placement,
            gate_margin=self.options.gate_margin, reject_rivals=self.options.reject_rivals,
            reprompt=self.options.reprompt, include_supports=self.options.include_supports,
        )
        logged = {**support.to_dict(), **({"registered_onto_query": True} if self.options.register else {})}
        return Segmentation(labels, prompt_log={"support": logged}, anchors=anchor_prompts(labels))
