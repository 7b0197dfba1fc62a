"""The Run / Cancel / progress / status block every panel's engine calls go through
(``TaskControls``), around the ``Task`` of ``_tasks`` (whose docstring says why the controls are
not repainted during a call's first second)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea, QVBoxLayout, QWidget

from napari_plugin._tasks import Progress, StopFlag, Task

_STATUS_MAX_HEIGHT = 110


class TaskControls(QWidget):
    """Run and Cancel buttons, a progress bar and a status area: one panel's engine calls.

    The status keeps the full text of the last message (errors included), in a scroll area
    of capped height, so a long message never pushes the panel's other controls away.
    """

    def __init__(self, run_text: str = "Run", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.task: Task | None = None
        self.run = QPushButton(run_text)
        self.cancel = QPushButton("Cancel")
        self.cancel.setEnabled(False)
        self.cancel.clicked.connect(lambda: self.task is not None and self.task.cancel())
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status_area = QScrollArea()
        self.status_area.setWidgetResizable(True)
        self.status_area.setWidget(self.status)
        self.status_area.setMaximumHeight(_STATUS_MAX_HEIGHT)
        self.status_area.setFrameShape(QScrollArea.Shape.NoFrame)
        self.busy_widgets: list[QWidget] = []  # disabled while a task runs
        self.quiet_widgets: list[QWidget] = []  # others a call changes: not repainted while it is short
        buttons = QHBoxLayout()
        buttons.addWidget(self.run)
        buttons.addWidget(self.cancel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_area)

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.finished

    def start(
        self,
        fn: Callable[[Progress, StopFlag], Any],
        *,
        label: str,
        on_done: Callable[[Any], None],
        on_error: Callable[[str], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        phases: tuple[str, ...] = (),
        status: str | None = None,
    ) -> Task:
        """Run ``fn`` as a ``Task``; Run (and ``busy_widgets``) disabled, Cancel enabled until it ends.

        ``status``: what to say while it runs (default ``"label…"``); ``on_error`` runs after
        the message is shown in the status.
        """
        for widget in self._changing():  # shown after _FEEDBACK_AFTER_MS (see the module docstring)
            widget.setUpdatesEnabled(False)
        self._set_busy(True)
        self.show_status(status or f"{label}…")

        def failed(message: str) -> None:
            self.show_status(message, warn=True)
            if on_error is not None:
                on_error(message)

        def finish() -> None:
            self._set_busy(False)
            self._show_panel()

        self.task = Task(fn, label=label, on_done=on_done, bar=self.progress, on_error=failed, on_finish=finish,
                         on_progress=on_progress, phases=phases, on_feedback=self._show_panel)
        return self.task.start()

    def show_status(self, text: str, *, warn: bool = False) -> None:
        """``text`` under the progress bar; ``warn`` shows it in red (errors, untrained models)."""
        self.status.setText(text)
        self.status.setStyleSheet("color: #ff6060" if warn else "")

    def _changing(self) -> tuple[QWidget, ...]:
        """What a call changes in the panel: only these are repainted when it shows (a small region)."""
        return (self.run, self.cancel, self.progress, self.status, *self.busy_widgets, *self.quiet_widgets)

    def _show_panel(self) -> None:
        """Repaint what changed meanwhile (one window composition for all of it)."""
        for widget in self._changing():
            widget.setUpdatesEnabled(True)

    def _set_busy(self, busy: bool) -> None:
        for widget in (self.run, *self.busy_widgets):
            widget.setEnabled(not busy)
        self.cancel.setEnabled(busy)
