"""argparse ``type=`` functions: every CLI value is checked when it is parsed, before any file
is read or any model loads. A bad value is an argparse error naming the option (exit 2).

Checks that need the volume (box corners inside it) are in ``medseg.prompts`` and run after
loading, before compute.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from medseg.errors import MedsegError, syntax_error


def _fail(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


def _numbers(text: str, sizes: tuple[int, ...], form: str) -> tuple[int, list[float]]:
    obj, _, values = text.rpartition(":")
    try:
        numbers = [float(v) for v in values.split(",")]
        obj_id = int(obj) if obj else 1
    except ValueError:
        raise _fail(f"{text!r}: expected {form}") from None
    if len(numbers) not in sizes:
        raise _fail(f"{text!r}: expected {form} ({' or '.join(map(str, sizes))} numbers)")
    if obj_id < 1:
        raise _fail(f"{text!r}: object ID must be >= 1 (0 is background)")
    if any(v < 0 for v in numbers):
        raise _fail(f"{text!r}: voxel indices are >= 0")
    return obj_id, numbers


def point(text: str) -> tuple[int, list[float]]:
    """``[ID:]Z,Y,X[,LABEL]`` with LABEL 0 (negative) or 1 (positive)."""
    obj_id, v = _numbers(text, (3, 4), "[ID:]Z,Y,X[,LABEL]")
    if len(v) == 4 and v[3] not in (0.0, 1.0):
        raise _fail(f"{text!r}: LABEL must be 1 (positive) or 0 (negative), got {v[3]:g}")
    return obj_id, v


def box(text: str) -> tuple[int, list[float]]:
    """``[ID:]Z,Y0,X0,Y1,X1`` with ordered corners."""
    obj_id, v = _numbers(text, (5,), "[ID:]Z,Y0,X0,Y1,X1")
    if v[1] > v[3] or v[2] > v[4]:
        raise _fail(f"{text!r}: corners must be ordered (Y0 <= Y1, X0 <= X1)")
    return obj_id, v


def _number(text: str, kind: type, noun: str, ok: Callable[[float], bool], rule: str):
    try:
        value = kind(text)
    except ValueError:
        raise _fail(f"{text!r} is not {noun}") from None
    if not ok(value):
        raise _fail(f"{text!r}: {rule}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (ids, counts, steps)."""
    return _number(text, int, "an integer", lambda v: v >= 1, "must be at least 1")


def non_negative_int(text: str) -> int:
    return _number(text, int, "an integer", lambda v: v >= 0, "must be 0 or more")


def seconds(text: str) -> float:
    return _number(text, float, "a number of seconds", lambda v: v > 0, "must be more than 0 seconds")


def fraction(text: str) -> float:
    """A threshold in [0, 1]."""
    return _number(text, float, "a number", lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1]")


def image_size(text: str) -> int:
    """A network input size: a multiple of 32, at least 64."""
    value = positive_int(text)
    if value < 64 or value % 32:
        raise _fail(f"{text!r}: must be a multiple of 32 and at least 64 (e.g. 512, 1024)")
    return value


def _accepted(text: str, check: Callable[[str], object]) -> str:
    """``text`` when the library's ``check`` takes it; its ``MedsegError`` as the option's error otherwise."""
    try:
        check(text)
    except MedsegError as error:
        raise _fail(str(error)) from None
    return text


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda[:N]`` or ``mps``, checked against the devices this machine has."""
    from medseg.runtime import resolve_device

    return _accepted(text, resolve_device)


def preset(text: str) -> str:
    """An intensity preset name or ``ct:LEVEL,WIDTH`` / ``mri:LOW,HIGH`` (``medseg.preprocess.get_preset``)."""
    from medseg.preprocess import get_preset

    return _accepted(text, get_preset)


def existing_path(text: str) -> str:
    """A file or folder that exists."""
    if not Path(text).expanduser().exists():
        raise _fail(f"{text}: no such file or folder")
    return text


def volume_source(text: str) -> str:
    """A file or folder that exists, or the DICOMweb address of a series (fetched when loaded)."""
    from medseg.io.dicomweb import is_dicomweb_url, parse_dicomweb_url

    if not is_dicomweb_url(text):
        return existing_path(text)
    try:
        return str(parse_dicomweb_url(text, level="series"))
    except MedsegError as error:
        raise _fail(str(error)) from None


class JsonFile(NamedTuple):
    """A JSON file read at parse time: its path as given (for messages) and its content."""

    path: str
    data: Any


def json_file(text: str) -> JsonFile:
    """The content of a JSON file; a syntax error as ``file:line:column: reason``."""
    existing_path(text)
    try:
        return JsonFile(text, json.loads(Path(text).expanduser().read_text(encoding="utf-8")))
    except json.JSONDecodeError as error:
        raise _fail(str(syntax_error(text, error))) from None
    except (OSError, UnicodeDecodeError) as error:
        raise _fail(f"{text}: cannot read it as JSON text ({type(error).__name__})") from None



def dicomweb_server(text: str) -> str:
    """A DICOMweb server's address (``dicomweb://host:port/root``), without credentials."""
    from medseg.io.dicomweb import parse_dicomweb_url

    try:
        return str(parse_dicomweb_url(text, level="server"))
    except MedsegError as error:
        raise _fail(str(error)) from None
