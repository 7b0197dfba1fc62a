"""The report of a results folder: report.md, report.html, metrics.csv, metrics.json, plots/.

Contents, in order: the untrained banner (when any row was made with random weights) and how to get real weights;
the run (cohort, split, cases, labels, prompt policy, seed, code version); the methods (model, checksum, preset,
cases ok / failed); mean Dice per method and label with a 95% bootstrap interval over cases; surface metrics (95%
Hausdorff, surface Dice); COCO mask AP in 2D and 3D; the paired comparison of each method with the supervised
baseline; plots (Dice box plots, AP bars, overlays); failed cases; what was stored on a PACS
(``medseg.pipeline.push``); per-case Dice.

It is rebuilt from the files alone (``medseg run`` calls it at the end; it can be called
again on a finished or partial folder).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io import load_labels
from medseg.io.files import atomic_output
from medseg.manifest import load_manifest
from medseg.pipeline import plots
from medseg.pipeline.document import Document
from medseg.pipeline.report_ap import POLICY_TEXT, average_precision
from medseg.pipeline.push import push_records
from medseg.pipeline import results as rs
from medseg.pipeline.stats import mean_ci, paired_comparison
from medseg.runtime import Progress, ShouldStop, check_stop
from medseg.runtime import report as report_progress
from medseg.volume import UNTRAINED_BANNER

log = logging.getLogger(__name__)

WEIGHTS_HELP = (
    "To get real weights: on a machine with internet access run the pipeline once (checkpoints download into the "
    "medseg cache, `$MEDSEG_HOME/weights`, default `~/.cache/medseg/weights`), or download the checkpoint named in "
    "`medseg.weights.REGISTRY` (e.g. `sam2.1_hiera_tiny.pt`) and put it in that folder; then delete the untrained "
    "method folders and run again. Mask R-CNN rows become meaningful with more training steps (`train: {steps: ...}`)."
)
_CSV_FIELDS = ["method", "case", "label", "label_name", "status", "dice", "hd95_mm", "nsd", "truth_voxels",
               "pred_voxels", "untrained"]


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

    def presets(self) -> str:
        """The presets its cases were segmented with (their provenance; a count each when several)."""
        used = Counter(_preset_name(r.get("provenance", {}).get("preset")) for r in self.ok.values())
        used.pop(None, None)
        if len(used) > 1:
            return ", ".join(f"{name} ({n} case{'s' if n > 1 else ''})" for name, n in used.most_common())
        return next(iter(used), None) or self.info.get("model", {}).get("preset") or "–"


def _preset_name(preset: Any) -> str | None:
    """A provenance's preset: a dict with its name (SAM2, reference prompting, Mask R-CNN) or a name."""
    return preset.get("name") if isinstance(preset, dict) else preset


def _median_finite(values: list[float]) -> float:
    """Median over the cases where the distance is defined (both maps have the label)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def _fmt(value: Any, digits: int = 3) -> str:
    value = rs.as_float(value)
    return "–" if np.isnan(value) else f"{value:.{digits}f}"


@dataclass
class _Run:
    """A results folder as the report reads it."""

    results_dir: Path
    pipeline: dict[str, Any]
    code: dict[str, Any]
    methods: list[_Method]
    cohort: Any
    label_names: dict[int, str]

    @property
    def labels(self) -> list[int]:
        return sorted(self.label_names)

    @property
    def baseline(self) -> _Method | None:
        return next((m for m in self.methods if m.info.get("baseline")), None)

    def bootstrap(self) -> dict[str, int]:
        return {"resamples": self.pipeline["report"]["bootstrap"], "seed": self.pipeline["seed"]}


def write_report(results_dir: str | Path, *, progress: Progress | None = None,
                 should_stop: ShouldStop | None = None) -> Path:
    """Write the report files into ``results_dir``; return the path of report.md.

    ``progress(done, total)`` counts methods summarised; ``should_stop`` is asked between them.
    """
    run = _read_run(Path(results_dir).resolve())
    rows = _case_rows(run)
    _write_csv(run.results_dir / "metrics.csv", rows)
    summary = {}
    for done, method in enumerate(run.methods, start=1):
        check_stop(should_stop, "the report")
        summary[method.name] = _summarise(run, method)
        report_progress(progress, done, len(run.methods))
    paired = _paired(run)
    figures = _figures(run, summary)
    rs.write_json(run.results_dir / "metrics.json", {"pipeline": run.pipeline, "code": run.code,
                                                     "labels": run.label_names, "methods": summary, "paired": paired,
                                                     "cases": rows})
    document = _document(run, summary, paired, figures)
    _write_text(run.results_dir / "report.md", document.markdown())
    _write_text(run.results_dir / "report.html", document.html(f"medseg report: {run.pipeline['name']}"))
    log.info("report written to %s", run.results_dir / "report.md")
    return run.results_dir / "report.md"


def _read_run(results_dir: Path) -> _Run:
    run = rs.read_json(results_dir / rs.PIPELINE)
    pipeline = run["pipeline"]
    cohort = load_manifest(pipeline["cohort"])
    label_names = {v: cohort.labels[v] for v in pipeline["labels"]} if pipeline["labels"] else dict(cohort.labels)
    return _Run(results_dir, pipeline, run["code"], _collect(results_dir, list(pipeline["methods"])),
                cohort, label_names)


def _collect(results_dir: Path, order: list[str]) -> list[_Method]:
    methods = []
    for method_dir in rs.method_dirs(results_dir):
        method = _Method(method_dir.name, rs.read_json(method_dir / rs.METHOD))
        for case_dir in rs.case_dirs(method_dir):
            try:
                result = rs.read_json(case_dir / rs.RESULT)
            except InputError as error:  # a damaged record: left out, and said so
                log.warning("%s; left out of the report", error)
                continue
            method.results[result["case"]] = result
        methods.append(method)
    rank = {name: i for i, name in enumerate(order)}
    return sorted(methods, key=lambda m: rank.get(m.name, len(rank)))


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _case_rows(run: _Run) -> list[dict[str, Any]]:
    """One row per method, case and label (metrics.csv)."""
    rows = []
    for method in run.methods:
        for case_id, result in sorted(method.results.items()):
            for label in run.labels:
                m = result.get("metrics", {}).get(str(label), {})
                rows.append({"method": method.name, "case": case_id, "label": label,
                             "label_name": run.label_names[label], "status": result["status"],
                             "dice": rs.as_float(m.get("dice")), "hd95_mm": rs.as_float(m.get("hd95_mm")),
                             "nsd": rs.as_float(m.get("nsd")), "truth_voxels": m.get("truth_voxels"),
                             "pred_voxels": m.get("pred_voxels"), "untrained": method.untrained})
    return rows


def _summarise(run: _Run, method: _Method) -> dict[str, Any]:
    """Means with bootstrap intervals, surface medians and mask AP of one method."""
    per_label = {}
    for label in run.labels:
        values = lambda key: [rs.as_float(r["metrics"][str(label)][key]) for r in method.ok.values()]
        per_label[str(label)] = {
            "dice": mean_ci(values("dice"), **run.bootstrap()).to_dict(),
            "nsd": mean_ci(values("nsd"), **run.bootstrap()).to_dict(),
            "hd95_mm_median": _median_finite(values("hd95_mm")),
            "missed_or_invented": int(sum(np.isinf(values("hd95_mm")))),
        }
    case_means = [rs.as_float(r["mean_dice"]) for r in method.ok.values()]
    return {
        "untrained": method.untrained, "baseline": bool(method.info.get("baseline")),
        "cases_ok": len(method.ok), "cases_failed": len(method.results) - len(method.ok),
        "model": method.info.get("model", {}), "per_label": per_label,
        "mean_dice": mean_ci(case_means, **run.bootstrap()).to_dict(),
        **average_precision(run.results_dir / method.name, method.ok, run.cohort, run.labels,
                            run.pipeline["metrics"]["ap_instances"]),
    }


def _paired(run: _Run) -> list[dict[str, Any]]:
    """Each method against the baseline, per label (paired over cases)."""
    baseline = run.baseline
    if baseline is None:
        return []
    return [{"method": method.name, "baseline": baseline.name, "label": label,
             **paired_comparison(method.dice(label), baseline.dice(label), **run.bootstrap()).to_dict()}
            for method in run.methods if method is not baseline for label in run.labels]


def _figures(run: _Run, summary: dict[str, Any]) -> list[Path]:
    if not any(m.ok for m in run.methods):
        return []
    plot_dir = run.results_dir / "plots"
    return [
        plots.dice_boxplot({m.display(): {l: list(m.dice(l).values()) for l in run.labels} for m in run.methods},
                           run.label_names, plot_dir / "dice_boxplot.png"),
        plots.ap_bars({m.display(): summary[m.name]["ap"] for m in run.methods}, plot_dir / "ap_bars.png"),
        *_overlays(run, plot_dir),
    ]


def _overlays(run: _Run, plot_dir: Path) -> list[Path]:
    cases = sorted({c for m in run.methods for c in m.ok})[: run.pipeline["report"]["overlays"]]
    paths = []
    for case_id in cases:
        volume, truth = run.cohort.case(case_id).load()
        z = int(np.argmax((truth.array > 0).reshape(truth.array.shape[0], -1).sum(axis=1)))
        predictions = {m.display(): load_labels(run.results_dir / m.name / case_id / rs.LABELS, volume).array[z]
                       for m in run.methods if case_id in m.ok}
        paths.append(plots.overlay(volume.array[z], truth.array[z], predictions, f"case {case_id}, slice z={z}",
                                   plot_dir / f"overlay_{case_id}.png"))
    return paths


def _document(run: _Run, summary: dict[str, Any], paired: list[dict], figures: list[Path]) -> Document:
    """The report, section after section."""
    doc = Document()
    for section in (_intro, _methods_section, _dice_section, _surface_section, _ap_section):
        section(doc, run, summary)
    _paired_section(doc, run, paired)
    if figures:
        doc.heading("Plots")
        for path in figures:
            doc.image(rs.relative(path, run.results_dir), path.stem.replace("_", " "))
    _failures_section(doc, run)
    _push_section(doc, run)
    _per_case_section(doc, run)
    return doc


def _intro(doc: Document, run: _Run, summary: dict[str, Any]) -> None:
    pipeline, code, methods = run.pipeline, run.code, run.methods
    doc.heading(f"medseg evaluation: {pipeline['name']}", 1)
    untrained = [m.name for m in methods if m.untrained]
    if untrained:
        doc.banner(f"{UNTRAINED_BANNER} Rows marked (untrained): {', '.join(untrained)}.")
        doc.paragraph(WEIGHTS_HELP)
    for m in methods:
        state = m.info.get("state", {})
        if state.get("undertrained") and not state.get("untrained"):
            doc.paragraph(f"Note: {m.name} was trained for {state.get('training_steps')} steps only; "
                          "read its rows as a smoke test of the method, not as its performance.")
    n_cases = len({c for m in methods for c in m.results})
    parts = " (each 3D connected part of a label its own object)" if pipeline["prompts"].get("parts") else ""
    doc.paragraph(
        f"Cohort `{run.cohort.name}` ({run.cohort.path.name}), split `{pipeline['split']}`, {n_cases} cases; labels "
        f"{', '.join(f'{v} {n}' for v, n in run.label_names.items())}. Prompt policy: point "
        f"`{pipeline['prompts']['point']}`, box `{pipeline['prompts']['box']}`"
        f"{parts}, "
        f"{pipeline['prompts']['reference_slices']} reference slices per object; seed {pipeline['seed']}. "
        f"medseg {code['medseg']}" + (f", git {code['git_commit'][:12]}{' (modified)' if code['git_dirty'] else ''}"
                                      if code.get("git_commit") else "")
        + f". Report made {datetime.now(timezone.utc).isoformat(timespec='seconds')}."
    )


def _methods_section(doc: Document, run: _Run, summary: dict[str, Any]) -> None:
    doc.heading("Methods")
    doc.table(["method", "type", "model", "checksum", "preset", "cases ok", "failed"], [
        [m.display() + (" (baseline)" if m.info.get("baseline") else ""), m.info.get("type", ""),
         m.info.get("model", {}).get("model", m.info.get("error", {}).get("message", "")),
         str(m.info.get("model", {}).get("checkpoint_sha256") or m.info.get("model", {}).get("weights_sha256")
             or "–")[:12], m.presets(), len(m.ok),
         len(m.results) - len(m.ok) if m.info.get("status") == "ok" else "all"] for m in run.methods])


def _dice_section(doc: Document, run: _Run, summary: dict[str, Any]) -> None:
    doc.heading("Dice per label (mean [95% bootstrap CI over cases])")
    doc.table(["method", *run.label_names.values(), "mean of labels"], [
        [m.display(), *(_estimate(summary[m.name]["per_label"][str(l)]["dice"]) for l in run.labels),
         _estimate(summary[m.name]["mean_dice"])] for m in run.methods])
    doc.paragraph("A label absent from both the prediction and the truth of a case is left out of that label's mean "
                  "(not applicable); a missed or invented object scores 0.")


def _surface_section(doc: Document, run: _Run, summary: dict[str, Any]) -> None:
    names = run.label_names.values()
    doc.heading("Surface metrics")
    doc.table(["method", *(f"{n}: HD95 median (mm)" for n in names), *(f"{n}: surface Dice" for n in names)], [
        [m.display(), *(_fmt(summary[m.name]["per_label"][str(l)]["hd95_mm_median"], 1) for l in run.labels),
         *(_estimate(summary[m.name]["per_label"][str(l)]["nsd"]) for l in run.labels)] for m in run.methods])


def _ap_section(doc: Document, run: _Run, summary: dict[str, Any]) -> None:
    doc.heading("Mask AP (COCO, pycocotools)")
    scores = lambda ap: "constant (method gives none)" if ap["constant_score"] else "method"
    rows = [[m.display(), mode.upper(), _fmt(ap["ap"]), _fmt(ap["ap50"]), _fmt(ap["ap75"]),
             *(_fmt(ap["per_label"].get(str(l))) for l in run.labels), scores(ap),
             summary[m.name]["instances"]["prediction"]]
            for m in run.methods for mode, ap in summary[m.name]["ap"].items() if ap]
    rows += [[m.display(), "–", *["–"] * (3 + len(run.labels)), "no successful case", "–"]
             for m in run.methods if not any(summary[m.name]["ap"].values())]
    doc.table(["method", "mode", "AP@[.5:.95]", "AP50", "AP75", *(f"AP {n}" for n in run.label_names.values()),
               "scores", "predicted instances"], rows)
    policy = run.pipeline["metrics"]["ap_instances"]
    doc.paragraph("2D: each slice an image, areas in mm²; 3D: each volume an image, exact voxel IoU, areas in mm³ "
                  f"(small < 1 mL, medium 1–100 mL, large > 100 mL). True instances: {POLICY_TEXT[policy]} "
                  f"(`{policy}`); in 2D, each instance's cross-section on a slice.")
    _instances_section(doc, run, summary)


def _instances_section(doc: Document, run: _Run, summary: dict[str, Any]) -> None:
    """Predicted against true 3D instances per case, as 3D AP counted them: specks show at a glance."""
    methods = [m for m in run.methods if summary[m.name]["instances"]["per_case"]]
    if not methods:
        return
    names = " / ".join(run.label_names.values())
    doc.heading(f"3D instances per case (predicted vs true; {names})")
    per_case = {m.name: summary[m.name]["instances"]["per_case"] for m in methods}
    cases = sorted({c for counts in per_case.values() for c in counts})
    cell = lambda counts: " / ".join(str(counts[l]) for l in run.labels)
    truth = lambda c: next(per_case[m.name][c]["truth"] for m in methods if c in per_case[m.name])
    predicted = lambda m, c: cell(per_case[m.name][c]["predicted"]) if c in per_case[m.name] else "–"
    doc.table(["case", "true", *(m.display() for m in methods)],
              [[c, cell(truth(c)), *(predicted(m, c) for m in methods)] for c in cases])


def _paired_section(doc: Document, run: _Run, paired: list[dict]) -> None:
    if run.baseline is None or not paired:
        return
    doc.heading(f"Paired comparison with the baseline ({run.baseline.name})")
    doc.table(["method", "label", "cases", "mean Δ Dice [95% CI]", "Wilcoxon p", "better / tie / worse"], [
        [p["method"], run.label_names[p["label"]], p["difference"]["n"], _estimate(p["difference"], signed=True),
         _fmt(p["p_value"]), f"{p['wins']} / {p['ties']} / {p['losses']}"] for p in paired])


def _failures_section(doc: Document, run: _Run) -> None:
    failures = [(m.name, c, r["error"]) for m in run.methods for c, r in sorted(m.results.items())
                if r["status"] == "failed"]
    failures += [(m.name, "(all)", m.info["error"]) for m in run.methods if m.info.get("status") == "failed"]
    if failures:
        doc.heading("Failures")
        doc.table(["method", "case", "error"], [[n, c, f"{e['type']}: {e['message']}"] for n, c, e in failures])


def _push_section(doc: Document, run: _Run) -> None:
    records = push_records(run.results_dir)
    if records:
        doc.heading("Stored on the PACS")
        doc.table(["method", "case", "format", "status", "where (DICOMweb address of the object) or why not"], [
            [r["method"], r["case"], r["format"].upper(), "already there" if r.get("already") else r["status"],
             r.get("address") or r.get("error", "")] for r in records])


def _per_case_section(doc: Document, run: _Run) -> None:
    doc.heading("Dice per case")
    cases = sorted({c for m in run.methods for c in m.results})
    doc.table(["case", *(m.display() for m in run.methods)], [
        [c, *(_fmt(m.results[c].get("mean_dice")) if c in m.ok else ("failed" if c in m.results else "–")
              for m in run.methods)] for c in cases])
    doc.paragraph("Files: `metrics.csv` (one row per method, case and label), `metrics.json` (everything above), "
                  "`<method>/<case>/` (labels, prompt log, result); `medseg replay <method>/<case>` re-runs one case.")


def _estimate(data: dict, signed: bool = False) -> str:
    mean, low, high, n = *(rs.as_float(data[key]) for key in ("mean", "ci_low", "ci_high")), data["n"]
    if n == 0:
        return "–"
    sign = "+" if signed else ""
    if np.isnan(low):
        return f"{mean:{sign}.3f} (n={n})"
    return f"{mean:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"
