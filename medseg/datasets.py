"""Real images that ship inside installed Python packages, usable offline.

* nilearn: the MNI ICBM152 2009a symmetric T1 template (197 x 233 x 189, 1 mm, an average of
  real MRI scans) with its grey- and white-matter probability maps. Thresholded, the maps
  give a two-class label map (1 grey matter, 2 white matter) on the T1's grid.
* The same template cut into a train/test cohort (``write_mni152_hemisphere_cohort``): axial
  slabs of the left hemisphere to train on, other slabs of the right hemisphere to test on.
* pydicom: its test files, among them ``CT_small.dcm`` (one 128 x 128 CT slice), ``MR_small.dcm``,
  small MR localizer series under ``dicomdirtests/`` and deliberately broken files
  (``MR_truncated.dcm``, ...).

Files are referenced in place (``package://`` paths in manifests), never copied.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import ConfigError, InputError
from medseg.geometry import Geometry
from medseg.io.nifti import write_nifti_if_changed
from medseg.manifest import resolve_path, write_manifest

logger = logging.getLogger(__name__)

_NILEARN_DATA = "package://nilearn/nilearn/datasets/data"
MNI152_T1 = f"{_NILEARN_DATA}/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI152_GM = f"{_NILEARN_DATA}/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
MNI152_WM = f"{_NILEARN_DATA}/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
MNI152_LABELS = {1: "grey_matter", 2: "white_matter"}

_PYDICOM_TEST_FILES = "package://pydicom/pydicom/data/test_files"


def package_file(reference: str) -> Path:
    """The path of a ``package://dist/path`` file; ``InputError`` when it is not installed."""
    try:
        path = resolve_path(reference, Path.cwd())
    except ConfigError as error:
        raise InputError(str(error)) from None
    if not path.exists():
        raise InputError(f"{reference}: not found at {path}; the installed package may be a different version")
    return path


def pydicom_test_file(name: str) -> Path:
    """A file (or folder, e.g. ``dicomdirtests``) of pydicom's bundled test data, without downloading."""
    return package_file(f"{_PYDICOM_TEST_FILES}/{name}")


def mni152_tissue_labels(*, threshold: float = 0.5) -> tuple[np.ndarray, Geometry]:
    """Grey matter (1) and white matter (2) on the MNI152 T1 grid, as ``(z, y, x)`` uint8.

    A voxel takes the tissue with the higher probability when that probability exceeds
    ``threshold``; everything else (CSF, skull, background) is 0.
    """
    t1, gm_image, wm_image = (nib.load(package_file(ref)) for ref in (MNI152_T1, MNI152_GM, MNI152_WM))
    for image, ref in ((gm_image, MNI152_GM), (wm_image, MNI152_WM)):
        if image.shape != t1.shape or not np.allclose(image.affine, t1.affine, atol=1e-4):
            raise InputError(f"{ref}: not on the T1 template's grid; nilearn's data changed")
    gm, wm = (np.asarray(image.get_fdata(dtype=np.float32)) for image in (gm_image, wm_image))
    # nilearn 0.14 stores the probabilities as uint8 0..255 without a NIfTI scale factor.
    scale = 255.0 if max(gm.max(), wm.max()) > 1.0 else 1.0
    gm, wm = gm / scale, wm / scale
    labels = np.zeros(t1.shape, dtype=np.uint8)
    labels[(gm > threshold) & (gm >= wm)] = 1
    labels[(wm > threshold) & (wm > gm)] = 2
    zyx = np.ascontiguousarray(labels.transpose(2, 1, 0))
    return zyx, Geometry.from_affine(t1.affine, zyx.shape)


def write_real_cohort(directory: str | os.PathLike) -> Path:
    """Write ``directory/real/mni152_labels.nii.gz`` and the manifest ``directory/mni152.json``.

    The T1 itself stays inside nilearn (referenced as ``package://``). Idempotent.
    Raises ``InputError`` when nilearn is not installed.
    """
    directory = Path(directory)
    labels, geometry = mni152_tissue_labels()
    label_file = "real/mni152_labels.nii.gz"
    if write_nifti_if_changed(labels, geometry, directory / label_file, labels=True):
        logger.info("wrote %s", directory / label_file)
    manifest = {
        "name": "mni152",
        "description": (
            "MNI ICBM152 2009a symmetric T1 template shipped with nilearn (real MRI average, 1 mm); "
            "labels: its grey/white-matter probability maps thresholded at 0.5 (`medseg demo-data`)."
        ),
        "modality": "MR",
        "labels": {"0": "background", **{str(k): v for k, v in MNI152_LABELS.items()}},
        "cases": [{"id": "mni152_t1", "image": MNI152_T1, "label": label_file, "split": "test"}],
    }
    return write_manifest(directory / "mni152.json", manifest)


HEMISPHERE_SLAB = 16  # slices (mm) per case of the hemisphere cohort
_CROP_MARGIN = 4  # voxels around the brain


def write_mni152_hemisphere_cohort(directory: str | os.PathLike, *, slab: int = HEMISPHERE_SLAB) -> Path:
    """Write the MNI152 hemisphere cohort: ``directory/real/hemispheres/*.nii.gz`` and
    ``directory/mni152-hemispheres.json``.

    The brain's axial extent is cut into slabs of ``slab`` slices. Even slabs of the *left*
    hemisphere are the train split, odd slabs of the *right* hemisphere the test split. The
    template is exactly left-right symmetric (2009a *sym*: the mirror of one hemisphere is the
    other, voxel for voxel), so testing on the right hemisphere of the training slabs would
    test on mirror images of the training data; alternating slabs keeps every test slice, and
    its mirror, out of training. Each case is cropped to the brain (its own exact geometry)
    and is non-square (about 188 x 75 voxels). Idempotent; ``InputError`` without nilearn.
    """
    directory = Path(directory)
    labels, geometry = mni152_tissue_labels()
    t1 = np.asarray(nib.load(package_file(MNI152_T1)).dataobj).transpose(2, 1, 0)
    brain = labels > 0
    (z0, z1), (y0, y1), (x0, x1) = ((int(a.min()), int(a.max()) + 1) for a in
                                    (np.flatnonzero(brain.any(axis=(1, 2))), np.flatnonzero(brain.any(axis=(0, 2))),
                                     np.flatnonzero(brain.any(axis=(0, 1)))))
    y0, y1 = max(y0 - _CROP_MARGIN, 0), min(y1 + _CROP_MARGIN, labels.shape[1])
    midline = int(round(float(np.linalg.inv(geometry.affine)[0, 3])))  # voxel x of world x = 0
    lower, upper = (max(x0 - _CROP_MARGIN, 0), midline), (midline + 1, min(x1 + _CROP_MARGIN, labels.shape[2]))
    # LPS: +x is the patient's left, so with voxel x running towards -x the lower half is the left one
    halves = {"left": lower, "right": upper} if geometry.direction[0, 0] < 0 else {"left": upper, "right": lower}
    cases = []
    for index, start in enumerate(range(z0, z1 - slab + 1, slab)):
        side, split = ("left", "train") if index % 2 == 0 else ("right", "test")
        xa, xb = halves[side]
        crop = (slice(start, start + slab), slice(y0, y1), slice(xa, xb))
        origin = geometry.index_to_world(np.array([[start, y0, xa]], dtype=float))[0]
        part = Geometry((slab, y1 - y0, xb - xa), geometry.spacing, tuple(float(v) for v in origin), geometry.direction)
        case_id = f"{side}_z{start:03d}"
        image, label = f"real/hemispheres/{case_id}.nii.gz", f"real/hemispheres/{case_id}_labels.nii.gz"
        write_nifti_if_changed(np.ascontiguousarray(t1[crop]), part, directory / image)
        write_nifti_if_changed(np.ascontiguousarray(labels[crop]), part, directory / label, labels=True)
        cases.append({"id": case_id, "image": image, "label": label, "split": split})
    manifest = {
        "name": "mni152-hemispheres",
        "description": (
            f"MNI ICBM152 2009a symmetric T1 template (nilearn) cut into {slab}-slice axial slabs: even slabs of the "
            "left hemisphere to train, odd slabs of the right hemisphere to test (the template is left-right "
            "symmetric, so no test slice or its mirror is in training); labels: grey/white-matter maps thresholded at "
            "0.5 (`medseg demo-data`)."
        ),
        "modality": "MR",
        "labels": {"0": "background", **{str(k): v for k, v in MNI152_LABELS.items()}},
        "cases": cases,
    }
    return write_manifest(directory / "mni152-hemispheres.json", manifest)
