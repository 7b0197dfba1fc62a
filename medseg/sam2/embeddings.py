"""Image-encoder features that outlive a session: content keys and the on-disk embedding store.

SAM2's image encoder is most of the cost of a propagation (about 60% on a CPU), and its
output for a slice depends only on the slice's pixels after the intensity preset, the
model's weights, the input size and the arithmetic (CUDA runs bfloat16). So features are
keyed by exactly that:

* ``volume_key(volume, preset)``: a BLAKE2b hash of the voxel array (bytes, dtype, shape)
  and the preset (the MRI preset maps whole-volume percentiles, so the key is per volume);
* ``model_key(model)``: the checkpoint's SHA-256 (``untrained:<seed>`` plus the config for
  random weights), the image size and the compute class (``cuda-bfloat16``, ``cpu-float32``).

A changed voxel, preset, model or size is another key, so a stale entry can never be hit.

``EmbeddingStore`` keeps features on disk under ``$MEDSEG_HOME/embeddings/``: one folder per
(volume, model, stored dtype) key, one ``.npy`` file per slice, written to a temporary name and
renamed into place (``os.replace`` is atomic, so a killed process leaves whole slices or none;
stray temporaries are removed on the next open),
read lazily with ``np.load(mmap_mode="r")``. The store has a size cap: opening a folder marks
it used, and when a folder is opened or a precompute ends, the least recently used folders are
removed until the rest fits (folders in use are kept). ``medseg cache info`` / ``medseg cache clear`` show and empty it.

The stored dtype is float32 by default: labels are then the same voxel for voxel with the store
on, off, cold or warm. float16 halves the disk (``benchmarks/store_dtype.py`` measures both); a
session uses a slice's features as the store holds them from its first encoding on
(``medseg.sam2.features``), so a float16 store too gives the same labels cold, warm, after a
kill and resume and on replay, only not the same as without a store (a few voxels at mask edges).

On by default (the CLI, napari, the pipeline: ``EmbeddingStore.default()``); the environment
variable ``MEDSEG_EMBEDDINGS=off`` turns it off (the test suite does),
``MEDSEG_EMBEDDINGS_MAX_GB`` sets the cap (default 20) and ``MEDSEG_EMBEDDINGS_DTYPE`` the
stored dtype (``float32`` or ``float16``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.errors import ConfigError
from medseg.preprocess import IntensityPreset
from medseg.volume import Volume

log = logging.getLogger(__name__)

DEFAULT_MAX_GB = 20.0
_META = "store.json"
_TMP = ".tmp-"


def volume_key(volume: Volume, preset: IntensityPreset) -> str:
    """Hex key of the voxel content and the preset (geometry does not change features)."""
    digest = hashlib.blake2b(digest_size=16)
    array = volume.array
    digest.update(json.dumps({"dtype": array.dtype.str, "shape": list(array.shape),
                              "preset": preset.to_dict()}).encode())
    for plane in array:  # one slice at a time: no copy of the whole volume
        digest.update(np.ascontiguousarray(plane).data)
    return digest.hexdigest()


def model_key(weights: str, image_size: int, device: torch.device) -> str:
    """Hex key of what makes a model's features: its weights' identity, input size, arithmetic."""
    compute = "cuda-bfloat16" if device.type == "cuda" else f"{device.type}-float32"
    text = json.dumps({"weights": weights, "image_size": image_size, "compute": compute})
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def default_memory_budget() -> int:
    """Bytes of encoder features one cache keeps in memory by default: a quarter of available RAM."""
    import psutil

    return psutil.virtual_memory().available // 4


@dataclass(frozen=True)
class StoreEntry:
    """One folder of the store: what it holds, its size and when it was last used."""

    path: Path
    description: dict
    slices: int
    bytes: int
    last_used: float


class EmbeddingStore:
    """The on-disk store (see the module docstring).

    Parameters
    ----------
    root
        Folder of the store; ``$MEDSEG_HOME/embeddings`` by default.
    max_bytes
        Size cap; least recently used folders are removed beyond it.
    dtype
        ``"float32"`` (labels identical to running without the store) or ``"float16"`` (half
        the disk; features within 0.2% of the float32 ones). Either way a session uses what the
        store holds, so cached and fresh runs agree.
    """

    def __init__(self, root: str | Path | None = None, *, max_bytes: int | None = None, dtype: str = "float32") -> None:
        from medseg.weights import medseg_home

        if dtype not in ("float16", "float32"):
            raise ConfigError(f"embedding store dtype must be 'float16' or 'float32', got {dtype!r}")
        self.root = Path(root) if root is not None else medseg_home() / "embeddings"
        self.max_bytes = int(max_bytes if max_bytes is not None else DEFAULT_MAX_GB * 2**30)
        self.dtype = np.dtype(dtype)

    @classmethod
    def default(cls) -> EmbeddingStore | None:
        """The user's store, or None when ``MEDSEG_EMBEDDINGS`` is ``off``/``0``/``false``; cap and dtype from
        ``MEDSEG_EMBEDDINGS_MAX_GB`` and ``MEDSEG_EMBEDDINGS_DTYPE``."""
        if os.environ.get("MEDSEG_EMBEDDINGS", "on").strip().lower() in ("off", "0", "false", "no"):
            return None
        cap = os.environ.get("MEDSEG_EMBEDDINGS_MAX_GB")
        try:
            max_bytes = int(float(cap) * 2**30) if cap else None
        except ValueError:
            raise ConfigError(f"MEDSEG_EMBEDDINGS_MAX_GB={cap!r} is not a number of gigabytes") from None
        dtype = os.environ.get("MEDSEG_EMBEDDINGS_DTYPE", "float32").strip().lower()
        if dtype not in ("float16", "float32"):
            raise ConfigError(f"MEDSEG_EMBEDDINGS_DTYPE={dtype!r}: use 'float32' (the default) or 'float16'")
        return cls(max_bytes=max_bytes, dtype=dtype)

    def open(self, volume: str, model: str, description: dict) -> VolumeEmbeddings:
        """The folder of (volume key, model key) at this store's dtype: created if new, marked used, cap enforced."""
        folder = self.root / f"{volume}-{model}-{self.dtype.name}"
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / _META
        if not meta.exists():
            record = {**description, "volume_key": volume, "model_key": model, "dtype": self.dtype.name}
            _atomic_write(meta, json.dumps(record, indent=1).encode())
        for stray in folder.glob(f"*{_TMP}*"):  # a killed writer's leftovers; never a slice file
            stray.unlink(missing_ok=True)
        os.utime(meta)
        self.enforce_cap(keep=[folder])
        return VolumeEmbeddings(folder, self.dtype)

    def entries(self) -> list[StoreEntry]:
        """Every folder of the store, least recently used first."""
        found = []
        for meta in self.root.glob(f"*/{_META}"):
            try:
                files = list(meta.parent.glob("z*.npy"))
                size = sum(f.stat().st_size for f in files) + meta.stat().st_size
                found.append(StoreEntry(meta.parent, json.loads(meta.read_text(encoding="utf-8")), len(files), size,
                                        meta.stat().st_mtime))
            except (OSError, ValueError):  # removed meanwhile by another process, or unreadable
                continue
        return sorted(found, key=lambda e: e.last_used)

    def size(self) -> int:
        return sum(e.bytes for e in self.entries())

    def enforce_cap(self, *, keep: Collection[Path] = ()) -> list[Path]:
        """Remove least recently used folders (never those in ``keep``) until the store fits its cap."""
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        removed = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.path in keep:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            total -= entry.bytes
            removed.append(entry.path)
            log.info("embedding store over %.1f GB: removed %s (least recently used)",
                     self.max_bytes / 2**30, entry.path)
        return removed

    def clear(self) -> int:
        """Remove every folder of the store (only those: other files under ``root`` stay); bytes freed."""
        freed = 0
        for entry in self.entries():
            shutil.rmtree(entry.path, ignore_errors=True)
            freed += entry.bytes
        return freed


class VolumeEmbeddings:
    """The slices of one (volume, model) in the store: ``get(z)`` / ``put(z, levels)``.

    The shapes of the feature levels are recorded in the folder's ``store.json`` with the
    first slice, so a reader needs no encoder run to split a slice file.
    """

    def __init__(self, folder: Path, dtype: np.dtype) -> None:
        self.folder = folder
        self.dtype = dtype
        self._meta = json.loads((folder / _META).read_text(encoding="utf-8"))

    @property
    def shapes(self) -> list[tuple[int, ...]] | None:
        levels = self._meta.get("levels")
        return None if levels is None else [tuple(s) for s in levels]

    def path(self, z: int) -> Path:
        return self.folder / f"z{z:05d}.npy"

    def __contains__(self, z: int) -> bool:
        return self.path(z).exists()

    def get(self, z: int) -> list[np.ndarray] | None:
        """The feature levels of slice ``z`` as memory-mapped views (None when not stored)."""
        shapes = self.shapes
        if shapes is None:
            return None
        try:
            flat = np.load(self.path(z), mmap_mode="r")
        except FileNotFoundError:
            return None
        except ValueError:  # not a whole .npy file: cannot come from put; recompute it
            log.warning("embedding store: unreadable %s, recomputing it", self.path(z))
            return None
        if flat.shape != (sum(int(np.prod(s)) for s in shapes),) or flat.dtype != self.dtype:
            return None
        return self._split(flat, shapes)

    def put(self, z: int, levels: list[np.ndarray]) -> list[np.ndarray]:
        """Store slice ``z`` atomically (a temporary file renamed into place); returns the levels as stored."""
        meta = self.folder / _META
        if self.shapes is None or not meta.exists():  # first slice, or the folder was evicted meanwhile
            self._meta["levels"] = [list(level.shape) for level in levels]
            self.folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(meta, json.dumps(self._meta, indent=1).encode())
        flat = np.concatenate([np.asarray(level, dtype=self.dtype).reshape(-1) for level in levels])
        _atomic_write(self.path(z), _npy_bytes(flat))
        return self._split(flat, [level.shape for level in levels])

    @staticmethod
    def _split(flat: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        bounds = np.cumsum([0, *(int(np.prod(s)) for s in shapes)])
        return [flat[a:b].reshape(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes)]


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}{_TMP}{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
