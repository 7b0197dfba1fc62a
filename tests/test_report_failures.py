"""A run whose method fails every case still ends in a report with its Failures section (exit 3),
and a model directory's weights file is that directory wherever a model is named.

The failure is a real one: a SAM2 model directory trained at image size 64, asked for 128
(``WeightsError`` per case), as a README pipeline with ``image_size: 256`` against the demo's
model trained at 128 did.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.manifest import load_manifest
from medseg.phantom import write_demo_cohort
from medseg.training.sam2.config import Sam2TrainConfig
from medseg.training.sam2.train import train_sam2

pytestmark = pytest.mark.slow

MESSAGE = "was trained at image size 64, not 128"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A SAM2 model directory trained for one step at image size 64 on 1 train phantom (2 test phantoms)."""
    root = tmp_path_factory.mktemp("failing")
    cohort = write_demo_cohort(root / "cohort", n_cases=3, n_test=2, shape=(6, 32, 32))
    config = Sam2TrainConfig(start="untrained", image_size=64, steps=1, clip_length=2, warmup_steps=0,
                             threads=1, val_every=0)
    return train_sam2(load_manifest(cohort), root / "model", config=config)


def run(tmp_path: Path, model_dir: Path, methods: str) -> tuple[int, Path]:
    pipeline = tmp_path / "pipeline.yaml"
    cohort = model_dir.parent / "cohort" / "demo.json"
    pipeline.write_text(f"name: failing\ncohort: {cohort}\nprompts: {{point: none, box: middle}}\nmethods:\n{methods}",
                        encoding="utf-8")
    out = tmp_path / "out"
    return main(["run", str(pipeline), "--out", str(out), "--no-progress"]), out


def section(report: str, heading: str) -> str:
    """The text of one ``## heading`` section of report.md."""
    return report.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def test_every_case_failing_next_to_a_method_that_worked(tmp_path, model_dir):
    code, out = run(tmp_path, model_dir, f"  truth: {{type: oracle, baseline: true}}\n"
                                         f"  s: {{type: sam2, model: {model_dir}, image_size: 128}}\n")
    assert code == 3
    report = (out / "report.md").read_text(encoding="utf-8")
    failures = section(report, "Failures")
    assert failures.count(f"WeightsError: model {model_dir} {MESSAGE}") == 2
    assert "| s | phantom_001 |" in failures and "| s | phantom_002 |" in failures
    assert "| s | sam2 | trained on demo (1 steps) |" in section(report, "Methods")
    assert "| s | – | – | – | – |" in section(report, "Dice per label")
    assert "| truth | 1.000 (n=2) | 1.000 (n=2) | 1.000 (n=2) | 1.000 (n=2) |" in section(report, "Dice per label")
    assert "| s | – | – | – | – | – | – | – | no successful case |" in section(report, "Mask AP")
    assert "| s | liver | 0 | – | – |" in section(report, "Paired comparison")
    assert "| phantom_001 | 1.000 | failed |" in section(report, "Dice per case")
    for plot in ("dice_boxplot.png", "ap_bars.png", "overlay_phantom_001.png", "overlay_phantom_002.png"):
        assert (out / "plots" / plot).read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["methods"]["s"]["cases_ok"] == 0 and metrics["methods"]["s"]["cases_failed"] == 2
    assert metrics["methods"]["s"]["ap"] == {"2d": {}, "3d": {}}
    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "s"]
    assert len(rows) == 2 * 3 and {r["status"] for r in rows} == {"failed"} and {r["dice"] for r in rows} == {"nan"}


def test_every_case_of_the_only_method_failing(tmp_path, model_dir, capsys):
    code, out = run(tmp_path, model_dir, f"  s: {{type: sam2, model: {model_dir}, image_size: 128}}\n")
    assert code == 3
    assert "2 case run(s) failed (see the Failures section of the report)" in capsys.readouterr().err
    report = (out / "report.md").read_text(encoding="utf-8")
    assert section(report, "Failures").count(MESSAGE) == 2
    assert "## Plots" not in report and not (out / "plots").exists()  # nothing to plot: no figure, no empty one
    assert "| phantom_002 | failed |" in section(report, "Dice per case")
    assert (out / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_a_model_directory_weights_file_loads_as_the_directory(tmp_path, model_dir):
    image = model_dir.parent / "cohort" / "demo" / "phantom_001.nii.gz"
    qc = {}
    for name, model in (("dir", model_dir), ("file", model_dir / "weights.pt")):
        assert main(["segment", str(image), "--model", str(model), "--box", "1:3,4,4,20,20", "--out",
                     str(tmp_path / f"{name}.nii.gz"), "--qc", str(tmp_path / f"{name}.json"), "--no-progress"]) == 0
        qc[name] = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))["provenance"]
    assert qc["file"]["model"] == qc["dir"]["model"] == f"{model_dir} (trained on demo (1 steps))"
    assert qc["file"]["checkpoint_sha256"] == qc["dir"]["checkpoint_sha256"]
    assert qc["file"]["image_size"] == 64
    file, directory = (np.asarray(nib.load(tmp_path / f"{name}.nii.gz").dataobj) for name in ("file", "dir"))
    np.testing.assert_array_equal(file, directory)
