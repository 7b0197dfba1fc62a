"""Background work for the panels: one medseg call in a napari thread worker.

A ``Task`` runs ``fn(progress, should_stop)`` off the UI thread, so the viewer keeps
painting and answering while SAM2 propagates. Progress reported from the worker (the
``progress(done, total)`` callback the medseg engines take) reaches the UI thread through a
queued Qt signal and moves both napari's activity progress bar (which has a cancel button)
and the panel's own bar. Cancel sets a flag that engines poll through ``should_stop``; for
engines without that hook, the next ``progress`` call raises ``TaskCancelled``.

Errors end up as viewer notifications, not tracebacks: a ``MedsegError`` (missing
checkpoint, bad prompt...) is caught in the worker and shown as its message, which already
names the file or field and says what to do. Anything else is a bug: napari's worker shows
it with its traceback, and the task's ``on_error`` still runs so the panel can recover.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from medseg.errors import MedsegError

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
StopFlag = Callable[[], bool]


class TaskCancelled(Exception):
    """Raised inside a task's function to end it early at the user's request."""


class _ProgressRelay(QObject):
    """Carries ``(done, total)`` from the worker thread to the UI thread (queued connection)."""

    advanced = Signal(int, int)


@dataclass(frozen=True)
class _Outcome:
    """What the worker hands back: a value, or the expected error that stopped it."""

    value: Any = None
    error: Exception | None = None


class Task:
    """One running call; see the module docstring.

    Parameters
    ----------
    fn
        ``fn(progress, should_stop) -> result``, run in a worker thread.
    label
        What the user sees in the activity dock and in messages (``"Propagate"``).
    on_done
        Called on the UI thread with the result.
    bar
        A panel progress bar to move along (optional).
    on_error
        Called on the UI thread when the call failed or was cancelled (to reset state).
    on_finish
        Called on the UI thread when the task ends in any way (to re-enable buttons).
    """

    def __init__(
        self,
        fn: Callable[[Progress, StopFlag], Any],
        *,
        label: str,
        on_done: Callable[[Any], None],
        bar: QProgressBar | None = None,
        on_error: Callable[[], None] | None = None,
        on_finish: Callable[[], None] | None = None,
    ) -> None:
        self.label = label
        self.finished = False  # True once the result or error has been handled on the UI thread
        self._on_done = on_done
        self._on_error = on_error
        self._on_finish = on_finish
        self._stop = threading.Event()
        self._bar = bar
        self._relay = _ProgressRelay()
        self._relay.advanced.connect(self._show_progress)
        self._pbar = cancelable_progress(total=0, desc=label, cancel_callback=self.cancel)
        if bar is not None:
            bar.setRange(0, 0)  # busy until the first progress report
            bar.setFormat(f"{label}: %v / %m")

        def progress(done: int, total: int) -> None:
            # Engines without a ``should_stop`` hook still call back between slices: stop there.
            if self._stop.is_set():
                raise TaskCancelled
            self._relay.advanced.emit(done, total)

        def guarded() -> _Outcome:
            try:
                return _Outcome(fn(progress, self._stop.is_set))
            except (MedsegError, TaskCancelled) as error:
                return _Outcome(error=error)

        self.worker = create_worker(
            guarded, _start_thread=False,
            _connect={"returned": self._returned, "errored": self._errored, "finished": self._finished},
        )

    def start(self) -> "Task":
        self.worker.start()
        return self

    def cancel(self) -> None:
        """Ask the engine to stop at its next check (between slices)."""
        self._stop.set()

    def _show_progress(self, done: int, total: int) -> None:
        if self._pbar.total != total:
            self._pbar.total = total
        self._pbar.update(done - self._pbar.n)
        if self._bar is not None:
            self._bar.setRange(0, max(total, 1))
            self._bar.setValue(done)

    def _returned(self, outcome: _Outcome) -> None:
        if outcome.error is None:
            self._on_done(outcome.value)
            return
        self._failed()
        if isinstance(outcome.error, TaskCancelled):
            show_warning(f"{self.label}: cancelled")
        else:
            show_error(f"{self.label}: {outcome.error}")

    def _errored(self, error: BaseException) -> None:
        logger.error("%s failed", self.label, exc_info=(type(error), error, error.__traceback__))
        self._failed()

    def _failed(self) -> None:
        if self._bar is not None:
            self._bar.setRange(0, 1)
            self._bar.setValue(0)
        if self._on_error is not None:
            self._on_error()

    def _finished(self) -> None:
        self._pbar.close()
        self.finished = True
        if self._on_finish is not None:
            self._on_finish()


class TaskControls(QWidget):
    """Run and Cancel buttons, a progress bar and a status line: one panel's engine call."""

    def __init__(self, run_text: str = "Run", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.task: Task | None = None
        self.run = QPushButton(run_text)
        self.cancel = QPushButton("Cancel")
        self.cancel.setEnabled(False)
        self.cancel.clicked.connect(lambda: self.task is not None and self.task.cancel())
        self.progress = QProgressBar()
        self.status = QLabel()
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run)
        buttons.addWidget(self.cancel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

    def start(self, fn: Callable[[Progress, StopFlag], Any], *, label: str, on_done: Callable[[Any], None]) -> None:
        """Run ``fn`` as a ``Task``; Run is disabled and Cancel enabled until it ends."""
        self.run.setEnabled(False)
        self.cancel.setEnabled(True)
        self.show_status(f"{label}…")
        self.task = Task(fn, label=label, on_done=on_done, bar=self.progress, on_error=lambda: self.show_status(""),
                         on_finish=self._finished)
        self.task.start()

    def show_status(self, text: str, *, warn: bool = False) -> None:
        """``text`` under the progress bar; ``warn`` shows it in red (untrained models)."""
        self.status.setText(text)
        self.status.setStyleSheet("color: #ff6060" if warn else "")

    def _finished(self) -> None:
        self.run.setEnabled(True)
        self.cancel.setEnabled(False)
