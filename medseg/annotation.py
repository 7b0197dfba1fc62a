"""A cohort annotated case by case: which cases, where each one's labels go, how far the work is.

micro-sam's image-series annotator, for volumes. ``Annotation.open`` takes a cohort manifest
or a folder (its NIfTI / NRRD / MetaImage files and DICOM series folders, one case each) and
an output folder. Every case has an output file there (``<case id>.nii.gz``, on the case
image's grid) and a status: ``untouched``, ``in progress`` (something was saved) or
``accepted`` (the user said it is done). Statuses and the case last worked on are kept in
``<output>/annotation.json``, written atomically after every change, so closing napari and
opening the same cohort again resumes where the user stopped. The cohort's ground-truth
files (``protected``) are never written.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> for name in ("b.nii.gz", "a.nrrd", "notes.txt"):
...     _ = (folder / name).write_bytes(b"")
>>> work = Annotation.open(folder)
>>> [c.id for c in work.cases], work.out_dir.name, work.resume_index()
(['a', 'b'], 'annotations', 0)
>>> work.set_status("a", "accepted")
>>> Annotation.open(folder).status("a"), Annotation.open(folder).resume_index()
('accepted', 1)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import InputError
from medseg.io.files import ITK_SUFFIXES, NIFTI_SUFFIXES, atomic_output, safe_file_name, volume_stem
from medseg.manifest import load_manifest

log = logging.getLogger(__name__)

STATUSES = ("untouched", "in progress", "accepted")
STATE_FILE = "annotation.json"


@dataclass(frozen=True)
class AnnotationCase:
    """One case: its image (file or DICOM folder, ``series_uid`` when several), truth and output files."""

    id: str
    image: Path
    output: Path
    series_uid: str | None = None
    truth: Path | None = None


class Annotation:
    """The cases of a cohort with their outputs and statuses; see the module docstring."""

    def __init__(self, cases: list[AnnotationCase], out_dir: Path, *, source: Path) -> None:
        if not cases:
            raise InputError(f"{source}: no cases to annotate (a manifest with cases, or a folder of NIfTI, NRRD, "
                             "MetaImage files or DICOM series folders)")
        self.cases = cases
        self.out_dir = out_dir
        self.source = source
        self._statuses: dict[str, str] = {c.id: "untouched" for c in cases}
        self._current: str | None = None
        self._read_state()

    @classmethod
    def open(cls, source: str | Path, out_dir: str | Path | None = None) -> Annotation:
        """The cases of a manifest (``.json``) or a folder; outputs in ``out_dir``.

        The default output folder is ``<manifest stem>-annotations`` beside a manifest and
        ``annotations`` inside a folder.
        """
        source = Path(source).expanduser()
        if source.is_dir():
            out = Path(out_dir) if out_dir else source / "annotations"
            return cls(_folder_cases(source, out), out, source=source)
        if source.suffix.lower() != ".json":
            raise InputError(f"{source}: open a cohort manifest (.json) or a folder of images to annotate")
        cohort = load_manifest(source)
        out = Path(out_dir) if out_dir else source.parent / f"{source.stem}-annotations"
        cases = [AnnotationCase(c.id, c.image, _output(out, c.id), c.series_uid, c.label) for c in cohort.cases]
        return cls(cases, out, source=source)

    # --- statuses ---------------------------------------------------------------------------
    def status(self, case_id: str) -> str:
        return self._statuses[self.case(case_id).id]

    def set_status(self, case_id: str, status: str) -> None:
        """Record ``status`` for the case (and that it is the one worked on); written at once."""
        if status not in STATUSES:
            raise InputError(f"annotation status {status!r}: expected one of {', '.join(STATUSES)}")
        self._statuses[self.case(case_id).id] = status
        self._current = case_id
        self._write_state()

    def set_current(self, case_id: str) -> None:
        """Remember ``case_id`` as the case being worked on (where ``resume_index`` goes back to)."""
        self._current = self.case(case_id).id
        self._write_state()

    def resume_index(self) -> int:
        """The case to open: the one last worked on unless accepted, else the first not accepted (else 0)."""
        ids = [c.id for c in self.cases]
        if self._current in ids and self._statuses[self._current] != "accepted":
            return ids.index(self._current)
        return next((i for i, c in enumerate(self.cases) if self._statuses[c.id] != "accepted"), 0)

    def case(self, case_id: str) -> AnnotationCase:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise InputError(f"no case {case_id!r} in {self.source}")

    @property
    def protected(self) -> set[Path]:
        """Files that must never be written: the cohort's ground truth."""
        return {c.truth.resolve() for c in self.cases if c.truth is not None}

    # --- state file -------------------------------------------------------------------------
    def _read_state(self) -> None:
        path = self.out_dir / STATE_FILE
        if not path.is_file():
            return
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            statuses, current = dict(state["statuses"]), state.get("current")
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{path}: not an annotation state file ({error}); move it away to start afresh") from error
        for case_id, status in statuses.items():
            if case_id in self._statuses and status in STATUSES:
                self._statuses[case_id] = status
        self._current = current if current in self._statuses else None

    def _write_state(self) -> None:
        state = {"source": str(self.source), "current": self._current, "statuses": self._statuses}
        with atomic_output(self.out_dir / STATE_FILE) as tmp:
            tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")


def _folder_cases(folder: Path, out: Path) -> list[AnnotationCase]:
    """One case per volume file and per DICOM series folder directly in ``folder``, by name."""
    from medseg.io import list_dicom_series

    cases = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES):
            cases.append(AnnotationCase(volume_stem(path), path, _output(out, volume_stem(path))))
        elif path.is_dir() and path.resolve() != out.resolve():
            try:
                list_dicom_series(path)
            except InputError:
                continue  # not a DICOM folder
            cases.append(AnnotationCase(path.name, path, _output(out, path.name)))
    return cases


def _output(out: Path, case_id: str) -> Path:
    return out / f"{safe_file_name(case_id, default='case')}.nii.gz"
