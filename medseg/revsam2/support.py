"""The support set of reference prompting: annotated slices of labelled reference volumes.

A support is one (image slice, label slice) pair: slice ``z`` of a reference volume, with the
mask of one label value on it. Each label value is its own object; a reference slice that
shows two labels is a support of both (its image is still encoded once).

Supports are either given explicitly (slice indices per reference) or sampled: ``k`` slices
per label and reference, at the centres of ``k`` equal chunks of the label's z-extent (the
chunk-centre rule of the SSL-ALPNet few-shot protocol that FS-MedSAM2 evaluates with), each
moved to the nearest slice where the label is actually drawn.

Images are not converted here: the engine maps every reference with the *query's* intensity
preset (``frames``), so that supports and query look alike to the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.preprocess import IntensityPreset, SliceFrames
from medseg.volume import LabelVolume, Volume

logger = logging.getLogger(__name__)

#: Modalities that say nothing about contrast (NIfTI has no modality field).
_UNKNOWN_MODALITIES = {"", "OT"}


@dataclass(frozen=True, eq=False)
class Reference:
    """A labelled reference volume; ``name`` (usually its file) appears in messages and provenance."""

    volume: Volume
    labels: LabelVolume
    name: str


@dataclass(frozen=True)
class SupportSlice:
    """Slice ``z`` of reference number ``reference``, used as a support of label value ``label``."""

    reference: int
    z: int
    label: int


class SupportSet:
    """Annotated reference slices, grouped by label value.

    Build it with ``SupportSet.from_volumes``; the constructor takes already validated parts.

    Attributes
    ----------
    references
        The labelled reference volumes.
    slices
        Every support, sorted by label, then reference, then z.
    label_names
        Label value -> name of every label the set segments.
    """

    def __init__(self, references: Sequence[Reference], slices: Sequence[SupportSlice], label_names: Mapping[int, str]):
        self.references = tuple(references)
        self.slices = tuple(sorted(slices, key=lambda s: (s.label, s.reference, s.z)))
        self.label_names = dict(sorted(label_names.items()))

    @classmethod
    def from_volumes(
        cls,
        entries: Sequence[tuple[Volume, LabelVolume] | tuple[Volume, LabelVolume, Sequence[int] | None]],
        *,
        k: int = 3,
        labels: Mapping[int, str] | Sequence[int] | None = None,
        names: Sequence[str] | None = None,
    ) -> "SupportSet":
        """Supports from labelled reference volumes.

        Parameters
        ----------
        entries
            ``(volume, labels)`` or ``(volume, labels, slices)`` per reference. ``slices`` lists
            the z indices to use (every wanted label drawn on them becomes a support); ``None``
            samples ``k`` slices per label.
        k
            Slices sampled per label and reference when no slices are given.
        labels
            The label map to segment: label values, or value -> name. Labels of a reference that
            are not in it are ignored; a reference that has none of them is an error, and so is
            a label that no reference annotates. ``None``: every label of the references.
        names
            One name per reference for messages and provenance (default ``reference 1``, ...).

        Examples
        --------
        >>> support = SupportSet.from_volumes([(ref, ref_labels)], k=3, labels={1: "liver"})  # doctest: +SKIP
        >>> [(s.z, s.label) for s in support.slices]  # doctest: +SKIP
        [(12, 1), (20, 1), (28, 1)]
        """
        if k < 1:
            raise ConfigError(f"k (support slices per label) must be at least 1, got {k}")
        if not entries:
            raise InputError("no reference given: pass at least one (volume, labels) pair")
        if names is not None and len(names) != len(entries):
            raise ConfigError(f"got {len(names)} reference names for {len(entries)} references")
        references, requested = [], []
        for index, entry in enumerate(entries):
            if len(entry) not in (2, 3):
                raise InputError(f"reference {index + 1}: expected (volume, labels) or (volume, labels, slices), got {len(entry)} items")
            name = names[index] if names is not None else f"reference {index + 1}"
            references.append(_checked_reference(entry[0], entry[1], name))
            requested.append(None if len(entry) == 2 or entry[2] is None else [int(z) for z in entry[2]])

        label_names = _label_map(labels, references)
        slices: list[SupportSlice] = []
        for index, (reference, zs) in enumerate(zip(references, requested)):
            wanted = sorted(set(reference.labels.labels) & set(label_names))
            if not wanted:
                raise InputError(
                    f"{reference.name}: its labels {reference.labels.labels} are none of the labels to segment "
                    f"{_describe(label_names)}; give the label map that matches this reference or renumber its labels"
                )
            if isinstance(labels, Mapping):
                _check_names_agree(reference, labels)
            if zs is None:
                for label in wanted:
                    slices += [SupportSlice(index, z, label) for z in sample_slices(reference.labels.array == label, k=k)]
            else:
                slices += _explicit_slices(reference, index, zs, wanted)

        missing = sorted(set(label_names) - {s.label for s in slices})
        if missing:
            raise InputError(
                f"label(s) {_describe({v: label_names[v] for v in missing})} have no support slice in any reference; "
                "annotate them on a reference slice or drop them from the label map"
            )
        support = cls(references, slices, label_names)
        logger.info("support set: %d slices over %d label(s) from %d reference(s)", len(support.slices), len(label_names), len(references))
        return support

    @property
    def labels(self) -> list[int]:
        """The label values segmented, sorted."""
        return list(self.label_names)

    def for_label(self, label: int) -> list[SupportSlice]:
        """The supports of one label value."""
        return [s for s in self.slices if s.label == label]

    def mask(self, support: SupportSlice) -> np.ndarray:
        """The ``(y, x)`` boolean mask of ``support``'s label on its slice."""
        return self.references[support.reference].labels.array[support.z] == support.label

    def frames(self, preset: IntensityPreset) -> list[SliceFrames]:
        """Lazy model frames of each reference volume, mapped with ``preset`` (the query's)."""
        return [SliceFrames(reference.volume, preset) for reference in self.references]

    def check_query(self, query: Volume) -> None:
        """Raise ``InputError`` when a reference's modality contradicts the query's.

        A CT window applied to an MR reference (or the reverse) gives the model images that
        share nothing with the query. Unknown modalities (``OT``, e.g. from NIfTI) pass.
        """
        query_modality = query.modality.upper()
        if query_modality in _UNKNOWN_MODALITIES:
            return
        for reference in self.references:
            modality = reference.volume.modality.upper()
            if modality not in _UNKNOWN_MODALITIES and modality != query_modality:
                raise InputError(
                    f"{reference.name} is {modality} but the query is {query_modality}: "
                    "references must share the query's modality (one intensity preset maps both)"
                )

    def to_dict(self) -> dict:
        """JSON-able description for provenance: references by name, slices, label names."""
        return {
            "references": [reference.name for reference in self.references],
            "label_names": {str(v): n for v, n in self.label_names.items()},
            "slices": [{"reference": self.references[s.reference].name, "z": s.z, "label": s.label} for s in self.slices],
        }

    def __len__(self) -> int:
        return len(self.slices)

    def __repr__(self) -> str:
        return f"SupportSet({len(self.slices)} slices, labels {self.label_names}, {len(self.references)} reference(s))"


def sample_slices(mask: np.ndarray, *, k: int) -> list[int]:
    """``k`` slice indices spread over the z-extent of a 3D boolean ``mask``, each drawn on.

    The targets are the centres of ``k`` equal chunks of the extent; each moves to the nearest
    slice where the mask is non-empty. When that leaves duplicates (gaps in the annotation),
    the slices farthest from those already chosen fill up to ``k``. Fewer than ``k`` come back
    only when fewer slices are drawn on.

    >>> m = np.zeros((10, 2, 2), bool); m[2:8] = True
    >>> sample_slices(m, k=3)
    [2, 4, 6]
    """
    drawn = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if drawn.size <= k:
        return drawn.tolist()
    first, extent = int(drawn[0]), int(drawn[-1] - drawn[0] + 1)
    targets = first + (np.arange(k) + 0.5) * extent / k - 0.5
    chosen: list[int] = []
    for target in targets:
        z = int(drawn[np.argmin(np.abs(drawn - target))])
        if z not in chosen:
            chosen.append(z)
    while len(chosen) < k:
        distance = np.min(np.abs(drawn[:, None] - np.array(chosen)[None, :]), axis=1)
        chosen.append(int(drawn[np.argmax(distance)]))
    return sorted(chosen)


def _checked_reference(volume: Volume, labels: LabelVolume, name: str) -> Reference:
    if not isinstance(volume, Volume) or not isinstance(labels, LabelVolume):
        raise InputError(f"{name}: expected a (Volume, LabelVolume) pair, got ({type(volume).__name__}, {type(labels).__name__})")
    if labels.array.shape != volume.shape:
        raise GeometryError(
            f"{name}: the label map has shape {labels.array.shape} (z, y, x) but its image has shape {volume.shape}; "
            "give the label file that was drawn on this image"
        )
    if not volume.geometry.same_grid(labels.geometry):
        logger.warning("%s: label map and image differ in geometry (%s); using voxel indices", name, volume.geometry.describe_difference(labels.geometry))
    if not labels.labels:
        raise InputError(f"{name}: the label map is empty (all background); a reference needs at least one labelled voxel")
    return Reference(volume, labels, name)


def _label_map(labels: Mapping[int, str] | Sequence[int] | None, references: list[Reference]) -> dict[int, str]:
    """Label value -> name; names come from ``labels`` or else from the references."""
    known: dict[int, str] = {}
    for reference in references:
        for value in reference.labels.labels:
            known.setdefault(value, reference.labels.label_names.get(value, ""))
    if labels is None:
        values = sorted(known)
        given: Mapping[int, str] = {}
    else:
        values = sorted(int(v) for v in labels)
        given = labels if isinstance(labels, Mapping) else {}
        if not values or values[0] < 1:
            raise ConfigError(f"labels to segment must be label values >= 1 (0 is background); got {values}")
    return {v: given.get(v) or known.get(v) or f"label {v}" for v in values}


def _check_names_agree(reference: Reference, label_names: Mapping[int, str]) -> None:
    """A label value that both the reference and the given label map name must mean the same structure."""
    for value, name in reference.labels.label_names.items():
        wanted = label_names.get(int(value))
        if wanted and name and wanted.strip().lower() != name.strip().lower():
            raise InputError(
                f"{reference.name} calls label {value} {name!r} but the label map calls it {wanted!r}; "
                "renumber the reference's labels or fix the label map"
            )


def _explicit_slices(reference: Reference, index: int, zs: list[int], wanted: list[int]) -> list[SupportSlice]:
    depth = reference.volume.shape[0]
    if not zs:
        raise InputError(f"{reference.name}: the list of support slices is empty; give slice indices or leave it out to sample")
    out = []
    for z in sorted(set(zs)):
        if not 0 <= z < depth:
            raise InputError(f"{reference.name}: support slice {z} is outside the volume (slices 0..{depth - 1})")
        present = [label for label in wanted if np.any(reference.labels.array[z] == label)]
        if not present:
            raise InputError(
                f"{reference.name}: support slice {z} shows none of the labels to segment {wanted}; pick slices where they are drawn"
            )
        out += [SupportSlice(index, z, label) for label in present]
    return out


def _describe(label_names: Mapping[int, str]) -> str:
    return ", ".join(f"{v} ({n})" for v, n in sorted(label_names.items()))
