"""NIfTI (.nii, .nii.gz): read and write with nibabel.

The image's affine is nibabel's best affine (sform when its code is set, else qform) and the
voxels are the scaled values (``scl_slope``/``scl_inter`` applied), which is what the geometry
tests check (RAS, LAS, oblique, against SimpleITK). A file whose sform and qform disagree,
where nibabel and SimpleITK can place the same voxels differently, is logged.

MONAI's ``NibabelReader`` is the same nibabel calls plus a header "correction" when pixdim
and the affine disagree (which would move such a file away from where nibabel and ITK put
it), and using it means ``import monai``, which loads all of MONAI and torch: 5-10 s on the
first File > Open in napari. So medseg reads NIfTI with nibabel itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.io.files import atomic_output

log = logging.getLogger(__name__)

_XFORM_SCANNER = 1  # NIFTI_XFORM_SCANNER_ANAT: what ITK and dcm2niix write


def read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    """The ``(z, y, x)`` voxels (dtype as stored, after scl_slope) and geometry of a 3D NIfTI."""
    image = _open(path)
    shape = image.shape
    try:
        array = np.asanyarray(image.dataobj)
    except Exception as error:  # truncated data: EOFError, zlib.error, ValueError
        raise InputError(f"{path}: cannot read the voxel data ({error}); the file looks truncated "
                         "or corrupt") from error
    array = np.asarray(array).reshape(shape[:3])
    zyx = np.ascontiguousarray(array.transpose(2, 1, 0))
    return zyx, _geometry(path, np.array(image.affine), zyx.shape)


def read_nifti_geometry(path: Path) -> Geometry:
    """The geometry of a 3D NIfTI from its header alone (no voxels are read)."""
    image = _open(path)
    return _geometry(path, image.affine, image.shape[:3][::-1])


def write_nifti(array_zyx: np.ndarray, geometry: Geometry, path: Path, *, labels: bool = False) -> None:
    """Write a ``(z, y, x)`` array (dtype kept) with ``geometry``'s affine as both sform and qform.

    Both transforms carry the same affine (code "scanner"), so nibabel, SimpleITK, ITK-SNAP
    and 3D Slicer all place the voxels identically. ``labels`` marks the file as a label map
    (NIfTI intent "label"). The file appears complete or not at all.
    """
    image = nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), geometry.affine)
    image.set_sform(geometry.affine, code=_XFORM_SCANNER)
    image.set_qform(geometry.affine, code=_XFORM_SCANNER)
    image.header.set_xyzt_units("mm")
    if labels:
        image.header.set_intent("label", name="labels")
    with atomic_output(path) as tmp:
        nib.save(image, tmp)


def write_nifti_if_changed(array_zyx: np.ndarray, geometry: Geometry, path: Path, *, labels: bool = False) -> bool:
    """``write_nifti`` unless ``path`` already holds exactly these voxels (same dtype) and affine.

    Returns True when the file was written. Makes generators idempotent: a second run
    leaves every file (and its modification time) alone.
    """
    if path.exists():
        try:
            existing = nib.load(path)
            voxels = np.asanyarray(existing.dataobj)
            if (
                voxels.dtype == array_zyx.dtype
                and np.array_equal(voxels, array_zyx.transpose(2, 1, 0))
                and np.allclose(existing.affine, geometry.affine, atol=1e-5)
            ):
                return False
        except Exception:  # an unreadable earlier file (interrupted write, disk full) is rewritten
            log.info("%s is unreadable; rewriting it", path)
    write_nifti(array_zyx, geometry, path, labels=labels)
    return True


def _open(path: Path) -> nib.Nifti1Image:
    """The lazily loaded image, checked to be 3D (or 3D with trailing singleton dimensions)."""
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises several types for corrupt headers
        raise InputError(f"{path}: cannot read as NIfTI ({error}); is the file complete?") from error
    _check_3d(path, image.shape)
    _warn_on_xform_mismatch(path, image.header)
    return image


def _geometry(path: Path, affine: np.ndarray, shape_zyx: tuple[int, ...]) -> Geometry:
    try:
        return Geometry.from_affine(affine, shape_zyx)
    except GeometryError as error:  # a zero, sheared or non-finite affine in the header
        raise GeometryError(f"{path}: {error}; the file's header is damaged or was written by a faulty "
                            "converter") from error


def _check_3d(path: Path, shape: tuple[int, ...]) -> None:
    if 0 in shape[:3]:
        raise InputError(f"{path}: a NIfTI with a zero-size dimension (shape {shape}): it holds no voxels; re-export "
                         "the image")
    if len(shape) == 3 or (len(shape) > 3 and all(s == 1 for s in shape[3:])):
        return
    if len(shape) < 3:
        raise InputError(f"{path}: a {len(shape)}D NIfTI of shape {shape}; medseg needs a 3D volume")
    raise InputError(
        f"{path}: a {len(shape)}D NIfTI of shape {shape} ({int(np.prod(shape[3:]))} volumes); medseg needs one 3D "
        "volume: extract one first, e.g. nibabel `img.slicer[..., 0]` or `fslroi in out 0 1`"
    )


def _warn_on_xform_mismatch(path: Path, header: nib.Nifti1Header) -> None:
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    if sform_code and qform_code and not np.allclose(sform, qform, atol=1e-3):
        log.warning(
            "%s: sform and qform disagree; using the sform as nibabel does (SimpleITK may use the qform "
            "and place the voxels elsewhere). Check the file's orientation in a viewer.",
            path,
        )
