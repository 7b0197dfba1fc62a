"""What every long-running engine shares: progress, cancellation, the device, checkpoints.

The engine contract (``shared/design/STYLE.md``):

* A long call takes ``progress: Progress | None`` and ``should_stop: ShouldStop | None``,
  keyword-only, with those names. ``progress(done, total)`` is called after each unit of
  work (a slice, a training step, a case, a chunk of a download); ``total`` may grow while
  the call learns more (a phase starts), never shrinks.
* ``should_stop()`` is asked between units of work (``check_stop``). When it says True the
  call undoes or finishes what it had half-done (no partial labels, no half-written file;
  a training loop saves a resumable checkpoint) and raises ``Cancelled``.
* The library never prints and never draws a progress bar: the CLI maps ``progress`` to
  tqdm, napari to its own progress, the pipeline to its per-case bookkeeping.

Devices and checkpoints are resolved and read here, once, for every engine:
``resolve_device`` (``None``/``"auto"`` = CUDA, then Apple MPS, then CPU), ``read_checkpoint``
(``torch.load(weights_only=True)``, an optional SHA-256 check, clear errors),
``read_training_state`` (an interrupted run's state, same loading rules) and ``sha256_file``.

Global torch state is borrowed, never taken: ``torch_threads`` and ``seeded`` set the thread
count and the random state for a block and restore them after it.

Logging: every module uses ``log = logging.getLogger(__name__)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.errors import Cancelled, InputError, WeightsError

if TYPE_CHECKING:
    import torch

Progress = Callable[[int, int], None]
"""``progress(done, total)``: ``done`` units of ``total`` are finished."""

ShouldStop = Callable[[], bool]
"""``should_stop()``: True asks the running call to stop at the next unit boundary."""

_CHUNK = 1 << 20


def check_stop(should_stop: ShouldStop | None, what: str) -> None:
    """Raise ``Cancelled`` naming ``what`` when ``should_stop()`` says so.

    Call it *between* units of work, where stopping leaves nothing half-done.
    """
    if should_stop is not None and should_stop():
        raise Cancelled(f"{what} stopped on request")


def report(progress: Progress | None, done: int, total: int) -> None:
    """Call ``progress(done, total)`` when there is a callback."""
    if progress is not None:
        progress(done, total)


class ProgressParts:
    """The passes of one call (e.g. reference prompting's forward, reverse and re-prompt passes)
    as one ``progress(done, total)`` stream: each pass reports through its own ``part``, and a
    pass larger than planned grows the call's total."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def part(self, counted: int = 0) -> Progress | None:
        """A pass's ``progress``, added to the call's; ``counted``: its units already in the total."""
        if self.progress is None:
            return None
        start = self.done

        def progress(done: int, total: int) -> None:
            nonlocal counted
            if total > counted:  # the pass is larger than planned: the call's total grows
                self.total += total - counted
                counted = total
            self.done = start + done
            report(self.progress, self.done, self.total)

        return progress


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (None: as they are), then restore the number.

    Float sums, and so masks near the threshold, depend on the thread count.
    """
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's random state seeded by ``seed`` (CPU and every CUDA GPU), then restore it."""
    import torch

    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=gpus):
        torch.manual_seed(seed)
        yield


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on.

    ``None`` or ``"auto"``: the first CUDA GPU, else Apple MPS, else the CPU. Anything else
    must name a device that exists here (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``);
    otherwise ``InputError`` says what is available.
    """
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device {device!r} is not a device name; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' "
                         f"(available here: {', '.join(available_devices())})") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU here; use 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= count:
            raise InputError(f"device {device!r} was asked for but only {count} CUDA GPU(s) exist here "
                             f"(cuda:0..cuda:{count - 1})")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {device!r} was asked for but Apple MPS is not available here; use 'cpu' "
                             "or 'auto'")
    elif resolved.type != "cpu":
        raise InputError(f"device {device!r} is not supported; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' "
                         f"(available here: {', '.join(available_devices())})")
    return resolved


def available_devices() -> list[str]:
    """The device names ``resolve_device`` accepts on this machine."""
    import torch

    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | Path, *, sha256: str | None = None,
                    what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict stored in a PyTorch checkpoint, loaded with ``weights_only=True``.

    Accepts a bare state dict or one under ``"model"`` or ``"state_dict"`` (Meta's, MedSAM2's
    and Lightning's layouts). ``sha256``: the expected checksum, verified before loading.
    Every failure is a ``WeightsError`` naming the file and what to do; PyTorch's own
    advice (``weights_only=False``, "file an issue") is not repeated, since following it would
    run code from the file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist; give the path of a .pt/.pth file")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightsError(f"{what} {path} fails its checksum (SHA-256 {actual[:12]}…, expected {sha256[:12]}…): "
                               f"the file is corrupt or another model; delete it and fetch it again")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle, zip and EOF errors for bad files
        raise WeightsError(f"cannot read {what} {path} ({type(error).__name__}): the file is truncated, corrupt or "
                           f"not a PyTorch checkpoint; delete it and fetch or train it again") from None
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{what} {path} does not hold a state dict of tensors (bare or under 'model' / "
                           "'state_dict')")
    return data


def read_training_state(path: str | Path) -> dict:
    """An interrupted training run's saved state (weights, optimiser, schedule, step, RNG).

    Not a model checkpoint (it mixes several state dicts with numbers and lists), but loaded
    the same way: ``weights_only=True``, so the file cannot run code. A damaged file is a
    ``WeightsError`` that says how to start over.
    """
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for damaged files
        raise WeightsError(f"cannot read the training checkpoint {path} ({type(error).__name__}): it is damaged; "
                           f"delete it to start the training over") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} is not a medseg training checkpoint; delete it to start the training over")
    return state
