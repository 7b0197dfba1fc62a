"""The one shape of a training loop, as torchvision's detection reference has it: a run object with a
step function and the bookkeeping due after a step (validation, snapshots, checkpoints), a loop over
it, and a checkpoint when the loop is interrupted (``should_stop``, Ctrl-C, a diverged step).

SAM2 (``medseg.training.sam2.train``) and Mask R-CNN (``medseg.training.maskrcnn``) each keep what
differs in their run: what a step draws, what a checkpoint holds, and which interruptions leave a
checkpoint behind.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from medseg.runtime import Progress, ShouldStop, check_stop, report


class TrainingRun(Protocol):
    """A training run between steps."""

    @property
    def step(self) -> int:
        """Steps completed so far."""

    def train_step(self) -> None:
        """One optimiser step (it advances ``step``)."""

    def after_step(self) -> None:
        """What is due after step ``step``: validation, snapshots, checkpoints."""

    def checkpoint_on_stop(self) -> AbstractContextManager[None]:
        """A context that checkpoints the completed steps when the block is interrupted, then lets it go on up."""


def run_steps(run: TrainingRun, *, steps: int, what: str, finish: Callable[[], None] | None = None,
              progress: Progress | None = None, should_stop: ShouldStop | None = None) -> None:
    """Train ``run`` from its step to ``steps``, then ``finish`` (the final validation or checkpoint),
    all under ``run.checkpoint_on_stop()``; ``should_stop`` is asked before every step (``Cancelled``
    naming ``what``), ``progress(step, steps)`` is told after every step."""
    with run.checkpoint_on_stop():
        while run.step < steps:
            check_stop(should_stop, what)
            run.train_step()
            run.after_step()
            report(progress, run.step, steps)
        if finish is not None:
            finish()
