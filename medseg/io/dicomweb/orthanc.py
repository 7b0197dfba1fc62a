"""A private Orthanc with its DICOMweb plugin on 127.0.0.1: for the tests, the benchmarks, and for
trying medseg's PACS path without a PACS (``medseg pacs serve``).

Debian / Ubuntu: ``apt-get install orthanc orthanc-dicomweb`` (``make test`` does). The server
listens on 127.0.0.1 only (remote access off), has its DICOM port off, keeps its database and
files under ``storage`` and, when ``users`` are given, asks for HTTP basic authentication.
Its configuration file holds the passwords, so it is written readable by its owner only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

from medseg.errors import ConfigError, ServerUnreachable

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"), Path("/usr/local/share/orthanc/plugins"))
INSTALL = "install Orthanc and its DICOMweb plugin (Debian/Ubuntu: apt-get install orthanc orthanc-dicomweb)"


def dicomweb_plugin() -> Path:
    """The DICOMweb plugin's shared library; ``ConfigError`` saying how to install it when missing."""
    for folder in PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*"))
        if found:
            return found[0]
    raise ConfigError(f"the Orthanc DICOMweb plugin is not in {', '.join(map(str, PLUGIN_DIRS))}: {INSTALL}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _end_with_parent() -> None:
    """In the child, before Orthanc starts: on Linux, SIGTERM it when medseg ends, however it ends
    (a killed test run must not leave a server behind); elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalOrthanc:
    """``with LocalOrthanc(storage, users={"medseg": "..."}) as pacs:``, then ``pacs.url`` is
    ``dicomweb://127.0.0.1:<port>/dicom-web``.

    ``port``: None picks a free one. ``start`` waits until the server answers, at most
    ``timeout`` seconds from when it was called; ``stop`` ends it (the files stay, so a new
    ``LocalOrthanc`` on the same ``storage`` serves the same studies).
    """

    def __init__(self, storage: str | os.PathLike, *, port: int | None = None, users: dict[str, str] | None = None,
                 timeout: float = 60.0) -> None:
        self.storage = Path(storage)
        self.port = port or free_port()
        self.users = dict(users or {})
        self.timeout = timeout
        self.name = f"medseg-local-{secrets.token_hex(4)}"  # how start() tells its server from another on the port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"dicomweb://127.0.0.1:{self.port}/dicom-web"

    @property
    def log_file(self) -> Path:
        return self.storage / "orthanc.log"

    def start(self) -> LocalOrthanc:
        started = time.monotonic()
        binary = shutil.which("Orthanc")
        if binary is None:
            raise ConfigError(f"the Orthanc server is not installed: {INSTALL}")
        config = {
            "Name": self.name, "StorageDirectory": str(self.storage), "IndexDirectory": str(self.storage),
            "HttpPort": self.port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users,
            "Plugins": [str(dicomweb_plugin())], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpThreadsCount": 8, "ConcurrentJobs": 1, "SaveJobs": False, "StableAge": 1,
        }
        self.storage.mkdir(parents=True, exist_ok=True)
        path = self.storage / "orthanc.json"
        path.unlink(missing_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
            json.dump(config, f)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_end_with_parent)
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() - started > self.timeout:
                self.stop()
                tail = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
                raise ServerUnreachable(f"Orthanc on port {self.port} did not start within {self.timeout:g} s; "
                                        f"its log ({self.log_file}) ends:\n" + "\n".join(tail))
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL after 10 s) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answers(self) -> bool:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/system")
        if self.users:
            user, password = next(iter(self.users.items()))
            request.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=1) as answer:
                return answer.status == 200 and json.load(answer).get("Name") == self.name
        except (urllib.error.URLError, OSError, ValueError):
            return False
