"""Training data: 2D slices of a cohort's volumes with their object instances.

Each training case is prepared once: its intensity preset is applied to the whole volume
(never per slice) and the slices are stored as 8-bit frames next to the label map in a
cache folder, as ``.npy`` files that are memory-mapped while training. A cohort larger than
memory therefore trains at the speed of the disk cache, and resuming an interrupted run
does not redo the preparation.

Instances on a slice are the connected components (8-connectivity) of each label class,
or one instance per class (``instances="per_class"``), matching ``medseg.metrics``.
Slices without any object are kept as negatives at a controlled ratio: each epoch holds
every slice with an object plus ``empty_ratio`` times as many slices without one, drawn
anew per epoch. The batches of each step depend only on ``(seed, step)``, so a resumed run
sees exactly the batches the uninterrupted one would have seen.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset, Sampler

from medseg.errors import ConfigError, InputError
from medseg.io.files import atomic_output
from medseg.preprocess import IntensityPreset, SliceFrames
from medseg.volume import LabelVolume, Volume

log = logging.getLogger(__name__)

INSTANCE_MODES = ("components", "per_class")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class CaseLike(Protocol):
    """What training needs of a case: ``medseg.manifest.Case`` is one."""

    id: str

    def load(self) -> tuple[Volume, LabelVolume | None]: ...


def frame_bytes(frames: SliceFrames, z: int) -> np.ndarray:
    """Slice ``z`` as the network sees it: ``(3, y, x)`` uint8 after the volume's intensity preset.

    Training and prediction both go through this function, so the 8-bit rounding is the same.
    """
    return np.round(frames[z] * 255.0).astype(np.uint8)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """A ``(3, y, x)`` uint8 frame as the float tensor in [0, 1] that Mask R-CNN takes."""
    return torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)


def instance_targets(
    label_slice: np.ndarray, label_values: Sequence[int], *, instances: str = "components", min_area: int = 4
) -> dict[str, torch.Tensor]:
    """The Mask R-CNN target of one label slice.

    Parameters
    ----------
    label_slice
        ``(y, x)`` integer labels.
    label_values
        The label values to learn, in class order: value ``label_values[i]`` is class ``i + 1``.
    instances
        ``"components"`` (each connected component of a class is an instance) or
        ``"per_class"`` (all pixels of a class form one instance).
    min_area
        Instances with fewer pixels are left out (specks teach nothing and make degenerate boxes).

    Returns
    -------
    dict
        ``boxes`` ``(n, 4)`` float32 ``x0, y0, x1, y1`` (pixel edges), ``labels`` ``(n,)``
        int64 class indices, ``masks`` ``(n, y, x)`` uint8; ``n`` may be 0.
    """
    if instances not in INSTANCE_MODES:
        raise ConfigError(f"instances: unknown mode {instances!r}; use one of {list(INSTANCE_MODES)}")
    masks, classes = [], []
    for index, value in enumerate(label_values, start=1):
        region = label_slice == value
        if not region.any():
            continue
        if instances == "per_class":
            parts = [region]
        else:
            components, count = ndimage.label(region, structure=_EIGHT_CONNECTED)
            parts = [components == k for k in range(1, count + 1)]
        for mask in parts:
            if np.count_nonzero(mask) >= min_area:
                masks.append(mask)
                classes.append(index)
    height, width = label_slice.shape
    if not masks:
        return {
            "boxes": torch.zeros((0, 4), dtype=torch.float32),
            "labels": torch.zeros((0,), dtype=torch.int64),
            "masks": torch.zeros((0, height, width), dtype=torch.uint8),
        }
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(classes, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)),
    }


def _cache_key(case_id: str) -> str:
    """A file-name-safe, collision-free name for a case id."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", case_id)[:48]
    return f"{safe}-{hashlib.sha256(case_id.encode()).hexdigest()[:10]}"


def prepare_cases(
    cases: Sequence[CaseLike], cache_dir: Path, *, preset: IntensityPreset, label_values: Sequence[int]
) -> list[tuple[str, Path, Path]]:
    """Write each case's 8-bit frames and labels to ``cache_dir`` (once); return ``(id, frames, labels)`` paths.

    Every case is checked before anything is written: it must have a label map whose values
    are all in ``label_values``.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    prepared = []
    for case in cases:
        key = _cache_key(case.id)
        frames_path, labels_path = cache_dir / f"{key}.frames.npy", cache_dir / f"{key}.labels.npy"
        prepared.append((case.id, frames_path, labels_path))
        if frames_path.is_file() and labels_path.is_file():
            continue
        volume, labels = case.load()
        if labels is None:
            raise ConfigError(f"case {case.id!r} is in the training data but has no label map; give it a \"label\" or "
                              "move it to the test split")
        undeclared = sorted(set(labels.labels) - set(label_values))
        if undeclared:
            raise ConfigError(
                f"case {case.id!r}: its label map holds values {undeclared} that the manifest's labels "
                f"{sorted(label_values)} do not declare; add them to \"labels\" or fix the label map"
            )
        frames = SliceFrames(volume, preset)
        # One channel is enough when the preset replicates a single window.
        channels = 3 if len(preset.windows) == 3 else 1
        stack = np.stack([frame_bytes(frames, z)[:channels] for z in range(len(frames))])
        with atomic_output(labels_path) as tmp:  # the temporary name ends in .npy: np.save keeps it
            np.save(tmp, labels.array.astype(np.uint8 if labels.array.max(initial=0) < 256 else np.int32))
        with atomic_output(frames_path) as tmp:
            np.save(tmp, stack)
        log.debug("prepared case %s: %d slices", case.id, len(stack))
    return prepared


class SliceDataset(Dataset):
    """Every slice of the prepared cases: ``dataset[i]`` is ``(image, target)`` for Mask R-CNN.

    ``positive`` and ``empty`` list the indices of slices with and without an instance.
    """

    def __init__(
        self,
        prepared: Sequence[tuple[str, Path, Path]],
        *,
        label_values: Sequence[int],
        instances: str = "components",
        min_area: int = 4,
    ) -> None:
        self.label_values = list(label_values)
        self.instances = instances
        self.min_area = min_area
        self.slices: list[tuple[str, Path, Path, int]] = []
        self.positive: list[int] = []
        self.empty: list[int] = []
        for case_id, frames_path, labels_path in prepared:
            labels = np.load(labels_path, mmap_mode="r")
            for z in range(labels.shape[0]):
                index = len(self.slices)
                self.slices.append((case_id, frames_path, labels_path, z))
                has_object = len(self._target(labels[z])["labels"]) > 0
                (self.positive if has_object else self.empty).append(index)
        if not self.positive:
            raise InputError(
                f"no labelled object (of at least {min_area} pixels) on any slice of the {len(prepared)} training "
                "case(s); Mask R-CNN needs examples of the classes to learn"
            )

    def _target(self, label_slice: np.ndarray) -> dict[str, torch.Tensor]:
        return instance_targets(np.asarray(label_slice), self.label_values, instances=self.instances,
                                min_area=self.min_area)

    @property
    def case_ids(self) -> list[str]:
        """The distinct cases the slices come from, in order."""
        return list(dict.fromkeys(case_id for case_id, *_ in self.slices))

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, frames_path, labels_path, z = self.slices[index]
        image = np.load(frames_path, mmap_mode="r")[z]
        if image.shape[0] == 1:
            image = np.repeat(image, 3, axis=0)
        return to_tensor(image), self._target(np.load(labels_path, mmap_mode="r")[z])


class StepBatchSampler(Sampler[list[int]]):
    """The batches of steps ``start_step`` to ``steps - 1``; each depends only on ``(seed, step)``.

    An epoch is every positive slice plus ``round(empty_ratio * positives)`` empty slices
    (fewer when the cohort has fewer), drawn per epoch, in a shuffled order. Batches run on
    across epoch boundaries.
    """

    def __init__(self, dataset: SliceDataset, *, batch_size: int, empty_ratio: float, seed: int,
                 start_step: int, steps: int) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if empty_ratio < 0:
            raise ConfigError(f"empty_ratio must be >= 0, got {empty_ratio}")
        self.positive = np.asarray(dataset.positive)
        self.empty = np.asarray(dataset.empty)
        self.n_empty = min(len(self.empty), int(round(empty_ratio * len(self.positive))))
        self.batch_size, self.seed = batch_size, seed
        self.start_step, self.steps = start_step, steps

    @property
    def epoch_length(self) -> int:
        return len(self.positive) + self.n_empty

    def epoch(self, number: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, number])
        empties = rng.choice(self.empty, size=self.n_empty, replace=False) if self.n_empty else self.empty[:0]
        return rng.permutation(np.concatenate([self.positive, empties]))

    def batch(self, step: int) -> list[int]:
        start = step * self.batch_size
        positions = range(start, start + self.batch_size)
        epochs = {p // self.epoch_length for p in positions}
        orders = {e: self.epoch(e) for e in epochs}
        return [int(orders[p // self.epoch_length][p % self.epoch_length]) for p in positions]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)
