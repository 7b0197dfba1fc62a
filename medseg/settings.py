"""``Settings``: the base of every settings dataclass read from YAML, JSON or a model directory.

Training settings (``medseg.training.sam2.config.Sam2TrainConfig``, ``medseg.maskrcnn.TrainConfig``)
and the settings nested in them (``medseg.synthetic.SyntheticConfig``,
``medseg.training.augment.AugmentConfig``) are frozen dataclasses that check their values in
``__post_init__``. This base gives them one way in and out: ``from_dict`` refuses unknown keys,
naming the known ones; reads a renamed setting under its old name (``RENAMED``), so YAML files
and model directories written before the rename still load; turns JSON lists back into tuples
and nested dicts into their settings. ``to_dict`` is the JSON-ready inverse.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

from medseg.errors import ConfigError

S = TypeVar("S", bound="Settings")


class Settings:
    """Mixin of a frozen settings dataclass (see the module docstring)."""

    WHAT: ClassVar[str] = "settings"  # how messages call them: "unknown <WHAT> [...]"
    RENAMED: ClassVar[dict[str, str]] = {}  # old name -> current name

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: tuples as lists, nested settings as dicts."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        """The settings of ``data``; ``ConfigError`` for an unknown key or a setting given twice (old and new name)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.WHAT} must be a mapping of names to values, got {type(data).__name__}")
        current = {}
        for key, value in data.items():
            name = cls.RENAMED.get(key, key)
            if name in current:
                raise ConfigError(f"{cls.WHAT}: {name!r} is given twice (once as its old name {key!r}); keep {name!r}")
            current[name] = value
        defaults = {f.name: f.default for f in fields(cls)}
        unknown = sorted(set(current) - set(defaults))
        if unknown:
            raise ConfigError(f"unknown {cls.WHAT} {unknown}; known: {sorted(defaults)}")
        return cls(**{name: _typed(value, defaults[name]) for name, value in current.items()})

    def differences(self, other: Settings, *, ignore: tuple[str, ...] = ()) -> list[str]:
        """``"name: mine -> other"`` for every setting that differs (except ``ignore``)."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} -> {getattr(other, f.name)!r}"
            for f in fields(self)
            if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)
        ]


def _typed(value: Any, default: Any) -> Any:
    """``value`` as the field whose default is ``default`` holds it: a nested settings from its dict,
    a tuple from a JSON list (or a lone string)."""
    if isinstance(default, Settings) and isinstance(value, dict):
        return type(default).from_dict(value)
    if isinstance(default, tuple) and isinstance(value, (list, str)):
        return (value,) if isinstance(value, str) else tuple(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
