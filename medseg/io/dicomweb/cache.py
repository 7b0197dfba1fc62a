"""A bounded local cache of DICOMweb series, checked against the server's instance list.

``local_copy(ref)`` gives a folder (a series) or a file (one instance) that the ordinary
DICOM readers open, so a series from a server has exactly the geometry, voxels and metadata
it has from files (``medseg.io.dicom``). Layout, under ``$MEDSEG_HOME/dicomweb``::

    <key>/             the instances, one file each (<key>: a hash of server and UIDs, no UID in a path)
    <key>.json         written last: the address, the SOP Instance UIDs with file names and sizes
    .<key>.<pid>.partial/   a download in progress (removed when it fails)

An entry counts only when its ``<key>.json`` exists, lists exactly the instances the server
lists now (one QIDO-RS search per use) and every file has its recorded size: a download that
stopped half-way, or a series the server changed since, is fetched again, and the server
sending fewer or other instances than it listed is an ``InputError`` (nothing is cached).
Without the server the cache is not used: medseg does not guess whether a series changed.

The cache holds at most ``MEDSEG_DICOMWEB_CACHE_GB`` gigabytes (default 20); after each
download the least recently used entries go first, never the one just fetched and never one
another process is fetching. It must hold the series that run at the same time (workers x
the largest series), since a series evicted while a worker reads it fails that case.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout

from medseg.errors import ConfigError, InputError
from medseg.io.dicomweb.client import DicomwebServer
from medseg.io.dicomweb.url import DicomwebRef, parse_dicomweb_url
from medseg.io.files import atomic_output

log = logging.getLogger(__name__)

ENV_MAX_GB = "MEDSEG_DICOMWEB_CACHE_GB"
DEFAULT_MAX_GB = 20.0
_LOCK_WAIT_S = 600  # another process downloading the same series


def cache_dir() -> Path:
    """``$MEDSEG_HOME/dicomweb``."""
    from medseg.weights import medseg_home

    return medseg_home() / "dicomweb"


def max_bytes() -> int:
    """The cache's bound in bytes (``MEDSEG_DICOMWEB_CACHE_GB``, default 20)."""
    raw = os.environ.get(ENV_MAX_GB)
    try:
        value = float(raw) if raw else DEFAULT_MAX_GB
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{ENV_MAX_GB}={raw!r}: give the cache's size in gigabytes, a number > 0")
    return int(value * 1e9)


def local_copy(ref: str | DicomwebRef, *, server: DicomwebServer | None = None, root: Path | None = None) -> Path:
    """The cached folder of a series (or file of one instance), downloaded when missing or out of date.

    ``server``: the connection to use (default: one to ``ref``'s server with the environment's
    credentials); ``root``: the cache folder (default ``cache_dir()``).

    Raises
    ------
    InputError
        The series is not on the server, or the server sent other instances than it listed.
    ServerUnreachable, ServerError
        No answer, or the credentials were refused (``medseg.io.dicomweb.client``).
    """
    ref = parse_dicomweb_url(ref, level="series")
    server = server or DicomwebServer(ref.server)
    root = Path(root) if root is not None else cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{ref.server}|{ref.study}|{ref.series}|{ref.instance or ''}".encode()).hexdigest()[:24]
    listed = server.instance_uids(ref)
    if not listed:
        what = "instance" if ref.instance else "series"
        raise InputError(f"{ref}: the server lists no such {what} (deleted, or wrong UIDs?)")
    with FileLock(root / f".{key}.lock", timeout=_LOCK_WAIT_S):
        index = _valid_index(root, key, listed)
        if index is None:
            index = _download(server, ref, listed, root, key)
        else:
            log.debug("%s: cached (%d instances)", ref, len(listed))
        (root / f"{key}.json").touch()  # the use time, for least-recently-used eviction
    _evict(root, keep=key)
    folder = root / key
    return folder / index["instances"][listed[0]]["file"] if ref.instance else folder


def _valid_index(root: Path, key: str, listed: list[str]) -> dict | None:
    """The entry's index when it holds exactly ``listed``, each file whole; None otherwise."""
    try:
        index = json.loads((root / f"{key}.json").read_text(encoding="utf-8"))
        files = index["instances"]
        if sorted(files) != listed:
            log.info("%s: the server's instances changed since it was cached; fetching it again", index.get("address"))
            return None
        if all((root / key / f["file"]).stat().st_size == f["size"] for f in files.values()):
            return index
    except (OSError, ValueError, KeyError, TypeError):  # missing, partial or damaged entry
        pass
    return None


def _download(server: DicomwebServer, ref: DicomwebRef, listed: list[str], root: Path, key: str) -> dict:
    """Fetch every instance into a partial folder, check them against ``listed``, then move it into place."""
    started = time.perf_counter()
    partial = root / f".{key}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        files: dict[str, dict] = {}
        for number, dataset in enumerate(server.retrieve(ref), start=1):
            uid = str(dataset.get("SOPInstanceUID", ""))
            name = f"{number:06d}.dcm"
            dataset.save_as(partial / name, enforce_file_format=True)
            files[uid] = {"file": name, "size": (partial / name).stat().st_size}
        if sorted(files) != listed:
            missing, extra = sorted(set(listed) - set(files)), sorted(set(files) - set(listed))
            hint = (" or the server cuts its search answers short (Orthanc: LimitFindInstances must be 0)"
                    if extra and not missing else "")
            raise InputError(
                f"{ref}: the server listed {len(listed)} instance(s) but sent {len(files)} ({len(missing)} missing, "
                f"{len(extra)} not listed): the series changed during the download (deleted or still arriving?){hint}; "
                "nothing was cached, try again when it is complete"
            )
        index = {"address": str(ref), "instances": files, "bytes": sum(f["size"] for f in files.values())}
        (root / f"{key}.json").unlink(missing_ok=True)  # the old entry stops counting before it is replaced
        shutil.rmtree(root / key, ignore_errors=True)
        os.replace(partial, root / key)
        with atomic_output(root / f"{key}.json") as tmp:
            tmp.write_text(json.dumps(index), encoding="utf-8")
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("%s: %d instance(s), %.1f MB fetched in %.1f s", ref, len(files), index["bytes"] / 1e6,
             time.perf_counter() - started)
    return index


def _evict(root: Path, *, keep: str) -> None:
    """Remove least recently used entries until the cache fits its bound (skipping busy ones)."""
    limit = max_bytes()
    entries = []
    for index_file in root.glob("*.json"):
        if index_file.name.startswith("."):  # an index being written (atomic_output's temporary file)
            continue
        try:
            size = int(json.loads(index_file.read_text(encoding="utf-8"))["bytes"])
            entries.append((index_file.stat().st_mtime, index_file.stem, size))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    total = sum(size for _, _, size in entries)
    for _, key, size in sorted(entries):
        if total <= limit:
            return
        if key == keep:
            continue
        try:
            with FileLock(root / f".{key}.lock", timeout=0):
                (root / f"{key}.json").unlink(missing_ok=True)
                shutil.rmtree(root / key, ignore_errors=True)
        except Timeout:  # being fetched by another process right now
            continue
        total -= size
        log.info("dicomweb cache over %.1f GB: removed a series of %.1f MB", limit / 1e9, size / 1e6)


def local_object(ref: str | DicomwebRef, *, server: DicomwebServer | None = None, root: Path | None = None) -> Path:
    """The cached file of one object: the instance ``ref`` names, or the only instance of its series
    (a SEG or RTSTRUCT series usually holds one); ``InputError`` when the series holds several."""
    ref = parse_dicomweb_url(ref, level="series")
    path = local_copy(ref, server=server, root=root)
    if ref.instance:
        return path
    files = sorted(path.iterdir())
    if len(files) != 1:
        raise InputError(f"{ref}: the series holds {len(files)} objects; name one: "
                         ".../series/<uid>/instances/<SOPInstanceUID>")
    return files[0]
