"""Undo and redo of whole SAM2 results: the prompts the user placed and the labels they gave.

A ``Snapshot`` is taken before every change of the labels (segment, propagate, accept, clear)
and holds everything that change replaces, so Undo puts back the whole previous result, not
one slice. The labels are stored zlib-compressed (label maps are mostly zeros and compress
hundreds of times) and the history keeps at most ``limit`` steps, so memory stays bounded on
big volumes. Which prompts SAM2 holds is the session's own history (``Sam2Session.undo``):
the workspace replays or takes back prompts to match the restored markers on the next call.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass

import numpy as np

from napari_plugin._prompt_layers import Marker


@dataclass(frozen=True)
class Snapshot:
    """The labels (compressed), accepted-object map and markers at one moment."""

    labels: bytes
    committed: bytes | None
    markers: tuple[Marker, ...]
    objects: tuple[tuple[int, str], ...]
    shape: tuple[int, int, int]

    @classmethod
    def take(cls, labels: np.ndarray, committed: np.ndarray | None, markers: list[Marker],
             objects: dict[int, str]) -> Snapshot:
        pack = lambda a: zlib.compress(np.ascontiguousarray(a, dtype=np.int32).tobytes(), 1)  # noqa: E731
        return cls(pack(labels), None if committed is None else pack(committed), tuple(markers),
                   tuple(objects.items()), tuple(labels.shape))

    def labels_array(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.labels), dtype=np.int32).reshape(self.shape).copy()

    def committed_array(self) -> np.ndarray | None:
        if self.committed is None:
            return None
        return np.frombuffer(zlib.decompress(self.committed), dtype=np.int32).reshape(self.shape).copy()

    @property
    def nbytes(self) -> int:
        return len(self.labels) + len(self.committed or b"")


class History:
    """Bounded undo/redo stacks of ``Snapshot``s.

    >>> h = History(limit=2)
    >>> for name in "abc":
    ...     h.push(name)
    >>> h.undo("d"), h.undo("c"), h.undo("b")
    ('c', 'b', None)
    >>> h.redo("b")
    'c'
    """

    def __init__(self, limit: int = 20) -> None:
        self._undo: deque = deque(maxlen=limit)
        self._redo: list = []

    def push(self, before: object) -> None:
        """Record the state a change is about to replace; a new change drops the redo steps."""
        self._undo.append(before)
        self._redo.clear()

    def undo(self, current: object) -> object | None:
        """The state to go back to (``current`` becomes redoable), or None."""
        if not self._undo:
            return None
        self._redo.append(current)
        return self._undo.pop()

    def redo(self, current: object) -> object | None:
        """The state to go forward to (``current`` becomes undoable again), or None."""
        if not self._redo:
            return None
        self._undo.append(current)
        return self._redo.pop()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def nbytes(self) -> int:
        """Memory held by the snapshots (what the limit bounds)."""
        return sum(s.nbytes for s in (*self._undo, *self._redo) if isinstance(s, Snapshot))
