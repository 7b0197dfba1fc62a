"""Synthetic CT-like abdominal phantoms for the demo cohort and for tests.

Each phantom is deterministic in its seed: an elliptic body of fat (-100 HU) in air
(-1000 HU) holding a liver (~60 HU), a spleen (~45 HU), two kidneys (~30 HU, two connected
components of one label) and a vertebra (~700 HU, not labelled). Organ outlines are
ellipsoids deformed by a smooth random field, so they are organic and differ per seed in
size, position and shape. Intensities get a slight blur (partial volume) and Gaussian noise,
and are stored as whole HU. Spacing is anisotropic (thick slices) and the direction is a
small rotation, so code that ignores geometry fails on them.

Also writes a volume as a DICOM series (``write_dicom_series``), the way a scanner export
looks, for tests and demos of the DICOM path.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter, zoom
from scipy.spatial.transform import Rotation

from medseg.geometry import Geometry
from medseg.io.nifti import write_nifti_if_changed
from medseg.manifest import write_manifest
from medseg.volume import LabelVolume, Volume

log = logging.getLogger(__name__)

LABELS = {1: "liver", 2: "spleen", 3: "kidney"}
EXTRA_LABELS = {4: "lesion", 5: "vertebra"}
"""Labels a phantom carries only when asked (``lesion=True``, ``label_vertebra=True``): structures the
demo cohort never labels, for testing models on what they were not trained to segment."""
LAYOUTS = ("standard", "moved")
DEFAULT_SHAPE = (32, 128, 128)
DEFAULT_SPACING = (2.5, 0.8, 0.8)

_AIR_HU, _FAT_HU = -1000.0, -100.0
_NOISE_HU = 12.0


@dataclass(frozen=True)
class _Organ:
    label: int  # 0: visible but not labelled
    hu: float
    centre: tuple[float, float, float]  # (z, y, x) mm from the volume centre; +x patient left, +y posterior
    radii: tuple[float, float, float]  # (z, y, x) mm


def make_phantom(
    seed: int = 0,
    *,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    layout: str = "standard",
    lesion: bool = False,
    label_vertebra: bool = False,
) -> tuple[Volume, LabelVolume]:
    """A CT-like phantom and its labels (1 liver, 2 spleen, 3 kidneys), both on one geometry.

    Organ sizes scale with the field of view, so small shapes (for fast tests) still hold
    every organ. The same ``seed`` always gives the same voxels (and the same organs whatever
    the options below; the options add or move, they do not redraw).

    ``layout="moved"`` rearranges the anatomy (the liver on the other side, the spleen in front,
    the kidneys far out to the sides): a model that learned where organs usually are, instead of
    following its prompt, fails on it. ``lesion`` adds a rim-enhancing lesion inside the liver
    (label 4: a hypodense core with a bright rim), ``label_vertebra`` labels the vertebra (5).

    >>> volume, labels = make_phantom(1, shape=(12, 48, 48))
    >>> labels.labels
    [1, 2, 3]
    """
    rng = np.random.default_rng(seed)
    geometry = _geometry(rng, shape, spacing)
    zyx_mm = _centred_mm(shape, spacing)
    half = np.array(shape) * np.array(spacing) / 2  # half extent (z, y, x) mm
    body = _inside(zyx_mm, (0.0, 0.0, 0.0), (half[0] * 4, half[1] * 0.78, half[2] * 0.92), rng, roughness=0.0)

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    image = np.where(body, _FAT_HU, _AIR_HU)
    labels = np.zeros(shape, dtype=np.uint8)
    for organ in _organs(rng, half):
        if layout == "moved":
            organ = _moved(organ, half)
        mask = _inside(zyx_mm, organ.centre, organ.radii, rng, roughness=0.15) & body & (labels == 0)
        image[mask] = organ.hu
        labels[mask] = organ.label or (5 if label_vertebra else 0)
    noise = rng.normal(0.0, _NOISE_HU, shape)
    names = dict(LABELS) | ({5: EXTRA_LABELS[5]} if label_vertebra else {})
    if lesion:
        _add_lesion(image, labels, zyx_mm, np.random.default_rng([seed, 4]))
        names[4] = EXTRA_LABELS[4]
    image = gaussian_filter(image, sigma=(0.3, 0.8, 0.8)) + noise
    volume = Volume(np.round(image).astype(np.float32), geometry, "CT", {"format": "phantom", "seed": seed})
    return volume, LabelVolume(labels, geometry, label_names=names)


def write_demo_cohort(
    directory: str | os.PathLike,
    *,
    n_cases: int = 8,
    n_test: int | None = None,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> Path:
    """Write ``n_cases`` phantoms to ``directory/demo/`` and their manifest ``directory/demo.json``.

    Idempotent: a NIfTI file that already holds the right voxels and affine is left alone,
    so a second run writes nothing. The last ``n_test`` cases (default: half, rounded down,
    so the default 8 give 4 train and 4 test cases) are the ``test`` split. Returns the
    manifest path.
    """
    n_test = n_cases // 2 if n_test is None else n_test
    if not 1 <= n_test < n_cases:
        raise ValueError(f"n_test must leave at least one train and one test case, got {n_test} of {n_cases}")
    directory = Path(directory)
    cases, written = [], 0
    for seed in range(n_cases):
        volume, labels = make_phantom(seed, shape=shape, spacing=spacing)
        case_id = f"phantom_{seed:03d}"
        image_file, label_file = f"demo/{case_id}.nii.gz", f"demo/{case_id}_labels.nii.gz"
        written += write_nifti_if_changed(volume.array.astype(np.int16), volume.geometry, directory / image_file)
        written += write_nifti_if_changed(labels.array, volume.geometry, directory / label_file, labels=True)
        split = "test" if seed >= n_cases - n_test else "train"
        cases.append({"id": case_id, "image": image_file, "label": label_file, "split": split})
    manifest = {
        "name": "demo",
        "description": (
            "Synthetic CT-like abdominal phantoms (medseg.phantom, seeds 0..N-1); generate the files "
            "with `medseg demo-data`."
        ),
        "modality": "CT",
        "labels": {"0": "background", **{str(k): v for k, v in LABELS.items()}},
        "cases": cases,
    }
    log.info("demo cohort in %s: %d of %d files written, the rest were up to date", directory / "demo",
             written, 2 * n_cases)
    return write_manifest(directory / "demo.json", manifest)


def write_dicom_series(
    volume: Volume,
    folder: str | os.PathLike,
    *,
    series_description: str = "medseg phantom",
    series_uid: str | None = None,
    uid_seed: str | None = None,
) -> list[Path]:
    """Write ``volume`` as a single-frame CT/MR DICOM series, one file per slice.

    Voxels are stored as unsigned 16-bit integers with a RescaleIntercept (and a slope when
    the range needs one), so readers must apply the rescale to get the volume's values back
    (exactly, for whole-HU volumes). File names are deliberately not in slice order (a reader
    must sort by position). The patient module holds obviously synthetic values. With
    ``uid_seed`` every UID derives from it (written again, the series is the same objects).

    A DICOM stack is right-handed (slice normal = row x column direction): a volume whose
    direction is left-handed reads back with its z axis reversed, the same voxels at the same
    points. Returns the files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    low, high = float(volume.array.min()), float(volume.array.max())
    # GDCM stores (value - intercept) / slope as unsigned 16-bit: choose both so every value fits.
    slope = max(1.0, (high - low) / 65535.0)
    intercept = float(np.floor(low))
    physical = np.round((volume.array - intercept) / slope) * slope + intercept

    def new_uid(*parts: object) -> str:
        return _new_uid(*((uid_seed, *parts) if uid_seed is not None else ()))

    series_uid = series_uid or new_uid("series")
    study_uid, frame_uid = new_uid("study"), new_uid("frame")
    direction = volume.direction
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    date, clock = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    shared_tags = {
        "0008|0008": "DERIVED\\SECONDARY",
        "0008|0020": date,
        "0008|0030": clock,
        "0008|0060": volume.modality if volume.modality in ("CT", "MR") else "OT",
        "0008|0070": "medseg phantom",
        "0008|103e": series_description,
        "0010|0010": "PHANTOM^DEMO",
        "0010|0020": "PHANTOM",
        "0020|000d": study_uid,
        "0020|000e": series_uid,
        "0020|0052": frame_uid,
        "0020|0011": "1",
        "0020|0037": orientation,
        "0018|0050": f"{volume.spacing[0]:.6f}",
        "0028|0030": f"{volume.spacing[1]:.6f}\\{volume.spacing[2]:.6f}",
        "0028|0100": "16",  # stored as unsigned 16-bit: GDCM applies the inverse rescale
        "0028|0101": "16",
        "0028|0102": "15",
        "0028|0103": "0",
        "0028|1052": f"{intercept:.6f}",
        "0028|1053": f"{slope:.6f}",
        "0028|1054": "HU" if volume.modality == "CT" else "US",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # otherwise GDCM replaces the series UID set above
    files = []
    n_slices = volume.shape[0]
    for z in range(n_slices):
        position = volume.geometry.index_to_world([z, 0, 0])[0]
        image = sitk.GetImageFromArray(physical[z : z + 1].astype(np.float32))
        image.SetSpacing(volume.spacing[::-1])
        image.SetOrigin(tuple(position))
        image.SetDirection(direction.ravel().tolist())
        for tag, value in shared_tags.items():
            image.SetMetaData(tag, value)
        image.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        image.SetMetaData("0020|0013", str(z + 1))
        image.SetMetaData("0008|0018", new_uid("instance", z))
        # Reverse-interleaved names: sorting files by name does not give slice order.
        path = folder / f"IM{(n_slices - 1 - z) * 7919 % 100003:06d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        files.append(path)
    return files


def _geometry(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Geometry:
    """A rotated grid (a few degrees about each axis) centred near the scanner origin."""
    angles = rng.uniform([-4, -4, 5], [4, 4, 15])  # degrees about x, y, z
    direction = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    extent_xyz = (np.array(shape[::-1]) - 1) * np.array(spacing[::-1])
    origin = -direction @ (extent_xyz / 2) + rng.uniform(-20, 20, 3)
    return Geometry(shape, spacing, tuple(origin), direction)


def _centred_mm(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    """Broadcastable (z, y, x) voxel-centre coordinates in mm from the volume centre."""
    return [
        ((np.arange(n) - (n - 1) / 2) * s).reshape([-1 if a == axis else 1 for a in range(3)])
        for axis, (n, s) in enumerate(zip(shape, spacing))
    ]


def _inside(
    zyx_mm: list[np.ndarray],
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    roughness: float,
) -> np.ndarray:
    """Voxels inside an ellipsoid whose radius is modulated by a smooth random field."""
    r2 = sum(((c - m) / r) ** 2 for c, m, r in zip(zyx_mm, centre, radii))
    distance = np.sqrt(r2)
    if roughness:
        # A smooth field made on a grid 4x coarser and interpolated up: same look, 20x faster.
        coarse = np.maximum(np.array(distance.shape) // 4, 4)
        field = gaussian_filter(rng.standard_normal(coarse), sigma=coarse / 6.0, mode="wrap")
        field = zoom(field / (field.std() or 1.0), np.array(distance.shape) / coarse, order=1, grid_mode=True,
                     mode="grid-wrap")
        distance = distance * (1.0 + roughness * field)
    return distance < 1.0


def _organs(rng: np.random.Generator, half: np.ndarray) -> list[_Organ]:
    """Organs in (z, y, x) mm relative to the centre, scaled to the field of view ``half``."""

    def jitter(scale: float) -> float:
        return float(rng.uniform(-scale, scale))

    def size(radii: tuple[float, float, float]) -> tuple[float, float, float]:
        s = rng.uniform(0.85, 1.15)
        return (radii[0] * half[0] * s, radii[1] * half[1] * s, radii[2] * half[2] * s)

    kidney_radii = size((0.45, 0.16, 0.13))
    kidney_y = 0.30 * half[1] + jitter(0.03 * half[1])
    return [
        _Organ(0, 700.0, (0.0, 0.55 * half[1], jitter(0.02 * half[2])), (half[0] * 4, 0.12 * half[1], 0.11 * half[2])),
        _Organ(3, 30.0, (jitter(0.1 * half[0]), kidney_y, -0.40 * half[2]), kidney_radii),
        _Organ(3, 30.0, (jitter(0.1 * half[0]), kidney_y, 0.40 * half[2]), kidney_radii),
        _Organ(1, 60.0, (0.1 * half[0] + jitter(0.1 * half[0]), -0.15 * half[1] + jitter(0.05 * half[1]),
                         -0.35 * half[2]), size((0.7, 0.42, 0.40))),
        _Organ(2, 45.0, (jitter(0.1 * half[0]), 0.0 + jitter(0.05 * half[1]), 0.50 * half[2]),
               size((0.45, 0.22, 0.16))),
    ]


def _moved(organ: _Organ, half: np.ndarray) -> _Organ:
    """The organ where a ``moved`` layout puts it: the liver on the other side, the spleen in front
    beside it, the kidneys far out to the sides (the vertebra stays)."""
    z, y, x = organ.centre
    if organ.label == 1:
        x = -x
    elif organ.label == 2:
        y, x = -0.40 * half[1], -0.30 * half[2]
    elif organ.label == 3:
        y, x = 0.38 * half[1], np.sign(x) * 0.62 * half[2]
    return _Organ(organ.label, organ.hu, (z, y, x), organ.radii)


def _add_lesion(image: np.ndarray, labels: np.ndarray, zyx_mm: list[np.ndarray], rng: np.random.Generator) -> None:
    """A rim-enhancing lesion (label 4) in the liver: a 20 HU core inside a 120 HU rim."""
    liver = np.argwhere(labels == 1)
    if len(liver) == 0:
        return
    centre_index = liver[np.argmin(((liver - liver.mean(axis=0)) ** 2).sum(axis=1))]
    centre = tuple(float(zyx_mm[a].ravel()[centre_index[a]]) for a in range(3))
    extent = [float(np.ptp(zyx_mm[a].ravel()[liver[:, a]])) for a in range(3)]
    radii = (max(extent[0] * 0.2, 3.0), extent[1] * 0.15, extent[2] * 0.15)
    core = _inside(zyx_mm, centre, radii, rng, roughness=0.1) & (labels == 1)
    rim = _inside(zyx_mm, centre, tuple(r * 1.3 for r in radii), rng, roughness=0.0) & (labels == 1) & ~core
    image[rim], image[core] = 120.0, 20.0
    labels[core | rim] = 4


def _new_uid(*seed: object) -> str:
    """A new UID, or with ``seed`` one derived from it (pydicom's ``generate_uid(entropy_srcs=...)``)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in seed] if seed else None)
