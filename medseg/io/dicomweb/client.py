"""One DICOMweb server: search (QIDO-RS), retrieve (WADO-RS) and store (STOW-RS).

A thin wrapper around ``dicomweb_client.DICOMwebClient`` (by the highdicom authors) that adds
what medseg needs around it: the user's credentials (``auth``), short retries (3 tries, a
quarter of a second apart, then one clear error rather than the library's half minute of
back-off), and one error vocabulary. A server that does not answer is ``ServerUnreachable``
(a pipeline may retry the case); refused credentials or permissions are ``ServerError``; a
study, series or instance the server does not have is ``InputError``. Every message names
the server's address and what was being done, never the credentials, and the ``requests``
exception is not chained (its text is summarised instead).

Search results carry no patient field: ``SeriesInfo`` and ``StudyInfo`` hold UIDs,
modality, descriptions and counts only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pydicom

from medseg.errors import InputError, ServerError, ServerUnreachable
from medseg.io.dicomweb.auth import WHERE, Credentials, credentials_from_env
from medseg.io.dicomweb.url import DicomwebRef, is_dicomweb_url, parse_dicomweb_url

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SeriesInfo:
    """A series as QIDO-RS lists it (no patient fields)."""

    ref: DicomwebRef
    modality: str
    description: str
    n_instances: int | None

    def __str__(self) -> str:
        count = "?" if self.n_instances is None else self.n_instances
        return f"{self.ref}  {self.modality or '?'}  {count} instance(s)  {self.description!r}"


@dataclass(frozen=True)
class StudyInfo:
    """A study as QIDO-RS lists it (no patient fields, no dates)."""

    ref: DicomwebRef
    description: str
    modalities: tuple[str, ...]
    n_series: int | None


class DicomwebServer:
    """A DICOMweb service at ``url`` (``dicomweb://host:port/root`` or ``http(s)://...``).

    ``credentials``: None reads them from the environment (``medseg.io.dicomweb.auth``).
    ``timeout``: seconds to wait for an answer (connecting: at most 10 s).
    """

    def __init__(self, url: str | DicomwebRef, *, credentials: Credentials | None = None,
                 timeout: float = 60.0) -> None:
        import requests
        from dicomweb_client import DICOMwebClient

        self.url = parse_dicomweb_url(url).server
        self.address = str(DicomwebRef(self.url))
        self.credentials = credentials if credentials is not None else credentials_from_env()
        session = requests.Session()
        self.credentials.apply(session)
        self._client = DICOMwebClient(self.url, session=session, timeout=(_CONNECT_TIMEOUT_S, timeout))
        self._client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=125)

    def __repr__(self) -> str:
        return f"DicomwebServer({self.address!r}, {self.credentials.describe()})"

    def check(self) -> None:
        """One small search, so that a wrong address or password is one clear error before any work."""
        self._call("checking access", self._client.search_for_studies, limit=1)

    def studies(self, *, limit: int = 200) -> list[StudyInfo]:
        """The server's studies (at most ``limit``), as QIDO-RS lists them."""
        fields = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries"]
        found = self._call("searching studies", self._client.search_for_studies, fields=fields, limit=limit)
        out = []
        for item in map(_dataset, found):
            modalities = item.get("ModalitiesInStudy") or ()
            modalities = (modalities,) if isinstance(modalities, str) else tuple(str(m) for m in modalities)
            ref = DicomwebRef(self.url, str(item.StudyInstanceUID))
            out.append(StudyInfo(ref, str(item.get("StudyDescription", "")), modalities,
                                 _count(item.get("NumberOfStudyRelatedSeries"))))
        return out

    def series(self, study: str | None = None) -> list[SeriesInfo]:
        """The series of one study (or of the whole server), as QIDO-RS lists them."""
        fields = ["SeriesDescription", "NumberOfSeriesRelatedInstances", "Modality"]
        found = self._call("searching series", self._client.search_for_series, study_instance_uid=study, fields=fields,
                           get_remaining=True)
        return [SeriesInfo(DicomwebRef(self.url, str(item.StudyInstanceUID), str(item.SeriesInstanceUID)),
                           str(item.get("Modality", "")), str(item.get("SeriesDescription", "")),
                           _count(item.get("NumberOfSeriesRelatedInstances"))) for item in map(_dataset, found)]

    def instance_uids(self, ref: DicomwebRef) -> list[str]:
        """The SOP Instance UIDs the server lists for a series (or the one instance ``ref`` names), sorted."""
        filters = {"SOPInstanceUID": ref.instance} if ref.instance else None
        found = self._call(f"listing the instances of {ref}", self._client.search_for_instances,
                           study_instance_uid=ref.study, series_instance_uid=ref.series, fields=["SOPInstanceUID"],
                           search_filters=filters, get_remaining=True)
        return sorted({str(_dataset(item).SOPInstanceUID) for item in found})

    def retrieve(self, ref: DicomwebRef) -> Iterator[pydicom.Dataset]:
        """The instances of a series (or the one instance ``ref`` names), streamed as they arrive."""
        what = f"retrieving {ref}"
        if ref.instance:
            yield self._call(what, self._client.retrieve_instance, ref.study, ref.series, ref.instance)
            return
        stream = self._call(what, self._client.iter_series, ref.study, ref.series)
        while True:
            dataset = self._call(what, next, stream, None)
            if dataset is None:
                return
            yield dataset

    def store(self, datasets: Iterable[pydicom.Dataset]) -> None:
        """Store DICOM objects with STOW-RS; ``ServerError`` naming each object the server refused."""
        datasets = list(datasets)
        answer = self._call(f"storing {len(datasets)} object(s)", self._client.store_instances, datasets)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = ", ".join(f"{item.get('ReferencedSOPInstanceUID', '?')} (reason {item.get('FailureReason', '?')})"
                                for item in failed)
            raise ServerError(f"DICOMweb server {self.address} refused to store {len(failed)} object(s): {reasons}")

    def has_instance(self, ref: DicomwebRef) -> bool:
        """Whether the server holds the instance ``ref`` names (a search, nothing retrieved)."""
        return bool(self.instance_uids(parse_dicomweb_url(ref, level="instance")))

    def _call(self, what: str, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``function(...)`` with the ``requests`` errors it raises turned into medseg's (no secret in them)."""
        import requests

        try:
            return function(*args, **kwargs)
        except requests.HTTPError as error:
            raise self._refused(error.response, what) from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise ServerUnreachable(
                f"DICOMweb server {self.address} unreachable while {what} ({_reason(error)}); check that it runs and "
                "that the address is right"
            ) from None

    def _refused(self, response: Any, what: str) -> Exception:
        status = getattr(response, "status_code", None)
        said = f"HTTP {status} {getattr(response, 'reason', '') or ''}".strip()
        if status == 401 and not self.credentials.given:
            return ServerError(f"DICOMweb server {self.address} asks for credentials ({said}) while {what}; "
                               f"set {WHERE}")
        if status == 401:
            return ServerError(f"DICOMweb server {self.address} refused the credentials ({said}) while {what}: "
                               f"{self.credentials.describe()}; set the right ones in {WHERE}")
        if status == 403:
            return ServerError(f"DICOMweb server {self.address} denied access ({said}) while {what} to "
                               f"{self.credentials.describe()}; ask its administrator for the permission")
        if status in (404, 410):
            return InputError(f"DICOMweb server {self.address} has no such object ({said}) while {what}: "
                              "check the UIDs, or it was deleted")
        if status is not None and (status >= 500 or status in (408, 429)):
            return ServerUnreachable(f"DICOMweb server {self.address} failed ({said}) while {what}; try again later")
        return ServerError(f"DICOMweb server {self.address} answered {said} while {what}")


def _dataset(item: dict) -> pydicom.Dataset:
    return pydicom.Dataset.from_json(item)


def _count(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _reason(error: Exception) -> str:
    """A short cause from a ``requests`` error, whose own text is a page of pool internals."""
    text = str(error)
    for cause in ("Connection refused", "timed out", "Name or service not known", "No route to host",
                  "Connection reset", "Connection aborted", "Remote end closed connection"):
        if cause.lower() in text.lower():
            return cause.lower()
    return type(error).__name__


def check_servers(references: Iterable[object]) -> None:
    """Check access once per server named among ``references`` (paths are skipped): a wrong
    address or password is one ``ServerError`` before any work, not one per case."""
    for server in sorted({parse_dicomweb_url(r).server for r in references if is_dicomweb_url(r)}):
        DicomwebServer(server).check()
