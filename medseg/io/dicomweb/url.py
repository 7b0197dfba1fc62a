"""DICOMweb addresses: a server, or a study, series or instance on it.

Written ``dicomweb://host:port/dicom-web/studies/<uid>/series/<uid>[/instances/<uid>]``
(``dicomwebs://`` for HTTPS; ``http://`` and ``https://`` addresses of the same shape are
accepted too), so that a manifest, ``load_volume`` and the command line can tell a series on
a server from a file path. Everything before ``/studies/`` is the service root, as QIDO-RS,
WADO-RS and STOW-RS address it. Credentials never go in an address (they would end up in
manifests, logs and reports): ``medseg.io.dicomweb.auth`` reads them from the environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from medseg.errors import InputError

_SCHEMES = {"dicomweb": "http", "dicomwebs": "https", "http": "http", "https": "https"}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_LEVELS = ("studies", "series", "instances")
_FORM = "dicomweb://host:port/dicom-web/studies/<uid>/series/<uid>"


@dataclass(frozen=True)
class DicomwebRef:
    """Where something lives on a DICOMweb server: ``server`` (``http(s)://host:port/root``) and UIDs.

    ``study`` is None for the server itself; ``series`` and ``instance`` narrow it down.
    """

    server: str
    study: str | None = None
    series: str | None = None
    instance: str | None = None

    def __str__(self) -> str:
        scheme, rest = self.server.split("://", 1)
        uids = (self.study, self.series, self.instance)
        path = "".join(f"/{level}/{uid}" for level, uid in zip(_LEVELS, uids) if uid)
        return f"{'dicomwebs' if scheme == 'https' else 'dicomweb'}://{rest}{path}"


def is_dicomweb_url(value: object) -> bool:
    """True for a ``DicomwebRef`` or a string that is a DICOMweb address (not a file path)."""
    if isinstance(value, DicomwebRef):
        return True
    if not isinstance(value, str) or "://" not in value:
        return False
    scheme = value.split("://", 1)[0].lower()
    return scheme in ("dicomweb", "dicomwebs") or (scheme in _SCHEMES and "/studies/" in value)


def parse_dicomweb_url(text: str | DicomwebRef, *, level: str | None = None) -> DicomwebRef:
    """The ``DicomwebRef`` of an address; ``level`` (``"server"``, ``"series"`` or ``"instance"``)
    says what the address must name at least (``"series"``: a series or one instance of it).

    Raises ``InputError`` naming the address (without any credentials) and the problem.
    """
    if isinstance(text, DicomwebRef):
        ref = text
    else:
        ref = _parse(str(text).strip())
    if level == "server" and ref.study is not None:
        raise InputError(f"{ref}: give the server's address only (up to the DICOMweb root, e.g. "
                         "dicomweb://host:8042/dicom-web)")
    if level in ("series", "instance") and ref.series is None:
        raise InputError(f"{ref}: name a series: .../studies/<StudyInstanceUID>/series/<SeriesInstanceUID>")
    if level == "instance" and ref.instance is None:
        raise InputError(f"{ref}: name one instance: .../series/<SeriesInstanceUID>/instances/<SOPInstanceUID>")
    return ref


def _parse(text: str) -> DicomwebRef:
    parts = urlsplit(text)
    shown = _without_credentials(text, parts)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise InputError(f"{shown}: not a DICOMweb address; write {_FORM}")
    if parts.username or parts.password:
        raise InputError(
            f"{shown}: credentials do not go in the address (they would be written to logs and reports); set "
            "MEDSEG_DICOMWEB_USER and MEDSEG_DICOMWEB_PASSWORD (or MEDSEG_DICOMWEB_TOKEN, or "
            "MEDSEG_DICOMWEB_CREDENTIALS)"
        )
    if parts.query or parts.fragment:
        raise InputError(f"{shown}: a DICOMweb address has no '?' or '#' part")
    try:
        port = parts.port
    except ValueError:
        raise InputError(f"{shown}: the port is not a number between 0 and 65535") from None
    root, _, tail = parts.path.partition("/studies/")
    uids = [p for p in f"studies/{tail}".split("/") if p] if _ else []
    if len(uids) % 2 or uids[0::2] != list(_LEVELS[: len(uids) // 2]):
        raise InputError(f"{shown}: expected .../studies/<uid>[/series/<uid>[/instances/<uid>]] after the "
                         "DICOMweb root")
    values = uids[1::2]
    bad = [u for u in values if not _UID.match(u) or len(u) > 64]
    if bad:
        raise InputError(f"{shown}: {bad[0]!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    netloc = parts.hostname + (f":{port}" if port is not None else "")
    server = f"{scheme}://{netloc}{root.rstrip('/')}"
    return DicomwebRef(server, *values)


def _without_credentials(text: str, parts) -> str:
    """``text`` as it may be shown: any ``user:password@`` removed."""
    if "@" not in parts.netloc:
        return text
    return text.replace(parts.netloc, parts.netloc.rsplit("@", 1)[1], 1)

