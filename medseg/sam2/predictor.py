"""``Sam2VolumePredictor``: a volume and voxel prompts in, a ``LabelVolume`` out.

>>> predictor = Sam2VolumePredictor("untrained", image_size=128)          # doctest: +SKIP
>>> prompts = Prompts().add_point(1, z=12, y=80, x=64)                     # doctest: +SKIP
>>> labels = predictor.segment(volume, prompts)                            # doctest: +SKIP
>>> labels.untrained, labels.slice_scores[1].shape                         # doctest: +SKIP
(True, (volume.shape[0],))
"""

from __future__ import annotations

from pathlib import Path

import torch

from medseg.preprocess import IntensityPreset
from medseg.prompts import Prompts
from medseg.runtime import Progress, ShouldStop
from medseg.sam2.embeddings import EmbeddingStore
from medseg.sam2.model import Sam2Model, load_model
from medseg.sam2.session import Sam2Session
from medseg.volume import LabelVolume, Volume


class Sam2VolumePredictor:
    """SAM2 (or MedSAM2) propagation through the slices of a volume; the model loads once.

    Parameters
    ----------
    model
        A loaded ``Sam2Model`` (``load_model``; load once, share it), or what ``load_model``
        takes: a registry name (``sam2.1-tiny``, ``sam2.1-small``, ``sam2.1-base-plus``,
        ``sam2.1-large``, ``medsam2``, ``untrained``) or a checkpoint path; see
        ``medseg.weights.REGISTRY`` for sizes and licences. ``image_size``, ``device`` and
        ``seed`` apply only to a model loaded here.
    image_size
        Model input size (multiple of 32); default: the size the weights were trained at.
    device
        ``cuda`` (bfloat16 autocast), ``mps`` or ``cpu``; the best available by default.
    preset
        Intensity preset for the frames (``medseg.preprocess``); None: the one the model was
        trained with, else by the volume's modality or content (``choose_preset``).
    seed
        Seed of the random weights of ``untrained``.
    offload_state_to_cpu
        Keep SAM2's memory and cached features in CPU memory (long volumes on small GPUs).
    store
        On-disk embedding store for the sessions: True for the user's
        (``EmbeddingStore.default()``, off when ``MEDSEG_EMBEDDINGS=off``), False for none, or a store.
    """

    def __init__(
        self,
        model: Sam2Model | str | Path = "sam2.1-tiny",
        *,
        image_size: int | None = None,
        device: str | torch.device | None = None,
        preset: str | IntensityPreset | None = None,
        seed: int = 0,
        offload_state_to_cpu: bool = False,
        store: EmbeddingStore | bool = True,
    ) -> None:
        self.model: Sam2Model = (
            model if isinstance(model, Sam2Model)
            else load_model(model, image_size=image_size, device=device, seed=seed)
        )
        self.preset = preset
        self.offload_state_to_cpu = offload_state_to_cpu
        self.store = EmbeddingStore.default() if store is True else store

    @property
    def untrained(self) -> bool:
        return self.model.untrained

    def session(self, volume: Volume, *, preset: str | IntensityPreset | None = None) -> Sam2Session:
        """An interactive session on ``volume`` (prompt, preview, propagate, correct, undo)."""
        return Sam2Session(
            self.model, volume, preset=preset if preset is not None else self.preset,
            offload_state_to_cpu=self.offload_state_to_cpu, store=self.store or False,
        )

    def segment(
        self,
        volume: Volume,
        prompts: Prompts,
        *,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> LabelVolume:
        """Segment every prompted object through the whole volume.

        Parameters
        ----------
        volume
            The image.
        prompts
            Voxel ``(z, y, x)`` prompts per object id (= label value); validated before any
            model work.
        progress, should_stop
            The engine contract (``medseg.runtime``): ``progress(done, total)`` per slice;
            ``should_stop()`` asked between slices, True raises ``Cancelled``.

        Returns
        -------
        LabelVolume
            On ``volume``'s geometry, with ``label_names``, per-object ``scores`` and
            ``slice_scores`` (P(present) x predicted IoU, NaN where the object is absent),
            ``untrained`` and ``provenance`` (model, checkpoint SHA-256, image size, preset,
            prompts).
        """
        prompts.validate(volume.shape)
        session = self.session(volume)
        session.set_prompts(prompts)
        return session.propagate(progress=progress, should_stop=should_stop)
