"""The CLI's error boundary: a table of bad invocations across subcommands, each of which must
exit 2 with one line naming the file or field (never a traceback); outputs that are inputs
are refused; --debug shows tracebacks; a bug asks to be reported."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest

from medseg import cli
from medseg.cli import main
from medseg.phantom import write_demo_cohort

# (category, argv template, text the one-line message must contain). Templates use {img},
# {lab}, {tmp}, {file} (a plain file), {pipe} (a valid pipeline), {cohort} (its manifest),
# {dicom} (a DICOM series folder), {bad_json}, {bad_yaml}, {text} (a text file that is no image), {case} (a
# finished case folder).
CORPUS = [
    ("output is input", "segment {img} --point 4,16,16 --out {img} --model untrained", "is the input"),
    ("output is input", "segment {img} --mask {lab} --out {lab} --model untrained", "is the input"),
    ("output is input", "segment {img} --point 4,16,16 --out {tmp}/o.nii.gz --qc {img} --model untrained",
     "is the input"),
    ("output is input", "segment {img} --point 4,16,16 --out {tmp}/link.nii.gz --model untrained", "is the input"),
    ("output is input", "segment {img} --prompts {prompts} --out {tmp}/o.nii.gz --qc {prompts} --model untrained",
     "is the input"),
    ("output is input", "run {pipe} --out {pipe}", "is the input"),
    ("output is input", "fewshot --support {img} {lab} --query {img} --out {lab} --model untrained", "is the input"),
    ("output is input", "fewshot --support {img} {lab} --query {img} --out {tmp}/o.nii.gz --qc {img} --model untrained",
     "is the input"),
    ("output is input", "baseline predict {img} --model {tmp}/cohort --out {img}", "is the input"),
    ("output is input", "baseline predict {img} --model {tmp}/cohort --out {tmp}/o.nii.gz --instances {img}",
     "is the input"),
    ("output is input", "baseline train --manifest {cohort} --out {cohort}", "is the input"),
    ("output is input", "run {pipe} --out {cohort}", "is the input"),
    ("output is input", "segment {dicom} --point 4,16,16 --out {dicom}/o.nii.gz --model untrained",
     "inside the input folder"),
    ("prompt value", "segment {img} --point 4,16,16,5 --out {tmp}/o.nii.gz", "LABEL must be 1"),
    ("prompt value", "segment {img} --point 4,16 --out {tmp}/o.nii.gz", "--point"),
    ("prompt value", "segment {img} --point a,b,c --out {tmp}/o.nii.gz", "--point"),
    ("prompt value", "segment {img} --point 0:4,16,16 --out {tmp}/o.nii.gz", "object ID must be >= 1"),
    ("prompt value", "segment {img} --point 4,-1,16 --out {tmp}/o.nii.gz", ">= 0"),
    ("prompt value", "segment {img} --box 4,20,20,10,10 --out {tmp}/o.nii.gz", "ordered"),
    ("prompt value", "segment {img} --box 4,1,1,5 --out {tmp}/o.nii.gz", "--box"),
    ("prompt value", "segment {img} --box 99,1,1,5,5 --out {tmp}/o.nii.gz --model untrained", "slice 99"),
    ("prompt value", "segment {img} --point 4,16,99 --out {tmp}/o.nii.gz --model untrained", "outside"),
    ("prompt value", "segment {img} --name foo --point 4,16,16 --out {tmp}/o.nii.gz --model untrained", "--name"),
    ("syntax", "segment {img} --prompts {bad_json} --out {tmp}/o.nii.gz", "bad.json:1:"),
    ("syntax", "segment {img} --prompts {case}/prompts.json --out {tmp}/o.nii.gz",
     "prompts.json: holds no prompts; expected"),
    ("syntax", "segment {img} --prompts {pipe_json} --out {tmp}/o.nii.gz", "pipeline.json: holds no prompts; expected"),
    ("syntax", "run {bad_yaml} --out {tmp}/r", "bad.yaml:4:1: YAML syntax error"),
    ("syntax", "replay {case}", "result.json:4:2: damaged JSON"),
    ("device", "segment {img} --point 4,16,16 --device nonsense --out {tmp}/o.nii.gz", "nonsense"),
    ("device", "segment {img} --point 4,16,16 --device cuda:7 --out {tmp}/o.nii.gz", "cuda:7"),
    ("device", "segment {img} --point 4,16,16 --device tpu --out {tmp}/o.nii.gz", "tpu"),
    ("size or number", "segment {img} --point 4,16,16 --image-size 100 --out {tmp}/o.nii.gz", "multiple of 32"),
    ("size or number", "segment {img} --point 4,16,16 --image-size 32 --out {tmp}/o.nii.gz", "at least 64"),
    ("size or number", "segment {img} --point 4,16,16 --image-size big --out {tmp}/o.nii.gz", "--image-size"),
    ("preset", "segment {img} --point 4,16,16 --preset ct-soft --out {tmp}/o.nii.gz",
     "unknown intensity preset 'ct-soft'"),
    ("preset", "fewshot --support {img} {lab} --query {img} --out {tmp}/o.nii.gz --preset ct:40", "'ct:40'"),
    ("size or number", "run {pipe} --out {tmp}/r --workers 0", "--workers"),
    ("size or number", "fewshot --support {img} {lab} --query {img} --out {tmp}/o.nii.gz --threshold 1.5", "[0, 1]"),
    ("size or number", "fewshot --support {img} {lab} --query {img} --out {tmp}/o.nii.gz --k 0", "--k"),
    ("size or number", "fewshot --support {img} {lab} --query {img} --out {tmp}/o.nii.gz --gate-margin -1",
     "--gate-margin"),
    ("option", "fewshot --support {img} {lab} --query {img} --out {tmp}/o.nii.gz --placement after", "'after'"),
    ("size or number", "fewshot --support {img} {lab} [2,99] --query {img} --out {tmp}/o.nii.gz --model untrained",
     "support slice 99 is outside the volume"),  # the brackets of the synopsis are accepted
    ("size or number", "fewshot --support {img} {lab} [2,x] --query {img} --out {tmp}/o.nii.gz",
     "'[2,x]' is not a list of slice indices; expected --support IMAGE LABELS [Z1,Z2,...]"),
    ("option", "fewshot --support {img} {lab} 2,3 --query {img} --out {tmp}/o.nii.gz --register",
     "--register takes each reference's slices from the reference registered onto the query"),
    ("size or number", "baseline predict {img} --model {tmp}/m --out {tmp}/o.nii.gz --score-threshold -0.1", "[0, 1]"),
    ("size or number", "baseline train --manifest {cohort} --out {tmp}/m --input-size 100", "multiple of 32"),
    ("device", "baseline predict {img} --model {tmp}/m --out {tmp}/o.nii.gz --device gpu9", "gpu9"),
    ("size or number", "run {pipe} --out {tmp}/r --workers two", "--workers"),
    ("size or number", "run {pipe} --out {tmp}/r --case-timeout -1", "--case-timeout"),
    ("size or number", "run {pipe} --out {tmp}/r --retries -2", "--retries"),
    ("size or number", "run {pipe} --out {tmp}/r --executor ray --cpus-per-case -1", "num_cpus=-1"),
    ("size or number", "sam2 train --manifest {cohort} --out {tmp}/m --p-reference 1.5",
     "p_reference must be a probability"),
    ("size or number", "sam2 train --manifest {cohort} --out {tmp}/m --references 0", "references at least 1"),
    ("size or number", "sam2 train --manifest {cohort} --out {tmp}/m --p-synthetic 2",
     "p_synthetic and p_parts must be"),
    ("size or number", "sam2 pretrain --out {tmp}/m --steps 0", "steps must be at least 1"),
    ("size or number", "sam2 train --manifest {cohort} --out {tmp}/m --threads 0", "--threads"),
    ("size or number", "sam2 train --manifest {cohort} --out {tmp}/m --threads all", "--threads"),
    ("size or number", "sam2 pretrain --out {tmp}/m --threads -1", "--threads"),
    ("size or number", "baseline train --manifest {cohort} --out {tmp}/m --threads 0", "--threads"),
    ("missing path", "segment {tmp}/nothing.nii.gz --point 4,16,16 --out {tmp}/o.nii.gz", "nothing.nii.gz"),
    ("missing path", "segment {img} --mask {tmp}/nomask.nii.gz --out {tmp}/o.nii.gz", "nomask.nii.gz"),
    ("missing path", "segment {img} --prompts {tmp}/none.json --out {tmp}/o.nii.gz", "none.json"),
    ("missing path", "run {tmp}/none.yaml --out {tmp}/r", "none.yaml"),
    ("missing path", "replay {tmp}/nowhere", "nowhere"),
    ("missing path", "replay {tmp}", "result.json"),
    ("missing path", "info {tmp}/nothing.nii.gz", "nothing.nii.gz"),
    ("missing path", "info {img} --labels {tmp}/nolabels.nii.gz", "nolabels.nii.gz"),
    ("missing path", "baseline predict {img} --model {tmp}/nomodel --out {tmp}/o.nii.gz", "nomodel"),
    ("missing path", "baseline train --manifest {tmp}/none.json --out {tmp}/m", "none.json"),
    ("unwritable output", "segment {img} --point 4,16,16 --out {file}/o.nii.gz --model untrained", "is a file"),
    ("unwritable output", "segment {img} --point 4,16,16 --out {tmp}/o.nii.gz --qc {file}/q.json --model untrained",
     "is a file"),
    ("unwritable output", "run {pipe} --out {file}/r", "{file}"),
    ("unreadable input", "info {text}", "notes.txt"),
    ("unreadable input", "segment {text} --point 4,16,16 --out {tmp}/o.nii.gz", "notes.txt"),
    ("unreadable input", "info {img} --labels {text}", "notes.txt"),
    ("config field", "run {unknown_key} --out {tmp}/r", "methods.o.colour: unknown key"),
    ("config field", "run {no_methods} --out {tmp}/r", "methods: is required"),
    ("option", "segment {img} --point 4,16,16", "--out"),
    ("option", "run {pipe} --out {tmp}/r --executor slurm", "--executor"),
    ("option", "nonsense-command", "invalid choice"),
    ("option", "demo-data {tmp}/d --cases 1", "--cases"),
    ("option", "segment {img} --point 4,16,16 --out {tmp}/o.nii.gz --postprocess clean", "--postprocess"),
    ("option", "fewshot --support {img} {lab} --query {img} --out {tmp}/o.nii.gz --postprocess specks",
     "--postprocess"),
    ("option", "baseline predict {img} --model {tmp}/m --out {tmp}/o.nii.gz --postprocess yes", "--postprocess"),
    ("config field", "run {bad_postprocess} --out {tmp}/r", "methods.o.postprocess: is 'clean'; use one of"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, phantom_case, dicom_phantom) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli_errors")
    img, lab = root / "img.nii.gz", root / "lab.nii.gz"
    shutil.copy(phantom_case.image, img)
    shutil.copy(phantom_case.label, lab)
    (root / "link.nii.gz").symlink_to(img)
    (root / "afile").write_text("a plain file\n", encoding="utf-8")
    (root / "notes.txt").write_text("not an image\n", encoding="utf-8")
    (root / "bad.json").write_text('{"objects": [1, 2,]}', encoding="utf-8")
    (root / "prompts.json").write_text('{"1": {"points": [[4, 16, 16, 1]]}}', encoding="utf-8")
    cohort = write_demo_cohort(root / "cohort", n_cases=3, n_test=1, shape=(6, 32, 32))
    pipe = root / "pipe.yaml"
    pipe.write_text(f"cohort: {cohort}\nmethods:\n  o: {{type: oracle}}\n", encoding="utf-8")
    (root / "bad.yaml").write_text(f"cohort: {cohort}\nmethods:\n  o: {{type: oracle\n", encoding="utf-8")
    (root / "unknown.yaml").write_text(f"cohort: {cohort}\nmethods:\n  o: {{type: oracle, colour: red}}\n",
                                       encoding="utf-8")
    (root / "nomethods.yaml").write_text(f"cohort: {cohort}\n", encoding="utf-8")
    (root / "postprocess.yaml").write_text(f"cohort: {cohort}\nmethods:\n  o: {{type: oracle, postprocess: clean}}\n",
                                           encoding="utf-8")
    assert main(["run", str(pipe), "--out", str(root / "done"), "--no-progress"]) == 0
    case = root / "done" / "o" / "phantom_002"
    (case / "result.json").write_bytes((case / "result.json").read_bytes()[:50])
    return {"dicom": str(dicom_phantom.image), "img": str(img), "lab": str(lab), "tmp": str(root),
            "file": str(root / "afile"), "pipe": str(pipe), "cohort": str(cohort), "bad_json": str(root / "bad.json"),
            "bad_yaml": str(root / "bad.yaml"), "text": str(root / "notes.txt"), "case": str(case),
            "unknown_key": str(root / "unknown.yaml"), "no_methods": str(root / "nomethods.yaml"),
            "pipe_json": str(root / "done" / "pipeline.json"),
            "prompts": str(root / "prompts.json"), "bad_postprocess": str(root / "postprocess.yaml")}


def invoke(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse
        code = exit.code
    return code, capsys.readouterr().err


def test_bad_inputs_exit_2_with_one_line_naming_the_problem(files, capsys):
    failures, categories = [], collections.Counter()
    for category, template, expected in CORPUS:
        categories[category] += 1
        argv = template.format(**files).split()
        code, err = invoke(argv + (["--no-progress"] if argv[0] in ("run",) else []), capsys)
        lines = [line for line in err.splitlines() if line and not line.startswith(("INFO ", "WARNING ", "ERROR "))]
        if code != 2 or len(lines) != 1 or "Traceback" in err or expected.format(**files) not in lines[0]:
            failures.append(f"{template}: exit {code}, {err.strip()[-300:]!r}")
    print(f"\nbad-input corpus: {len(CORPUS)} invocations; {dict(categories)}; {len(CORPUS) - len(failures)} clear "
          "one-line errors")
    assert not failures, "\n".join(failures)
    assert Path(files["img"]).read_bytes()[:2] == b"\x1f\x8b"  # the inputs are intact


def test_debug_shows_the_traceback(files, capsys, monkeypatch):
    argv = ["info", f"{files['tmp']}/nothing.nii.gz"]
    code, err = invoke(["--debug", *argv], capsys)
    assert code == 2 and "Traceback" in err and err.splitlines()[-1].startswith("medseg info: error:")
    monkeypatch.setenv("MEDSEG_DEBUG", "1")
    code, err = invoke(argv, capsys)
    assert code == 2 and "Traceback" in err


def test_a_bug_prints_its_traceback_and_asks_for_a_report(capsys, monkeypatch):
    def broken(args):
        raise ZeroDivisionError("division by zero")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser.set_defaults(run=broken)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(run=broken)
    code, err = invoke(["info", "x"], capsys)
    assert code == 1 and "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1] == f"medseg info: {cli.REPORT_BUG}"


def test_run_exit_code_says_whether_every_case_succeeded(files, tmp_path, capsys):
    manifest = json.loads(Path(files["cohort"]).read_text(encoding="utf-8"))
    for case in manifest["cases"]:
        case["image"] = str(Path(files["cohort"]).parent / case["image"])
        case["label"] = str(Path(files["cohort"]).parent / case["label"])
    test_case = next(c for c in manifest["cases"] if c["split"] == "test")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(Path(test_case["image"]).read_bytes()[:400])
    manifest["cases"].append({**test_case, "id": "broken", "image": str(broken)})
    (tmp_path / "m.json").write_text(json.dumps(manifest), encoding="utf-8")
    (tmp_path / "p.yaml").write_text(f"cohort: {tmp_path / 'm.json'}\nmethods:\n  o: {{type: oracle}}\n",
                                     encoding="utf-8")
    code, err = invoke(["run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "r"), "--no-progress"], capsys)
    assert code in (2, 3)  # the broken file is caught before compute (2) or as a failed case (3)
    assert "Traceback" not in err and "broken" in err


def test_check_output_refuses_inputs_links_and_input_folders(tmp_path):
    from medseg.errors import OutputError
    from medseg.outputs import check_output, check_writable

    image, series = tmp_path / "ct.nii.gz", tmp_path / "series"
    image.write_bytes(b"x")
    series.mkdir()
    (tmp_path / "link.nii.gz").symlink_to(image)
    for output, message in [(image, "is the input"), (tmp_path / "link.nii.gz", "is the input"),
                            (tmp_path / "sub" / ".." / "ct.nii.gz", "is the input"),
                            (series / "labels.nii.gz", "inside the input folder")]:
        with pytest.raises(OutputError, match=message):
            check_output(output, inputs=[image, None, series])
    assert check_output(tmp_path / "labels.nii.gz", inputs=[image, series]) == (tmp_path / "labels.nii.gz").resolve()
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable(image / "labels.nii.gz")
    assert check_writable(image) == image.resolve()  # an earlier output is replaced, not refused


def test_segment_twice_to_the_same_output_replaces_it(files, tmp_path, capsys):
    """The README writes labels.nii.gz in one step and again in the next: the second run replaces the file
    (it used to be refused as '... is a file, not a folder')."""
    out = tmp_path / "labels.nii.gz"
    argv = ["segment", files["img"], "--model", "untrained", "--point", "1:4,16,16", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    first = out.stat().st_mtime_ns
    assert main([*argv[:-1], "--qc", str(tmp_path / "qc.json"), "--no-progress"]) == 0, capsys.readouterr().err
    assert out.stat().st_mtime_ns >= first and (tmp_path / "qc.json").is_file()
