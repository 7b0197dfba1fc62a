"""SAM2 on volumes: slice-by-slice propagation with memory, from voxel prompts.

High level: ``Sam2VolumePredictor(model).segment(volume, prompts) -> LabelVolume`` and
``Sam2VolumePredictor.session(volume)`` for interactive work; ``qc_summary`` names the least
confident slice. Low level (``engine``, ``frames``): lazy ``Frame`` sequences, a shared
``FeatureCache`` (backed by the on-disk ``EmbeddingStore``) and a bounded-memory ``Tracker``,
reused by ``medseg.revsam2``. ``meta_internals`` is the one module touching SAM2's private API.

Inside this package, ``sam2`` in an absolute import is Meta's package, not this one.
"""

from medseg.sam2.embeddings import EmbeddingStore
from medseg.sam2.engine import FeatureCache, FrameOutput, Tracker
from medseg.sam2.frames import Frame, VolumeFrames
from medseg.sam2.model import Sam2Model, load_model
from medseg.sam2.predictor import Sam2VolumePredictor
from medseg.sam2.session import Sam2Session

__all__ = [
    "EmbeddingStore",
    "FeatureCache",
    "Frame",
    "FrameOutput",
    "Sam2Model",
    "Sam2Session",
    "Sam2VolumePredictor",
    "Tracker",
    "VolumeFrames",
    "load_model",
]
