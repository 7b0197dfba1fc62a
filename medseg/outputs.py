"""Output safety: an output path must never be, or lie inside, something the same call reads.

``check_output(path, inputs=[...])`` is called by every writer that takes a user's path
(the CLI, ``save_labels``, the pipeline's results folder, napari's Save, model directories,
caches) before any compute starts. Paths are compared after resolving symlinks, so a link
to the input is caught too. Writers still write atomically (``medseg.io.files.atomic_output``);
this check makes sure the file they replace is not one the call read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from medseg.errors import OutputError

PathLike = str | os.PathLike


def check_output(path: PathLike, *, inputs: Iterable[PathLike | None], what: str = "output") -> Path:
    """``path`` resolved, or ``OutputError`` when it is an input or lies inside an input folder.

    ``inputs``: the files and folders (a DICOM series folder, a model directory) the call
    reads; None entries are skipped. An output *folder* (``medseg run --out``) that holds an
    input is refused too, since its contents are replaced.
    """
    target = Path(path).expanduser().resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).expanduser().resolve()
        if target == source:
            raise OutputError(f"{what} {path} is the input {item}: writing it would destroy the input; choose "
                              "another path")
        if source.is_dir() and source in target.parents:
            raise OutputError(f"{what} {path} lies inside the input folder {item}; write it outside the input")
    return target


def check_writable(path: PathLike, *, what: str = "output") -> Path:
    """``OutputError`` naming the path when its folder cannot be created or written (checked before compute)."""
    target = Path(path).expanduser().resolve()
    if target.exists() and target.is_dir() and what != "output folder":
        raise OutputError(f"{what} {path} is a folder; give a file path")
    # the nearest existing folder: the target itself for a folder; an existing output file is replaced (atomically)
    parent = next((p for p in ((target, *target.parents) if target.is_dir() else target.parents) if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder; choose another path")
    if parent is not None and not os.access(parent, os.W_OK):
        raise OutputError(f"{what} {path}: no permission to write in {parent}")
    return target


def check_outputs(outputs: dict[str, PathLike | None], *, inputs: Iterable[PathLike | None]) -> None:
    """``check_output`` and ``check_writable`` for each named output (``{"--out": path, "--qc": None}``)."""
    inputs = list(inputs)
    for what, path in outputs.items():
        if path is not None:
            check_writable(check_output(path, inputs=inputs, what=what), what=what)
