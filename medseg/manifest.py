"""Cohort manifests: which images, which label maps, which split.

A manifest is a JSON file in one of two forms.

**medseg form**::

    {
      "name": "demo",
      "description": "Synthetic abdominal CT phantoms",
      "modality": "CT",
      "labels": {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"},
      "cases": [
        {"id": "phantom_000", "image": "demo/phantom_000.nii.gz",
         "label": "demo/phantom_000_labels.nii.gz", "split": "train"},
        {"id": "scan_17", "image": "/data/ct/scan_17", "series_uid": "1.2.840...",
         "label": null, "split": "test", "spacing": [2.5, 0.8, 0.8]}
      ]
    }

* ``image`` / ``label``: a path relative to the manifest's folder, an absolute path, or
  ``package://<distribution>/<path>`` for a file shipped inside an installed Python package
  (``package://nilearn/nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``).
  ``label`` may be ``null`` or absent (a case to segment without ground truth). Either may
  be a DICOMweb address on a PACS (``dicomweb://host:8042/dicom-web/studies/<uid>/series/<uid>``,
  for a label a SEG / RTSTRUCT series of one object or ``.../instances/<uid>``; see
  ``medseg.io.dicomweb``), read through a verified local cache.
* ``split``: ``train``, ``val`` or ``test``.
* ``labels``: label value (a string holding an integer) -> name; ``0`` is background and is
  not listed in ``Cohort.labels``.
* ``label`` may also be a DICOM SEG or RT Structure Set (RTSTRUCT) drawn on the image. Its
  segments / ROIs become label values by name: the optional top-level ``roi_names`` maps
  each label value to ROI names or patterns (``{"1": ["Liver", "re:liver_\\d+"], "3":
  ["glob:*kidney*"]}``; forms in ``medseg.roi_names``); without it, each label's name
  and its AAPM TG-263 standard name are matched case-insensitively. ``validate_data``
  reports, per case and before any compute, ROIs matched by no label (left out) and labels
  with no ROI, and refuses ROIs matched by several labels.
* Optional per case: ``series_uid`` (which series of a DICOM folder) and ``spacing``
  ``[z, y, x]`` in mm, which replaces the spacing in the file headers (for files known to
  carry a wrong spacing); origin and direction are kept.

**Medical Segmentation Decathlon form**: a ``dataset.json`` as shipped, with ``training``
(``[{"image", "label"}]``), ``test`` (``[paths]``), ``modality`` (``{"0": "CT"}``) and
``labels``. Case ids are the image file names without suffix. The ``training`` cases are
split deterministically: the ``ceil(n / 5)`` cases whose SHA-256 of the id is smallest are
``val``, the rest ``train`` (the same ids always land in the same split, and adding a case
moves at most one other). ``test`` cases have no label. Multi-channel tasks (several
modalities, 4D images) are rejected.

``load_manifest`` checks the whole file up front (fields, ids, splits, that every file
exists) and reports every problem at once; ``Cohort.validate_data`` then opens the files
(geometry of image and label agree, label values are declared).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.errors import ConfigError, MedsegError
from medseg.geometry import Geometry
from medseg.manifest_msd import msd_cases
from medseg.roi_names import RoiMapping
from medseg.volume import LabelVolume, Volume

if TYPE_CHECKING:
    from medseg.io.dicomweb import DicomwebRef

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PACKAGE_SCHEME = "package://"
_CASE_KEYS = {"id", "image", "label", "split", "spacing", "series_uid"}


@dataclass(frozen=True)
class Case:
    """One image (and maybe its label map) of a cohort; paths are resolved and exist (addresses: checked by
    ``Cohort.validate_data``)."""

    id: str
    image: Path | DicomwebRef
    label: Path | DicomwebRef | None
    split: str
    spacing: tuple[float, float, float] | None = None
    series_uid: str | None = None
    modality: str = "OT"
    label_names: dict[int, str] = field(default_factory=dict)
    roi_names: RoiMapping | None = None  # for SEG / RTSTRUCT labels; None: the label names (TG-263)

    @property
    def roi_mapping(self) -> RoiMapping:
        """How ROI / segment names of a SEG or RTSTRUCT label file become this cohort's label values."""
        return self.roi_names or RoiMapping.from_label_names(self.label_names)

    def load_labels(self, like: Volume | Geometry) -> LabelVolume:
        """The case's label map on ``like`` (``medseg.io.load_labels``, ROI names mapped), named as in the manifest."""
        from medseg.io import label_file_kind, load_labels

        label = self.label_file()
        if label is None:
            raise ConfigError(f"case {self.id!r} has no label file")
        mapping = self.roi_mapping if label_file_kind(label) else None
        return replace(load_labels(label, like, roi_names=mapping), label_names=dict(self.label_names))

    def label_file(self) -> Path | None:
        """The label file: ``label`` itself, or the verified cached copy of the object its address names."""
        from medseg.io.dicomweb import is_dicomweb_url, local_object

        return local_object(self.label) if is_dicomweb_url(self.label) else self.label

    def load(self) -> tuple[Volume, LabelVolume | None]:
        """The image (modality from the file when it says, else from the manifest) and labels.

        The label map must lie on the image's grid (``GeometryError`` otherwise); a spacing
        override applies to both after that check.
        """
        from medseg.io import load_volume  # imported late: io pulls in MONAI and torch

        volume = load_volume(self.image, self.series_uid)
        if volume.modality == "OT":
            volume = replace(volume, modality=self.modality)
        elif volume.modality != self.modality:
            log.warning("case %s: file says modality %s, manifest says %s; using the file's", self.id,
                        volume.modality, self.modality)
        labels = self.load_labels(volume) if self.label is not None else None
        if self.spacing is not None:
            geometry = replace(volume.geometry, spacing=self.spacing)
            volume = replace(volume, geometry=geometry)
            if labels is not None:
                labels = replace(labels, geometry=geometry)
        return volume, labels


@dataclass(frozen=True)
class Cohort:
    """A validated manifest: named label classes and cases with splits."""

    name: str
    path: Path
    modality: str
    labels: dict[int, str]
    cases: list[Case]
    description: str = ""

    def split(self, name: str) -> list[Case]:
        """The cases of one split (``train``, ``val`` or ``test``), in manifest order."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return [case for case in self.cases if case.split == name]

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise ConfigError(f"{self.path}: no case with id {case_id!r}")

    def validate_data(self) -> None:
        """Open every case: labels must lie on their image's grid and hold only declared values.

        All cases are checked; the error raised lists every failing case with its file, and
        has the type of the first problem found (``GeometryError``, ``ConfigError`` or
        ``InputError``). ROIs of SEG / RTSTRUCT labels that no label takes, and labels that
        no ROI gives, are logged as warnings per case (see ``roi_report``).
        """
        from medseg.io import read_geometry
        from medseg.io.dicomweb import check_servers

        check_servers(ref for case in self.cases for ref in (case.image, case.label))  # a wrong password: one error
        problems: list[MedsegError] = []
        for case in self.cases:
            try:
                geometry = read_geometry(case.image, case.series_uid)
                if case.label is None:
                    continue
                for line in self.roi_report(case):
                    log.warning("%s", line)
                labels = case.load_labels(geometry)
                undeclared = sorted(set(labels.labels) - set(self.labels))
                if undeclared:
                    raise ConfigError(
                        f"{case.label}: label values {undeclared} are not declared in the manifest's labels "
                        f"{sorted(self.labels)}; add them to \"labels\" or fix the label map"
                    )
            except MedsegError as error:
                problems.append(type(error)(f"case {case.id!r}: {error}"))
        if problems:
            listing = "\n".join(f"  - {p}" for p in problems)
            raise type(problems[0])(f"{self.path}: {len(problems)} of {len(self.cases)} cases failed "
                                    f"validation:\n{listing}")


    def roi_report(self, case: Case) -> list[str]:
        """What the ROI mapping leaves out for a case with a SEG / RTSTRUCT label (empty otherwise).

        Raises ``ConfigError`` for an ROI that the mapping gives several label values.
        """
        from medseg.io import label_file_names

        if case.label is None or not (names := label_file_names(label := case.label_file())):
            return []
        match = case.roi_mapping.match(names, source=case.label)
        lines = []
        if match.unmatched:
            lines.append(f"case {case.id!r}: ROI(s) {match.unmatched} of {label.name} match no label and are left out")
        if match.missing:
            missing = [f"{v} ({self.labels.get(v, '?')})" for v in match.missing]
            lines.append(f"case {case.id!r}: no ROI of {label.name} matches label(s) {', '.join(missing)}")
        return lines


def load_manifest(path: str | os.PathLike) -> Cohort:
    """Read and check a manifest (medseg or Decathlon form); see the module docstring.

    Raises
    ------
    ConfigError
        Unreadable JSON, a missing or malformed field, a duplicate id, an unknown split or a
        file that does not exist; the message names the manifest and lists every problem.
    """
    path = Path(path).resolve()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: manifest not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a readable JSON manifest ({error})") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a manifest is a JSON object with \"labels\" and \"cases\" (or a Decathlon "
                          "dataset.json)")
    parser = _Parser(path)
    cohort = parser.msd(data) if "training" in data and "cases" not in data else parser.medseg(data)
    if parser.problems:
        listing = "\n".join(f"  - {p}" for p in parser.problems)
        raise ConfigError(f"{path}: {len(parser.problems)} problem(s) in the manifest:\n{listing}")
    return cohort


def write_manifest(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write manifest JSON (indented, stable) unless the file already holds exactly that text."""
    path = Path(path)
    text = json.dumps(data, indent=2) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    log.info("wrote %s", path)
    return path


def resolve_path(reference: str, base: Path) -> Path:
    """A manifest path: ``package://dist/path``, absolute, or relative to ``base`` (a folder)."""
    if reference.startswith(PACKAGE_SCHEME):
        dist, _, inner = reference[len(PACKAGE_SCHEME):].partition("/")
        try:
            distribution = metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            raise ConfigError(f"{reference}: package {dist!r} is not installed (pip install {dist})") from None
        return Path(distribution.locate_file(inner)).resolve()
    return (base / os.path.expanduser(reference)).resolve()


class _Parser:
    """Turns manifest JSON into a Cohort, collecting every problem instead of stopping at one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []
        self.seen_ids: set[str] = set()

    def medseg(self, data: dict[str, Any]) -> Cohort:
        labels = self.labels(data.get("labels"))
        modality = data.get("modality", "OT")
        if not isinstance(modality, str) or not modality:
            self.problems.append(f"\"modality\" must be a string such as \"CT\" or \"MR\", got {modality!r}")
            modality = "OT"
        raw_cases = data.get("cases")
        if not isinstance(raw_cases, list) or not raw_cases:
            self.problems.append("\"cases\" must be a non-empty list of {\"id\", \"image\", \"label\", "
                                 "\"split\"} objects")
            raw_cases = []
        roi_names = self.roi_names(data.get("roi_names"), labels)
        cases = [self.case(i, raw, modality, labels) for i, raw in enumerate(raw_cases)]
        return self.cohort(data, modality, labels, [replace(c, roi_names=roi_names) if c else None for c in cases])

    def roi_names(self, raw: Any, labels: dict[int, str]) -> RoiMapping | None:
        if raw is None:
            return None
        try:
            mapping = RoiMapping.from_config(raw, "roi_names")
        except ConfigError as error:
            self.problems.append(str(error))
            return None
        undeclared = sorted(set(mapping.rules) - set(labels))
        if undeclared:
            self.problems.append(f"roi_names: label value(s) {undeclared} are not declared in \"labels\"")
        return mapping

    def msd(self, data: dict[str, Any]) -> Cohort:
        labels = self.labels(data.get("labels"))
        modality, raw_cases = msd_cases(data, self.problems)
        cases = [self.case(i, raw, modality, labels) for i, raw in enumerate(raw_cases)]
        return self.cohort(data, modality, labels, cases)

    def cohort(self, data: dict[str, Any], modality: str, labels: dict[int, str], cases: list[Case | None]) -> Cohort:
        kept = [c for c in cases if c is not None]
        name = data.get("name") or self.path.stem
        return Cohort(str(name), self.path, modality, labels, kept, str(data.get("description", "")))

    def labels(self, raw: Any) -> dict[int, str]:
        if not isinstance(raw, dict) or not raw:
            self.problems.append("\"labels\" must be an object mapping label values to names, e.g. {\"0\": "
                                 "\"background\", \"1\": \"liver\"}")
            return {}
        labels: dict[int, str] = {}
        for key, name in raw.items():
            try:
                value = int(key)
            except ValueError:
                self.problems.append(f"labels: key {key!r} is not an integer label value")
                continue
            if value < 0:
                self.problems.append(f"labels: value {value} is negative; label values are >= 0 (0 = background)")
            elif not isinstance(name, str) or not name:
                self.problems.append(f"labels: value {value} needs a non-empty name, got {name!r}")
            elif value != 0:
                labels[value] = name
        return labels

    def case(self, index: int, raw: Any, modality: str, labels: dict[int, str]) -> Case | None:
        if not isinstance(raw, dict):
            self.problems.append(f"cases[{index}]: must be an object, got {type(raw).__name__}")
            return None
        where = f"cases[{index}] (id {raw.get('id')!r})"
        unknown = set(raw) - _CASE_KEYS
        if unknown:
            self.problems.append(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_CASE_KEYS)}")
        case_id, split = raw.get("id"), raw.get("split")
        if not isinstance(case_id, str) or not case_id:
            self.problems.append(f"{where}: \"id\" must be a non-empty string")
        elif case_id in self.seen_ids:
            self.problems.append(f"{where}: case id {case_id!r} is used more than once; ids must be unique")
        else:
            self.seen_ids.add(case_id)
        if split not in SPLITS:
            self.problems.append(f"{where}: \"split\" is {split!r}; use one of {', '.join(SPLITS)}")
        image = self.file(where, "image", raw.get("image"), required=True)
        label = self.file(where, "label", raw.get("label"), required=False)
        spacing = self.spacing(where, raw.get("spacing"))
        series_uid = raw.get("series_uid")
        if series_uid is not None and (not isinstance(series_uid, str) or not isinstance(image, Path)):
            self.problems.append(f"{where}: \"series_uid\" must be a string, for a DICOM folder (an address names "
                                 "its series)")
        if image is None or not isinstance(case_id, str) or split not in SPLITS:
            return None
        return Case(case_id, image, label, split, spacing, series_uid, modality, dict(labels))

    def file(self, where: str, key: str, reference: Any, *, required: bool) -> Path | DicomwebRef | None:
        if reference is None and not required:
            return None
        if not isinstance(reference, str) or not reference:
            self.problems.append(f"{where}: \"{key}\" must be a path string")
            return None
        try:
            if "://" in reference and not reference.startswith(PACKAGE_SCHEME):  # a DICOMweb address
                from medseg.io.dicomweb import parse_dicomweb_url

                return parse_dicomweb_url(reference, level="series")
            path = resolve_path(reference, self.path.parent)
        except MedsegError as error:
            self.problems.append(f"{where}: \"{key}\": {error}")
            return None
        if not path.exists():
            self.problems.append(f"{where}: \"{key}\" file {path} does not exist")
            return None
        return path

    def spacing(self, where: str, raw: Any) -> tuple[float, float, float] | None:
        if raw is None:
            return None
        if (
            isinstance(raw, list)
            and len(raw) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in raw)
        ):
            return (float(raw[0]), float(raw[1]), float(raw[2]))
        self.problems.append(f"{where}: \"spacing\" must be three positive numbers [z, y, x] in mm, got {raw!r}")
        return None

