"""``FeatureCache``: each slice through SAM2's image encoder once, in memory and (optionally) on disk.

The encoder is most of a propagation's cost; the memory attention and mask decoder that
follow are cheap. A ``FeatureCache`` holds encoder outputs keyed by ``Frame.key`` so that
every tracker, object and re-propagation sharing it reuses them:

* in memory, least recently used out beyond a byte budget (default: a quarter of the
  available RAM; the most recent entry and the frames with prompts, which are pinned, always
  stay), in float32 on the cache's device;
* on disk through ``medseg.sam2.embeddings.EmbeddingStore`` for frames that carry a content
  ``source`` (every ``VolumeFrames`` slice): a reopened volume, another method on the same case
  or another process finds them there, read lazily.

A frame's features are the same numbers whatever is cached: a freshly encoded frame that goes
into the store is used as the store holds it (rounded to the store's dtype, float32 by default,
then float32 again), never as the encoder gave it. So a cold run, a warm-store run, a run
resumed after a kill and a replay give the same labels, and with the default float32 store the
same labels as no store at all (CUDA's bfloat16 features are widened to float32 in every case).

``precompute(frames)`` encodes every missing frame in batches (the batch size is chosen per
device, see ``encode_batch_size``), preparing the next batch's inputs in a thread while the
encoder runs, and honours the engine contract (``progress`` per slice, ``should_stop``
between batches; what is stored is whole).

The positional encoding, identical for every frame of one model and size, is computed once
from the feature shapes (``meta_internals.position_encodings``), so a cache filled from disk
runs no encoder at all.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from medseg.errors import InputError
from medseg.runtime import Progress, ShouldStop, check_stop, report
from medseg.sam2.embeddings import EmbeddingStore, VolumeEmbeddings, default_memory_budget, model_key
from medseg.sam2.frames import Frame, model_input
from medseg.sam2.meta_internals import position_encodings
from medseg.sam2.model import Sam2Model

log = logging.getLogger(__name__)

CPU_BATCH = 1
"""Slices per encoder call on CPU. ``benchmarks/interactive.py`` measured 0.535, 0.534 and 0.552 s
per slice for batches of 1, 2 and 4 (Hiera-T at image size 512, 2 cores): batching gains nothing
on a CPU, and batch 1 keeps features bit-identical to on-demand encoding."""
_GPU_BYTES_PER_SLICE_1024 = 2 * 2**30  # encoder working memory per slice at image size 1024 (estimate)
_GPU_MAX_BATCH = 16


def encode_batch_size(model: Sam2Model) -> int:
    """Slices per encoder call: ``CPU_BATCH`` on CPU; on CUDA/MPS as many as half the free memory holds.

    The GPU path is an estimate (``_GPU_BYTES_PER_SLICE_1024``, scaled by the squared image
    size) and was not measured on a GPU.
    """
    device = model.device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    elif device.type == "mps":
        free = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    else:
        return CPU_BATCH
    per_slice = _GPU_BYTES_PER_SLICE_1024 * (model.image_size / 1024) ** 2
    return int(max(1, min(_GPU_MAX_BATCH, free // 2 // per_slice)))


class FeatureCache:
    """Image-encoder features of frames, keyed by ``Frame.key``; see the module docstring.

    Parameters
    ----------
    model
        The model whose encoder fills the cache (features are only valid for it).
    max_bytes
        In-memory budget; ``None``: ``default_memory_budget()``; 0 keeps only the most recent
        frame (and pinned ones).
    device
        Where features are kept; the model's device by default (``"cpu"`` to offload).
    store
        The on-disk store: True for ``EmbeddingStore.default()`` (the user's, unless
        ``MEDSEG_EMBEDDINGS=off``), False for none, or a store. Never used for a model whose
        weights have no identity (``Sam2Model.weights_id`` None: a model in training).
    """

    def __init__(
        self,
        model: Sam2Model,
        *,
        max_bytes: int | None = None,
        device: str | torch.device | None = None,
        store: EmbeddingStore | bool = True,
    ) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise InputError(f"max_bytes must be at least 0 or None, got {max_bytes}")
        self.model = model
        self.max_bytes = default_memory_budget() if max_bytes is None else max_bytes
        self.device = torch.device(device) if device is not None else model.device
        self.store = EmbeddingStore.default() if store is True else store or None
        if model.weights_id is None:  # in-memory weights (training): another state would read them back
            self.store = None
        self._model_key = None if self.store is None else model_key(model.weights_id, model.image_size, model.device)
        self.encoder_calls = 0
        self.hits = 0
        self.disk_hits = 0
        self.bytes = 0
        self._entries: OrderedDict[Hashable, list[torch.Tensor]] = OrderedDict()
        self._pins: Counter = Counter()
        self._pos_enc: list[torch.Tensor] | None = None
        self._volumes: dict[str, VolumeEmbeddings] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def features(self, frame: Frame) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(backbone_fpn, vision_pos_enc)`` of ``frame``: memory, else disk, else the encoder."""
        fpn = self._entries.get(frame.key)
        if fpn is not None:
            self.hits += 1
            self._entries.move_to_end(frame.key)
        else:
            fpn = self._from_disk(frame)
            if fpn is None:
                (fpn,) = self._encode([frame], [self._input(frame)])
            self._keep(frame.key, fpn)
        if self._pos_enc is None:
            self._pos_enc = [p.to(self.device) for p in position_encodings(self.model.net, fpn)]
        return fpn, self._pos_enc

    def precompute(
        self,
        frames: Sequence[Frame],
        *,
        batch_size: int | None = None,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> int:
        """Encode every frame not in memory or on disk; returns how many were encoded.

        ``progress(done, total)`` counts frames (those already there count as done at once);
        ``should_stop()`` is asked between batches (``Cancelled``; every stored slice is whole).
        """
        missing = [f for f in frames if f.key not in self._entries and not self._on_disk(f)]
        total = len(frames)
        done = total - len(missing)
        report(progress, done, total)
        size = batch_size or encode_batch_size(self.model)
        batches = [missing[i:i + size] for i in range(0, len(missing), size)]
        with ThreadPoolExecutor(max_workers=1) as prepare:  # next batch's inputs while the encoder runs
            pending = prepare.submit(self._inputs, batches[0]) if batches else None
            for i, batch in enumerate(batches):
                check_stop(should_stop, f"precompute (after {done} of {total} slices; those are stored)")
                inputs = pending.result()
                pending = prepare.submit(self._inputs, batches[i + 1]) if i + 1 < len(batches) else None
                for frame, fpn in zip(batch, self._encode(batch, inputs)):
                    self._keep(frame.key, fpn)
                done += len(batch)
                report(progress, done, total)
        if self.store is not None:
            self.store.enforce_cap(keep=[v.folder for v in self._volumes.values()])
        return len(missing)

    def pin(self, key: Hashable) -> None:
        """Keep ``key`` cached until as many ``unpin`` calls (pins are counted)."""
        self._pins[key] += 1

    def unpin(self, key: Hashable) -> None:
        self._pins[key] -= 1
        if self._pins[key] <= 0:
            del self._pins[key]
            self._evict()

    def clear(self) -> None:
        """Drop every in-memory feature (pins stay, and are re-filled on demand; the disk store stays)."""
        self._entries.clear()
        self.bytes = 0

    # --- internals ------------------------------------------------------------------------
    def _input(self, frame: Frame) -> torch.Tensor:
        image = frame.load()
        if image.shape != (3, *frame.shape):
            raise InputError(f"frame {frame.key!r} loaded with shape {image.shape}, expected {(3, *frame.shape)}")
        return model_input(image, self.model.image_size, self.model.device)

    def _inputs(self, frames: Sequence[Frame]) -> list[torch.Tensor]:
        return [self._input(f) for f in frames]

    def _encode(self, frames: Sequence[Frame], inputs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Run the encoder on a batch; store each frame's features on disk (where it has a source)."""
        with self.model.inference():
            fpn = self.model.net.forward_image(torch.cat(inputs))["backbone_fpn"]
        self.encoder_calls += len(frames)
        per_frame = []
        for i, frame in enumerate(frames):
            volume = self._volume(frame)
            if volume is None:  # contiguous, as read from the store: the encoder returns some levels
                # channels-last, and later convolutions on another memory layout round differently
                per_frame.append([level[i:i + 1].float().to(self.device).contiguous() for level in fpn])
            else:  # used as stored, so that a later read of the store gives the same numbers
                stored = volume.put(frame.source[1], [level[i].float().cpu().numpy() for level in fpn])
                per_frame.append(self._tensors(stored))
        return per_frame

    def _volume(self, frame: Frame) -> VolumeEmbeddings | None:
        if self.store is None or frame.source is None:
            return None
        key = frame.source[0]
        if key not in self._volumes:
            description = {"model": self.model.name, "image_size": self.model.image_size,
                           "device": self.model.device.type}
            self._volumes[key] = self.store.open(key, self._model_key, description)
        return self._volumes[key]

    def _on_disk(self, frame: Frame) -> bool:
        volume = self._volume(frame)
        return volume is not None and frame.source[1] in volume

    def _from_disk(self, frame: Frame) -> list[torch.Tensor] | None:
        volume = self._volume(frame)
        levels = None if volume is None else volume.get(frame.source[1])
        if levels is None:
            return None
        self.disk_hits += 1
        return self._tensors(levels)

    def _tensors(self, levels: list[np.ndarray]) -> list[torch.Tensor]:
        """Stored levels (the store's dtype) as float32 tensors with a batch axis, on the cache's device."""
        return [torch.from_numpy(level.astype(np.float32))[None].to(self.device) for level in levels]

    def _keep(self, key: Hashable, fpn: list[torch.Tensor]) -> None:
        self._entries[key] = fpn
        self.bytes += sum(t.numel() * t.element_size() for t in fpn)
        self._evict()

    def _evict(self) -> None:
        """Least recently used out until within budget; pinned frames and the newest entry stay."""
        if self.bytes <= self.max_bytes:
            return
        newest = next(reversed(self._entries), None)
        for key in [k for k in self._entries if k not in self._pins and k != newest]:
            if self.bytes <= self.max_bytes:
                break
            self.bytes -= sum(t.numel() * t.element_size() for t in self._entries.pop(key))
