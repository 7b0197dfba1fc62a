"""A reference case registered onto the query (SimpleITK), so that its supports show the query's anatomy.

Reference prompting carries an organ from a reference's annotated slices into the query through
SAM2's memory, and the memory carries the reference organ's size and place with it: on the demo
phantoms, the query's liver came out at the reference liver's area on every slice, about half
the query's own. Registering the whole reference volume onto the query first (an affine
transform, Mattes mutual information, so CT to CT and MRI to MRI alike, coarse to fine) and
resampling its image and labels onto the query's grid gives supports whose organs sit about
where, and about as large as, the query's. The supports are then taken from the registered
reference as from any other (``SupportSet``): the registration changes what they show, not how
they are used.

Deterministic: every voxel is sampled (no random subset), so the same pair gives the same
transform; the reference itself is not changed (new arrays come back).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medseg.errors import InputError
from medseg.io.itk import sitk_image
from medseg.volume import LabelVolume, Volume

LEVELS = ((4, 2.0), (2, 1.0), (1, 0.0))  # (shrink factor, smoothing sigma in voxels) per level
ITERATIONS = 200
HISTOGRAM_BINS = 32


def register_reference(query: Volume, reference: Volume, labels: LabelVolume) -> tuple[Volume, LabelVolume]:
    """``reference`` and its ``labels`` resampled onto ``query``'s grid by an affine registration.

    The image is resampled linearly (outside the reference: its lowest value, air on CT), the
    labels by nearest neighbour (outside: background). Raises ``InputError`` when the registration
    cannot run (e.g. a volume too small for its coarsest level).
    """
    for name, volume in (("query", query), ("reference", reference)):
        if np.ptp(volume.array) == 0:
            raise InputError(f"the {name} image is one constant value: there is nothing to register it by")
    fixed = sitk_image(np.asarray(query.array, np.float32), query.geometry)
    moving = sitk_image(np.asarray(reference.array, np.float32), reference.geometry)
    start = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                              sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=ITERATIONS)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([shrink for shrink, _ in LEVELS])
    method.SetSmoothingSigmasPerLevel([sigma for _, sigma in LEVELS])
    method.SetInitialTransform(start, inPlace=False)
    try:
        transform = method.Execute(fixed, moving)
    except RuntimeError as error:
        raise InputError(f"the reference could not be registered onto the query: {str(error).strip().splitlines()[-1]}")
    image = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, float(np.min(reference.array)), sitk.sitkFloat32)
    label_image = sitk_image(np.asarray(labels.array, np.int32), reference.geometry)
    registered_labels = sitk.Resample(label_image, fixed, transform, sitk.sitkNearestNeighbor, 0)
    return (Volume(sitk.GetArrayFromImage(image), query.geometry, modality=reference.modality),
            LabelVolume(sitk.GetArrayFromImage(registered_labels), query.geometry,
                        label_names=dict(labels.label_names)))
