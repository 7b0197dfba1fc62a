"""Model registry and checkpoint cache: name -> URL, config, licence; download once, verify, load.

Checkpoints live in ``$MEDSEG_HOME/weights`` (``MEDSEG_HOME`` defaults to ``~/.cache/medseg``).
A download goes to ``<file>.part`` next to its final place, resumes with an HTTP ``Range``
request when a ``.part`` is already there (and restarts cleanly when the server ignores the
range), is verified, and only then renamed into place: a file under its final name is
always complete (also when ``should_stop`` ends a download: the ``.part`` stays, to be
resumed). A lock file serialises concurrent downloads of the same checkpoint
(several Ray workers on one machine).

Verification: where the SHA-256 of a published checkpoint is known it is pinned in
``REGISTRY``. Where it is not (none of the hosts is reachable from where medseg is
developed, and the hosts do not publish one), the hash seen at the first download is
recorded in a sidecar ``<file>.sha256`` and every later load is checked against it (trust on
first use); the expected size, where known, still catches truncated downloads.

Offline use: put the checkpoint file, under the name the registry gives, into
``weights_dir()`` (the error raised when a download fails names the exact path), or pass its
path as the model.
"""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import WeightsError
from medseg.runtime import Progress, ShouldStop, check_stop, report, sha256_file

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TIMEOUT_S = 30

SAM2_LICENCE = "Apache-2.0 (Meta, SAM 2.1 code and weights)"
MEDSEG_LICENCE = "Apache-2.0 (medseg; trained on synthetic scenes only, no patient data)"
MEDSAM2_LICENCE = (
    "CC-BY-SA-4.0 (bowang-lab MedSAM2 weights): attribution required; share derived weights "
    "under the same licence"
)


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the registry.

    ``config`` is the SAM2 Hydra config shipped inside the ``sam2`` package and
    ``image_size`` the input size the weights were trained at. ``size_bytes`` and ``sha256``
    are ``None`` where no public source states them; ``url`` is ``None`` for the untrained
    model, which has no weights to download, and for a model shipped inside medseg, whose
    model directory (``medseg.sam2.model_dir``) is ``packaged``: a path inside the ``medseg``
    package, with its weights' SHA-256 pinned here.
    """

    name: str
    config: str
    image_size: int
    filename: str | None
    url: str | None
    licence: str
    description: str
    approx_size_mb: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    packaged: str | None = None

    @property
    def untrained(self) -> bool:
        return self.url is None and self.packaged is None

    @property
    def model_dir(self) -> Path | None:
        """The shipped model directory of a ``packaged`` model (None for the others)."""
        return Path(__file__).parent / self.packaged if self.packaged else None


_SAM2_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_MEDSAM2_BASE = "https://huggingface.co/wanglab/MedSAM2/resolve/main/"

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "sam2.1-tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", 1024, "sam2.1_hiera_tiny.pt",
            _SAM2_BASE + "sam2.1_hiera_tiny.pt", SAM2_LICENCE, "SAM 2.1 Hiera-T (38.9 M parameters)", 149,
        ),
        ModelSpec(
            "sam2.1-small", "configs/sam2.1/sam2.1_hiera_s.yaml", 1024, "sam2.1_hiera_small.pt",
            _SAM2_BASE + "sam2.1_hiera_small.pt", SAM2_LICENCE, "SAM 2.1 Hiera-S (46 M parameters)", 176,
        ),
        ModelSpec(
            "sam2.1-base-plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", 1024, "sam2.1_hiera_base_plus.pt",
            _SAM2_BASE + "sam2.1_hiera_base_plus.pt", SAM2_LICENCE, "SAM 2.1 Hiera-B+ (80.8 M parameters)", 309,
        ),
        ModelSpec(
            "sam2.1-large", "configs/sam2.1/sam2.1_hiera_l.yaml", 1024, "sam2.1_hiera_large.pt",
            _SAM2_BASE + "sam2.1_hiera_large.pt", SAM2_LICENCE, "SAM 2.1 Hiera-L (224.4 M parameters)", 857,
        ),
        ModelSpec(
            "medsam2", "configs/sam2.1/sam2.1_hiera_t.yaml", 512, "MedSAM2_latest.pt",
            _MEDSAM2_BASE + "MedSAM2_latest.pt", MEDSAM2_LICENCE,
            "MedSAM2 (bowang-lab, 2025): SAM 2.1 Hiera-T fine-tuned on >455k 3D medical image-mask pairs", 160,
        ),
        ModelSpec(
            "medseg-micro", "configs/sam2.1/sam2.1_hiera_t.yaml", 128, "weights.pt", None, MEDSEG_LICENCE,
            "medseg's base SAM2 (hiera-micro, image size 128, float16), shipped with medseg: pretrained on synthetic "
            "scenes of generic objects only (medseg.training.sam2.pretrain); fine-tune it on your cohort", 20,
            size_bytes=20147524, sha256="6fc8b830804f16e45f655791b568b42abd4487306cf7a644c31b90bc5498c816",
            packaged="models/medseg-micro",
        ),
        ModelSpec(
            "untrained", "configs/sam2.1/sam2.1_hiera_t.yaml", 128, None, None,
            "none: random weights", "SAM 2.1 Hiera-T architecture with seeded random weights; tests and smoke "
                                    "runs only",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The registry entry called ``name``; ``WeightsError`` listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(
            f"unknown model {name!r}: use one of {sorted(REGISTRY)} or the path of a checkpoint file"
        ) from None


def default_model() -> str:
    """The model a face offers first: Meta's SAM 2.1 Hiera-T when it was downloaded already, else
    ``medseg-micro``, which ships with medseg (no download, works offline)."""
    tiny = REGISTRY["sam2.1-tiny"]
    return tiny.name if (weights_dir() / tiny.filename).is_file() else "medseg-micro"


def medseg_home() -> Path:
    """``$MEDSEG_HOME``, or ``~/.cache/medseg`` (``$XDG_CACHE_HOME/medseg`` where that is set)."""
    if os.environ.get("MEDSEG_HOME"):
        return Path(os.environ["MEDSEG_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "medseg"


def weights_dir() -> Path:
    """Where checkpoints are cached and where to put them by hand for offline use."""
    return medseg_home() / "weights"


def fetch_checkpoint(
    spec: ModelSpec | str,
    *,
    directory: str | Path | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Path:
    """The verified local checkpoint of ``spec``, downloading it first if it is not cached.

    Parameters
    ----------
    spec
        A registry name or a ``ModelSpec``.
    directory
        Cache directory; ``weights_dir()`` by default.
    progress
        ``progress(bytes_done, bytes_total)`` after each downloaded chunk (``bytes_total`` is
        ``bytes_done`` while the server does not say the size).
    should_stop
        Asked between chunks; True keeps the ``.part`` file (the next call resumes it) and
        raises ``medseg.errors.Cancelled``.

    Raises
    ------
    WeightsError
        The download failed (the message names the URL and where to put the file by hand),
        or the file does not match its expected size or SHA-256.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if spec.untrained:
        raise WeightsError(f"model {spec.name!r} has random weights and no checkpoint to fetch")
    if spec.model_dir is not None:
        shipped = spec.model_dir / spec.filename
        if not shipped.is_file():
            raise WeightsError(f"the weights of {spec.name!r} that ship with medseg are missing ({shipped}); "
                               f"reinstall medseg")
        verify_checkpoint(shipped, spec)
        return shipped
    directory = Path(directory) if directory is not None else weights_dir()
    target = directory / spec.filename
    if target.exists():
        verify_checkpoint(target, spec)
        return target
    directory.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if not target.exists():  # another process may have finished it while we waited
            _download(spec, target, progress=progress, should_stop=should_stop)
    verify_checkpoint(target, spec)
    return target


def verify_checkpoint(path: Path, spec: ModelSpec) -> str:
    """Check ``path`` against the size and SHA-256 known for ``spec``; return its SHA-256.

    With no pinned hash, the sidecar ``<file>.sha256`` written at download time is the
    reference; a file placed by hand without one gets its sidecar now (and a warning that
    it could not be checked against a published hash).
    """
    path = Path(path)
    if spec.size_bytes is not None and path.stat().st_size != spec.size_bytes:
        raise WeightsError(
            f"{path} has {path.stat().st_size} bytes, expected {spec.size_bytes} for {spec.name}: the file is "
            f"truncated or another model; delete it and download again from {spec.url}"
        )
    digest = sha256_file(path)
    expected = spec.sha256
    sidecar = path.with_name(path.name + ".sha256")
    if expected is None and sidecar.exists():
        expected = sidecar.read_text(encoding="utf-8").split()[0]
    if expected is None:
        log.warning(
            "%s: no published SHA-256 for %s; recording %s in %s and checking against it from now on",
            path, spec.name, digest, sidecar,
        )
        sidecar.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    elif digest != expected:
        raise WeightsError(
            f"{path} has SHA-256 {digest}, expected {expected} for {spec.name}: the file is corrupt or another "
            f"model; delete it (and {sidecar.name} if present) and download again from {spec.url}"
        )
    return digest


def _download(spec: ModelSpec, target: Path, *, progress: Progress | None, should_stop: ShouldStop | None) -> None:
    """Download ``spec.url`` into ``target`` via ``target.part``, resuming a previous ``.part``."""
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(spec.url, headers={"Range": f"bytes={have}-"} if have else {})
    log.info("downloading %s (%s) to %s", spec.name, spec.url, target)
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the range starts past the end: the .part is bad
            part.unlink()
            return _download(spec, target, progress=progress, should_stop=should_stop)
        raise _offline_error(spec, target, error) from error
    except (urllib.error.URLError, OSError) as error:
        raise _offline_error(spec, target, error) from error
    with response:
        resumed = response.status == 206 and _range_start(response.headers.get("Content-Range")) == have
        if have and not resumed:
            log.info("server did not resume %s; restarting from the first byte", spec.url)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        try:
            with open(part, "ab" if resumed else "wb") as f:
                done = have
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    report(progress, done, total or done)
                    check_stop(should_stop, f"download of {spec.filename} (resumable from {part})")
        except (OSError, http.client.HTTPException) as error:  # dropped: keep the .part for the next try
            raise WeightsError(
                f"download of {spec.url} was interrupted after {part.stat().st_size} bytes ({error}); "
                f"run again to resume, or put the file at {target}"
            ) from error
    size = part.stat().st_size
    if total is not None and size != total:
        raise WeightsError(
            f"download of {spec.url} stopped at {size} of {total} bytes; run again to resume, or put the file at "
            f"{target}"
        )
    if spec.sha256 is not None:
        digest = sha256_file(part)
        if digest != spec.sha256:
            part.unlink()
            raise WeightsError(
                f"download of {spec.url} has SHA-256 {digest}, expected {spec.sha256}: removed it; try again, "
                f"and if it keeps failing download the file by hand to {target}"
            )
    os.replace(part, target)


def _range_start(content_range: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes START-END/TOTAL`` header."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    start, _, _ = content_range[6:].partition("-")
    return int(start) if start.isdigit() else None


def _offline_error(spec: ModelSpec, target: Path, error: Exception) -> WeightsError:
    return WeightsError(
        f"cannot download checkpoint {spec.filename} for model {spec.name!r} from {spec.url} ({error}). "
        f"Without internet access, download it elsewhere and copy it to {target} "
        f"(set MEDSEG_HOME to change the cache location), or pass the file's path as the model, or use the model "
        f"that ships with medseg: medseg-micro (trained on synthetic scenes; fine-tune it on your cohort). "
        f"Licence: {spec.licence}."
    )
