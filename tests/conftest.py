"""Shared fixtures: small real inputs on disk (a phantom as NIfTI and as a DICOM series).

Session-scoped and read-only by convention: a test that needs to modify a file copies it
to its own ``tmp_path`` first.

Two environment variables vary a run (``benchmarks/flake_hunt.py`` sets them): ``MEDSEG_TEST_THREADS``
(torch CPU threads for the whole session) and ``MEDSEG_TEST_SEED`` (the ``test_seed`` fixture, 0 by
default: tests whose assertions must hold for any random data draw it from this seed).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import napari_plugin  # noqa: F401  (first: loads triton with its own LLVM before Mesa's, see its docstring)
from medseg.geometry import Geometry
from medseg.io import save_labels
from medseg.io.dicomweb.orthanc import LocalOrthanc
from medseg.io.nifti import write_nifti
from medseg.phantom import make_phantom, write_dicom_series
from medseg.volume import LabelVolume, Volume
from pacs_support import PASSWORD, USER, Pacs

SMALL_SHAPE = (12, 48, 48)

# the on-disk SAM2 embedding store is on by default for users; tests ask for it explicitly
os.environ["MEDSEG_EMBEDDINGS"] = "off"
# font sizes in points become the same pixels on every machine (test_napari_layout pins the font file)
os.environ["QT_FONT_DPI"] = "96"


def pytest_configure(config: pytest.Config) -> None:
    threads = os.environ.get("MEDSEG_TEST_THREADS")
    if not threads and os.environ.get("PYTEST_XDIST_WORKER"):
        # `make test` runs one pytest worker per core: a worker on 2 threads would make both
        # oversubscribe (measured: 1.8x the serial time per test). Its subprocesses inherit this.
        threads = os.environ["OMP_NUM_THREADS"] = "1"
    if threads:
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def test_seed() -> int:
    """The seed for random test data: ``MEDSEG_TEST_SEED``, 0 by default."""
    return int(os.environ.get("MEDSEG_TEST_SEED", "0"))


@dataclass(frozen=True)
class PhantomCase:
    """A phantom in memory and on disk: ``image`` / ``label`` are its files."""

    volume: Volume
    labels: LabelVolume
    image: Path
    label: Path


@pytest.fixture(scope="session")
def phantom_case(tmp_path_factory: pytest.TempPathFactory) -> PhantomCase:
    """A (12, 48, 48) CT phantom (labels 1 liver, 2 spleen, 3 kidneys) as NIfTI files."""
    folder = tmp_path_factory.mktemp("phantom_nifti")
    volume, labels = make_phantom(1, shape=SMALL_SHAPE)
    image, label = folder / "phantom.nii.gz", folder / "phantom_labels.nii.gz"
    write_nifti(volume.array.astype(np.int16), volume.geometry, image)
    save_labels(labels, volume, label)
    return PhantomCase(volume, labels, image, label)


@pytest.fixture(scope="session")
def dicom_phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomCase:
    """A phantom with an oblique, non-axial direction written as a DICOM series (one file per slice).

    ``image`` is the series folder; ``label`` is a NIfTI of its labels. The slice normal runs
    mostly along patient left-right (a sagittal-like stack, tilted), and file names are not
    in slice order.
    """
    folder = tmp_path_factory.mktemp("phantom_dicom")
    volume, labels = make_phantom(2, shape=(10, 40, 44))
    # Index axes x, y, z -> patient: x ~ posterior, y ~ inferior, z ~ right (sagittal-like), tilted
    # a little. Right-handed, as every DICOM stack is (slice normal = row x column direction).
    direction = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.2), -np.sin(0.2)], [0.0, np.sin(0.2), np.cos(0.2)]])
    geometry = Geometry(volume.shape, volume.spacing, (-40.5, 12.25, 80.0), tilt @ direction)
    volume = Volume(volume.array, geometry, "CT")
    labels = LabelVolume(labels.array, geometry, label_names=labels.label_names)
    write_dicom_series(volume, folder / "series", series_description="sagittal phantom")
    save_labels(labels, volume, folder / "labels.nii.gz")
    return PhantomCase(volume, labels, folder / "series", folder / "labels.nii.gz")


def _digests(paths: tuple[Path, ...]) -> dict[str, str]:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture
def unmodified():
    """``with unmodified(path, ...):`` fails the test if any file under the paths changes or appears."""

    @contextlib.contextmanager
    def check(*paths: Path) -> Iterator[None]:
        before = _digests(paths)
        assert before, f"nothing to hash under {paths}"
        yield
        assert _digests(paths) == before, "an input file was modified, created or removed"

    return check


@pytest.fixture(scope="session")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    """A private Orthanc with DICOMweb on 127.0.0.1 (user ``pacs_support.USER``) for the session."""
    with LocalOrthanc(tmp_path_factory.mktemp("orthanc"), users={USER: PASSWORD}) as server:
        yield Pacs(server)


@pytest.fixture
def pacs_env(pacs: Pacs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Pacs:
    """``pacs`` with its credentials in the environment and a fresh medseg cache (``MEDSEG_HOME``)."""
    monkeypatch.setenv("MEDSEG_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDSEG_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "medseg-home"))
    return pacs


@pytest.fixture
def phantom_file(tmp_path: Path):
    """A (12, 64, 64) CT phantom NIfTI in this test's folder, and its truth ``LabelVolume``."""
    from napari_helpers import write_phantom

    path = tmp_path / "phantom.nii.gz"
    return path, write_phantom(path)
