"""The report of a results folder: report.md, report.html, metrics.csv, metrics.json, plots/.

Contents, in order: the untrained banner (when any row was made with random weights) and
how to get real weights; the run (cohort, split, cases, labels, prompt policy, seed, code
version); the methods (model, checksum, preset, cases ok / failed); mean Dice per method and
label with a 95% bootstrap interval over cases; surface metrics (95% Hausdorff, surface
Dice); COCO mask AP in 2D and 3D; the paired comparison of each method with the supervised
baseline; plots (Dice box plots, AP bars, overlays); failed cases; per-case Dice.

It is rebuilt from the files alone (``medseg run`` calls it at the end; it can be called
again on a finished or partial folder).
"""

from __future__ import annotations

import csv
import html
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medseg.io import load_labels, read_geometry
from medseg.manifest import load_manifest
from medseg.metrics import mask_ap
from medseg.volume import InstanceMap
from medseg.pipeline import plots
from medseg.pipeline import results as rs
from medseg.pipeline.stats import mean_ci, paired_comparison
from medseg.volume import UNTRAINED_BANNER, LabelVolume

logger = logging.getLogger(__name__)

WEIGHTS_HELP = (
    "To get real weights: on a machine with internet access run the pipeline once (checkpoints download "
    "into the medseg cache, `$MEDSEG_HOME/weights`, default `~/.cache/medseg/weights`), or download "
    "the checkpoint named in `medseg.weights.REGISTRY` (e.g. `sam2.1_hiera_tiny.pt`) and put it in that "
    "folder; then delete the untrained method folders and run again. Mask R-CNN rows become meaningful "
    "with more training steps (`train: {steps: ...}`)."
)
_CSV_FIELDS = ["method", "case", "label", "label_name", "status", "dice", "hd95_mm", "nsd", "truth_voxels", "pred_voxels", "untrained"]


@dataclass
class _Method:
    name: str
    info: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # case id -> result.json

    @property
    def untrained(self) -> bool:
        return bool(self.info.get("state", {}).get("untrained")) or any(r.get("untrained") for r in self.ok.values())

    @property
    def ok(self) -> dict[str, dict[str, Any]]:
        return {c: r for c, r in self.results.items() if r.get("status") == "ok"}

    def dice(self, label: int) -> dict[str, float]:
        return {c: rs.as_float(r["metrics"][str(label)]["dice"]) for c, r in self.ok.items()}

    def display(self) -> str:
        return f"{self.name} (untrained)" if self.untrained else self.name


class _Document:
    """Blocks rendered to Markdown and to HTML from one description."""

    def __init__(self) -> None:
        self.blocks: list[tuple] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def banner(self, text: str) -> None:
        self.blocks.append(("banner", text))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", header, [[str(c) for c in row] for row in rows]))

    def image(self, path: str, alt: str) -> None:
        self.blocks.append(("img", path, alt))

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"{'#' * block[1]} {block[2]}")
            elif kind == "p":
                out.append(block[1])
            elif kind == "banner":
                out.append(f"> **{block[1]}**")
            elif kind == "table":
                header, rows = block[1], block[2]
                out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                                     + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]))
            elif kind == "img":
                out.append(f"![{block[2]}]({block[1]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
               ".banner{background:#fdd;border:2px solid #c00;padding:1em;font-weight:bold}img{max-width:100%}"
               "code{background:#eee}</style></head><body>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
            elif kind == "p":
                out.append(f"<p>{_inline_code(html.escape(block[1]))}</p>")
            elif kind == "banner":
                out.append(f"<div class='banner'>{_inline_code(html.escape(block[1]))}</div>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block[2])
                out.append(f"<table><tr>{head}</tr>{body}</table>")
            elif kind == "img":
                out.append(f"<p><img src='{html.escape(block[1])}' alt='{html.escape(block[2])}'></p>")
        out.append("</body></html>")
        return "\n".join(out)


def _inline_code(text: str) -> str:
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _median_finite(values: list[float]) -> float:
    """Median over the cases where the distance is defined (both maps have the label)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def _fmt(value: Any, digits: int = 3) -> str:
    value = rs.as_float(value)
    return "–" if np.isnan(value) else f"{value:.{digits}f}"


def _collect(results_dir: Path, order: list[str]) -> list[_Method]:
    methods = []
    for method_dir in rs.method_dirs(results_dir):
        method = _Method(method_dir.name, rs.read_json(method_dir / rs.METHOD))
        for case_dir in rs.case_dirs(method_dir):
            result = rs.read_json(case_dir / rs.RESULT)
            method.results[result["case"]] = result
        methods.append(method)
    rank = {name: i for i, name in enumerate(order)}
    return sorted(methods, key=lambda m: rank.get(m.name, len(rank)))


def _prediction(case_dir: Path, result: dict[str, Any], use_instances: bool) -> LabelVolume | InstanceMap:
    """A saved prediction with the scores its method gave (from result.json)."""
    path = case_dir / rs.LABELS
    geometry = read_geometry(path)
    slices = lambda data: {int(k): np.array([rs.as_float(v) for v in s], dtype=float) for k, s in data.items()}
    if use_instances and result.get("instances"):
        inst = result["instances"]
        array = load_labels(case_dir / rs.INSTANCES, geometry).array
        return InstanceMap(array, geometry, labels={int(k): int(v) for k, v in inst["labels"].items()},
                           scores={int(k): rs.as_float(v) for k, v in inst["scores"].items()}, slice_scores=slices(inst["slice_scores"]))
    return LabelVolume(load_labels(path, geometry).array, geometry, scores={int(k): rs.as_float(v) for k, v in result["scores"].items()},
                       slice_scores=slices(result["slice_scores"]))


def _truth_array(case) -> np.ndarray:
    return case.load_labels(read_geometry(case.image, case.series_uid)).array


def _average_precision(method: _Method, cohort, labels: list[int], instances: str, results_dir: Path) -> dict[str, dict]:
    out = {}
    for mode in ("2d", "3d"):
        def pairs():
            for case_id, result in method.ok.items():
                pred = _prediction(results_dir / method.name / case_id, result, use_instances=True)
                yield pred, LabelVolume(_truth_array(cohort.case(case_id)), pred.geometry)

        out[mode] = mask_ap(pairs(), labels=labels, mode=mode, instances=instances).to_dict() if method.ok else {}
    return out


def write_report(results_dir: str | Path, *, progress_bar: bool = True) -> Path:
    """Write the report files into ``results_dir``; return the path of report.md."""
    results_dir = Path(results_dir).resolve()
    run = rs.read_json(results_dir / rs.PIPELINE)
    pipeline = run["pipeline"]
    methods = _collect(results_dir, list(pipeline["methods"]))
    cohort = load_manifest(pipeline["cohort"])
    label_names = {v: cohort.labels[v] for v in pipeline["labels"]} if pipeline["labels"] else dict(cohort.labels)
    labels = sorted(label_names)
    seed, resamples = pipeline["seed"], pipeline["report"]["bootstrap"]
    baseline = next((m for m in methods if m.info.get("baseline")), None)
    plot_dir = results_dir / "plots"

    # per-case rows
    rows = []
    for method in methods:
        for case_id, result in sorted(method.results.items()):
            for label in labels:
                m = result.get("metrics", {}).get(str(label), {})
                rows.append({"method": method.name, "case": case_id, "label": label, "label_name": label_names[label],
                             "status": result["status"], "dice": rs.as_float(m.get("dice")), "hd95_mm": rs.as_float(m.get("hd95_mm")),
                             "nsd": rs.as_float(m.get("nsd")), "truth_voxels": m.get("truth_voxels"), "pred_voxels": m.get("pred_voxels"),
                             "untrained": method.untrained})
    with open(results_dir / "metrics.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)

    summary: dict[str, Any] = {}
    for method in tqdm(methods, desc="report", unit="method", disable=not progress_bar):
        per_label = {}
        for label in labels:
            values = lambda key: [rs.as_float(r["metrics"][str(label)][key]) for r in method.ok.values()]
            per_label[str(label)] = {
                "dice": mean_ci(values("dice"), resamples=resamples, seed=seed).to_dict(),
                "nsd": mean_ci(values("nsd"), resamples=resamples, seed=seed).to_dict(),
                "hd95_mm_median": _median_finite(values("hd95_mm")),
                "missed_or_invented": int(sum(np.isinf(values("hd95_mm")))),
            }
        case_means = [rs.as_float(r["mean_dice"]) for r in method.ok.values()]
        summary[method.name] = {
            "untrained": method.untrained, "baseline": bool(method.info.get("baseline")),
            "cases_ok": len(method.ok), "cases_failed": len(method.results) - len(method.ok),
            "model": method.info.get("model", {}), "per_label": per_label,
            "mean_dice": mean_ci(case_means, resamples=resamples, seed=seed).to_dict(),
            "ap": _average_precision(method, cohort, labels, pipeline["metrics"]["ap_instances"], results_dir),
        }
    paired = []
    if baseline is not None:
        for method in methods:
            if method is baseline:
                continue
            for label in labels:
                comparison = paired_comparison(method.dice(label), baseline.dice(label), resamples=resamples, seed=seed)
                paired.append({"method": method.name, "baseline": baseline.name, "label": label, **comparison.to_dict()})

    figures = []
    if methods and any(m.ok for m in methods):
        figures.append(plots.dice_boxplot({m.display(): {l: list(m.dice(l).values()) for l in labels} for m in methods},
                                          label_names, plot_dir / "dice_boxplot.png"))
        figures.append(plots.ap_bars({m.display(): summary[m.name]["ap"] for m in methods}, plot_dir / "ap_bars.png"))
        figures += _overlays(methods, cohort, pipeline["report"]["overlays"], results_dir, plot_dir)

    rs.write_json(results_dir / "metrics.json", {"pipeline": pipeline, "code": run["code"], "labels": label_names,
                                                 "methods": summary, "paired": paired, "cases": rows})
    document = _document(run, methods, summary, paired, label_names, cohort, figures, results_dir)
    (results_dir / "report.md").write_text(document.markdown(), encoding="utf-8")
    (results_dir / "report.html").write_text(document.html(f"medseg report: {pipeline['name']}"), encoding="utf-8")
    logger.info("report written to %s", results_dir / "report.md")
    return results_dir / "report.md"


def _overlays(methods: list[_Method], cohort, count: int, results_dir: Path, plot_dir: Path) -> list[Path]:
    cases = sorted({c for m in methods for c in m.ok})[:count]
    paths = []
    for case_id in cases:
        volume, truth = cohort.case(case_id).load()
        z = int(np.argmax((truth.array > 0).reshape(truth.array.shape[0], -1).sum(axis=1)))
        predictions = {m.display(): load_labels(results_dir / m.name / case_id / rs.LABELS, volume).array[z]
                       for m in methods if case_id in m.ok}
        paths.append(plots.overlay(volume.array[z], truth.array[z], predictions, f"case {case_id}, slice z={z}",
                                   plot_dir / f"overlay_{case_id}.png"))
    return paths


def _document(run, methods, summary, paired, label_names, cohort, figures, results_dir: Path) -> _Document:
    pipeline, code = run["pipeline"], run["code"]
    doc = _Document()
    doc.heading(f"medseg evaluation: {pipeline['name']}", 1)
    untrained = [m.name for m in methods if m.untrained]
    if untrained:
        doc.banner(f"{UNTRAINED_BANNER} Rows marked (untrained): {', '.join(untrained)}.")
        doc.paragraph(WEIGHTS_HELP)
    for m in methods:
        state = m.info.get("state", {})
        if state.get("undertrained") and not state.get("untrained"):
            doc.paragraph(f"Note: {m.name} was trained for {state.get('training_steps')} steps only; "
                          "read its rows as a smoke test of the baseline, not as its performance.")
    n_cases = len({c for m in methods for c in m.results})
    doc.paragraph(
        f"Cohort `{cohort.name}` ({cohort.path.name}), split `{pipeline['split']}`, {n_cases} cases; labels "
        f"{', '.join(f'{v} {n}' for v, n in label_names.items())}. Prompt policy: point `{pipeline['prompts']['point']}`, "
        f"box `{pipeline['prompts']['box']}`, {pipeline['prompts']['reference_slices']} reference slices per object; seed {pipeline['seed']}. "
        f"medseg {code['medseg']}" + (f", git {code['git_commit'][:12]}{' (modified)' if code['git_dirty'] else ''}" if code.get("git_commit") else "")
        + f". Report made {datetime.now(timezone.utc).isoformat(timespec='seconds')}."
    )
    doc.heading("Methods")
    doc.table(["method", "type", "model", "checksum", "preset", "cases ok", "failed"], [
        [m.display() + (" (baseline)" if m.info.get("baseline") else ""), m.info.get("type", ""),
         m.info.get("model", {}).get("model", m.info.get("error", {}).get("message", "")),
         str(m.info.get("model", {}).get("checkpoint_sha256") or m.info.get("model", {}).get("weights_sha256") or "–")[:12],
         m.info.get("model", {}).get("preset") or "default", len(m.ok), len(m.results) - len(m.ok) if m.info.get("status") == "ok" else "all"]
        for m in methods])

    doc.heading("Dice per label (mean [95% bootstrap CI over cases])")
    doc.table(["method", *label_names.values(), "mean of labels"], [
        [m.display(), *(_estimate(summary[m.name]["per_label"][str(l)]["dice"]) for l in label_names), _estimate(summary[m.name]["mean_dice"])]
        for m in methods])
    doc.paragraph("A label absent from both the prediction and the truth of a case is left out of that label's mean (not applicable); "
                  "a missed or invented object scores 0.")
    doc.heading("Surface metrics")
    doc.table(["method", *(f"{n}: HD95 median (mm)" for n in label_names.values()), *(f"{n}: surface Dice" for n in label_names.values())], [
        [m.display(), *(_fmt(summary[m.name]["per_label"][str(l)]["hd95_mm_median"], 1) for l in label_names),
         *(_estimate(summary[m.name]["per_label"][str(l)]["nsd"]) for l in label_names)] for m in methods])

    doc.heading("Mask AP (COCO, pycocotools)")
    ap_rows = []
    for m in methods:
        for mode, ap in summary[m.name]["ap"].items():
            if ap:
                ap_rows.append([m.display(), mode.upper(), _fmt(ap["ap"]), _fmt(ap["ap50"]), _fmt(ap["ap75"]),
                                *(_fmt(ap["per_label"].get(str(l))) for l in label_names),
                                "constant (method gives none)" if ap["constant_score"] else "method"])
    doc.table(["method", "mode", "AP@[.5:.95]", "AP50", "AP75", *(f"AP {n}" for n in label_names.values()), "scores"], ap_rows)
    doc.paragraph("2D: each slice an image, areas in mm²; 3D: each volume an image, exact voxel IoU, areas in mm³ "
                  "(small < 1 mL, medium 1–100 mL, large > 100 mL). Instances: "
                  f"`{pipeline['metrics']['ap_instances']}` (a method's own 3D instances where it has them).")

    baseline = next((m for m in methods if m.info.get("baseline")), None)
    if baseline is not None and paired:
        doc.heading(f"Paired comparison with the baseline ({baseline.name})")
        doc.table(["method", "label", "cases", "mean Δ Dice [95% CI]", "Wilcoxon p", "better / tie / worse"], [
            [p["method"], label_names[p["label"]], p["difference"]["n"], _estimate(p["difference"], signed=True),
             _fmt(p["p_value"]), f"{p['wins']} / {p['ties']} / {p['losses']}"] for p in paired])
    if figures:
        doc.heading("Plots")
        for path in figures:
            doc.image(rs.relative(path, results_dir), path.stem.replace("_", " "))
    failures = [(m.name, c, r["error"]) for m in methods for c, r in sorted(m.results.items()) if r["status"] == "failed"]
    failures += [(m.name, "(all)", m.info["error"]) for m in methods if m.info.get("status") == "failed"]
    if failures:
        doc.heading("Failures")
        doc.table(["method", "case", "error"], [[n, c, f"{e['type']}: {e['message']}"] for n, c, e in failures])
    doc.heading("Dice per case")
    cases = sorted({c for m in methods for c in m.results})
    doc.table(["case", *(m.display() for m in methods)], [
        [c, *(_fmt(m.results[c].get("mean_dice")) if c in m.ok else ("failed" if c in m.results else "–") for m in methods)] for c in cases])
    doc.paragraph("Files: `metrics.csv` (one row per method, case and label), `metrics.json` (everything above), "
                  "`<method>/<case>/` (labels, prompt log, result); `medseg replay <method>/<case>` re-runs one case.")
    return doc


def _estimate(data: dict, signed: bool = False) -> str:
    mean, low, high, n = (rs.as_float(data["mean"]), rs.as_float(data["ci_low"]), rs.as_float(data["ci_high"]), data["n"])
    if n == 0:
        return "–"
    sign = "+" if signed else ""
    if np.isnan(low):
        return f"{mean:{sign}.3f} (n={n})"
    return f"{mean:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"
