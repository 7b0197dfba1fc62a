"""Images and label objects on a PACS, over DICOMweb (QIDO-RS search, WADO-RS retrieval, STOW-RS storage).

>>> from medseg.io import load_volume
>>> volume = load_volume("dicomweb://127.0.0.1:8042/dicom-web/studies/1.2.3/series/1.2.4")  # doctest: +SKIP

Modules: ``url`` (addresses), ``auth`` (credentials from the environment), ``client`` (one
server, errors that name it and never the credentials), ``cache`` (verified local copies
that the DICOM readers open, so geometry is exactly as from files), ``store`` (labels back as
SEG or RTSTRUCT, once), ``orthanc`` (a private local Orthanc for tests and trials).
"""

from medseg.io.dicomweb.auth import Credentials, credentials_from_env
from medseg.io.dicomweb.cache import local_copy, local_object
from medseg.io.dicomweb.client import DicomwebServer, SeriesInfo, StudyInfo, check_servers
from medseg.io.dicomweb.store import derived_uid, store_labels, stored_address
from medseg.io.dicomweb.url import DicomwebRef, is_dicomweb_url, parse_dicomweb_url

__all__ = ["Credentials", "DicomwebRef", "DicomwebServer", "SeriesInfo", "StudyInfo", "check_servers",
           "credentials_from_env", "derived_uid", "is_dicomweb_url", "local_copy", "local_object", "parse_dicomweb_url",
           "store_labels", "stored_address"]
