"""Intensity presets: CT windows in HU, MRI robust percentiles, and 3-channel slice frames.

Windows are applied in physical units (HU for CT) before any 8-bit step, and the mapping is
computed once per *volume*, never per slice and never over the dtype range: per-slice
min-max (common in SAM pipelines) makes the same tissue a different grey on every slice and
crushes CT contrast.

A preset is resolved against a volume (``resolve``) into one ``(low, high)`` range per output
channel; MONAI's ``ScaleIntensityRange`` then maps each range to [0, 1] with clipping.

Which preset a volume gets is decided here, once, for every face and engine (``choose_preset``):

1. the preset the caller gives (``--preset``, a panel's preset box, a pipeline's ``preset:``);
2. else the preset the model was trained with (a trained model directory's ``model.json``), so a
   model sees the intensities it learned on;
3. else the modality's: ``ct-soft-tissue`` for CT, ``mri`` (robust percentiles) for MR and PT;
4. else (NIfTI, NRRD and MetaImage carry no modality: "OT") a content check, ``looks_like_hu``:
   CT in Hounsfield units when at least 1% of the voxels lie at or below -500 HU (air, lung,
   padding) *and* at least 5% lie in [-200, 300] HU (fat, water, soft tissue). Magnitude MRI,
   PET and [0, 1]-scaled images have no values near -500, and a volume that is all air or all
   padding has no tissue, so both take ``mri``. Checked on the bundled phantoms as NIfTI (about
   43% air, 52% tissue), pydicom's ``CT_small.dcm`` (21% at or below -500, 71% tissue) and
   ``MR_small.dcm``, and nilearn's MNI152 T1 (0 to 255: no voxel below 0). A CT cropped inside
   the body without any air, or a CT rescaled away from HU, takes ``mri``: give the preset then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.errors import ConfigError
from medseg.volume import Volume


@dataclass(frozen=True)
class Window:
    """A CT display window: ``level`` (centre) and ``width`` in HU."""

    level: float
    width: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2


CT_WINDOWS: dict[str, Window] = {
    "soft_tissue": Window(40, 400),
    "lung": Window(-600, 1500),
    "bone": Window(400, 1800),
    "brain": Window(40, 80),
    "liver": Window(60, 160),
}


@dataclass(frozen=True)
class IntensityPreset:
    """How to turn a volume's intensities into three [0, 1] channels.

    ``windows`` holds one CT window (replicated to 3 channels) or three (packed one per
    channel). With ``windows`` empty, the MRI mapping is used: the ``percentiles`` of the
    whole volume's intensities map to [0, 1].
    """

    name: str
    windows: tuple[Window, ...] = ()
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if len(self.windows) not in (0, 1, 3):
            raise ConfigError(f"preset {self.name!r}: give one window or three, not {len(self.windows)}")
        for w in self.windows:
            if w.width <= 0:
                raise ConfigError(f"preset {self.name!r}: window width must be positive, got {w.width}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"preset {self.name!r}: percentiles must satisfy 0 <= low < high <= 100, got "
                              f"{self.percentiles}")

    def resolve(self, volume: Volume) -> list[tuple[float, float]]:
        """The ``(low, high)`` input range of each of the 3 output channels for ``volume``."""
        if self.windows:
            ranges = [(w.low, w.high) for w in self.windows]
            return ranges * 3 if len(ranges) == 1 else ranges
        finite = volume.array[np.isfinite(volume.array)]
        low, high = np.percentile(finite, self.percentiles) if finite.size else (0.0, 1.0)
        if high <= low:  # a constant image: any non-empty range keeps it finite
            high = low + 1.0
        return [(float(low), float(high))] * 3

    def to_dict(self) -> dict:
        return {"name": self.name, "windows": [[w.level, w.width] for w in self.windows],
                "percentiles": list(self.percentiles)}


PRESETS: dict[str, IntensityPreset] = {
    "ct-soft-tissue": IntensityPreset("ct-soft-tissue", (CT_WINDOWS["soft_tissue"],)),
    "ct-lung": IntensityPreset("ct-lung", (CT_WINDOWS["lung"],)),
    "ct-bone": IntensityPreset("ct-bone", (CT_WINDOWS["bone"],)),
    "ct-brain": IntensityPreset("ct-brain", (CT_WINDOWS["brain"],)),
    "ct-liver": IntensityPreset("ct-liver", (CT_WINDOWS["liver"],)),
    "ct-multi": IntensityPreset("ct-multi", (CT_WINDOWS["lung"], CT_WINDOWS["soft_tissue"], CT_WINDOWS["bone"])),
    "mri": IntensityPreset("mri"),
}


def get_preset(spec: str | IntensityPreset) -> IntensityPreset:
    """A preset by name, or a custom one: ``"ct:LEVEL,WIDTH"`` or ``"mri:LOW,HIGH"`` (percentiles).

    >>> get_preset("ct:50,350").windows
    (Window(level=50.0, width=350.0),)
    """
    if isinstance(spec, IntensityPreset):
        return spec
    if spec in PRESETS:
        return PRESETS[spec]
    kind, _, numbers = spec.partition(":")
    try:
        a, b = (float(v) for v in numbers.split(","))
    except ValueError:
        a = b = None
    if kind == "ct" and a is not None:
        return IntensityPreset(spec, (Window(a, b),))
    if kind == "mri" and a is not None:
        return IntensityPreset(spec, percentiles=(a, b))
    raise ConfigError(
        f"unknown intensity preset {spec!r}: use one of {sorted(PRESETS)}, 'ct:LEVEL,WIDTH' or 'mri:LOW_PCT,HIGH_PCT'"
    )


#: The modalities whose preset is known without looking at the voxels (rule 3 of the module docstring).
MODALITY_PRESETS: dict[str, str] = {"CT": "ct-soft-tissue", "MR": "mri", "MRI": "mri", "PT": "mri"}
#: The content check (rule 4): air at or below ``HU_AIR``, soft tissue in ``HU_TISSUE``, and their least shares.
HU_AIR = -500.0
HU_TISSUE = (-200.0, 300.0)
MIN_AIR_SHARE = 0.01
MIN_TISSUE_SHARE = 0.05
_CHECKED_VOXELS = 2**18  # the check looks at a regular sample of about this many voxels


@dataclass(frozen=True)
class PresetChoice:
    """The preset a volume gets (``choose_preset``) and why, in words a panel or log can show."""

    preset: IntensityPreset
    reason: str

    @property
    def name(self) -> str:
        return self.preset.name


def choose_preset(
    volume: Volume,
    *,
    preset: str | IntensityPreset | None = None,
    trained: str | IntensityPreset | None = None,
) -> PresetChoice:
    """The intensity preset for ``volume``: ``preset``, else ``trained``, else the modality's, else by content.

    Parameters
    ----------
    volume
        The image the preset is for (its modality and, when that says nothing, its voxels).
    preset
        What the user chose; wins over everything.
    trained
        The preset the model was trained with (``Sam2Model.preset``), when it was.

    >>> from medseg.geometry import Geometry
    >>> ct = np.full((1, 4, 5), -1000.0); ct[0, 1:3, 1:4] = 40.0  # air around soft tissue, no modality
    >>> choose_preset(Volume(ct, Geometry(ct.shape, (1, 1, 1)))).name
    'ct-soft-tissue'
    >>> choose_preset(Volume(ct, Geometry(ct.shape, (1, 1, 1))), trained="ct-liver").reason
    'the model was trained with it'
    """
    if preset is not None:
        return PresetChoice(get_preset(preset), "chosen by you")
    if trained is not None:
        return PresetChoice(get_preset(trained), "the model was trained with it")
    modality = volume.modality.upper()
    if modality in MODALITY_PRESETS:
        return PresetChoice(PRESETS[MODALITY_PRESETS[modality]], f"default for {volume.modality}")
    if looks_like_hu(volume):
        return PresetChoice(PRESETS["ct-soft-tissue"],
                            "modality unknown: the intensities are HU-like (air and soft tissue), so CT")
    return PresetChoice(PRESETS["mri"], "modality unknown: the intensities are not HU-like, so MRI percentiles")


def default_preset(volume: Volume) -> IntensityPreset:
    """The preset of ``volume`` when neither the caller nor a model names one (``choose_preset``)."""
    return choose_preset(volume).preset


def looks_like_hu(volume: Volume) -> bool:
    """Whether ``volume``'s intensities are CT Hounsfield units (rule 4 of the module docstring).

    >>> from medseg.geometry import Geometry
    >>> air_only = np.full((2, 4, 4), -1000.0)
    >>> looks_like_hu(Volume(air_only, Geometry(air_only.shape, (1, 1, 1))))  # no tissue: not a CT to window
    False
    """
    step = max(1, round((volume.array.size / _CHECKED_VOXELS) ** (1 / 3)))
    sample = np.ascontiguousarray(volume.array[::step, ::step, ::step])  # one strided pass, then contiguous work
    finite = sample[np.isfinite(sample)]
    if not finite.size:
        return False
    air = np.count_nonzero(finite <= HU_AIR) / finite.size
    tissue = np.count_nonzero((finite >= HU_TISSUE[0]) & (finite <= HU_TISSUE[1])) / finite.size
    return bool(air >= MIN_AIR_SHARE and tissue >= MIN_TISSUE_SHARE)


class SliceFrames:
    """Lazy 3-channel frames of a volume: ``frames[z]`` is ``(3, y, x)`` float32 in [0, 1].

    The intensity mapping is resolved once for the whole volume; each slice is mapped when
    asked for, so no full stack of frames is ever held.
    """

    def __init__(self, volume: Volume, preset: str | IntensityPreset | None = None) -> None:
        """``preset``: the one to use; None takes ``default_preset(volume)`` (modality, else content)."""
        self.volume = volume
        from monai.transforms import ScaleIntensityRange  # imports torch: only once frames are made

        self.preset = default_preset(volume) if preset is None else get_preset(preset)
        self._channel_transforms = [
            ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
            for low, high in self.preset.resolve(volume)
        ]

    def __len__(self) -> int:
        return self.volume.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        if not -len(self) <= z < len(self):
            raise IndexError(f"slice {z} is outside the volume ({len(self)} slices)")
        image = np.nan_to_num(self.volume.array[z], nan=0.0, posinf=0.0, neginf=0.0)
        channels = [np.asarray(t(image), dtype=np.float32) for t in self._channel_transforms]
        return np.stack(channels)


def display_volume(volume: Volume, preset: str | IntensityPreset | None = None) -> np.ndarray:
    """The first channel of every frame, ``(z, y, x)`` float32 in [0, 1], for display or 2D models."""
    frames = SliceFrames(volume, preset)
    return np.stack([frames[z][0] for z in range(len(frames))])
