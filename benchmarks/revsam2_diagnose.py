"""Where reference prompting fails, stage by stage: ``benchmarks/revsam2.py --diagnose``.

For each (query, label), with the query's truth (the benchmark knows it; the engine never does):

* forward: how many query slices get a mask, and of which object: each candidate's 2D Dice
  with every true label on its slice; its *object* is the label it overlaps best (``none``
  when it overlaps no label);
* reverse: each candidate's reverse score against its true Dice with the label (Spearman's
  rank correlation: do high reverse scores mean good slices?), and the candidates the engine
  rejected as another label's object;
* selection: the slices chosen, their true Dice, and the best true Dice any candidate had
  (what a perfect selection would have re-prompted from);
* re-prompt: the 3D Dice of the label after the re-prompt, against the forward pass's.

Written to ``OUT``: ``diagnosis.json`` and one PNG per query (a z-profile and a scatter per
label) plus ``reverse_vs_true.png`` (every candidate of every query).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from medseg.metrics import dice_per_label  # noqa: E402

#: Overlap below this Dice with every label: the candidate shows no labelled object.
NO_OBJECT_DICE = 0.1


def dice_2d(mask: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two 2D boolean masks (0 when one is empty, 1 when both are)."""
    return dice_per_label(mask[None].astype(np.uint8), truth[None].astype(np.uint8), labels=[1], empty=1.0)[1]


def candidate_objects(mask: np.ndarray, truth_slice: np.ndarray, names: dict[int, str]) -> tuple[dict[str, float], str]:
    """Dice of a candidate mask with every label on its slice, and the label it shows best."""
    dice = {names[v]: round(dice_2d(mask, truth_slice == v), 4) for v in names}
    best = max(dice, key=dice.get)
    return dice, best if dice[best] >= NO_OBJECT_DICE else "none"


def diagnose_label(session, result, truth, label: int, names: dict[int, str]) -> dict:
    """The four stages of one label on one query (``result``: revsam2's, whose forward pass the session holds)."""
    detail = result.provenance["labels"][str(label)]
    forward = session.forward(label, result.provenance["placement"])
    gate = session.gate(label, result.provenance["gate_margin"])
    scores = detail["reverse_scores"]
    rejected = {int(z) for z in detail.get("rejected", {})}
    candidates = []
    forward_masks = np.zeros(truth.array.shape, dtype=bool)
    for z in range(len(forward)):
        mask = forward.mask(z)
        if gate is not None and not gate[z]:
            continue
        forward_masks[z] = mask
        if not mask.any():
            continue
        dice, obj = candidate_objects(mask, truth.array[z], names)
        candidates.append({"z": z, "reverse": scores[z], "true_dice": dice[names[label]], "object": obj,
                           "dice_with": dice, "rejected": z in rejected})
    truth_slices = np.flatnonzero((truth.array == label).any(axis=(1, 2))).tolist()
    objects: dict[str, int] = {}
    for c in candidates:
        objects[c["object"]] = objects.get(c["object"], 0) + 1
    scored = [c for c in candidates if c["reverse"] is not None]
    rho = spearmanr([c["reverse"] for c in scored],
                    [c["true_dice"] for c in scored]).statistic if len(scored) > 2 else None
    by_z = {c["z"]: c for c in candidates}
    selected = detail["selected_slices"]
    best = max(candidates, key=lambda c: c["true_dice"], default=None)
    truth_3d = {label: names[label]}
    return {
        "label": names[label],
        "forward": {
            "truth_slices": len(truth_slices),
            "truth_extent": [truth_slices[0], truth_slices[-1]] if truth_slices else None,
            "candidates": len(candidates), "objects": objects,
            "dice_3d": round(float(dice_per_label(forward_masks.astype(np.uint8),
                                                  (truth.array == label).astype(np.uint8), labels=[1])[1]), 4),
        },
        "reverse": {"spearman": None if rho is None or np.isnan(rho) else round(float(rho), 4),
                    "rejected": len(rejected), "candidates": candidates},
        "selection": {
            "selected": selected, "selected_true_dice": [by_z[z]["true_dice"] for z in selected if z in by_z],
            "best_candidate": None if best is None else {"z": best["z"], "true_dice": best["true_dice"]},
            "fell_back_to_forward": detail["fell_back_to_forward"],
        },
        "reprompt": {"dice_3d": _dice_3d(result, truth, truth_3d)},
    }


def _dice_3d(result, truth, label: dict[int, str]) -> float:
    return round(float(dice_per_label(result, truth, labels=list(label), empty=np.nan)[next(iter(label))]), 4)


def plot_query(query_id: str, labels: list[dict], path: Path) -> None:
    """One row per label: reverse score and true Dice along z (selection marked), and their scatter."""
    fig, axes = plt.subplots(len(labels), 2, figsize=(10, 3 * len(labels)), squeeze=False)
    for row, diag in zip(axes, labels):
        cands = diag["reverse"]["candidates"]
        z = [c["z"] for c in cands]
        row[0].plot(z, [c["true_dice"] for c in cands], "o-", label="true Dice of candidate")
        row[0].plot(z, [np.nan if c["reverse"] is None else c["reverse"] for c in cands], "s--", label="reverse score")
        for s in diag["selection"]["selected"]:
            row[0].axvline(s, color="k", lw=1)
        if diag["forward"]["truth_extent"]:
            row[0].axvspan(*diag["forward"]["truth_extent"], color="g", alpha=0.08, label="true extent")
        row[0].set(title=f"{query_id} {diag['label']}: forward {diag['forward']['dice_3d']}, "
                         f"final {diag['reprompt']['dice_3d']}", xlabel="query slice z", ylim=(-0.05, 1.05))
        row[0].legend(fontsize=7)
        _scatter(row[1], cands)
        row[1].set(title=f"Spearman {diag['reverse']['spearman']}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_all(diagnoses: dict[str, list[dict]], path: Path) -> None:
    """Reverse score against true Dice of every candidate of every (query, label)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    _scatter(ax, [c for labels in diagnoses.values() for d in labels for c in d["reverse"]["candidates"]])
    ax.set(title="all candidates: do high reverse scores mean good slices?")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _scatter(ax, candidates: list[dict]) -> None:
    objects = sorted({c["object"] for c in candidates})
    for obj in objects:
        pts = [(c["reverse"], c["true_dice"]) for c in candidates if c["object"] == obj and c["reverse"] is not None]
        if pts:
            ax.scatter(*zip(*pts), s=14, label=f"shows {obj}")
        rejected = [c["true_dice"] for c in candidates if c["object"] == obj and c["rejected"]]
        if rejected:
            ax.scatter([-0.03] * len(rejected), rejected, marker="x", s=14, label=f"rejected ({obj})")
    ax.set(xlabel="reverse score", ylabel="true Dice with the label", xlim=(-0.06, 1.05), ylim=(-0.05, 1.05))
    ax.legend(fontsize=7)


def summarise(diagnoses: dict[str, list[dict]]) -> dict:
    """Means over (query, label) pairs, per stage."""
    pairs = [d for labels in diagnoses.values() for d in labels]
    cands = [c for d in pairs for c in d["reverse"]["candidates"]]
    scored = [c for c in cands if c["reverse"] is not None]
    rho = spearmanr([c["reverse"] for c in scored],
                    [c["true_dice"] for c in scored]).statistic if len(scored) > 2 else np.nan
    chosen = [v for d in pairs for v in d["selection"]["selected_true_dice"]]
    return {
        "pairs": len(pairs),
        "candidates_per_pair": round(len(cands) / max(len(pairs), 1), 2),
        "candidates_showing_their_label": round(np.mean([c["object"] == d["label"] for d in pairs
                                                         for c in d["reverse"]["candidates"]]), 4) if cands else None,
        "spearman_all_candidates": None if np.isnan(rho) else round(float(rho), 4),
        "selected_true_dice_mean": round(float(np.mean(chosen)), 4) if chosen else None,
        "best_candidate_true_dice_mean": round(float(np.mean([d["selection"]["best_candidate"]["true_dice"]
                                                              for d in pairs if d["selection"]["best_candidate"]])), 4),
        "fell_back": sum(d["selection"]["fell_back_to_forward"] for d in pairs),
        "forward_dice_mean": round(float(np.nanmean([d["forward"]["dice_3d"] for d in pairs])), 4),
        "final_dice_mean": round(float(np.nanmean([d["reprompt"]["dice_3d"] for d in pairs])), 4),
    }


def write(diagnoses: dict[str, list[dict]], settings: dict, out: Path) -> dict:
    """``diagnosis.json`` and the figures; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    for query_id, labels in diagnoses.items():
        plot_query(query_id, labels, out / f"{query_id}.png")
    plot_all(diagnoses, out / "reverse_vs_true.png")
    summary = summarise(diagnoses)
    (out / "diagnosis.json").write_text(json.dumps({"settings": settings, "summary": summary, "queries": diagnoses},
                                                   indent=1), encoding="utf-8")
    return summary
