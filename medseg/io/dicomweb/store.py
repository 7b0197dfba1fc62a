"""Labels back to a PACS: a DICOM SEG or RTSTRUCT on the image series, stored with STOW-RS, once.

The object's Series and SOP Instance UIDs are derived (``derived_uid``) from the caller's
``key`` (the pipeline: method, case, result fingerprint), the format, the image series and
the label voxels: the same labels stored again are the same object, and the server is asked
(QIDO-RS) before anything is sent, so nothing is stored twice; edited labels are a new
object. The file is written in a temporary folder and removed once stored: it carries the
patient module of its images, which medseg keeps out of its own outputs.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Literal

import pydicom

from medseg.errors import InputError
from medseg.io.dicomweb.client import DicomwebServer
from medseg.io.dicomweb.url import DicomwebRef, parse_dicomweb_url
from medseg.volume import LabelVolume, Volume

log = logging.getLogger(__name__)


def derived_uid(*parts: object) -> str:
    """A DICOM UID determined by ``parts``: ``2.25.`` and 128 bits of their SHA-256 (PS3.5 B.2).

    >>> derived_uid("a", 1) == derived_uid("a", 1) != derived_uid("a", 2)
    True
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return f"2.25.{int(digest[:32], 16)}"


def stored_address(labels: LabelVolume, like: Volume, *, format: Literal["seg", "rtstruct"] = "seg",
                   server: str | DicomwebRef | None = None, key: tuple = ()) -> DicomwebRef:
    """Where ``store_labels`` puts (or finds) these labels: the server, the image's study, the derived UIDs.

    ``server``: default the server ``like`` was read from (``like.metadata["dicomweb"]``).
    """
    target = server or like.metadata.get("dicomweb")
    if target is None:
        raise InputError("the image was not read from a DICOMweb server: name the server to store the labels on")
    if not like.source_files:
        raise InputError("the image was not read from DICOM files, so no DICOM SEG or RTSTRUCT can reference it")
    source = pydicom.dcmread(like.source_files[0], stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
    parts = (*key, format, source.get("SeriesInstanceUID", ""), hashlib.sha256(labels.array.tobytes()).hexdigest())
    return DicomwebRef(parse_dicomweb_url(target).server, str(source.get("StudyInstanceUID", "")),
                       derived_uid("series", *parts), derived_uid("instance", *parts))


def store_labels(labels: LabelVolume, like: Volume, *, format: Literal["seg", "rtstruct"] = "seg",
                 server: str | DicomwebRef | None = None, key: tuple = ()) -> tuple[DicomwebRef, bool]:
    """Store ``labels`` (on ``like``'s grid) as a DICOM ``format`` on a DICOMweb server.

    Returns the object's address and whether it was sent now (False: the server had it).

    Raises
    ------
    InputError
        The image was not read from DICOM, or the labels are empty (nothing to store).
    ServerError, ServerUnreachable
        The server refused the object or the credentials, or did not answer.
    """
    from medseg.io import save_labels

    ref = stored_address(labels, like, format=format, server=server, key=key)
    pacs = DicomwebServer(ref.server)
    if pacs.has_instance(ref):
        log.info("%s is on the server already", ref)
        return ref, False
    with tempfile.TemporaryDirectory(prefix="medseg-store-") as tmp:
        path = save_labels(labels, like, Path(tmp) / "labels.dcm", format=format, series_uid=ref.series,
                           instance_uid=ref.instance)
        pacs.store([pydicom.dcmread(path)])
    log.info("stored %s as %s", format.upper(), ref)
    return ref, True
