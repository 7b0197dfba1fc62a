"""Results back to the PACS: each finished case as a DICOM SEG or RTSTRUCT, stored once with STOW-RS.

Asked for by ``push:`` in the pipeline YAML (``PushSettings``) or ``medseg run --push``. It runs
in the main process after the cases (whichever executor ran them), over every case whose
result is ``ok``, so a resumed run or a later ``--push`` on a finished folder pushes what is
not on the server yet.

The object references the case's image series (same patient and study, as a PACS files it)
and goes to ``server``, or to the server the image came from; the results folder never holds
it (it carries the patient module of its images).

Once: the object's UIDs are derived from the method's name, the case, the format, the image
series and the label voxels (``medseg.io.dicomweb.store``), so the same result is always the
same object and a changed result a new one. ``<case>/push.json`` records what was stored
where; a case recorded with that address is not looked up again, and one the server already
holds (a run stopped between storing and recording) is not sent again. A push that fails
(server down) is recorded as failed, the case's result stays as it is, and the next run tries
again.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, MedsegError, user_message
from medseg.io.files import format_of
from medseg.io.dicomweb import check_servers, is_dicomweb_url, store_labels, stored_address
from medseg.manifest import Case
from medseg.pipeline import results as rs
from medseg.pipeline.config import PushSettings
from medseg.pipeline.methods import MethodSetup

log = logging.getLogger(__name__)

PUSH = "push.json"


def check_push(settings: PushSettings, cases: list[Case]) -> None:
    """Before any compute: each case has a server to go to and a DICOM image to reference, and
    every server answers to the credentials (one ``ServerError`` otherwise)."""
    problems = []
    for case in cases:
        remote = is_dicomweb_url(case.image)
        if settings.server is None and not remote:
            problems.append(f"case {case.id!r}: its image {case.image} is a file; give push.server (or --push-to)")
        elif not remote and format_of(Path(case.image)) not in ("dicom", "dicom-dir"):
            problems.append(f"case {case.id!r}: its image {case.image} is not DICOM (a SEG / RTSTRUCT needs DICOM)")
        if case.spacing is not None:
            problems.append(f"case {case.id!r}: a spacing override puts its labels off the server's image grid")
    if problems:
        raise ConfigError("push: cannot store these results on a PACS:\n" + "\n".join(f"  - {p}" for p in problems))
    check_servers([settings.server] if settings.server else [case.image for case in cases])


def push_results(settings: PushSettings, setups: list[MethodSetup], cases: list[Case]) -> list[dict[str, Any]]:
    """Push every ``ok`` case of every method; its ``push.json`` record (new, or the earlier one
    with ``"unchanged": True``). ``"already": True``: the server had the object before this push."""
    records = []
    for setup in setups:
        for case in cases:
            case_dir = setup.method_dir / case.id
            result, previous = _read(case_dir / rs.RESULT), _read(case_dir / PUSH)
            if result.get("status") != "ok":
                continue
            try:
                record = _push_case(settings, setup, case, case_dir, result, previous)
            except MedsegError as error:  # recorded; the next run tries again
                log.error("push of %s / %s failed: %s", setup.name, case.id, user_message(error))
                record = {"status": "failed", "format": settings.format, "error": user_message(error)}
            if record is previous:
                record = {**previous, "unchanged": True}
            else:
                now = datetime.now(timezone.utc).isoformat(timespec="seconds")
                record.update(method=setup.name, case=case.id, time=now)
                rs.write_json(case_dir / PUSH, record)
            records.append(record)
    return records


def push_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every ``push.json`` of a results folder (for the report), by method and case."""
    case_dirs = [case_dir for method_dir in rs.method_dirs(results_dir) for case_dir in rs.case_dirs(method_dir)]
    records = [_read(case_dir / PUSH) for case_dir in case_dirs]
    return [record for record in records if record]


def _read(path: Path) -> dict[str, Any]:
    """A JSON record, or {} when it is missing or damaged."""
    try:
        return rs.read_json(path)
    except (FileNotFoundError, MedsegError):
        return {}


def _push_case(settings: PushSettings, setup: MethodSetup, case: Case, case_dir: Path, result: dict,
               previous: dict) -> dict[str, Any]:
    """The case's record: ``previous`` itself when it already says this result is stored."""
    from medseg.io import load_labels, load_volume

    volume = load_volume(case.image, case.series_uid)
    labels = load_labels(case_dir / rs.LABELS, volume)
    labels = dataclasses.replace(labels, label_names=dict(setup.labels), untrained=bool(result.get("untrained")),
                                 provenance={"method": setup.name})
    if not (settings.server or volume.metadata.get("dicomweb")):
        raise ConfigError(f"case {case.id!r}: its image is a file; give push.server (or --push-to)")
    key = (setup.name, case.id)  # with the format, the image series and the voxels: the same result, the same object
    address = str(stored_address(labels, volume, format=settings.format, server=settings.server, key=key))
    if previous.get("status") == "stored" and previous.get("address") == address:
        return previous
    ref, sent = store_labels(labels, volume, format=settings.format, server=settings.server, key=key)
    return {"status": "stored", "format": settings.format, "address": str(ref), "already": not sent,
            "fingerprint": result.get("fingerprint")}
