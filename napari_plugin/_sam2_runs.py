"""The SAM2 panel's model calls: Segment object, Propagate and Precompute embeddings.

Each call is prepared on the UI thread (the workspace's plan: which markers SAM2 has not seen,
whether its session must be rebuilt for another model or preset), runs in the panel's
``TaskControls`` worker (the session is brought in step with the markers there, then the
model runs), and is committed on the UI thread when it returns: the workspace takes the new
session, the labels layer shows the result, the history keeps what was there before. A
failed or cancelled call leaves the labels as they were and forgets the session.

``Sam2Runs`` knows the panel only through what it is given: the task controls, the current
workspace and model choice, and ``on_changed`` (called when a call starts and when a result
is in, e.g. to show "Go to the slice to correct next") and ``on_session`` (after a call, to show
the preset the session uses: the user's pick, else the library's ``choose_preset`` with the model's
training preset first, as in ``medseg segment``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
from napari.utils.notifications import show_error, show_info

from medseg.errors import MedsegError

from napari_plugin._model_picker import LoadedModels, ModelChoice
from napari_plugin._sam2_workspace import Plan, SessionKey, Workspace, check_foreground, check_markers
from napari_plugin._task_controls import TaskControls
from napari_plugin._tasks import Progress, StopFlag

UNTRAINED_NOTE = " UNTRAINED MODEL: the masks are meaningless."


def _model_note(result) -> str:
    """What the status adds about the model: untrained (random weights) or undertrained."""
    from medseg.volume import undertrained_note

    if result.untrained:
        return UNTRAINED_NOTE
    note = undertrained_note(result.provenance)
    return f" {note[0].upper()}{note[1:]}." if note else ""


class Sam2Runs:
    """Segment object, Propagate and Precompute (the panel's buttons and keys call them)."""

    def __init__(self, controls: TaskControls, models: LoadedModels, *, workspace: Callable[[], Workspace | None],
                 model: Callable[[], ModelChoice], on_changed: Callable[[], None],
                 on_session: Callable[[Workspace], None]) -> None:
        self.controls = controls
        self.models = models  # one predictor per model choice, shared by the panels
        self._workspace = workspace
        self._model = model
        self._on_changed = on_changed
        self._on_session = on_session  # after a call: show the preset the session uses

    def _refuse(self, message: str) -> None:
        show_error(message)
        self.controls.show_status(message, warn=True)

    def _prepare(self) -> tuple[Workspace, SessionKey, Plan] | None:
        """The workspace, session key and plan for the next call; a message instead when unusable."""
        ws = self._workspace()
        if ws is None:
            show_error("Pick a 3D image layer first (File ▸ Open a DICOM folder or NIfTI file).")
            return None
        ws.restore_layers()
        flat = ws.drop_flat_boxes()
        if flat:
            where = ", ".join(f"object {m.obj_id} on slice {m.z}" for m in flat)
            self._refuse(f"Removed {len(flat)} box(es) without area ({where}): a click without a drag, a box outside "
                         "the image, or one drawn in a coronal or sagittal view. Drag a box on an axial slice, or use "
                         "points or scribbles in other views; then press again.")
            return None
        try:
            key = (self._model(), ws.chosen_preset)
            plan = ws.plan(key)
            check_markers(plan.markers, ws.volume.shape)
            check_foreground(ws.markers(), ws.labels.data if ws.labels is not None else None)
        except MedsegError as error:
            self._refuse(str(error))
            return None
        return ws, key, plan

    def _syncer(self, ws: Workspace, key: SessionKey, plan: Plan):
        """A worker-side function bringing the (new) session in step with the markers."""
        session = None if plan.rebuild else ws.session
        names = dict(ws.objects)
        volume, models = ws.volume, self.models

        def sync():
            nonlocal session
            if session is None:
                session = models.get(key[0]).session(volume, preset=key[1])
            return session, plan.apply(session, names)

        return sync

    def _start(self, run, label: str, on_done, ws: Workspace, key: SessionKey, *, on_error=None,
               on_progress=None) -> None:
        loading = key[0] not in self.models
        status = f"{label}: loading {key[0].model} (once per napari session)…" if loading else None

        def failed(message: str) -> None:
            ws.forget_session()
            if on_error is not None:
                on_error(message)

        def finished(outcome) -> None:
            on_done(outcome)
            self._on_session(ws)

        ws.correct_next = None
        self.controls.start(run, label=label, on_done=finished, on_error=failed, on_progress=on_progress, status=status)
        self._on_changed()  # after start: not repainted while a short call runs (see _tasks)

    def segment(self) -> None:
        prepared = self._prepare()
        if prepared is None:
            return
        ws, key, plan = prepared
        if not plan.markers and not plan.undo:
            show_info("No new points or boxes: click on the object first (shift-click for background).")
            return
        sync, before = self._syncer(ws, key, plan), ws.snapshot()

        def run(progress: Progress, should_stop: StopFlag):
            session, slices = sync()
            return session, slices, session.result()

        def done(outcome) -> None:
            session, slices, result = outcome
            ws.commit(key, session, plan)
            ws.paint_slices(slices, result)
            ws.history.push(before)
            shown = ", ".join(str(z) for z in sorted(slices)) or "none"
            note = _model_note(result)
            self.controls.show_status(f"Segmented on slice {shown} with {result.provenance['model']}.{note}",
                                            warn=result.untrained)

        self._start(run, "Segment object", done, ws, key)

    def propagate(self) -> None:
        prepared = self._prepare()
        if prepared is None:
            return
        ws, key, plan = prepared
        if not plan.markers and not ws.sent:
            show_info("Nothing to propagate: place points or a box on the object first.")
            return
        sync, before = self._syncer(ws, key, plan), ws.snapshot()
        finished: dict[int, np.ndarray] = {}  # slices done and not shown yet (worker -> UI thread)
        lock = threading.Lock()

        def keep(z: int, label_slice: np.ndarray) -> None:
            with lock:
                finished[z] = label_slice.copy()

        def show_finished(*_: int) -> None:
            with lock:
                slices = dict(finished)
                finished.clear()
            if slices:
                ws.paint_slices(slices)

        def run(progress: Progress, should_stop: StopFlag):
            started = time.perf_counter()
            session, _ = sync()
            result = session.propagate(progress=progress, should_stop=should_stop, on_slice=keep)
            return session, result, time.perf_counter() - started

        def done(outcome) -> None:
            from medseg.sam2.qc import qc_summary  # torch is loaded by now

            session, result, seconds = outcome
            ws.commit(key, session, plan)
            ws.show_result(result)
            ws.history.push(before)
            summary = qc_summary(ws.result())
            ws.correct_next = summary.correct_next()
            note = _model_note(result)
            self.controls.show_status(
                f"Propagated {len(result.label_names)} object(s) through {ws.volume.shape[0]} slices in "
                f"{seconds:.1f} s with {result.provenance['model']}.{note}\n{summary.to_text()}",
                warn=result.untrained,
            )
            self._on_changed()

        def failed(_: str) -> None:
            with lock:
                finished.clear()
            if ws.labels is not None:
                ws.labels.data[...] = before.labels_array()  # the slices shown so far go
                ws.labels.refresh()

        self._start(run, "Propagate", done, ws, key, on_error=failed, on_progress=show_finished)

    def precompute(self) -> None:
        """Encode every slice ahead of the clicks (``Sam2Session.precompute``), cancellable."""
        prepared = self._prepare()
        if prepared is None:
            return
        ws, key, plan = prepared
        sync = self._syncer(ws, key, plan)

        def run(progress: Progress, should_stop: StopFlag):
            session, slices = sync()
            session.precompute(progress=progress, should_stop=should_stop)
            return session, slices

        def done(outcome) -> None:
            session, slices = outcome
            ws.commit(key, session, plan)
            if slices:
                ws.paint_slices(slices, session.result())
            self.controls.show_status(f"Embeddings of {ws.volume.shape[0]} slices ready: clicks are fast now.")

        self._start(run, "Precompute embeddings", done, ws, key)
