"""medseg.pipeline: validation before compute, prompt policy, resumable runs, failures,
interrupts, report, replay and the CLI, on a tiny phantom cohort written to tmp_path."""

from __future__ import annotations

import csv
import gzip
import inspect
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.errors import Cancelled, ConfigError, WeightsError
from medseg.geometry import Geometry
from medseg.io import load_labels, read_geometry
from medseg.manifest import load_manifest
from medseg.objects import clean_objects
from medseg.phantom import write_demo_cohort
from medseg.pipeline import load_pipeline, replay_case, run_pipeline
from medseg.pipeline.methods import METHODS, MaskRCNN, Oracle, RevSam2, Sam2, Segmentation
from medseg.prompt_simulation import PromptPolicy, PromptSettings, centroid_voxel
from medseg.pipeline.stats import mean_ci, paired_comparison
from medseg.runtime import torch_threads
from medseg.volume import UNTRAINED_BANNER, LabelVolume


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """4 phantoms of (8, 48, 48): phantom_000/001 train, phantom_002/003 test."""
    return write_demo_cohort(tmp_path_factory.mktemp("cohort"), n_cases=4, n_test=2, shape=(8, 48, 48))


def pipeline_file(tmp_path: Path, cohort: Path, methods: str, extra: str = "") -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"name: tiny\ncohort: {cohort}\nseed: 3\n{extra}methods:\n"
                    + textwrap.indent(textwrap.dedent(methods), "  "), encoding="utf-8")
    return path


# --- validation before compute ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("methods", "extra", "message"),
    [
        ("sam: {type: sam3}\n", "", r"methods\.sam\.type: unknown method 'sam3'; did you mean 'sam2'"),
        ("s: {type: sam2, image_sise: 128}\n", "", r"methods\.s\.image_sise: unknown key; did you mean 'image_size'"),
        ("s: {type: sam2, fallback: maybe}\n", "",
         r"methods\.s\.fallback: is 'maybe'; use one of \['error', 'untrained'\]"),
        ("s: {type: sam2, image_size: big}\n", "", r"methods\.s\.image_size: must be an integer"),
        ("m: {type: maskrcnn, train: {stepz: 3}}\n", "", r"methods\.m: unknown Mask R-CNN setting\(s\) \['stepz'\]"),
        ("o: {type: oracle}\n", "promts: {point: centroid}\n", r"promts: unknown key; did you mean 'prompts'"),
        ("o: {type: oracle}\n", "prompts: {point: middle}\n", r"prompts\.point: is 'middle'"),
        ("o: {type: oracle}\n", "prompts: {parts: maybe}\n", r"prompts\.parts: must be true or false, got 'maybe'"),
        ("r: {type: revsam2, reprompt: boxes}\n", "",
         r"methods\.r\.reprompt: is 'boxes'; did you mean 'box'\? use one of \['mask', 'box'\]"),
        ("r: {type: revsam2, parts: 2}\n", "", r"methods\.r\.parts: must be true or false"),
        ("a: {type: oracle, baseline: true}\nb: {type: oracle, baseline: true}\n", "",
         "at most one method can be the baseline"),
        ("s: {type: sam2, postprocess: specks}\n", "",
         r"methods\.s\.postprocess: is 'specks'; use one of \['none', 'objects'\]"),
    ],
)
def test_bad_pipeline_yaml_names_file_and_field(tmp_path, cohort, methods, extra, message):
    path = pipeline_file(tmp_path, cohort, methods, extra)
    with pytest.raises(ConfigError, match=message) as info:
        load_pipeline(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("methods", "extra", "message"),
    [
        ("o: {type: oracle}\n", "labels: [1, 7]\n", r"labels: \[7\] are not labels of the cohort"),
        ("o: {type: oracle}\n", "cases: [phantom_002, nobody]\n", r"cases: \['nobody'\] are not in the 'test' split"),
        ("s: {type: sam2, model: untrained}\n", "prompts: {point: none}\n",
         "'s' is interactive but the policy gives neither"),
        ("r: {type: revsam2, model: untrained, references: 3}\n", "",
         r"3 reference case\(s\) wanted but the 'train' split"),
    ],
)
def test_bad_cohort_selection_fails_before_any_output(tmp_path, cohort, methods, extra, message):
    config = load_pipeline(pipeline_file(tmp_path, cohort, methods, extra))
    with pytest.raises(ConfigError, match=message):
        run_pipeline(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_model_and_missing_weights_fail_before_compute(tmp_path, cohort, monkeypatch):
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))  # an empty cache, and no internet here
    config = load_pipeline(pipeline_file(tmp_path, cohort, "s: {type: sam2, model: sam9-huge}\n"))
    with pytest.raises(WeightsError, match=r"method s: model '.*sam9-huge' is neither a registry name .* nor a "
                                           r"checkpoint"):
        run_pipeline(config, tmp_path / "out")
    assert not (tmp_path / "out" / "s").exists()


# --- prompt policy -------------------------------------------------------------------------------
def test_prompt_policy_centroid_box_and_seeded_random():
    array = np.zeros((5, 20, 20), dtype=np.int32)
    array[1, 5:8, 5:8] = 1  # 9 voxels
    array[2, 4:15, 4:15] = 1  # the largest slice: 121 voxels
    array[2, 7:12, 7:15] = 0  # ... carved into a C whose centroid lies in the gap
    array[3, 5:10, 5:10] = 1
    array[4, 0:2, 0:2] = 2
    truth = LabelVolume(array, Geometry(array.shape, (2.0, 1.0, 1.0)))
    policy = PromptPolicy(PromptSettings(point="centroid", box="middle"), seed=0)
    prompts = policy.prompts(truth, labels={1: "liver", 2: "spleen", 3: "kidney"}, case_id="c")
    assert sorted(prompts.objects) == [1, 2]  # label 3 is not drawn: no prompt
    point = prompts.objects[1].points[0]
    assert point.z == 2 and array[2, int(point.y), int(point.x)] == 1  # moved into the C
    assert centroid_voxel(array[3] == 1) == (7, 7)
    box = prompts.objects[1].boxes[0]
    assert (box.z, box.y0, box.x0, box.y1, box.x1) == (2, 4, 4, 14, 14)  # middle of z 1..3
    random_policy = PromptPolicy(PromptSettings(point="random"), seed=5)
    first = random_policy.prompts(truth, labels=[1], case_id="c").to_dict()
    assert first == random_policy.prompts(truth, labels=[1], case_id="c").to_dict()
    other_seed = PromptPolicy(PromptSettings(point="random"), seed=6)
    assert first != other_seed.prompts(truth, labels=[1], case_id="c").to_dict()


def test_prompt_policy_with_parts_prompts_each_connected_part_as_an_object_of_its_label():
    array = np.zeros((6, 20, 30), dtype=np.int32)
    array[1:5, 4:10, 2:8] = 3  # one kidney
    array[2:6, 5:12, 20:26] = 3  # the other, apart from it
    array[1:4, 12:18, 10:18] = 1
    truth = LabelVolume(array, Geometry(array.shape, (2.0, 1.0, 1.0)))
    names = {1: "liver", 2: "spleen", 3: "kidney"}
    whole = PromptPolicy(PromptSettings(point="centroid", box="middle"), seed=0).prompts(truth, labels=names,
                                                                                         case_id="c")
    box = whole.objects[3].boxes[0]
    assert sorted(whole.objects) == [1, 3] and (box.x0, box.x1) == (2, 25)  # one box over both kidneys
    prompts = PromptPolicy(PromptSettings(point="centroid", box="middle", parts=True), seed=0).prompts(
        truth, labels=names, case_id="c")
    assert prompts.label_of() == {1: 1, 3: 3, 4: 3}  # the second kidney numbered on from the highest label
    assert [prompts.objects[i].name for i in (3, 4)] == ["kidney", "kidney"]
    first, second = prompts.objects[3], prompts.objects[4]
    assert [(b.z, b.y0, b.x0, b.y1, b.x1) for b in first.boxes + second.boxes] == [(2, 4, 2, 9, 7), (3, 5, 20, 11, 25)]
    assert array[2, int(first.points[0].y), int(first.points[0].x)] == 3 and first.points[0].x < 8
    assert second.points[0].x >= 20
    assert prompts.objects[1].boxes == whole.objects[1].boxes  # a label in one piece is prompted as before


def test_bootstrap_and_paired_statistics():
    constant = mean_ci([0.5, 0.5, 0.5])
    assert (constant.mean, constant.ci_low, constant.ci_high, constant.n) == (0.5, 0.5, 0.5, 3)
    few = mean_ci([0.2, float("nan"), 0.4])
    assert few.n == 2 and few.mean == pytest.approx(0.3) and np.isnan(few.ci_low)
    spread = mean_ci([0.1, 0.5, 0.9, 0.3], seed=1)
    assert spread.ci_low < spread.mean < spread.ci_high and 0.1 <= spread.ci_low and spread.ci_high <= 0.9
    paired = paired_comparison({"a": 0.9, "b": 0.8, "c": 0.7, "d": float("nan")},
                               {"a": 0.8, "b": 0.85, "c": 0.6, "e": 0.1})
    assert (paired.wins, paired.ties, paired.losses, paired.difference.n) == (2, 0, 1, 3)
    assert paired.difference.mean == pytest.approx(0.05)
    assert paired.p_value == pytest.approx(0.5)


# --- runs -------------------------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_oracle_run_resume_failure_and_report(tmp_path, cohort):
    # a third test case whose image is cut short: its header reads (validation passes), its voxels do not
    manifest = json.loads(cohort.read_text(encoding="utf-8"))
    broken = tmp_path / "broken.nii.gz"
    data = (cohort.parent / manifest["cases"][3]["image"]).read_bytes()
    broken.write_bytes(gzip.compress(gzip.decompress(data)[:2000]))
    for case in manifest["cases"]:
        case["image"], case["label"] = str(cohort.parent / case["image"]), str(cohort.parent / case["label"])
    manifest["cases"].append({"id": "broken", "image": str(broken), "label": manifest["cases"][3]["label"],
                              "split": "test"})
    manifest_path = tmp_path / "with_broken.json"
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")

    config = load_pipeline(pipeline_file(tmp_path, manifest_path, "truth: {type: oracle, baseline: true}\n"))
    out = tmp_path / "out"
    rng = torch.get_rng_state()
    summary = run_pipeline(config, out)
    assert torch.equal(torch.get_rng_state(), rng)  # each case is seeded inside, the caller's random state stays
    assert summary.counts == {"truth": {"ok": 2, "failed": 1, "skipped": 0}}
    failed = json.loads((out / "truth" / "broken" / "result.json").read_text(encoding="utf-8"))
    assert failed["status"] == "failed" and failed["error"]["type"] and "Traceback" in failed["error"]["traceback"]
    ok = json.loads((out / "truth" / "phantom_002" / "result.json").read_text(encoding="utf-8"))
    assert ok["status"] == "ok" and ok["mean_dice"] == 1.0 and ok["seed"] == 3 and ok["code"]["medseg"]
    assert {m["dice"] for m in ok["metrics"].values()} == {1.0}

    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 3 * 3  # 3 cases x 3 labels
    assert {r["dice"] for r in rows if r["status"] == "ok"} == {"1.0"}
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["methods"]["truth"]["ap"]["3d"]["ap"] == pytest.approx(1.0)
    assert metrics["methods"]["truth"]["ap"]["2d"]["ap"] == pytest.approx(1.0)
    assert metrics["methods"]["truth"]["per_label"]["1"]["dice"]["mean"] == 1.0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Failures" in report and "broken" in report and UNTRAINED_BANNER not in report
    assert (out / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    for plot in ("dice_boxplot.png", "ap_bars.png", "overlay_phantom_002.png"):
        assert (out / "plots" / plot).read_bytes()[:4] == b"\x89PNG"

    # re-run: finished cases are skipped, the failed one is tried again
    again = run_pipeline(config, out, report=False)
    assert again.counts == {"truth": {"ok": 0, "failed": 1, "skipped": 2}}
    # changed settings for the same method folder: refused before compute
    changed = load_pipeline(pipeline_file(tmp_path, manifest_path, "truth: {type: oracle, baseline: true}\n",
                                          "labels: [1]\n"))
    with pytest.raises(ConfigError, match="other settings"):
        run_pipeline(changed, out)


@dataclass(frozen=True)
class _NoOptions:
    pass


class _Interrupted(Oracle):
    """A plug-in whose ``interrupt_on`` case is interrupted by the user (Ctrl-C)."""

    kind = "test-interrupted"
    Options = _NoOptions
    interrupt_on: str | None = None

    def from_truth(self, volume, truth, *, case_id):
        if case_id == self.interrupt_on:
            raise KeyboardInterrupt
        return super().from_truth(volume, truth, case_id=case_id)


@pytest.fixture
def interrupted(monkeypatch):
    """``_Interrupted`` registered for this test only, interrupting phantom_003."""
    monkeypatch.setitem(METHODS, _Interrupted.kind, _Interrupted)
    monkeypatch.setattr(_Interrupted, "interrupt_on", "phantom_003")
    return _Interrupted


def test_ctrl_c_loses_only_the_case_in_flight(tmp_path, cohort, interrupted):
    config = load_pipeline(pipeline_file(tmp_path, cohort, "m: {type: test-interrupted}\n"))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, tmp_path / "out")
    result = tmp_path / "out" / "m" / "phantom_002" / "result.json"
    assert json.loads(result.read_text(encoding="utf-8"))["status"] == "ok"
    # nothing half-written
    assert sorted(p.name for p in (tmp_path / "out" / "m").iterdir()) == ["method.json", "phantom_002"]
    interrupted.interrupt_on = None  # the re-run does the rest
    summary = run_pipeline(config, tmp_path / "out", report=False)
    assert summary.counts == {"m": {"ok": 1, "failed": 0, "skipped": 1}}


def test_should_stop_keeps_finished_cases_and_a_rerun_resumes(tmp_path, cohort):
    config = load_pipeline(pipeline_file(tmp_path, cohort, "m: {type: oracle}\n"))
    seen = []
    with pytest.raises(Cancelled):
        run_pipeline(config, tmp_path / "out", progress=lambda done, total: seen.append((done, total)),
                     should_stop=lambda: len(seen) >= 2)  # stop once the first case is done
    assert seen == [(0, 2), (1, 2)]
    assert sorted(p.name for p in (tmp_path / "out" / "m").iterdir()) == ["method.json", "phantom_002"]
    result = tmp_path / "out" / "m" / "phantom_002" / "result.json"
    assert json.loads(result.read_text(encoding="utf-8"))["status"] == "ok"
    summary = run_pipeline(config, tmp_path / "out", report=False)
    assert summary.counts == {"m": {"ok": 1, "failed": 0, "skipped": 1}}


def test_a_damaged_result_is_run_again(tmp_path, cohort):
    config = load_pipeline(pipeline_file(tmp_path, cohort, "m: {type: oracle}\n"))
    run_pipeline(config, tmp_path / "out", report=False)
    result = tmp_path / "out" / "m" / "phantom_003" / "result.json"
    result.write_bytes(result.read_bytes()[:100])  # cut short, as by a full disk
    assert main(["replay", str(result.parent)]) == 2
    summary = run_pipeline(config, tmp_path / "out", report=False)
    assert summary.counts == {"m": {"ok": 1, "failed": 0, "skipped": 1}}
    assert json.loads(result.read_text(encoding="utf-8"))["status"] == "ok"


@pytest.mark.slow
def test_sam2_and_revsam2_untrained_runs_are_flagged_logged_and_replayed(tmp_path, cohort):
    path = pipeline_file(
        tmp_path, cohort,
        "sam2: {type: sam2, model: untrained, image_size: 128}\n"
        "rev: {type: revsam2, model: untrained, image_size: 128, parts: true}\n"
        "obj: {type: sam2, model: untrained, image_size: 128, postprocess: objects}\n",
        "cases: [phantom_002]\nprompts: {point: centroid, box: middle, reference_slices: 2, parts: true}\n",
    )
    out = tmp_path / "out"
    with torch_threads(1):
        assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "sam2" / "phantom_002" / "result.json").read_text(encoding="utf-8"))
    assert result["untrained"] is True and result["provenance"]["model"] == "untrained"
    assert result["prompt_policy"] == {"point": "centroid", "box": "middle", "reference_slices": 2, "parts": True}
    logged = json.loads((out / "sam2" / "phantom_002" / "prompts.json").read_text(encoding="utf-8"))["prompts"]
    truth = load_manifest(cohort).case("phantom_002").load()[1]
    names = {1: "liver", 2: "spleen", 3: "kidney"}
    expected = PromptPolicy(PromptSettings(point="centroid", box="middle", parts=True), seed=3).prompts(
        truth, labels=names, case_id="phantom_002")
    assert logged == json.loads(json.dumps(expected.to_dict())) and logged["4"]["label"] == 3  # the second kidney
    support = json.loads((out / "rev" / "phantom_002" / "prompts.json").read_text(encoding="utf-8"))["support"]
    assert support["references"] == ["phantom_000"]  # the first labelled train case
    # 2 reference slices per label, and per kidney: the second is its own object, merged back into its label
    assert sorted(s["label"] for s in support["slices"]) == [1, 1, 2, 2, 3, 3, 4, 4] and support["parts"] == {"4": 3}
    rev = json.loads((out / "rev" / "phantom_002" / "result.json").read_text(encoding="utf-8"))
    assert sorted(rev["scores"]) == ["1", "2", "3"] and rev["provenance"]["reprompt"] == "box"
    report = (out / "report.md").read_text(encoding="utf-8").splitlines()
    assert any("box `middle` (each 3D connected part of a label its own object)" in line for line in report)
    assert report[2] == f"> **{UNTRAINED_BANNER} Rows marked (untrained): sam2, rev, obj.**"
    methods = report[report.index("## Methods") + 1:]
    methods = methods[:methods.index("## Dice per label (mean [95% bootstrap CI over cases])")]
    rows = [line.split(" | ") for line in methods]
    assert {row[0].strip("| "): row[4] for row in rows if row[0].startswith(("| sam2", "| rev"))} == {
        "sam2 (untrained)": "ct-soft-tissue", "rev (untrained)": "ct-soft-tissue"}  # the provenance's, not "default"
    # postprocess: objects keeps SAM2's own output bit for bit beside the objects made from it
    geometry = read_geometry(out / "sam2" / "phantom_002" / "labels.nii.gz")
    raw = load_labels(out / "sam2" / "phantom_002" / "labels.nii.gz", geometry).array
    assert set(np.unique(raw)) <= {0, 1, 2, 3} and sorted(result["scores"]) == ["1", "2", "3"]  # parts merged
    assert np.array_equal(load_labels(out / "obj" / "phantom_002" / "raw_labels.nii.gz", geometry).array, raw)
    slice_scores = {int(k): np.array(v, dtype=float) for k, v in result["slice_scores"].items()}
    objects = clean_objects(LabelVolume(raw, geometry, slice_scores=slice_scores), prompts=expected.by_label())
    assert np.array_equal(load_labels(out / "obj" / "phantom_002" / "labels.nii.gz", geometry).array,
                          objects.labels.array)

    with torch_threads(2):  # the replay restores the run's thread count (1) for the same float sums
        for method in ("sam2", "rev", "obj"):
            replay = replay_case(out / method / "phantom_002")
            assert replay.identical and replay.total_voxels == 8 * 48 * 48
            replayed = json.loads((replay.replay_dir / "result.json").read_text(encoding="utf-8"))
            recorded = json.loads((out / method / "phantom_002" / "result.json").read_text(encoding="utf-8"))
            assert replayed["metrics"] == recorded["metrics"]
        assert torch.get_num_threads() == 2

    # every prompts-bearing file medseg writes replays through `medseg segment --prompts`
    image, case = str(load_manifest(cohort).case("phantom_002").image), out / "sam2" / "phantom_002"
    files = ((case / "prompts.json", "a.json"), (case / "result.json", "b.json"), (tmp_path / "b.json", "c.json"))
    for source, qc in files:  # the last one is the --qc file written by the one before
        assert main(["segment", image, "--model", "untrained", "--prompts", str(source), "--qc", str(tmp_path / qc),
                     "--out", str(tmp_path / f"{qc}.nii.gz"), "--no-progress"]) == 0
        assert json.loads((tmp_path / qc).read_text(encoding="utf-8"))["provenance"]["prompts"] == logged
        written = np.asarray(nib.load(tmp_path / f"{qc}.nii.gz").dataobj)
        assert set(np.unique(written)) <= {0, 1, 2, 3}  # the second kidney (object 4) written as label 3
    reference_case = out / "rev" / "phantom_002" / "prompts.json"  # support slices, no prompts: one line, exit 2
    assert main(["segment", image, "--prompts", str(reference_case), "--out", str(tmp_path / "x.nii.gz")]) == 2


def test_report_preset_column_shows_the_presets_the_cases_used():
    from medseg.pipeline.report import _Method

    def case(preset):
        return {"status": "ok", "provenance": {} if preset is None else {"preset": preset}}

    mri, ct = case({"name": "mri"}), case({"name": "ct-soft-tissue"})
    mixed = _Method("s", {}, {"a": mri, "b": ct, "c": mri})
    assert mixed.presets() == "mri (2 cases), ct-soft-tissue (1 case)"
    assert _Method("m", {}, {"a": case("ct-liver")}).presets() == "ct-liver"  # a name alone (older Mask R-CNN results)
    failed = {"a": {"status": "failed", "error": {}}}
    assert _Method("o", {"model": {"preset": "ct-bone"}}, failed).presets() == "ct-bone"  # no case ran: the one given
    assert _Method("o", {}, {"a": case(None)}).presets() == "–"  # the oracle uses none


def test_cli_reports_bad_yaml_as_one_line(tmp_path, cohort, capsys):
    path = pipeline_file(tmp_path, cohort, "o: {type: oracle, colour: red}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medseg run: error:") and "methods.o.colour: unknown key" in err


@pytest.mark.slow
def test_maskrcnn_baseline_is_trained_on_the_train_split_then_reused(tmp_path, cohort):
    train = "{backbone: resnet18, input_size: 64, steps: 1, batch_size: 1, val_every: 0, warmup_steps: 0, device: cpu}"
    path = pipeline_file(tmp_path, cohort, f"mrcnn: {{type: maskrcnn, baseline: true, train: {train}}}\n",
                         "cases: [phantom_002]\n")
    out = tmp_path / "out"
    rng = torch.get_rng_state()
    summary = run_pipeline(load_pipeline(path), out)
    assert torch.equal(torch.get_rng_state(), rng)  # training seeds torch inside and restores it
    assert summary.counts == {"mrcnn": {"ok": 1, "failed": 0, "skipped": 0}}
    method = json.loads((out / "mrcnn" / "method.json").read_text(encoding="utf-8"))
    assert method["state"]["model_dir"] == str(out / "mrcnn" / "model") and method["state"]["training_steps"] == 1
    model_card = json.loads((out / "mrcnn" / "model" / "model.json").read_text(encoding="utf-8"))
    assert model_card["train_cases"] == ["phantom_000", "phantom_001"]  # the train split only
    result = json.loads((out / "mrcnn" / "phantom_002" / "result.json").read_text(encoding="utf-8"))
    assert result["provenance"]["weights_sha256"] == method["state"]["weights_sha256"] == model_card["weights_sha256"]
    assert "trained for 1 steps only" in (out / "report.md").read_text(encoding="utf-8")
    assert replay_case(out / "mrcnn" / "phantom_002").identical
    # the same YAML pointing at the trained model instead: no training, same weights
    reuse = pipeline_file(tmp_path, cohort, f"mrcnn2: {{type: maskrcnn, model_dir: {out / 'mrcnn' / 'model'}}}\n",
                          "cases: [phantom_002]\n")
    run_pipeline(load_pipeline(reuse), out, report=False)
    again = json.loads((out / "mrcnn2" / "phantom_002" / "result.json").read_text(encoding="utf-8"))
    assert again["provenance"]["weights_sha256"] == method["state"]["weights_sha256"]


# --- what a method sees ----------------------------------------------------------------------
def _recording(base):
    """A subclass of ``base`` that records what ``load``/``segment`` get instead of running a model."""

    class Recording(base):
        kind = f"test-recording-{base.kind}"
        calls: list = []

        def prepare(self, cohort, *, progress=None, should_stop=None):
            state = super().prepare(cohort) if base is RevSam2 else {}
            return {**state, "model": "untrained", "untrained": True}

        def load(self):
            self.calls.append(("load",))
            return "the loaded model"

        def segment(self, model, volume, *, prompts, case_id):
            self.calls.append(("segment", model, volume, prompts, case_id))
            return Segmentation(LabelVolume.like(volume, np.zeros(volume.shape, np.uint8)))

        def from_truth(self, volume, truth, *, case_id):
            self.calls.append(("from_truth", volume, truth, case_id))
            return super().from_truth(volume, truth, case_id=case_id)

    Recording.calls = []
    return Recording


@pytest.mark.parametrize("base", [Oracle, Sam2, RevSam2, MaskRCNN], ids=lambda c: c.kind)
def test_a_method_sees_the_volume_and_its_prompts_never_the_truth(tmp_path, cohort, monkeypatch, base):
    recording = _recording(base)
    monkeypatch.setitem(METHODS, recording.kind, recording)
    options = "{model: untrained}" if base in (Sam2, RevSam2) else "{}"
    config = load_pipeline(pipeline_file(tmp_path, cohort,
                                         f"m: {{type: {recording.kind}, {options[1:-1]}}}\n".replace(", }", "}"),
                                         "prompts: {point: centroid}\n"))
    summary = run_pipeline(config, tmp_path / "out", report=False)
    assert summary.counts["m"]["ok"] == 2
    manifest = load_manifest(cohort)
    kinds = [call[0] for call in recording.calls]
    if base is Oracle:  # the self-check, and only it, is given the truth, and loads nothing
        assert kinds == ["from_truth", "from_truth"]
        for _, volume, truth, case_id in recording.calls:
            assert np.array_equal(truth.array, manifest.case(case_id).load()[1].array)
        return
    assert kinds == ["load", "segment", "segment"]  # loaded once per worker, then passed in
    for _, model, volume, prompts, case_id in recording.calls[1:]:
        image, truth = manifest.case(case_id).load()
        assert model == "the loaded model" and np.array_equal(volume.array, image.array)
        assert not isinstance(volume, LabelVolume) and not isinstance(prompts, LabelVolume)
        if base is Sam2:  # exactly the prompt policy's prompts
            expected = PromptPolicy(PromptSettings(point="centroid"), seed=3).prompts(
                truth, labels=manifest.labels, case_id=case_id)
            assert prompts.to_dict() == expected.to_dict()
        else:
            assert prompts is None
    if base is RevSam2:  # references come from the train split, never the query
        state = json.loads((tmp_path / "out" / "m" / "method.json").read_text(encoding="utf-8"))["state"]
        assert state["references"] == ["phantom_000"]
    assert "truth" not in inspect.signature(base.segment).parameters
