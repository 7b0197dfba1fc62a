"""NRRD and MetaImage (.nrrd, .nhdr, .mha, .mhd) through SimpleITK.

MONAI's reader for these formats (``ITKReader``) needs the ``itk`` package, which is heavy
and not a medseg dependency; SimpleITK reads the same files with the same ITK ImageIO code
and reports geometry in the LPS convention ``Geometry`` uses, so no conversion is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.errors import InputError
from medseg.geometry import Geometry
from medseg.io.files import atomic_output


def read_itk(path: Path) -> tuple[np.ndarray, Geometry]:
    """The ``(z, y, x)`` voxels (dtype as stored) and geometry of a 3D scalar image."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: cannot read ({_last_line(error)}); is the file complete?") from error
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image); "
            "medseg needs a scalar (grey-value) volume"
        )
    if image.GetDimension() != 3:
        raise InputError(f"{path}: a {image.GetDimension()}D image of size {image.GetSize()}; medseg needs a 3D volume")
    return sitk.GetArrayFromImage(image), geometry_of_sitk(image)


def read_itk_geometry(path: Path) -> Geometry:
    """The geometry of a 3D image from its header alone (no voxels are read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"{path}: cannot read the image header ({_last_line(error)})") from error
    if reader.GetDimension() != 3:
        raise InputError(f"{path}: a {reader.GetDimension()}D image of size {reader.GetSize()}; medseg needs a "
                         "3D volume")
    return geometry_of_sitk(reader)


def geometry_of_sitk(image: sitk.Image | sitk.ImageFileReader) -> Geometry:
    """``Geometry`` of a 3D SimpleITK image or read header (both use LPS, direction columns = index axes)."""
    return Geometry(
        shape=image.GetSize()[::-1],
        spacing=image.GetSpacing()[::-1],
        origin=image.GetOrigin(),
        direction=np.array(image.GetDirection()).reshape(3, 3),
    )


def sitk_image(array_zyx: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image of a ``(z, y, x)`` array placed on ``geometry``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(geometry.spacing[::-1])
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction.ravel().tolist())
    return image


def write_itk_labels(array_zyx: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write a label map as a single-file NRRD or MetaImage (compressed)."""
    with atomic_output(path) as tmp:
        sitk.WriteImage(sitk_image(array_zyx, geometry), str(tmp), useCompression=True)


def _last_line(error: Exception) -> str:
    """ITK errors span several lines of C++ context; the last one says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
