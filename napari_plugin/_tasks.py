"""Background work for the panels: one medseg call in a napari thread worker.

A ``Task`` runs ``fn(progress, should_stop)`` off the UI thread, so the viewer keeps
painting and answering while SAM2 propagates. Progress reported from the worker (the
``progress(done, total)`` callback the medseg engines take) reaches the UI thread through a
queued Qt signal and moves both napari's activity progress bar (which has a cancel button)
and the panel's own bar. Cancel sets a flag that engines poll through ``should_stop``; for
engines without that hook, the next ``progress`` call raises ``TaskCancelled``.

The progress text names the phase (engines announce a new phase by growing ``total``;
a panel may name its phases) and an ETA from the pace of the work itself (``Eta``): the time
before a phase's first report (model loading, session setup) does not count. Progress signals arrive once
per slice, but the bars are repainted at most every ``_REPAINT_S`` (and not at all during the first
``_FEEDBACK_AFTER_MS``), and a repaint of the panel's bar is only scheduled, never done on the
spot (see ``Task._paint``).

Repaints are what slows a task down inside napari. napari's main window handles its events in
Python (``_QtMainWindow.event``), and every repaint of any widget in the window runs inside
that handler with the GIL held, so the worker thread waits for it; with a canvas in the
window, each repaint composes the whole window in OpenGL, which takes tens of milliseconds
with software rendering (Mesa llvmpipe: remote desktops, VMs, Xvfb). napari's animated
"in progress" spinner repaints ~25 times a second; measured on a 12-slice propagation it made
the call 2-6x slower than the library call. A task therefore starts its worker first, then
shows its activity bar with the spinner paused (``_pause_activity_spinner``), and only when
the task is still running after ``_ACTIVITY_AFTER_MS``: making the bar takes 0.15-0.4 s of the
UI thread (several window compositions), and the panel shows the same progress and Cancel.

Until then the task shows nothing at all: the panel's controls change state at once (Run
disabled, Cancel enabled: what guards against a second start) but are not repainted
(``TaskControls`` turns their updates off), and neither the bar nor the live slices are
painted. A short call (a click, or a propagation with a small model) thus costs one window
composition, when its result is shown. Each composition the UI thread made meanwhile (the
controls' new state, the bar, a live slice: 20-90 ms each under llvmpipe on a loaded machine)
was measured to lengthen the worker's call by as much: 0.4-0.5 s on a 0.7 s propagate in all.
One second is the limit below which users need no sign that the computer is working (Nielsen,
*Usability Engineering*, 1993, section 5.5); past it the panel, the activity bar and the live
view show up, and the bars are repainted every ``_REPAINT_S``.

Errors end up as viewer notifications and, in full, in the panel's status (a toast is cut
short): a ``MedsegError`` (missing checkpoint, bad prompt...) is caught in the worker and
shown as its message, which already names the file or field and says what to do;
``Cancelled`` (the engine stopped at the user's request) is a warning. Anything else is a
bug: napari's worker shows it with its traceback, and the task's ``on_error`` still runs so
the panel can recover.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import QProgressBar

from medseg.errors import Cancelled, MedsegError
from medseg.runtime import Progress, ShouldStop

log = logging.getLogger(__name__)

StopFlag = ShouldStop
_REPAINT_S = 0.5
_FEEDBACK_AFTER_MS = 1000
_ACTIVITY_AFTER_MS = 3000


class TaskCancelled(Cancelled):
    """Raised from ``progress`` when an engine without ``should_stop`` reports after Cancel."""


def progress_text(label: str, done: int, total: int, *, phase: str, left_s: float | None) -> str:
    """``"Propagate (forward pass): 12 / 32, about 4 s left"``: what the bar shows.

    >>> progress_text("Run", 5, 20, phase="pass 1", left_s=30.2)
    'Run (pass 1): 5 / 20, about 30 s left'
    """
    text = f"{label} ({phase})" if phase else label
    text += f": {done} / {total}"
    if left_s is not None and 0 < done < total:
        text += f", about {left_s:.0f} s left"
    return text


class Eta:
    """Seconds left in a phase, from its pace since its first report.

    The first report of a phase comes after whatever preceded the work (loading the model,
    building the session, encoding the prompted slice); counting from there keeps that
    one-off time out of the estimate, which otherwise starts far too high and then falls.

    >>> eta = Eta()
    >>> eta.update(1, 32, now=10.0) is None  # 10 s of loading before the first slice
    True
    >>> eta.update(3, 32, now=11.0), eta.update(5, 32, now=12.0)
    (14.5, 13.5)
    >>> eta.update(1, 64, now=13.0) is None  # a new phase (total grew) starts afresh
    True
    """

    def __init__(self) -> None:
        self._total = 0
        self._start: tuple[int, float] | None = None

    def update(self, done: int, total: int, *, now: float) -> float | None:
        """Report ``done`` of ``total`` at time ``now``; seconds left, or None until there is a pace."""
        if total != self._total or self._start is None:
            self._total, self._start = total, (done, now)
            return None
        done0, t0 = self._start
        if done <= done0 or now <= t0:
            return None
        return (now - t0) / (done - done0) * (total - done)


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
        Called on the UI thread with the message when the call failed or was cancelled.
    on_finish
        Called on the UI thread when the task ends in any way (to re-enable buttons).
    on_progress
        Called on the UI thread with ``(done, total)``, at most every ``_REPAINT_S``
        and once at the end (live results).
    phases
        Names of the phases; the engine starts the next one when it grows ``total``.
    on_feedback
        Called on the UI thread once the task has run ``_FEEDBACK_AFTER_MS`` (see the module
        docstring), before the first progress is painted.
    """

    def __init__(
        self,
        fn: Callable[[Progress, StopFlag], Any],
        *,
        label: str,
        on_done: Callable[[Any], None],
        bar: QProgressBar | None = None,
        on_error: Callable[[str], None] | None = None,
        on_finish: Callable[[], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        phases: tuple[str, ...] = (),
        on_feedback: Callable[[], None] | None = None,
    ) -> None:
        self.label = label
        self.finished = False  # True once the result or error has been handled on the UI thread
        self._on_done = on_done
        self._on_error = on_error
        self._on_finish = on_finish
        self._on_progress = on_progress
        self._on_feedback = on_feedback
        self._quiet = True  # nothing painted until _FEEDBACK_AFTER_MS
        self._phases = phases
        self._phase = 0
        self._total = 0
        self._latest = (0, 0)
        self._painted_at = 0.0
        self._eta = Eta()
        self._left_s: float | None = None
        self._stop = threading.Event()
        self._bar = bar
        self._relay = _ProgressRelay()
        self._relay.advanced.connect(self._show_progress)
        self._pbar = None  # napari's activity bar, made once the worker runs
        if bar is not None:
            with _scheduled_repaint(bar):
                bar.setRange(0, 1)  # not a busy bar: its animation repaints all the time
                bar.setValue(0)
                bar.setFormat(f"{label}…")

        def progress(done: int, total: int) -> None:
            # Engines without a ``should_stop`` hook still call back between slices: stop there.
            if self._stop.is_set():
                raise TaskCancelled(f"{label} stopped on request")
            self._relay.advanced.emit(done, total)

        def guarded() -> _Outcome:
            try:
                return _Outcome(fn(progress, self._stop.is_set))
            except (MedsegError, Cancelled) as error:
                return _Outcome(error=error)

        self.worker = create_worker(
            guarded, _start_thread=False,
            _connect={"returned": self._returned, "errored": self._errored, "finished": self._finished},
        )

    def start(self) -> "Task":
        self.worker.start()
        QTimer.singleShot(_FEEDBACK_AFTER_MS, self._show_feedback)
        QTimer.singleShot(_ACTIVITY_AFTER_MS, self._show_activity)
        return self

    def _show_feedback(self) -> None:
        """For a task still running: the panel and the progress so far."""
        if self.finished:
            return
        self._quiet = False
        if self._on_feedback is not None:
            self._on_feedback()
        if self._latest[1]:
            self._painted_at = time.perf_counter()
            self._paint()

    def _show_activity(self) -> None:
        """napari's activity bar (with its Cancel), for a task still running (see the module docstring)."""
        if self.finished:
            return
        self._pbar = cancelable_progress(total=0, desc=self.label, cancel_callback=self.cancel)
        _pause_activity_spinner()

    def cancel(self) -> None:
        """Ask the engine to stop at its next check (between slices)."""
        self._stop.set()

    @property
    def phase(self) -> str:
        """The current phase's name ("" when the panel named none)."""
        if not self._phases:
            return f"pass {self._phase + 1}" if self._phase else ""
        return self._phases[min(self._phase, len(self._phases) - 1)]

    def _show_progress(self, done: int, total: int) -> None:
        if total > self._total > 0:
            self._phase += 1
        self._total = total
        self._latest = (done, total)
        now = time.perf_counter()
        self._left_s = self._eta.update(done, total, now=now)
        if self._quiet or (done < total and now - self._painted_at < _REPAINT_S):
            return
        self._painted_at = now
        self._paint()

    def _paint(self) -> None:
        done, total = self._latest
        text = progress_text(self.label, done, total, phase=self.phase, left_s=self._left_s)
        if self._pbar is not None:  # None while start() makes it (napari may process events then)
            if self._pbar.total != total:
                self._pbar.total = total
            self._pbar.set_description(text)
            self._pbar.update(done - self._pbar.n)
        if self._bar is not None:
            with _scheduled_repaint(self._bar):
                self._bar.setRange(0, max(total, 1))
                self._bar.setValue(done)
                self._bar.setFormat(text.replace("%", "%%"))
        if self._on_progress is not None:
            self._on_progress(done, total)

    def _returned(self, outcome: _Outcome) -> None:
        if self._latest[1]:
            self._paint()  # the last throttled report
        if outcome.error is None:
            self._on_done(outcome.value)
            return
        if isinstance(outcome.error, Cancelled):
            message = f"{self.label}: cancelled; nothing was changed."
            show_warning(message)
        else:
            message = f"{self.label}: {outcome.error}"
            show_error(message)
        self._failed(message)

    def _errored(self, error: BaseException) -> None:
        log.error("%s failed", self.label, exc_info=(type(error), error, error.__traceback__))
        self._failed(f"{self.label} failed: {type(error).__name__}: {error} (a bug: please report it with the log)")

    def _failed(self, message: str) -> None:
        if self._bar is not None:
            self._bar.setRange(0, 1)
            self._bar.setValue(0)
            self._bar.setFormat("")
        if self._on_error is not None:
            self._on_error(message)

    def _finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
        self.finished = True
        if self._on_finish is not None:
            self._on_finish()


@contextmanager
def _scheduled_repaint(bar: QProgressBar) -> Iterator[None]:
    """Changes to ``bar`` inside only schedule a repaint, and none while its panel holds repaints back.

    QProgressBar.setValue repaints at once (a whole window composition with software GL); with
    updates off it only schedules one, which Qt merges with the others of this tick.
    """
    enabled = not bar.testAttribute(Qt.WidgetAttribute.WA_ForceUpdatesDisabled)  # its own setting, not its parent's
    bar.setUpdatesEnabled(False)
    try:
        yield
    finally:
        bar.setUpdatesEnabled(enabled)


def _pause_activity_spinner() -> None:
    """Show napari's "in progress" spinner as a still frame (see the module docstring).

    napari has no public switch for it: this reaches into its activity dialog and does
    nothing when a napari version lays it out differently (``tests/test_napari_tasks.py``
    checks that the spinner is found and still).
    """
    try:
        from napari._qt.qt_main_window import _QtMainWindow

        window = _QtMainWindow.current()
        movie = window._activity_dialog._toggleButton._inProgressIndicator.movie()
    except AttributeError:
        log.debug("napari's activity spinner not found; left animated")
        return
    if movie is not None:
        movie.setPaused(True)
