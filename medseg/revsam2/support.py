"""The support set of reference prompting: annotated slices of labelled reference volumes.

A support is one (image slice, label slice) pair: slice ``z`` of a reference volume, with the
mask of one label value on it. Each label value is its own object; a reference slice that
shows two labels is a support of both (its image is still encoded once).

Supports are either given explicitly (slice indices per reference) or sampled: ``k`` slices
per label and reference, at the centres of ``k`` equal chunks of the label's z-extent (the
chunk-centre rule of the SSL-ALPNet few-shot protocol that FS-MedSAM2 evaluates with), each
moved to the nearest slice where the label is actually drawn.

A reference is either another patient's labelled volume or labels drawn on the query itself,
and it says which (``SupportEntry.from_query``): never inferred from object identity or file
paths, so loading the same file twice changes nothing.

Before segmenting a query, ``for_query`` puts every other-patient reference on the query's
in-plane grid (pixel spacing, matrix, orientation; see ``medseg.revsam2.inplane``). Intensities
are not converted here: the engine maps every reference with the *query's* intensity preset,
so that supports and query look alike to the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.prompt_simulation import sample_slices
from medseg.revsam2.parts import split_parts
from medseg.revsam2.inplane import in_plane_axes, resample_in_plane, same_in_plane_grid
from medseg.volume import LabelVolume, Volume

log = logging.getLogger(__name__)

#: Modalities that say nothing about contrast (NIfTI has no modality field).
_UNKNOWN_MODALITIES = {"", "OT"}


@dataclass(frozen=True, eq=False)
class SupportEntry:
    """One annotated reference, as given to ``SupportSet.from_volumes``.

    ``labels`` drawn on ``volume`` (another patient's image), or, with ``from_query=True``,
    drawn on the query itself: ``volume`` is then left out (the session uses the query's
    slices), ``labels`` must lie on the query's grid, and those slices come back exactly as
    drawn. ``slices``: the z indices to use (every wanted label drawn on them becomes a
    support); ``None`` samples ``k`` per label. A plain ``(volume, labels)`` or
    ``(volume, labels, slices)`` tuple is an entry from another volume.

    >>> SupportEntry(ref_labels, volume=ref)                                # doctest: +SKIP
    >>> SupportEntry(drawn_on_query, slices=[12, 30], from_query=True)      # doctest: +SKIP
    """

    labels: LabelVolume
    volume: Volume | None = None
    slices: Sequence[int] | None = None
    from_query: bool = False


@dataclass(frozen=True, eq=False)
class Reference:
    """A checked reference: ``volume`` (None when drawn on the query), ``labels``, ``name`` for
    messages and provenance, and how it was put on the query's in-plane grid (``resampled``)."""

    volume: Volume | None
    labels: LabelVolume
    name: str
    from_query: bool = False
    resampled: dict[str, Any] | None = None


@dataclass(frozen=True)
class SupportSlice:
    """Slice ``z`` of reference number ``reference``, used as a support of label value ``label``."""

    reference: int
    z: int
    label: int


class SupportSet:
    """Annotated reference slices, grouped by label value.

    Build it with ``SupportSet.from_volumes``; the constructor takes already validated parts.
    ``for_query`` puts it on a query's in-plane grid (the session does it).

    Attributes
    ----------
    references
        The labelled reference volumes.
    slices
        Every support, sorted by label, then reference, then z.
    label_names
        Label value -> name of every label the set segments (with ``parts``: of every object).
    label_of
        Object value -> the label value it is part of (itself, unless ``parts`` split the label).
    """

    def __init__(self, references: Sequence[Reference], slices: Sequence[SupportSlice], label_names: Mapping[int, str],
                 label_of: Mapping[int, int] | None = None):
        self.references = tuple(references)
        self.slices = tuple(sorted(slices, key=lambda s: (s.label, s.reference, s.z)))
        self.label_names = dict(sorted(label_names.items()))
        self.label_of = {value: value for value in self.label_names} | dict(label_of or {})

    @classmethod
    def from_volumes(
        cls,
        entries: Sequence[SupportEntry | tuple[Volume, LabelVolume] | tuple[Volume, LabelVolume, Sequence[int] | None]],
        *,
        k: int = 3,
        labels: Mapping[int, str] | Sequence[int] | None = None,
        names: Sequence[str] | None = None,
        parts: bool = False,
    ) -> SupportSet:
        """Supports from labelled references.

        Parameters
        ----------
        entries
            One ``SupportEntry`` (or ``(volume, labels[, slices])`` tuple) per reference.
        k
            Slices sampled per label and reference when no slices are given.
        labels
            The label map to segment: label values, or value -> name. Labels of a reference that
            are not in it are ignored; a reference that has none of them is an error, and so is
            a label that no reference annotates. ``None``: every label of the references.
        names
            One name per reference for messages and provenance (default ``reference 1``, ...).
        parts
            Each 3D connected part of a label its own object, matched between references
            (``medseg.revsam2.parts``); the session merges them back into their label. With
            explicit slices, a part drawn on none of them is left out (its label is not).

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
        names = list(names) if names is not None else [f"reference {i + 1}" for i in range(len(entries))]
        given = [_as_entry(entry, name) for entry, name in zip(entries, names)]
        references = [_checked_reference(entry, name) for entry, name in zip(given, names)]
        label_names = _label_map(labels, references)
        if isinstance(labels, Mapping):
            for reference in references:
                _check_names_agree(reference, labels)
        label_of = {value: value for value in label_names}
        if parts:
            relabelled, label_names, label_of = split_parts([r.labels for r in references], label_names)
            references = [replace(r, labels=labels) for r, labels in zip(references, relabelled)]
        slices: list[SupportSlice] = []
        for index, (reference, entry) in enumerate(zip(references, given)):
            slices += _supports_of(reference, index, entry.slices, label_names, k=k, label_of=label_of)
        supported = {s.label for s in slices}
        unsupported_parts = [v for v in label_names if v not in supported and label_of[v] in
                             {label_of[u] for u in supported}]
        for value in unsupported_parts:
            log.info("%s: drawn on none of the given slices; its label is segmented from its other parts",
                     label_names.pop(value))
            del label_of[value]
        missing = sorted(set(label_names) - supported)
        if missing:
            raise InputError(
                f"label(s) {_describe({v: label_names[v] for v in missing})} have no support slice in any reference; "
                "annotate them on a reference slice or drop them from the label map"
            )
        log.info("support set: %d slices over %d object(s) from %d reference(s)", len(slices), len(label_names),
                 len(references))
        return cls(references, slices, label_names, label_of)

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

    def check_query(self, query: Volume) -> None:
        """Refuse references that cannot segment ``query``, before any model work.

        ``InputError``: a reference's modality contradicts the query's (a CT window applied to
        an MR reference gives the model images that share nothing with the query; unknown
        modalities, ``OT`` e.g. from NIfTI, pass). ``GeometryError``: labels drawn on the query
        that are not on its grid, or reference slices not parallel to the query's.
        """
        query_modality = query.modality.upper()
        for reference in self.references:
            if reference.from_query:
                if not reference.labels.geometry.same_grid(query.geometry):
                    raise GeometryError(
                        f"{reference.name} is marked as drawn on the query but is not on the query's grid "
                        f"({query.geometry.describe_difference(reference.labels.geometry)}); give labels drawn on "
                        "this query"
                    )
                continue
            modality = reference.volume.modality.upper()
            if (query_modality not in _UNKNOWN_MODALITIES and modality not in _UNKNOWN_MODALITIES
                    and modality != query_modality):
                raise InputError(
                    f"{reference.name} is {modality} but the query is {query_modality}: "
                    "references must share the query's modality (one intensity preset maps both)"
                )
            in_plane_axes(reference.volume.geometry, query.geometry, name=reference.name)

    def for_query(self, query: Volume) -> SupportSet:
        """This support set with every reference on ``query``'s in-plane grid (``check_query`` first).

        A reference whose slices differ from the query's in pixel spacing, matrix size or
        in-plane orientation is resampled (see ``medseg.revsam2.inplane``); the provenance
        records it. Slice indices are unchanged.
        """
        self.check_query(query)
        references = [_on_query_grid(reference, query.geometry) for reference in self.references]
        support = SupportSet(references, self.slices, self.label_names, self.label_of)
        for s in support.slices:
            if not support.mask(s).any():
                raise GeometryError(
                    f"{references[s.reference].name}: label {s.label} on support slice {s.z} lies outside the query's "
                    "field of view once resampled to the query's in-plane grid "
                    f"({_describe_resampling(references[s.reference])}); "
                    "pick slices where it lies nearer the centre, or a reference with a similar field of view"
                )
        return support

    def to_dict(self) -> dict:
        """JSON-able description for provenance: references by name, slices, label names, grids."""
        return {
            "references": [reference.name for reference in self.references],
            "drawn_on_query": [reference.name for reference in self.references if reference.from_query],
            "resampled_in_plane": {r.name: r.resampled for r in self.references if r.resampled is not None},
            "label_names": {str(v): n for v, n in self.label_names.items()},
            "parts": {str(v): label for v, label in self.label_of.items() if v != label},
            "slices": [{"reference": self.references[s.reference].name, "z": s.z, "label": s.label}
                       for s in self.slices],
        }

    def __len__(self) -> int:
        return len(self.slices)

    def __repr__(self) -> str:
        return f"SupportSet({len(self.slices)} slices, labels {self.label_names}, {len(self.references)} reference(s))"


def _as_entry(entry: SupportEntry | tuple, name: str) -> SupportEntry:
    if isinstance(entry, SupportEntry):
        return entry
    if not isinstance(entry, tuple) or len(entry) not in (2, 3):
        raise InputError(f"{name}: expected a SupportEntry, (volume, labels) or (volume, labels, slices)")
    return SupportEntry(entry[1], volume=entry[0], slices=entry[2] if len(entry) == 3 else None)


def _checked_reference(entry: SupportEntry, name: str) -> Reference:
    volume, labels = entry.volume, entry.labels
    if not isinstance(labels, LabelVolume):
        raise InputError(f"{name}: labels must be a LabelVolume, got {type(labels).__name__}")
    if entry.from_query:
        if volume is not None:
            raise InputError(f"{name}: drawn on the query, so it takes the query's image; leave its volume out")
    elif not isinstance(volume, Volume):
        raise InputError(f"{name}: expected a (Volume, LabelVolume) pair, got ({type(volume).__name__}, "
                         f"{type(labels).__name__})")
    elif labels.array.shape != volume.shape:
        raise GeometryError(
            f"{name}: the label map has shape {labels.array.shape} (z, y, x) but its image has shape {volume.shape}; "
            "give the label file that was drawn on this image"
        )
    elif not volume.geometry.same_grid(labels.geometry):
        raise GeometryError(
            f"{name}: the label map is not on its image's grid "
            f"({volume.geometry.describe_difference(labels.geometry)}); "
            "give the label file that was drawn on this image"
        )
    if not labels.labels:
        raise InputError(f"{name}: the label map is empty (all background); a reference needs at least one "
                         "labelled voxel")
    return Reference(volume, labels, name, from_query=entry.from_query)


def _on_query_grid(reference: Reference, query) -> Reference:
    """``reference`` resampled onto the query's in-plane grid when its slices differ from the query's."""
    if reference.from_query:
        return reference
    axes = in_plane_axes(reference.volume.geometry, query, name=reference.name)
    if same_in_plane_grid(reference.volume.geometry, query, axes):
        return reference
    volume, labels, record = resample_in_plane(reference.volume, reference.labels, query, axes)
    resampled = replace(reference, volume=volume, labels=labels, resampled=record)
    log.info("%s: resampled onto the query's in-plane grid (%s)", reference.name, _describe_resampling(resampled))
    return resampled


def _describe_resampling(reference: Reference) -> str:
    record = reference.resampled
    if record is None:
        return "not resampled"
    (spacing_from, spacing_to), (shape_from, shape_to) = record["in_plane_spacing"], record["in_plane_shape"]
    return (f"pixel spacing {spacing_from} -> {spacing_to} mm, matrix {shape_from} -> {shape_to}, "
            f"axes {record['in_plane_axes']}")


def _supports_of(reference: Reference, index: int, zs: Sequence[int] | None, label_names: Mapping[int, str], *,
                 k: int, label_of: Mapping[int, int]) -> list[SupportSlice]:
    """The reference's supports: ``k`` sampled per wanted object, or every wanted object on the slices ``zs``
    (messages name labels: ``label_of`` maps a label's parts to it)."""
    wanted = sorted(set(reference.labels.labels) & set(label_names))
    labels = {label_of[v]: label_names[v] for v in label_names}
    if not wanted:
        values = sorted({label_of.get(v, v) for v in reference.labels.labels})
        raise InputError(
            f"{reference.name}: its labels {values} are none of the labels to segment "
            f"{_describe(labels)}; give the label map that matches this reference or renumber its labels"
        )
    if zs is None:
        return [SupportSlice(index, z, label) for label in wanted
                for z in sample_slices(reference.labels.array == label, k=k)]
    return _explicit_slices(reference, index, [int(z) for z in zs], wanted, sorted(labels))


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


def _explicit_slices(reference: Reference, index: int, zs: list[int], wanted: list[int],
                     labels: list[int]) -> list[SupportSlice]:
    depth = reference.labels.array.shape[0]
    if not zs:
        raise InputError(f"{reference.name}: the list of support slices is empty; give slice indices or leave it out "
                         "to sample")
    out = []
    for z in sorted(set(zs)):
        if not 0 <= z < depth:
            raise InputError(f"{reference.name}: support slice {z} is outside the volume (slices 0..{depth - 1})")
        present = [label for label in wanted if np.any(reference.labels.array[z] == label)]
        if not present:
            raise InputError(
                f"{reference.name}: support slice {z} shows none of the labels to segment {labels}; pick slices where "
                "they are drawn"
            )
        out += [SupportSlice(index, z, label) for label in present]
    return out


def _describe(label_names: Mapping[int, str]) -> str:
    return ", ".join(f"{v} ({n})" for v, n in sorted(label_names.items()))
