"""A private Orthanc for the DICOMweb tests (``pacs`` fixture in conftest) and its REST API.

The REST calls here (delete a series, count a series' instances) are Orthanc's own API, used by
the tests to change the server behind medseg's back; medseg itself speaks DICOMweb only.
"""

from __future__ import annotations

import json
import urllib.request
from base64 import b64encode
from dataclasses import dataclass

from medseg.io.dicomweb.orthanc import LocalOrthanc

USER, PASSWORD = "medseg-test", "pw-7f3a9c-never-logged"


@dataclass
class Pacs:
    """The running server: its DICOMweb address and its REST root."""

    server: LocalOrthanc

    @property
    def url(self) -> str:
        return self.server.url

    def rest(self, method: str, path: str, body: str | None = None):
        request = urllib.request.Request(f"http://127.0.0.1:{self.server.port}{path}", method=method,
                                         data=body.encode() if body is not None else None)
        request.add_header("Authorization", "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def orthanc_id(self, uid: str) -> str:
        """Orthanc's own id of the study, series or instance with this DICOM UID."""
        return self.rest("POST", "/tools/lookup", uid)[0]["ID"]

    def delete_series(self, series_uid: str) -> None:
        self.rest("DELETE", f"/series/{self.orthanc_id(series_uid)}")

    def delete_instance(self, instance_uid: str) -> None:
        self.rest("DELETE", f"/instances/{self.orthanc_id(instance_uid)}")

    def series_instances(self, series_uid: str) -> list[str]:
        """The SOP Instance UIDs Orthanc holds in a series ([] when the series is gone)."""
        found = self.rest("POST", "/tools/lookup", series_uid)
        if not found:
            return []
        instances = self.rest("GET", f"/series/{found[0]['ID']}/instances")
        return sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in instances)

    def study_series(self, study_uid: str) -> list[dict]:
        """Every series of a study with its modality and instance count (Orthanc's view)."""
        study = self.rest("GET", f"/studies/{self.orthanc_id(study_uid)}")
        out = []
        for series_id in study["Series"]:
            series = self.rest("GET", f"/series/{series_id}")
            tags = series["MainDicomTags"]
            out.append({"uid": tags["SeriesInstanceUID"], "modality": tags.get("Modality"),
                        "instances": len(series["Instances"])})
        return out
