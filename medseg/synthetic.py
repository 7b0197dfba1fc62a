"""Synthetic volumes of generic objects: what SAM2 learns "segment the thing under the prompt" from.

A ``Scene`` is a set of objects drawn at random (``SyntheticConfig``) and rendered on any slices
of a ``(z, y, x)`` grid: an image in [0, 1] and an exclusive label map (0 background, 1..N the
objects). Nothing in a scene says where an organ usually is or what it looks like, so a model
trained on scenes can only find an object from its prompt and its memory of the previous slices.

Object kinds (``KINDS``), each a star-shaped cross-section whose centre, radii, rotation and
boundary lobes change smoothly from slice to slice (objects move, turn and deform along z):

``blob``    a deformed ellipsoid of any size, anywhere
``tube``    a thin vessel-like object that runs through many slices and drifts sideways
``shell``   a folded core wrapped by a ribbon of constant thickness (two objects, as white matter and
            the grey matter around it)
``lesion``  a small blob inside a larger one (two objects: the lesion and the organ around it)
``cuboid``  a rotated box with sharp corners                                  (held out of training)
``rim``     a rim-enhancing lesion inside a larger blob: bright ring, dark core (held out of training)

With probability ``p_body`` a scene first gets a ``body``: a large region through every slice that
the other objects lie in or on (as organs in a patient's body, surrounded by air).

``TRAINING_KINDS`` leaves ``cuboid`` and ``rim`` out, so a model trained on the defaults can be
tested on kinds of object it never saw. Objects may touch and overlap (a later object covers an
earlier one); intensities are drawn so that several objects often share one grey value, so that
appearance alone cannot tell the prompted object from the others. The background has a smooth
bias field; the image gets per-object texture, blur (partial volume) and noise.

Every draw comes from a ``numpy.random.Generator``: the same seed gives the same scene, and
rendering slices ``[3, 4, 5]`` gives exactly those slices of the full render.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from medseg.errors import ConfigError
from medseg.geometry import Geometry
from medseg.settings import Settings
from medseg.volume import LabelVolume, Volume

KINDS = ("blob", "tube", "shell", "lesion", "cuboid", "rim")
TRAINING_KINDS = ("blob", "tube", "shell", "lesion")
_LOBES = 6  # boundary harmonics 2..7
_FOLDS = 14  # harmonics of a folded (shell) core


@dataclass(frozen=True)
class SyntheticConfig(Settings):
    """What scenes are made of; checked when built.

    ``kinds``: object kinds to draw from (``KINDS``). ``objects``: (min, max) top-level objects per
    scene (a shell or lesion adds its inner object). ``radius``: (min, max) in-plane radius as a
    fraction of the slice's half-width. ``depth``: (min, max) half-extent along z in slices.
    ``contrast``: (min, max) grey-value difference between an object and what surrounds it.
    ``noise``: (min, max) Gaussian noise sigma; ``texture``: (min, max) amplitude of an object's
    smooth texture; ``shared_grey``: probability that all objects of a scene take their grey values
    from two shared ones (look-alike objects), which differ as any object from its surroundings
    (``palette="independent"``) or only by ``close_grey`` (``"close"``: organs of nearly one grey that
    touch, as liver and spleen do on CT); ``p_body``: probability of a body region. ``min_pixels``: an
    object smaller than this on every slice is dropped (a scene never hands out an object nobody could
    see).
    """

    WHAT = "synthetic settings"

    kinds: tuple[str, ...] = TRAINING_KINDS
    objects: tuple[int, int] = (2, 6)
    radius: tuple[float, float] = (0.05, 0.45)
    depth: tuple[float, float] = (2.0, 30.0)
    contrast: tuple[float, float] = (0.04, 0.6)
    noise: tuple[float, float] = (0.0, 0.05)
    texture: tuple[float, float] = (0.0, 0.08)
    shared_grey: float = 0.4
    palette: str = "independent"
    close_grey: tuple[float, float] = (0.0, 0.08)
    p_body: float = 0.5
    min_pixels: int = 12

    def __post_init__(self) -> None:
        for name in ("objects", "radius", "depth", "contrast", "noise", "texture", "close_grey"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(value))
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ConfigError(f"synthetic {name} must be a (min, max) pair with 0 <= min <= max, got {list(value)}")
        object.__setattr__(self, "kinds", tuple(self.kinds))
        unknown = sorted(set(self.kinds) - set(KINDS))
        if not self.kinds or unknown:
            raise ConfigError(f"synthetic kinds must name some of {list(KINDS)}, got {list(self.kinds)}")
        if self.objects[0] < 1:
            raise ConfigError(f"synthetic objects: at least 1 object per scene, got {list(self.objects)}")
        if self.radius[0] <= 0 or self.radius[1] > 1:
            raise ConfigError(f"synthetic radius is a fraction of the half-width in (0, 1], got {list(self.radius)}")
        if self.depth[0] < 0.5:
            raise ConfigError(f"synthetic depth must be at least 0.5 slices, got {list(self.depth)}")
        if self.contrast[1] > 1 or self.contrast[0] <= 0:
            raise ConfigError(f"synthetic contrast must lie in (0, 1], got {list(self.contrast)}")
        if self.palette not in ("independent", "close"):
            raise ConfigError(f"synthetic palette must be 'independent' or 'close', got {self.palette!r}")
        if not 0 <= self.shared_grey <= 1 or not 0 <= self.p_body <= 1 or self.min_pixels < 1:
            raise ConfigError(f"synthetic shared_grey and p_body are probabilities and min_pixels >= 1, got "
                              f"{self.shared_grey}, {self.p_body}, {self.min_pixels}")



@dataclass(frozen=True)
class _Shape:
    """A star-shaped cross-section moving along z; lengths in pixels, angles in radians."""

    z0: float
    depth: float  # half-extent along z, slices
    centre: np.ndarray  # (y, x) at z0
    drift: np.ndarray  # (y, x) per slice
    bend: np.ndarray  # (y, x) per slice squared
    radii: np.ndarray  # (y, x) at z0
    angle: float
    turn: float  # radians per slice
    lobes: np.ndarray  # amplitude per harmonic
    phases: np.ndarray
    phase_drift: np.ndarray
    profile: str = "ellipsoid"  # "ellipsoid" (tapers to the ends) or "cylinder"
    corners: bool = False  # a box (max-norm) instead of an ellipse

    def mask(self, z: float, shape: tuple[int, int]) -> np.ndarray:
        """The cross-section on slice ``z`` of a ``shape`` slice (computed only around the object)."""
        out = np.zeros(shape, dtype=bool)
        t = z - self.z0
        if abs(t) >= self.depth:
            return out
        scale = np.sqrt(1 - (t / self.depth) ** 2) if self.profile == "ellipsoid" else 1.0
        cy, cx = self.centre + self.drift * t + self.bend * t * t
        reach = float(self.radii.max() * scale * (1 + np.abs(self.lobes).sum()) * (1.5 if self.corners else 1.0)) + 1
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, shape[0])
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, shape[1])
        if y0 >= y1 or x0 >= x1:
            return out
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        angle = self.angle + self.turn * t
        v = (np.cos(angle) * dy - np.sin(angle) * dx) / np.float32(self.radii[0] * scale)
        u = (np.sin(angle) * dy + np.cos(angle) * dx) / np.float32(self.radii[1] * scale)
        if self.corners:
            out[y0:y1, x0:x1] = np.maximum(np.abs(u), np.abs(v)) < 1
            return out
        phi = np.arctan2(v, u)
        phases = self.phases + self.phase_drift * t
        modulation = sum(float(a) * np.cos(k * phi + float(p))
                         for k, (a, p) in enumerate(zip(self.lobes, phases), start=2) if a)
        out[y0:y1, x0:x1] = np.hypot(u, v) < 1 + modulation
        return out


@dataclass(frozen=True)
class _Object:
    kind: str
    shape: _Shape
    grey: float
    texture: float
    parent: int | None = None  # index of the object this one lies inside (lesion, rim)
    ribbon_of: int | None = None  # index of the core this ribbon wraps (shell)
    thickness: float = 0.0  # ribbon thickness (shell) or rim thickness (rim), pixels
    rim_grey: float = 0.0


@dataclass(frozen=True)
class Scene:
    """Objects drawn for a ``(z, y, x)`` grid; ``render`` gives any of its slices."""

    shape: tuple[int, int, int]
    objects: tuple[_Object, ...]
    background: float
    bias: np.ndarray  # (3, 3) coefficients of a smooth in-plane bias field
    noise: float
    blur: float
    seed: int = field(default=0)

    def render(self, slices: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(image, labels)`` of ``slices`` (all by default): float32 in [0, 1], and int32 0..N.

        Label ``i + 1`` is ``objects[i]``; an object later in the list covers earlier ones.
        """
        slices = list(range(self.shape[0])) if slices is None else list(slices)
        _, ny, nx = self.shape
        images = np.empty((len(slices), ny, nx), dtype=np.float32)
        labels = np.zeros((len(slices), ny, nx), dtype=np.int32)
        bias = _bias_field(self.bias, ny, nx)
        for i, z in enumerate(slices):
            noise_rng = np.random.default_rng([self.seed, 7, z])
            image = np.full((ny, nx), self.background, dtype=np.float32) + bias
            masks = [obj.shape.mask(z, (ny, nx)) for obj in self.objects]
            texture = _smooth_noise(noise_rng, (ny, nx), sigma=2.0)
            for k, obj in enumerate(self.objects):
                mask = masks[k]
                if obj.ribbon_of is not None:  # the band of constant thickness around its core
                    core = masks[obj.ribbon_of]
                    mask = (distance_transform_edt(~core) <= obj.thickness) & ~core if core.any() else mask & False
                    masks[k] = mask
                if obj.parent is not None:
                    mask &= masks[obj.parent]
                    masks[k] = mask
                if not mask.any():
                    continue
                image[mask] = obj.grey + obj.texture * texture[mask]
                if obj.kind == "rim":
                    ring = mask & (distance_transform_edt(mask) <= obj.thickness)
                    image[ring] = obj.rim_grey
                labels[i][mask] = k + 1
            if self.blur:
                image = gaussian_filter(image, self.blur)
            image += noise_rng.normal(0.0, self.noise, image.shape).astype(np.float32)
            images[i] = np.clip(image, 0.0, 1.0)
        return images, labels


def make_scene(rng: np.random.Generator, shape: tuple[int, int, int],
               config: SyntheticConfig = SyntheticConfig()) -> Scene:
    """Draw a scene of ``config``'s objects for a grid of ``shape`` ``(z, y, x)``."""
    nz, ny, nx = shape
    half = min(ny, nx) / 2
    background = scene_background = float(rng.uniform(0.0, 0.6))
    shared = rng.random() < config.shared_grey
    objects: list[_Object] = []
    if rng.random() < config.p_body:
        body = _Shape(nz / 2, float(nz), np.array([ny, nx], float) / 2 + rng.normal(0, 0.05 * half, 2),
                      rng.normal(0, 0.2, 2), np.zeros(2), half * rng.uniform(0.6, 0.95, 2),
                      float(rng.uniform(0, np.pi)), 0.0,
                      rng.uniform(0, 0.04, _LOBES), rng.uniform(0, 2 * np.pi, _LOBES), np.zeros(_LOBES), "cylinder")
        objects.append(_Object("body", body, _grey(rng, background, config), float(rng.uniform(*config.texture))))
        background = objects[-1].grey  # what the objects inside stand out from
    palette = _palette(rng, background, config) if shared else None
    for _ in range(int(rng.integers(config.objects[0], config.objects[1] + 1))):
        kind = str(rng.choice(config.kinds))
        grey = palette[int(rng.integers(2))] if palette is not None else _grey(rng, background, config)
        texture = float(rng.uniform(*config.texture))
        if kind in ("lesion", "rim"):
            organ = _shape(rng, shape, half, config, radius_at_least=0.3)
            objects.append(_Object("blob", organ, grey, texture))
            inner = _inner_shape(rng, organ, config, half)
            inner_grey = _grey(rng, grey, config)
            objects.append(_Object(kind, inner, inner_grey, float(rng.uniform(*config.texture)),
                                   parent=len(objects) - 1,
                                   thickness=float(rng.uniform(1.0, 3.0)), rim_grey=_grey(rng, inner_grey, config)))
        elif kind == "shell":
            core = _shape(rng, shape, half, config, radius_at_least=0.2, folds=True)
            objects.append(_Object("blob", core, grey, texture))
            objects.append(_Object("shell", core, _grey(rng, grey, config), float(rng.uniform(*config.texture)),
                                   ribbon_of=len(objects) - 1, thickness=float(rng.uniform(1.5, 5.0))))
        else:
            objects.append(_Object(kind,
                                   _shape(rng, shape, half, config, tube=kind == "tube", corners=kind == "cuboid"),
                                   grey, texture))
    bias = rng.normal(0.0, 0.04, (3, 3))
    return Scene(shape, tuple(objects), scene_background, bias, float(rng.uniform(*config.noise)),
                 float(rng.choice([0.0, rng.uniform(0.3, 1.0)])), int(rng.integers(2**31)))


def synthetic_volume(seed: int, *, shape: tuple[int, int, int] = (24, 96, 96),
                     spacing: tuple[float, float, float] = (2.0, 1.0, 1.0),
                     config: SyntheticConfig = SyntheticConfig()) -> tuple[Volume, LabelVolume]:
    """A synthetic scene as a ``Volume`` (grey values in [0, 1], modality ``OT``) and its ``LabelVolume``.

    Objects smaller than ``config.min_pixels`` on every slice are removed from the labels (their
    voxels become background in the label map; the image still shows them).

    >>> volume, labels = synthetic_volume(0, shape=(8, 40, 56))
    >>> volume.shape == labels.shape == (8, 40, 56)
    True
    """
    scene = make_scene(np.random.default_rng(seed), shape, config)
    image, labels = scene.render()
    labels = drop_small_objects(labels, config.min_pixels)
    geometry = Geometry(shape, spacing)
    names = {int(v): scene.objects[int(v) - 1].kind for v in np.unique(labels) if v > 0}
    return Volume(image, geometry, "OT",
                  {"format": "synthetic", "seed": seed}), LabelVolume(labels, geometry, label_names=names)


def drop_small_objects(labels: np.ndarray, min_pixels: int) -> np.ndarray:
    """``labels`` with every object whose largest cross-section is under ``min_pixels`` set to 0."""
    out = labels.copy()
    for value in np.unique(labels):
        if value and (labels == value).reshape(len(labels), -1).sum(axis=1).max() < min_pixels:
            out[out == value] = 0
    return out


def check_config(config: SyntheticConfig, *, size: int, tries: int = 8) -> None:
    """Raise ``ConfigError`` when scenes of ``config`` on a ``size``-pixel grid hold no visible object.

    Rendered before training starts, so a configuration that can only make empty objects (a
    radius below a pixel, say) fails with its reason instead of training on nothing.
    """
    without_body = replace(config, p_body=0.0)  # the body is always visible: the kinds asked for must be too
    for seed in range(tries):
        scene = make_scene(np.random.default_rng([seed, 11]), (8, size, size), without_body)
        _, labels = scene.render([4])
        if drop_small_objects(labels, config.min_pixels).any():
            return
    raise ConfigError(f"synthetic settings {config.to_dict()} made no object of at least {config.min_pixels} pixels "
                      f"on a {size}x{size} slice in {tries} scenes: raise radius or lower min_pixels")


def _grey(rng: np.random.Generator, around: float, config: SyntheticConfig) -> float:
    """A grey value that differs from ``around`` by a contrast drawn from ``config``, inside [0, 1]."""
    contrast = float(rng.uniform(*config.contrast))
    up = around + contrast <= 1 and (around - contrast < 0 or rng.random() < 0.5)
    return float(np.clip(around + contrast if up else around - contrast, 0.0, 1.0))


def _palette(rng: np.random.Generator, background: float, config: SyntheticConfig) -> tuple[float, float]:
    first = _grey(rng, background, config)
    if config.palette == "independent":
        return first, _grey(rng, background, config)
    second = first + float(rng.choice([-1, 1]) * rng.uniform(*config.close_grey))
    return first, float(np.clip(second, 0.0, 1.0))


def _shape(rng: np.random.Generator, shape: tuple[int, int, int], half: float, config: SyntheticConfig, *,
           radius_at_least: float = 0.0, tube: bool = False, folds: bool = False, corners: bool = False) -> _Shape:
    nz, ny, nx = shape
    low, high = config.radius
    if tube:
        radius = np.full(2, rng.uniform(max(low, 0.02), min(high, 0.08)) * half)
        depth, profile = float(rng.uniform(nz / 2, nz * 1.5)), "cylinder"
        drift = rng.normal(0.0, 1.2, 2)
    else:
        base = rng.uniform(max(low, min(radius_at_least, high)), high)
        radius = base * half * np.exp(rng.uniform(-0.5, 0.5, 2))
        depth, profile = float(rng.uniform(*config.depth)), str(rng.choice(["ellipsoid", "cylinder"], p=[0.7, 0.3]))
        drift = rng.normal(0.0, 0.6, 2)
    centre = rng.uniform([0.1 * ny, 0.1 * nx], [0.9 * ny, 0.9 * nx])
    n_lobes = _FOLDS if folds else _LOBES
    roughness = rng.uniform(0.15, 0.3) if folds else rng.uniform(0.0, 0.25)
    lobes = roughness * rng.uniform(0, 1, n_lobes) / np.arange(1, n_lobes + 1) ** (0.5 if folds else 1.0)
    return _Shape(float(rng.uniform(-0.2 * nz, 1.2 * nz)) if not tube else float(rng.uniform(0, nz)), depth, centre,
                  drift, rng.normal(0.0, 0.03, 2), radius, float(rng.uniform(0, np.pi)), float(rng.normal(0.0, 0.05)),
                  lobes, rng.uniform(0, 2 * np.pi, n_lobes), rng.normal(0.0, 0.1, n_lobes), profile, corners)


def _inner_shape(rng: np.random.Generator, outer: _Shape, config: SyntheticConfig, half: float) -> _Shape:
    """A small blob inside ``outer``, following it along z."""
    fraction = rng.uniform(0.15, 0.45)
    radius = np.maximum(outer.radii.min() * fraction * np.exp(rng.uniform(-0.3, 0.3, 2)), config.radius[0] * half * 0.5)
    offset = rng.uniform(-0.4, 0.4, 2) * (outer.radii - radius).clip(min=0)
    lobes = rng.uniform(0, 0.12, _LOBES) / np.arange(1, _LOBES + 1)
    return _Shape(outer.z0 + float(rng.uniform(-0.4, 0.4)) * outer.depth, float(outer.depth * rng.uniform(0.2, 0.6)),
                  outer.centre + offset, outer.drift, outer.bend, radius, float(rng.uniform(0, np.pi)),
                  float(rng.normal(0.0, 0.05)), lobes, rng.uniform(0, 2 * np.pi, _LOBES), rng.normal(0.0, 0.1, _LOBES))


def _bias_field(coefficients: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """A smooth quadratic in-plane intensity bias from a 3x3 coefficient grid."""
    y = np.linspace(-1, 1, ny, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, :]
    powers_y, powers_x = [np.ones_like(y), y, y * y], [np.ones_like(x), x, x * x]
    return sum(float(coefficients[i, j]) * powers_y[i] * powers_x[j] for i in range(3) for j in range(3)
               if i + j).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], *, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() or 1.0)
