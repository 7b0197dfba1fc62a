"""The report's figures: Dice box plots, AP bars, overlay snapshots.

matplotlib's object-oriented API (a ``Figure`` drawn by its own Agg canvas): no pyplot
state and no ``matplotlib.use``, so importing this module changes nothing for a caller's
own plots or backend (napari's Qt, a notebook).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medseg.io.files import atomic_output

_COLOURS = colormaps["tab10"]


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def dice_boxplot(dice: dict[str, dict[int, list[float]]], label_names: dict[int, str], path: Path) -> Path:
    """One panel per label: a box of per-case Dice per method, with the cases as dots.

    A method with no finite Dice for a label (every case failed, or the label is in no case)
    gets no box and the words "no case" in its place, not an empty box that reads as a result.
    """
    methods = list(dice)
    labels = list(label_names)
    fig = _figure(max(4, 1.2 * len(methods)) * len(labels), 4)
    axes = fig.subplots(1, len(labels), squeeze=False, sharey=True)
    for ax, label in zip(axes[0], labels):
        data = [[v for v in dice[m].get(label, []) if np.isfinite(v)] for m in methods]
        ax.boxplot([d if d else [np.nan] for d in data], showfliers=False)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right")
        for i, values in enumerate(data, start=1):
            if not values:
                ax.text(i, 0.5, "no case", ha="center", va="center", rotation=90, fontsize=8, color="grey")
                continue
            jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(i + np.asarray(jitter), values, s=14, color=_COLOURS(i - 1), zorder=3)
        ax.set_title(label_names[label])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice per case")
    return _save(fig, path)


def ap_bars(ap: dict[str, dict[str, dict[str, float]]], path: Path) -> Path:
    """Grouped bars of AP, AP50 and AP75 per method, one panel per mode (2D, 3D)."""
    methods = list(ap)
    modes = sorted({mode for m in ap.values() for mode in m})
    fig = _figure(max(4, 1.5 * len(methods)) * max(1, len(modes)), 4)
    axes = fig.subplots(1, max(1, len(modes)), squeeze=False, sharey=True)
    width = 0.25
    for ax, mode in zip(axes[0], modes):
        x = np.arange(len(methods))
        for k, (key, name) in enumerate({"ap": "AP@[.5:.95]", "ap50": "AP50", "ap75": "AP75"}.items()):
            values = [ap[m].get(mode, {}).get(key) for m in methods]
            ax.bar(x + (k - 1) * width, [0.0 if v is None or np.isnan(v) else v for v in values], width, label=name)
        for i, m in enumerate(methods):
            if not ap[m].get(mode):  # no successful case: no AP, which is not an AP of 0
                ax.text(i, 0.5, "no case", ha="center", va="center", rotation=90, fontsize=8, color="grey")
        ax.set_xticks(x, methods, rotation=30, ha="right")
        ax.set_title(f"mask AP, {mode.upper()}")
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def overlay(image: np.ndarray, truth: np.ndarray, predictions: dict[str, np.ndarray], title: str, path: Path) -> Path:
    """One slice: the ground truth, then each method's labels (filled) with the truth's outline."""
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, (1, 99)) if finite.size else (0, 1)
    panels = {"ground truth": truth, **predictions}
    fig = _figure(3 * len(panels), 3.3)
    axes = fig.subplots(1, len(panels), squeeze=False)
    values = sorted(int(v) for v in np.unique(truth) if v)
    for ax, (name, labels) in zip(axes[0], panels.items()):
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        shown = np.ma.masked_equal(labels, 0)
        ax.imshow(shown, cmap="tab10", vmin=0, vmax=9, alpha=0.45, interpolation="nearest")
        for value in values:
            if (truth == value).any():
                ax.contour(truth == value, levels=[0.5], colors=[_COLOURS(value % 10)], linewidths=1.0)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path
