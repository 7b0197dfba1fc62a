"""Volume and LabelVolume: shape checks, MONAI MetaTensor round trips through real transforms."""

from __future__ import annotations

import numpy as np
import pytest
from monai.transforms import Orientation, Spacing

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.phantom import make_phantom
from medseg.volume import LabelVolume, Volume


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3, shape=(8, 24, 20))


def test_metatensor_round_trip_is_exact(phantom):
    volume, _ = phantom
    tensor = volume.to_metatensor()
    assert tuple(tensor.shape) == (1, 20, 24, 8)  # channel, then i, j, k = x, y, z
    np.testing.assert_allclose(tensor.affine.numpy(), volume.affine, atol=1e-12)
    back = Volume.from_metatensor(tensor, modality="CT")
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.geometry.same_grid(volume.geometry, atol=1e-9)


def test_monai_reorientation_keeps_every_voxel_at_its_physical_point(phantom):
    volume, labels = phantom
    reoriented = Volume.from_metatensor(
        Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(volume.to_metatensor()))
    assert not np.allclose(reoriented.direction, volume.direction)
    assert np.all(np.diag(reoriented.affine[:3, :3]) > 0)  # RAS now: each index axis increases to R, A, S
    # A voxel found in both volumes by value sits at the same point in space.
    for zyx in ([1, 2, 3], [6, 20, 15], [4, 11, 9]):
        world = volume.geometry.index_to_world(zyx)[0]
        index_xyz = np.linalg.inv(reoriented.affine) @ np.r_[world * [-1, -1, 1], 1.0]
        z, y, x = np.round(index_xyz[2::-1]).astype(int)
        assert reoriented.array[z, y, x] == volume.array[tuple(zyx)]


def test_monai_resampling_changes_spacing_not_position(phantom):
    volume, _ = phantom
    resampled = Volume.from_metatensor(Spacing(pixdim=(1.6, 1.6, 5.0))(volume.to_metatensor()))
    np.testing.assert_allclose(resampled.spacing, (5.0, 1.6, 1.6), atol=1e-6)
    np.testing.assert_allclose(resampled.origin, volume.origin, atol=1e-4)
    np.testing.assert_allclose(resampled.direction, volume.direction, atol=1e-6)


def test_volume_checks_its_array():
    geometry = Geometry((2, 3, 4), (1.0, 1.0, 1.0))
    assert Volume(np.zeros((2, 3, 4), np.int16), geometry).array.dtype == np.float32
    with pytest.raises(InputError, match=r"a Volume is 3D \(z, y, x\); got an array of shape \(3, 4\)"):
        Volume(np.zeros((3, 4)), geometry)
    with pytest.raises(GeometryError, match=r"array shape \(2, 3, 5\) does not match geometry shape \(2, 3, 4\)"):
        Volume(np.zeros((2, 3, 5)), geometry)


def test_label_volume_checks_its_array(phantom):
    volume, _ = phantom
    assert LabelVolume.like(volume, np.ones(volume.shape, bool)).array.dtype == np.int32
    with pytest.raises(InputError, match="label values must be integers"):
        LabelVolume.like(volume, np.full(volume.shape, 0.5))
    with pytest.raises(GeometryError, match="does not match its volume's shape"):
        LabelVolume(np.zeros((1, 2, 3), np.int32), volume.geometry)
    assert LabelVolume.like(volume).labels == []


def test_with_array_keeps_geometry_metadata_and_source_files(phantom, tmp_path):
    volume, _ = phantom
    source = Volume(volume.array, volume.geometry, "CT", {"Modality": "CT"}, source_files=(tmp_path / "a.dcm",))
    windowed = source.with_array(np.clip(source.array, -100, 100))
    assert windowed.geometry is source.geometry and windowed.metadata == {"Modality": "CT"}
    assert windowed.source_files == (tmp_path / "a.dcm",)
    assert "a.dcm" not in repr(source)  # file names can hold patient names: not in reprs or logs
