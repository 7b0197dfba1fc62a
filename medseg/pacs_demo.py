"""The demo cohort on a PACS: phantoms as DICOM series with DICOM SEG labels, stored over DICOMweb.

``write_pacs_demo(directory, server)`` writes the demo phantoms (``medseg.phantom``, the
same seeds, voxels and splits as ``write_demo_cohort``) as DICOM series with their labels as
DICOM SEG under ``directory/demo-dicom/<case>/``, stores every object on ``server`` with
STOW-RS, and writes two manifests of the same cases: ``demo-dicom.json`` (the files) and
``demo-pacs.json`` (the same objects by DICOMweb address). A run on each must give the same
numbers. Every UID derives from the case id, so writing again stores nothing new; a series
the server already holds whole is not sent again.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pydicom

from medseg.io import load_volume, save_labels
from medseg.io.dicomweb import DicomwebRef, DicomwebServer, parse_dicomweb_url
from medseg.manifest import write_manifest
from medseg.phantom import DEFAULT_SHAPE, DEFAULT_SPACING, LABELS, make_phantom, write_dicom_series
from medseg.volume import LabelVolume

log = logging.getLogger(__name__)


def write_pacs_demo(
    directory: str | os.PathLike,
    server: str | DicomwebRef,
    *,
    n_cases: int = 8,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> tuple[Path, Path]:
    """Write and store the demo cohort (the last half of the cases are ``test``); return the
    paths of ``demo-dicom.json`` and ``demo-pacs.json``."""
    if n_cases < 2:
        raise ValueError(f"n_cases must be at least 2 (one train, one test case), got {n_cases}")
    directory = Path(directory)
    pacs = DicomwebServer(parse_dicomweb_url(server, level="server"))
    pacs.check()
    file_cases, pacs_cases = [], []
    for seed in range(n_cases):
        case_id = f"phantom_{seed:03d}"
        split = "test" if seed >= n_cases - n_cases // 2 else "train"
        image, label = _write_case(directory / "demo-dicom" / case_id, case_id, seed, shape, spacing)
        image_ref, label_ref = _store(pacs, image), _store(pacs, label.parent)
        file_cases.append({"id": case_id, "image": os.path.relpath(image, directory),
                           "label": os.path.relpath(label, directory), "split": split})
        pacs_cases.append({"id": case_id, "image": str(image_ref), "label": str(label_ref), "split": split})
    common = {"modality": "CT", "labels": {"0": "background", **{str(k): v for k, v in LABELS.items()}}}
    files = write_manifest(directory / "demo-dicom.json", {
        "name": "demo-dicom", "description": "The demo phantoms as DICOM series with DICOM SEG labels (files)",
        **common, "cases": file_cases})
    on_pacs = write_manifest(directory / "demo-pacs.json", {
        "name": "demo-pacs", "description": f"The demo phantoms on the PACS {pacs.address} (DICOMweb)",
        **common, "cases": pacs_cases})
    return files, on_pacs


def _write_case(folder: Path, case_id: str, seed: int, shape: tuple[int, int, int],
                spacing: tuple[float, float, float]) -> tuple[Path, Path]:
    """The case's series folder and SEG file, written afresh (UIDs from the case id)."""
    shutil.rmtree(folder, ignore_errors=True)
    volume, labels = make_phantom(seed, shape=shape, spacing=spacing)
    write_dicom_series(volume, folder / "image", series_description=f"medseg demo {case_id}",
                       uid_seed=f"medseg-demo/{case_id}")
    dicom = load_volume(folder / "image")
    seg = LabelVolume(labels.array, dicom.geometry, label_names=dict(LABELS),
                      provenance={"method": "phantom ground truth"})
    uid = lambda what: pydicom.uid.generate_uid(entropy_srcs=[f"medseg-demo/{case_id}", what])
    path = save_labels(seg, dicom, folder / "labels" / "labels.dcm", format="seg", series_uid=uid("seg-series"),
                       instance_uid=uid("seg-instance"))
    return folder / "image", path


def _store(pacs: DicomwebServer, folder: Path) -> DicomwebRef:
    """Store a folder's objects (one series) unless the server holds them all; the series' address."""
    datasets = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    first = datasets[0]
    ref = DicomwebRef(pacs.url, str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
    if pacs.instance_uids(ref) != sorted(str(d.SOPInstanceUID) for d in datasets):
        pacs.store(datasets)
        log.info("stored %d object(s) as %s", len(datasets), ref)
    return ref
