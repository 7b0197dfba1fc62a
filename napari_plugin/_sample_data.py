"""napari sample data: the demo CT phantom, and the real MRI template shipped with nilearn.

Each sample opens as an Image layer with its ground-truth Labels layer, both carrying their
``Volume`` like files opened with the reader, so every panel (Metrics, Reference prompting)
works on them straight away.
"""

from __future__ import annotations

from typing import Any

from medseg.errors import GeometryError
from medseg.volume import LabelVolume

from napari_plugin._layers import image_layer_data, labels_layer_data

LayerData = list[tuple[Any, dict[str, Any], str]]


def make_phantom_sample() -> LayerData:
    """The demo cohort's first CT phantom (seed 0): liver, spleen and kidneys on 32 x 128 x 128."""
    from medseg.phantom import make_phantom

    volume, labels = make_phantom(0)
    return [image_layer_data(volume, "phantom"), _ground_truth(labels, volume, "phantom ground truth")]


def make_mni152_sample() -> LayerData:
    """The MNI ICBM152 T1 template (real MRI, 1 mm) with grey/white matter labels, from nilearn."""
    from medseg.datasets import MNI152_LABELS, MNI152_T1, mni152_tissue_labels, package_file
    from medseg.io import load_volume

    volume = load_volume(package_file(MNI152_T1))
    array, geometry = mni152_tissue_labels()
    if not geometry.same_grid(volume.geometry):
        raise GeometryError("nilearn's tissue maps are not on the T1 grid: "
                            f"{volume.geometry.describe_difference(geometry)}")
    labels = LabelVolume(array, volume.geometry, label_names=dict(MNI152_LABELS))
    return [image_layer_data(volume, "MNI152 T1"), _ground_truth(labels, volume, "MNI152 tissue (ground truth)")]


def _ground_truth(labels: LabelVolume, volume: Any, name: str) -> tuple[Any, dict[str, Any], str]:
    data, kwargs, kind = labels_layer_data(labels, volume, name)
    kwargs["opacity"] = 0.35  # faint: a segmentation drawn over it stays readable
    return data, kwargs, kind
