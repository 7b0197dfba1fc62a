"""Executors: where ``run_case`` runs. Both take the same picklable tasks and yield results as
cases finish, so a cohort moves from a laptop to a cluster with no code change.

* ``LocalExecutor(workers=n)``: ``n == 1`` runs in this process; otherwise a pool of ``n``
  spawned processes, each loading a method's model once and keeping it (one model per
  worker), with ``torch`` threads split between them.
* ``RayExecutor(address=...)``: one Ray task per case on a running Ray cluster (``address``
  such as ``"ray://head:10001"`` or ``"auto"``; None starts a local instance), each asking for
  ``num_cpus`` and ``num_gpus``. Workers are reused (also for GPU tasks, which Ray would
  otherwise end after one call), so each keeps its model between cases as in the local pool. The results folder and the cohort's files must be on a
  file system every node sees at the same path.

On Ctrl-C, queued cases are cancelled; finished cases are already on disk.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from medseg.errors import ConfigError

logger = logging.getLogger(__name__)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class LocalExecutor:
    """Run cases in this process (``workers=1``) or a pool of spawned worker processes."""

    def __init__(self, *, workers: int = 1) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.workers = workers

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        tasks = list(tasks)
        if self.workers == 1 or len(tasks) <= 1:
            yield from map(fn, tasks)
            return
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        pool = ProcessPoolExecutor(
            max_workers=min(self.workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(threads,),
        )
        try:
            futures = [pool.submit(fn, task) for task in tasks]
            for future in as_completed(futures):
                yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def check(self) -> None:
        """Nothing to check: this machine's processes are always there."""

    def describe(self) -> str:
        return f"local ({self.workers} worker{'s' if self.workers > 1 else ''})"


class RayExecutor:
    """Run each case as a Ray task with the given resource requests."""

    def __init__(self, *, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0) -> None:
        if num_cpus < 0 or num_gpus < 0:
            raise ConfigError(f"Ray resources must be >= 0, got num_cpus={num_cpus}, num_gpus={num_gpus}")
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
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

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        import ray

        self.check()
        # max_calls=0: Ray would otherwise end a GPU task's worker after one call, and with it
        # the model that worker loaded; kept, each worker loads each model once.
        remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_calls=0)(fn)
        pending = [remote.remote(task) for task in tasks]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        finally:
            for ref in pending:
                ray.cancel(ref)
            if self._started:
                ray.shutdown()
                self._started = False

    def describe(self) -> str:
        return f"ray ({self.address or 'local'}, {self.num_cpus} CPU, {self.num_gpus} GPU per case)"
