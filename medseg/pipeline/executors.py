"""Executors: where the cases run. Both take the same picklable tasks and yield results as
cases finish, so a cohort moves from a laptop to a cluster with no code change.

* ``LocalExecutor(workers=n)``: ``n == 1`` (and no ``case_timeout``) runs in this process;
  otherwise ``n`` spawned worker processes, each with one ``Worker`` (one loaded model) and
  ``torch`` threads split between them.
* ``RayExecutor(address=...)``: ``workers`` Ray actors on a running Ray cluster (``address``
  such as ``"ray://head:10001"`` or ``"auto"``; None starts a local instance), each asking for
  ``num_cpus`` and ``num_gpus`` and keeping its model between cases. The results folder and
  the cohort's files must be on a file system every node sees at the same path.

Fault tolerance, the same on both: a worker process that dies (killed by the OOM killer, a
segfault in a native library) or runs one case longer than ``case_timeout`` seconds (counted
from when a started worker gets the case, so a worker's start-up never counts) is
replaced; its case is tried again up to ``retries`` times (as are failures that are not the
input's fault, such as a device error), then recorded as failed with the cause ("worker
died: signal 9 (SIGKILL) — out of memory?"). The run goes on.

``should_stop()`` is asked before each case starts: the cases in flight finish, then
``Cancelled`` is raised. On Ctrl-C the workers are ended; finished cases are on disk.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait as wait_ready
from typing import Any, Protocol

from medseg.errors import Cancelled, ConfigError
from medseg.runtime import ShouldStop

log = logging.getLogger(__name__)

Lost = Callable[..., dict]  # lost(task, cause, attempts=n) -> the failed result it recorded

_SIGNAL_HINTS = {signal.SIGKILL: " — out of memory?", signal.SIGSEGV: " — a crash in a native library",
                 signal.SIGABRT: " — a crash in a native library"}


def death_cause(exitcode: int | None) -> str:
    """Why a worker process ended, in words: ``worker died: signal 9 (SIGKILL) — out of memory?``."""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        return f"worker died: signal {number} ({name}){_SIGNAL_HINTS.get(number, '')}"
    return f"worker died: exit code {exitcode}"


class _Slot(Protocol):
    """One worker: runs one task at a time."""

    def submit(self, task: Any) -> None: ...
    def stop(self) -> None: ...  # end the worker (kill it if it is busy)


def _schedule(
    tasks: Iterable[Any], *, workers: int, start: Callable[[], _Slot],
    wait: Callable[[list[_Slot], float | None], list[tuple[_Slot, dict | str]]],
    lost: Lost, retries: int, case_timeout: float | None, should_stop: ShouldStop | None,
) -> Iterator[dict]:
    """The loop every executor shares: keep ``workers`` slots busy, replace dead or overrunning
    ones, retry what may be transient, yield each case's result. ``wait`` returns, per finished
    slot, the result dict or the cause of the worker's death (a string)."""
    queue = deque((task, 1) for task in tasks)
    idle: list[_Slot] = []
    busy: dict[_Slot, tuple[Any, int, float]] = {}  # slot -> (task, attempt, started)
    try:
        while queue or busy:
            stopping = should_stop is not None and should_stop()
            while queue and not stopping and len(busy) < workers:
                slot = idle.pop() if idle else start()
                task, attempt = queue.popleft()
                slot.submit(task)
                busy[slot] = (task, attempt, time.monotonic())
            if not busy:
                break
            deadline = None if case_timeout is None else min(s for _, _, s in busy.values()) + case_timeout
            finished = wait(list(busy), None if deadline is None else max(0.0, deadline - time.monotonic()))
            if case_timeout is not None:
                now = time.monotonic()
                finished += [(slot, f"case took longer than the case timeout ({case_timeout:g} s); its worker "
                                    "was stopped")
                             for slot, (_, _, started) in busy.items()
                             if now - started >= case_timeout and slot not in dict(finished)]
            for slot, outcome in finished:
                task, attempt, _ = busy.pop(slot)
                if isinstance(outcome, dict):
                    idle.append(slot)
                    error = outcome.get("error") or {}
                    if outcome["status"] != "failed" or not error.get("retryable") or attempt > retries:
                        yield outcome
                        continue
                    cause = error.get("message", "")
                else:
                    slot.stop()
                    cause = outcome
                    if attempt > retries:
                        yield lost(task, cause, attempts=attempt)
                        continue
                log.warning("%s; trying again (attempt %d of %d)", cause, attempt + 1, retries + 1)
                queue.appendleft((task, attempt + 1))
        if queue:
            raise Cancelled(f"the pipeline run stopped on request; {len(queue)} case run(s) not started (a re-run "
                            "resumes)")
    finally:
        for slot in idle + list(busy):
            slot.stop()


# --- local ------------------------------------------------------------------------------------
class _InlineSlot:
    """The worker of an in-process run: the task runs inside ``wait``."""

    def __init__(self, make_worker: Callable[[], Any]) -> None:
        self.worker = make_worker()
        self.task: Any = None

    def submit(self, task: Any) -> None:
        self.task = task

    def stop(self) -> None:
        self.worker = None

    @staticmethod
    def wait(slots: list[_InlineSlot], timeout: float | None) -> list[tuple[_Slot, dict | str]]:
        return [(slot, slot.worker.run(slot.task)) for slot in slots]


def _serve(conn, make_worker: Callable[[], Any], threads: int) -> None:
    """A worker process: one ``make_worker()`` for its life, one task at a time from ``conn``."""
    import torch

    torch.set_num_threads(threads)
    worker = make_worker()
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        conn.send(worker.run(task))


class _ProcessSlot:
    """A spawned worker process and the pipe to it."""

    def __init__(self, make_worker: Callable[[], Any], threads: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, make_worker, threads), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(600) or self._receive() != "ready":  # imports are not counted in a case's time
            self.stop()
            raise RuntimeError(f"a pipeline worker process could not start ({death_cause(self.process.exitcode)})")

    def _receive(self) -> Any:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            return death_cause(self.process.exitcode)

    def submit(self, task: Any) -> None:
        self.conn.send(task)

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()

    @staticmethod
    def wait(slots: list[_ProcessSlot], timeout: float | None) -> list[tuple[_Slot, dict | str]]:
        ready = set(wait_ready([s.conn for s in slots] + [s.process.sentinel for s in slots], timeout))
        return [(s, s._receive()) for s in slots if s.conn in ready or s.process.sentinel in ready]


class LocalExecutor:
    """Run cases in this process (``workers=1``) or in ``workers`` spawned worker processes.

    ``case_timeout`` (seconds per case, from when its worker gets it) needs worker processes,
    so it runs a pool even with one worker; so does a run that must survive a worker's death.
    """

    def __init__(self, *, workers: int = 1, case_timeout: float | None = None, retries: int = 0) -> None:
        _check_fault_settings(workers, case_timeout, retries)
        self.workers, self.case_timeout, self.retries = workers, case_timeout, retries

    def map(self, make_worker: Callable[[], Any], tasks: Iterable[Any], *, lost: Lost,
            should_stop: ShouldStop | None = None) -> Iterator[dict]:
        """Yield ``make_worker().run(task)`` for every task, as cases finish."""
        tasks = list(tasks)
        if self.workers == 1 and self.case_timeout is None:
            start, wait = (lambda: _InlineSlot(make_worker)), _InlineSlot.wait
        else:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            start, wait = (lambda: _ProcessSlot(make_worker, threads)), _ProcessSlot.wait
        yield from _schedule(tasks, workers=self.workers, start=start, wait=wait, lost=lost, retries=self.retries,
                             case_timeout=self.case_timeout, should_stop=should_stop)

    def check(self) -> None:
        """Nothing to check: this machine's processes are always there."""

    def describe(self) -> str:
        return f"local ({self.workers} worker{'s' if self.workers > 1 else ''}){_fault_description(self)}"


# --- Ray ----------------------------------------------------------------------------------------
class _RaySlot:
    """A Ray actor holding one ``Worker``, and the task it is running."""

    def __init__(self, actor_class, make_worker: Callable[[], Any]) -> None:
        import ray

        self.actor = actor_class.remote(make_worker)
        self.ref = None
        try:  # started before its first case, so that the case timeout counts the case's work, not imports
            ray.get(self.actor.ready.remote(), timeout=600)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
            self.stop()
            raise RuntimeError(f"a Ray pipeline worker could not start ({type(error).__name__})") from None

    def submit(self, task: Any) -> None:
        self.ref = self.actor.run.remote(task)

    def stop(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)

    @staticmethod
    def wait(slots: list[_RaySlot], timeout: float | None) -> list[tuple[_Slot, dict | str]]:
        import ray

        done, _ = ray.wait([s.ref for s in slots], num_returns=1, timeout=timeout)
        out = []
        for slot in slots:
            if slot.ref in done:
                try:
                    out.append((slot, ray.get(slot.ref)))
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError) as error:
                    out.append((slot, f"worker died: {type(error).__name__} "
                                      f"({str(error).strip().splitlines()[0][:200]})"))
        return out


class _RayWorker:
    """The Ray actor: one ``Worker`` for its life."""

    def __init__(self, make_worker: Callable[[], Any]) -> None:
        self.worker = make_worker()

    def ready(self) -> bool:
        return True

    def run(self, task: Any) -> dict:
        return self.worker.run(task)


class RayExecutor:
    """Run cases on ``workers`` Ray actors (default: as many as the cluster's resources allow)."""

    def __init__(self, *, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 workers: int | None = None, case_timeout: float | None = None, retries: int = 0) -> None:
        if num_cpus < 0 or num_gpus < 0:
            raise ConfigError(f"Ray resources must be >= 0, got num_cpus={num_cpus}, num_gpus={num_gpus}")
        _check_fault_settings(workers or 1, case_timeout, retries)
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.workers, self.case_timeout, self.retries = workers, case_timeout, retries
        self._started = False  # whether this executor started Ray (and so shuts it down)

    def check(self) -> None:
        """Connect (or start a local Ray) and refuse resource requests the cluster cannot meet."""
        try:
            import ray
        except ImportError:
            raise ConfigError("the Ray executor needs Ray: pip install 'medseg[distributed]'") from None
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False)
            self._started = True
        available = ray.cluster_resources()
        for name, wanted in (("CPU", self.num_cpus), ("GPU", self.num_gpus)):
            if wanted > available.get(name, 0):
                raise ConfigError(
                    f"each case asks for {wanted} {name} but the Ray cluster has {available.get(name, 0)}; "
                    f"lower --{name.lower()}s-per-case or add {name} nodes"
                )

    def _workers(self) -> int:
        import ray

        if self.workers is not None:
            return self.workers
        available = ray.cluster_resources()
        fits = [available.get(name, 0) // wanted for name, wanted in (("CPU", self.num_cpus), ("GPU", self.num_gpus))
                if wanted]
        return max(1, int(min(fits))) if fits else 1

    def map(self, make_worker: Callable[[], Any], tasks: Iterable[Any], *, lost: Lost,
            should_stop: ShouldStop | None = None) -> Iterator[dict]:
        """Yield ``make_worker().run(task)`` for every task, as cases finish."""
        import ray

        self.check()
        actor_class = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=0)(_RayWorker)
        try:
            yield from _schedule(tasks, workers=self._workers(), start=lambda: _RaySlot(actor_class, make_worker),
                                 wait=_RaySlot.wait, lost=lost, retries=self.retries, case_timeout=self.case_timeout,
                                 should_stop=should_stop)
        finally:
            if self._started:
                ray.shutdown()
                self._started = False

    def describe(self) -> str:
        return (f"ray ({self.address or 'local'}, {self.num_cpus} CPU, {self.num_gpus} GPU per case)"
                f"{_fault_description(self)}")


def _check_fault_settings(workers: int, case_timeout: float | None, retries: int) -> None:
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if case_timeout is not None and not case_timeout > 0:
        raise ConfigError(f"--case-timeout must be a number of seconds > 0, got {case_timeout}")
    if retries < 0:
        raise ConfigError(f"--retries must be 0 or more, got {retries}")


def _fault_description(executor) -> str:
    parts = ([f"case timeout {executor.case_timeout:g} s"] if executor.case_timeout else []) + (
        [f"{executor.retries} retries"] if executor.retries else [])
    return f", {', '.join(parts)}" if parts else ""
