"""Segment a volume slice by slice with a trained Mask R-CNN and stitch the 2D detections in 3D.

Per slice, detections at or above the score threshold are pasted in increasing order of
score, so where two masks claim a pixel the more confident one keeps it. Each class then
becomes a label value of the output ``LabelVolume`` (on the input's geometry).

3D stitching: a detection on slice ``z`` and one of the same class on slice ``z + 1``
belong to the same 3D object when their overlap, ``|a ∩ b| / min(|a|, |b|)``, is at least
``link_overlap``. (Overlap over the smaller area, not IoU, because an organ's cross-section
shrinks quickly near its ends.) Linked detections form one 3D instance whose score is the
area-weighted mean of its detections' scores; the same weighting over all of a class's
detections gives ``LabelVolume.scores``. ``LabelVolume.slice_scores`` and the instances'
slice scores hold the best detection score of each slice.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.models.detection import MaskRCNN

from medseg.errors import ConfigError
from medseg.geometry import Geometry
from medseg.maskrcnn.dataset import frame_bytes, to_tensor
from medseg.maskrcnn.store import MaskRCNNModel
from medseg.objects import semantic_labels
from medseg.preprocess import SliceFrames, choose_preset
from medseg.runtime import Progress, ShouldStop, check_stop, report, resolve_device
from medseg.volume import InstanceMap, LabelVolume, Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Prediction:
    """The semantic label map and the scored 3D instances behind it (for 3D mask AP)."""

    labels: LabelVolume
    instances: InstanceMap


@dataclass
class _Piece:
    """One detection's pixels as pasted on its slice."""

    z: int
    label: int
    score: float
    area: int = 0


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@contextmanager
def _inference_network(model: MaskRCNNModel, device: torch.device, score_threshold: float) -> Iterator[MaskRCNN]:
    """The model's network in evaluation mode on ``device``, the caller's model left as it was.

    On another device a copy runs, so the caller's model never moves; its own network gets
    its training mode and score threshold back afterwards. Detections below the threshold
    would be dropped anyway: dropping them inside the network spares the mask head (the
    costliest part of inference on CPU) from them.
    """
    network = model.network
    if not _on_device(network, device):
        network = copy.deepcopy(network).to(device)
    training, threshold = network.training, network.roi_heads.score_thresh
    network.eval()
    network.roi_heads.score_thresh = score_threshold
    try:
        yield network
    finally:
        network.train(training)
        network.roi_heads.score_thresh = threshold


def _on_device(network: torch.nn.Module, device: torch.device) -> bool:
    actual = next(network.parameters()).device
    return actual.type == device.type and (device.index is None or actual.index == device.index)


def _detect(
    network: MaskRCNN, frames: SliceFrames, *, batch_size: int, progress: Progress | None,
    should_stop: ShouldStop | None
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(z, detections)`` per slice, detections on the CPU; stops between batches when asked."""
    device = next(network.parameters()).device
    n = len(frames)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            check_stop(should_stop, "Mask R-CNN prediction")
            zs = range(start, min(start + batch_size, n))
            images = [to_tensor(frame_bytes(frames, z)).to(device) for z in zs]
            for z, output in zip(zs, network(images)):
                yield z, {k: v.cpu() for k, v in output.items()}
            report(progress, zs[-1] + 1, n)


def _paste(volume_shape, detections, *, label_values, score_threshold: float) -> tuple[np.ndarray, list[_Piece]]:
    """Per-slice piece ids (0 = none) and the pieces; piece ``i`` has id ``i + 1``."""
    pieces: list[_Piece] = []
    piece_ids = np.zeros(volume_shape, dtype=np.int32)
    for z, output in detections:
        keep = output["scores"] >= score_threshold
        order = torch.argsort(output["scores"][keep])  # ascending: the best is pasted last
        masks = output["masks"][keep][order, 0] >= 0.5
        for mask, cls, score in zip(masks.numpy(), output["labels"][keep][order].tolist(),
                                    output["scores"][keep][order].tolist()):
            if mask.any():
                pieces.append(_Piece(z, label_values[cls - 1], float(score)))
                piece_ids[z][mask] = len(pieces)
    areas = np.bincount(piece_ids.ravel(), minlength=len(pieces) + 1)
    for piece, area in zip(pieces, areas[1:]):
        piece.area = int(area)
    return piece_ids, pieces


def _link(piece_ids: np.ndarray, pieces: list[_Piece], link_overlap: float) -> list[int]:
    """The 3D instance (root piece index) of each piece, linking same-class overlaps of adjacent slices."""
    groups = _UnionFind(len(pieces))
    for z in range(piece_ids.shape[0] - 1):
        a, b = piece_ids[z], piece_ids[z + 1]
        both = (a > 0) & (b > 0)
        if not both.any():
            continue
        pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
        for (ia, ib), count in zip(pairs.T, counts):
            pa, pb = pieces[ia - 1], pieces[ib - 1]
            if pa.label == pb.label and count >= link_overlap * min(pa.area, pb.area):
                groups.union(ia - 1, ib - 1)
    return [groups.find(i) for i in range(len(pieces))]


def _slice_best(scores_by_slice: list[tuple[int, float]], n_slices: int) -> np.ndarray:
    best = np.full(n_slices, np.nan)
    for z, score in scores_by_slice:
        best[z] = score if np.isnan(best[z]) else max(best[z], score)
    return best


def stitch_detections(
    detections: Iterable[tuple[int, dict[str, torch.Tensor]]],
    *,
    geometry: Geometry,
    label_values: Sequence[int],
    score_threshold: float = 0.5,
    link_overlap: float = 0.5,
) -> InstanceMap:
    """Scored 3D instances from per-slice Mask R-CNN detections (see the module docstring).

    Parameters
    ----------
    detections
        ``(z, output)`` per slice, ``output`` as torchvision's ``MaskRCNN`` returns it in
        evaluation mode (``scores``, ``labels`` as class indices, ``masks`` ``(n, 1, y, x)``
        probabilities).
    geometry
        The grid of the volume the slices come from.
    label_values
        Label value of each class index: class ``i + 1`` is ``label_values[i]``.

    Returns
    -------
    InstanceMap
        Instance ids ``1..n`` in order of first appearance (slice by slice), their label
        values, area-weighted scores and best score per slice.
    """
    piece_ids, pieces = _paste(geometry.shape, detections, label_values=label_values, score_threshold=score_threshold)
    roots = _link(piece_ids, pieces, link_overlap)
    instance_of_root: dict[int, int] = {}
    piece_to_instance = np.zeros(len(pieces) + 1, dtype=np.int32)
    members: dict[int, list[_Piece]] = {}
    for i, piece in enumerate(pieces):
        if piece.area:
            instance = instance_of_root.setdefault(roots[i], len(instance_of_root) + 1)
            piece_to_instance[i + 1] = instance
            members.setdefault(instance, []).append(piece)
    return InstanceMap(
        piece_to_instance[piece_ids],
        geometry,
        labels={k: m[0].label for k, m in members.items()},
        scores={k: sum(p.score * p.area for p in m) / sum(p.area for p in m) for k, m in members.items()},
        slice_scores={k: _slice_best([(p.z, p.score) for p in m], geometry.shape[0]) for k, m in members.items()},
    )


def predict_instances(
    model: MaskRCNNModel,
    volume: Volume,
    *,
    score_threshold: float | None = None,
    link_overlap: float = 0.5,
    batch_size: int = 4,
    device: str | torch.device | None = "auto",
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Prediction:
    """Segment ``volume``: semantic labels on its geometry and the scored 3D instances.

    Parameters
    ----------
    model
        From ``load_model`` (or returned by training); left unchanged (device, mode, threshold).
    score_threshold
        Detections scoring below it are dropped; default: the one stored with the model.
    link_overlap
        Minimum ``|a ∩ b| / min(|a|, |b|)`` for detections on adjacent slices to be one object.
    batch_size
        Slices per forward pass.
    device
        Where to run (``medseg.runtime.resolve_device``); a copy of the network runs there when
        the model lives elsewhere.
    progress
        ``progress(slices done, slices in total)`` after each batch.
    should_stop
        Asked before each batch; True raises ``medseg.errors.Cancelled`` and nothing is returned.
    """
    threshold = model.config.score_threshold if score_threshold is None else float(score_threshold)
    if not 0 <= threshold <= 1:
        raise ConfigError(f"score_threshold must be in [0, 1], got {threshold}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    preset = choose_preset(volume, trained=model.config.preset)
    frames = SliceFrames(volume, preset.preset)
    with _inference_network(model, resolve_device(device), threshold) as network:
        detections = _detect(network, frames, batch_size=batch_size, progress=progress, should_stop=should_stop)
        instances = stitch_detections(
            detections, geometry=volume.geometry, label_values=model.label_values, score_threshold=threshold,
            link_overlap=link_overlap
        )
    labels = semantic_labels(instances, LabelVolume.like(
        volume,
        label_names={v: model.classes[v] for v in model.label_values},
        untrained=model.untrained,
        provenance=model.provenance(score_threshold=threshold, link_overlap=link_overlap,
                                    preset=preset.preset.to_dict(), preset_reason=preset.reason),
    ))
    log.debug("Mask R-CNN: %d 3D instances on %d slices", len(instances.labels), volume.shape[0])
    return Prediction(labels, instances)


def predict_volume(
    model: MaskRCNNModel,
    volume: Volume,
    *,
    score_threshold: float | None = None,
    batch_size: int = 4,
    device: str | torch.device | None = "auto",
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> LabelVolume:
    """The label map of ``volume`` (see ``predict_instances`` for the options)."""
    return predict_instances(
        model, volume, score_threshold=score_threshold, batch_size=batch_size, device=device, progress=progress,
        should_stop=should_stop,
    ).labels
