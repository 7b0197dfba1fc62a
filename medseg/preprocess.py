"""Intensity presets: CT windows in HU, MRI robust percentiles, and 3-channel slice frames.

Windows are applied in physical units (HU for CT) before any 8-bit step, and the mapping is
computed once per *volume*, never per slice and never over the dtype range: per-slice
min-max (common in SAM pipelines) makes the same tissue a different grey on every slice and
crushes CT contrast.

A preset is resolved against a volume (``resolve``) into one ``(low, high)`` range per output
channel; MONAI's ``ScaleIntensityRange`` then maps each range to [0, 1] with clipping.
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
            raise ConfigError(f"preset {self.name!r}: percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")

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
        return {"name": self.name, "windows": [[w.level, w.width] for w in self.windows], "percentiles": list(self.percentiles)}


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


def default_preset(volume: Volume) -> IntensityPreset:
    """Soft-tissue window for CT, robust percentiles for everything else."""
    return PRESETS["ct-soft-tissue"] if volume.modality.upper() == "CT" else PRESETS["mri"]


class SliceFrames:
    """Lazy 3-channel frames of a volume: ``frames[z]`` is ``(3, y, x)`` float32 in [0, 1].

    The intensity mapping is resolved once for the whole volume; each slice is mapped when
    asked for, so no full stack of frames is ever held.
    """

    def __init__(self, volume: Volume, preset: str | IntensityPreset | None = None) -> None:
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
