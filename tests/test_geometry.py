"""Geometry: the LPS/RAS conventions against nibabel and SimpleITK reading the same file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from medseg.errors import GeometryError
from medseg.geometry import Geometry

OBLIQUE = Geometry(
    shape=(7, 9, 11),
    spacing=(3.0, 0.7, 0.9),
    origin=(-20.5, 41.0, 7.25),
    direction=Rotation.from_euler("zyx", [30, -12, 8], degrees=True).as_matrix(),
)


@pytest.fixture
def oblique_file(tmp_path):
    """An image written by SimpleITK with OBLIQUE's origin, spacing and direction."""
    image = sitk.GetImageFromArray(np.arange(np.prod(OBLIQUE.shape), dtype=np.float32).reshape(OBLIQUE.shape))
    image.SetSpacing(OBLIQUE.spacing[::-1])
    image.SetOrigin(OBLIQUE.origin)
    image.SetDirection(OBLIQUE.direction.ravel().tolist())
    path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def test_affine_is_what_nibabel_reads_from_a_simpleitk_file(oblique_file):
    np.testing.assert_allclose(OBLIQUE.affine, nib.load(oblique_file).affine, atol=1e-5)


def test_from_affine_is_what_simpleitk_reads_from_a_nibabel_file(tmp_path):
    affine = OBLIQUE.affine
    path = tmp_path / "from_nibabel.nii"
    image = nib.Nifti1Image(np.zeros(OBLIQUE.shape[::-1], np.float32), affine)
    image.set_qform(affine, code=1)
    nib.save(image, path)
    reference = sitk.ReadImage(str(path))
    geometry = Geometry.from_affine(nib.load(path).affine, OBLIQUE.shape)
    np.testing.assert_allclose(geometry.origin, reference.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(geometry.spacing, reference.GetSpacing()[::-1], atol=1e-5)
    np.testing.assert_allclose(geometry.direction, np.reshape(reference.GetDirection(), (3, 3)), atol=1e-5)
    assert geometry.same_grid(OBLIQUE, atol=1e-5)


def test_index_to_world_matches_simpleitk(oblique_file):
    reference = sitk.ReadImage(str(oblique_file))
    indices = np.array([[0, 0, 0], [6, 8, 10], [3, 1, 7]])
    expected = [reference.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]]) for zyx in indices]
    np.testing.assert_allclose(OBLIQUE.index_to_world(indices), expected, atol=1e-4)


def test_index_to_world_matches_the_affine():
    zyx = np.array([[2, 5, 9]])
    ras = OBLIQUE.affine @ np.array([9, 5, 2, 1.0])
    np.testing.assert_allclose(OBLIQUE.index_to_world(zyx)[0], ras[:3] * [-1, -1, 1], atol=1e-9)


def test_dict_round_trip_and_with_shape():
    again = Geometry.from_dict(OBLIQUE.to_dict())
    assert again.same_grid(OBLIQUE, atol=1e-12)
    smaller = OBLIQUE.with_shape((1, 9, 11))
    assert smaller.shape == (1, 9, 11) and smaller.origin == OBLIQUE.origin


def test_describe_difference_names_each_field_in_plain_numbers():
    other = Geometry((7, 9, 12), (3.0, 0.7, 0.9), (-20.5, 41.0, 9.25), np.eye(3))
    text = OBLIQUE.describe_difference(other)
    assert text == ("shape (7, 9, 12) != (7, 9, 11); origin (-20.5, 41.0, 9.25) != (-20.5, 41.0, 7.25); "
                    "direction differs")
    assert OBLIQUE.describe_difference(OBLIQUE) == ""


def test_invalid_geometries_are_refused():
    with pytest.raises(GeometryError, match="spacing must be three positive finite numbers"):
        Geometry((2, 2, 2), (1.0, 0.0, 1.0))
    with pytest.raises(GeometryError, match="direction must be orthonormal"):
        Geometry((2, 2, 2), (1.0, 1.0, 1.0), direction=np.diag([1.0, 2.0, 1.0]))
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(GeometryError, match="affine has shear"):
        Geometry.from_affine(sheared, (2, 2, 2))
