"""``medseg run`` on a cohort kept on a real Orthanc: the same numbers as from files, results pushed
back once (also when resumed or re-run), on the local executor and on Ray, and the faults: a wrong
password (one error before any case), the server stopped mid-run, a series deleted after validation."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import ServerError
from medseg.io import load_labels, load_volume
from medseg.io.dicomweb import local_object, parse_dicomweb_url
from medseg.io.dicomweb.orthanc import LocalOrthanc
from medseg.pacs_demo import write_pacs_demo
from medseg.pipeline import LocalExecutor, RayExecutor, load_pipeline, run_pipeline
from medseg.pipeline.methods import METHODS, Oracle
from pacs_support import PASSWORD, USER, Pacs

SHAPE = (6, 40, 40)
REPO = Path(__file__).parents[1]


@dataclass(frozen=True)
class Demo:
    root: Path
    files: Path  # demo-dicom.json
    pacs: Path  # demo-pacs.json


def make_demo(root: Path, url: str, n_cases: int = 4) -> Demo:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDSEG_DICOMWEB_USER", USER)
        env.setenv("MEDSEG_DICOMWEB_PASSWORD", PASSWORD)
        env.setenv("MEDSEG_HOME", str(root / "home"))
        files, pacs = write_pacs_demo(root, url, n_cases=n_cases, shape=SHAPE)
    return Demo(root, files, pacs)


@pytest.fixture(scope="module")
def demo(pacs, tmp_path_factory) -> Demo:
    """The demo phantoms (4 cases, 2 test) as DICOM + SEG files and on the session's Orthanc."""
    return make_demo(tmp_path_factory.mktemp("pacs-demo"), pacs.url)


def pipeline(path: Path, cohort: Path, *, methods: str = "truth: {type: oracle}", push: str = ""):
    path.write_text(f"name: {path.stem}\ncohort: {cohort}\nmethods:\n  {methods}\n{push}", encoding="utf-8")
    return load_pipeline(path)


def numbers(out: Path) -> dict:
    """Every number of a run's metrics.json (not the pipeline block, which names the cohort's file)."""
    data = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {key: data[key] for key in ("labels", "methods", "paired", "cases")}


def image_series(pacs: Pacs, address: str) -> list[dict]:
    return pacs.study_series(parse_dicomweb_url(address).study)


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (Debian dicom3tools) is not installed; make test installs it")
def test_a_run_from_the_server_equals_the_file_run_and_pushes_each_case_once(demo, pacs_env, tmp_path):
    cohort = json.loads(demo.pacs.read_text(encoding="utf-8"))["cases"]
    before = [len(image_series(pacs_env, case["image"])) for case in cohort[2:]]
    from_files = run_pipeline(pipeline(tmp_path / "files.yaml", demo.files), tmp_path / "files")
    config = pipeline(tmp_path / "pacs.yaml", demo.pacs, push="push: {format: seg}\n")
    summary = run_pipeline(config, tmp_path / "pacs")
    assert from_files.counts == summary.counts == {"truth": {"ok": 2, "failed": 0, "skipped": 0}}
    assert numbers(tmp_path / "pacs") == numbers(tmp_path / "files")
    assert [(r["case"], r["status"], r["already"]) for r in summary.pushed] == [("phantom_002", "stored", False),
                                                                              ("phantom_003", "stored", False)]
    for record, case, count in zip(summary.pushed, cohort[2:], before):
        series = {s["uid"]: s for s in image_series(pacs_env, case["image"])}
        assert len(series) == count + 1  # the image, its SEG labels, and now the result
        pushed_series = series[parse_dicomweb_url(record["address"]).series]
        assert (pushed_series["modality"], pushed_series["instances"]) == ("SEG", 1)
        pushed = local_object(record["address"])
        assert dciodvfy_errors(pushed) == []
        predicted = load_labels(tmp_path / "pacs" / "truth" / case["id"] / "labels.nii.gz", load_volume(case["image"]))
        assert np.array_equal(load_labels(pushed, load_volume(case["image"])).array, predicted.array)
    report = (tmp_path / "pacs" / "report.md").read_text(encoding="utf-8")
    assert "## Stored on the PACS" in report and all(r["address"] in report for r in summary.pushed)
    # resumed: nothing computed, nothing stored; a fresh results folder finds its objects on the server
    push_files = [tmp_path / "pacs" / "truth" / c / "push.json" for c in ("phantom_002", "phantom_003")]
    records = [path.read_bytes() for path in push_files]
    again = run_pipeline(config, tmp_path / "pacs")
    assert again.counts["truth"]["skipped"] == 2 and [r.get("unchanged") for r in again.pushed] == [True, True]
    assert records == [path.read_bytes() for path in push_files]
    elsewhere = run_pipeline(config, tmp_path / "elsewhere", report=False)
    assert [r["already"] for r in elsewhere.pushed] == [True, True]
    assert [r["address"] for r in elsewhere.pushed] == [r["address"] for r in summary.pushed]
    assert [len(image_series(pacs_env, case["image"])) for case in cohort[2:]] == [count + 1 for count in before]
    # no patient field and no password in anything the runs wrote (the cache holds the PACS's objects as they are)
    for out in ("files", "pacs", "elsewhere"):
        assert files_holding(tmp_path / out, "PHANTOM^DEMO") == [] and files_holding(tmp_path / out, PASSWORD) == []
    assert files_holding(tmp_path, PASSWORD) == []


def test_a_wrong_password_is_one_error_before_any_case_runs(demo, pacs_env, tmp_path, monkeypatch, capsys):
    from medseg.cli import main

    monkeypatch.setenv("MEDSEG_DICOMWEB_PASSWORD", "not-" + PASSWORD)
    config = pipeline(tmp_path / "pacs.yaml", demo.pacs)
    with pytest.raises(ServerError, match="refused the credentials"):
        run_pipeline(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["run", str(config.path), "--out", str(tmp_path / "cli"), "--push", "seg", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "medseg run: error: DICOMweb server dicomweb://127.0.0.1:" in err
    assert f"user '{USER}'" in err and "not-" not in err and PASSWORD not in err


@dataclass(frozen=True)
class _NoOptions:
    pass


class _StopsTheServer(Oracle):
    """The oracle, which stops the server (pid in $MEDSEG_TEST_ORTHANC_PID) once it has done phantom_004."""

    kind = "test-stops-server"
    Options = _NoOptions

    def from_truth(self, volume, truth, *, case_id):
        if case_id == "phantom_004":
            os.kill(int(os.environ["MEDSEG_TEST_ORTHANC_PID"]), signal.SIGKILL)
        return super().from_truth(volume, truth, case_id=case_id)


@pytest.mark.slow
def test_the_server_stopped_mid_run_fails_those_cases_and_a_rerun_completes_them_pushing_once(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, _StopsTheServer.kind, _StopsTheServer)
    monkeypatch.setenv("MEDSEG_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDSEG_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    server = LocalOrthanc(tmp_path / "orthanc", users={USER: PASSWORD}).start()
    try:
        demo = make_demo(tmp_path, server.url, n_cases=6)  # test cases phantom_003, _004, _005
        monkeypatch.setenv("MEDSEG_TEST_ORTHANC_PID", str(server.process.pid))
        config = pipeline(tmp_path / "pacs.yaml", demo.pacs, methods="m: {type: test-stops-server}",
                          push="push: {format: rtstruct}\n")
        first = run_pipeline(config, tmp_path / "out")
        assert first.counts == {"m": {"ok": 2, "failed": 1, "skipped": 0}} and first.report is None
        lost = json.loads((tmp_path / "out" / "m" / "phantom_005" / "result.json").read_text(encoding="utf-8"))
        assert lost["error"]["type"] == "ServerUnreachable" and lost["error"]["retryable"]
        assert "unreachable while listing the instances" in lost["error"]["message"]
        assert [(r["case"], r["status"]) for r in first.pushed] == [("phantom_003", "failed"),
                                                                    ("phantom_004", "failed")]
        assert {c for _, c, _ in first.failures} == {"phantom_005", "phantom_003", "phantom_004", "(all)"}
        server.stop()
        server = LocalOrthanc(tmp_path / "orthanc", port=server.port, users={USER: PASSWORD}).start()  # same studies
        monkeypatch.setenv("MEDSEG_TEST_ORTHANC_PID", "0")  # phantom_004 is done: not run again
        second = run_pipeline(config, tmp_path / "out")
        assert second.counts == {"m": {"ok": 1, "failed": 0, "skipped": 2}} and second.failures == []
        assert [(r["status"], r["already"]) for r in second.pushed] == [("stored", False)] * 3
        third = run_pipeline(config, tmp_path / "out", report=False)
        assert [(r["already"], r.get("unchanged")) for r in third.pushed] == [(False, True)] * 3  # the second run's
        pacs = Pacs(server)
        for case in json.loads(demo.pacs.read_text(encoding="utf-8"))["cases"][3:]:
            assert sorted(s["modality"] for s in image_series(pacs, case["image"])) == ["CT", "RTSTRUCT", "SEG"]
    finally:
        server.stop()


class _DeletesASeries(Oracle):
    """The oracle, whose preparation (after validation, before the cases) deletes phantom_003's image series."""

    kind = "test-deletes-series"
    Options = _NoOptions
    pacs: Pacs | None = None

    def prepare(self, cohort, *, progress=None, should_stop=None):
        self.pacs.delete_series(cohort.case("phantom_003").image.series)
        return {}


def test_a_series_deleted_after_validation_fails_its_case_cleanly(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, _DeletesASeries.kind, _DeletesASeries)
    monkeypatch.setenv("MEDSEG_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDSEG_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    with LocalOrthanc(tmp_path / "orthanc", users={USER: PASSWORD}) as server:
        monkeypatch.setattr(_DeletesASeries, "pacs", Pacs(server))
        demo = make_demo(tmp_path, server.url, n_cases=4)
        config = pipeline(tmp_path / "pacs.yaml", demo.pacs, methods="m: {type: test-deletes-series}")
        summary = run_pipeline(config, tmp_path / "out", report=False)
    assert summary.counts == {"m": {"ok": 1, "failed": 1, "skipped": 0}}
    [(method, case, message)] = summary.failures
    assert case == "phantom_003" and "the server lists no such series (deleted, or wrong UIDs?)" in message


@pytest.mark.ray
@pytest.mark.slow
def test_a_process_pool_and_ray_run_a_server_cohort_like_files_in_process(demo, pacs_env, tmp_path):
    import ray

    config = pipeline(tmp_path / "pacs.yaml", demo.pacs, push="push: {format: rtstruct}\n")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        summary = run_pipeline(config, tmp_path / "ray", executor=RayExecutor(num_cpus=1))
    finally:
        ray.shutdown()
    pool = run_pipeline(config, tmp_path / "pool", executor=LocalExecutor(workers=2))
    local = run_pipeline(pipeline(tmp_path / "files.yaml", demo.files), tmp_path / "local")
    assert summary.counts == pool.counts == local.counts
    assert numbers(tmp_path / "ray") == numbers(tmp_path / "pool") == numbers(tmp_path / "local")
    assert [(r["format"], r["status"], r["already"]) for r in summary.pushed] == [("rtstruct", "stored", False)] * 2
    assert [r["already"] for r in pool.pushed] == [True, True]  # the same results: found on the server


@pytest.mark.slow
def test_the_command_line_logs_no_password_and_no_patient_field(demo, pacs_env, tmp_path):
    config = pipeline(tmp_path / "pacs.yaml", demo.pacs, methods="cli-truth: {type: oracle}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = ["-v", "run", str(config.path), "--out", str(tmp_path / "out"), "--push", "seg", "--no-progress"]
    run = subprocess.run([sys.executable, "-m", "medseg.cli", *command], capture_output=True, encoding="utf-8", env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "pushed: 2 stored, 0 already there, 0 failed" in run.stdout
    for text in (run.stdout, run.stderr):
        assert PASSWORD not in text and "PHANTOM^DEMO" not in text
    assert files_holding(tmp_path / "out", "PHANTOM^DEMO") == [] and files_holding(tmp_path, PASSWORD) == []


@pytest.mark.slow
def test_the_readmes_pacs_commands_run_as_written(pacs_env, tmp_path):
    """On a server of its own: the demo's phantoms get the same derived UIDs in every test that stores
    them, so on the session's server another test's smaller phantoms would join these series."""
    with LocalOrthanc(tmp_path / "orthanc", users={USER: PASSWORD}) as server:
        _run_the_readmes_pacs_commands(Pacs(server), tmp_path)


def _run_the_readmes_pacs_commands(pacs_env: Pacs, tmp_path: Path) -> None:
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## PACS (DICOMweb)", 1)[1].split("\n## ", 1)[0]
    serve, commands = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert "medseg pacs serve" in serve  # the fixture's Orthanc stands in for it, on a free port
    address = "dicomweb://127.0.0.1:8043/dicom-web"
    assert commands.startswith(f"PACS={address}\n")
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    shell = "set -euo pipefail\nmedseg() { python -m medseg.cli \"$@\"; }\n"
    script = shell + commands.replace(address, pacs_env.url, 1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, encoding="utf-8",
                         timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines.count("check: 2 ok, 0 failed, 0 already done") == 1
    assert lines.count("check: 0 ok, 0 failed, 2 already done") == 1
    assert "pushed: 2 stored, 0 already there, 0 failed" in lines
    assert "pushed: 0 stored, 2 already there, 0 failed" in lines
    assert sum(line.startswith(f"{pacs_env.url}/studies/") and "CT/SEG" in line for line in lines) >= 4  # pacs ls
    assert PASSWORD not in run.stdout + run.stderr


def test_push_settings_are_checked_before_any_compute(tmp_path, capsys):
    from medseg.cli import main
    from medseg.errors import ConfigError
    from medseg.phantom import write_demo_cohort

    nifti = write_demo_cohort(tmp_path, n_cases=2, n_test=1, shape=SHAPE)
    with pytest.raises(ConfigError, match=r"push\.format: is 'nifti'; use one of \['seg', 'rtstruct'\]"):
        pipeline(tmp_path / "a.yaml", nifti, push="push: {format: nifti}\n")
    with pytest.raises(ConfigError, match="push: server: .*credentials do not go in the address") as error:
        pipeline(tmp_path / "b.yaml", nifti, push=f"push: {{server: 'dicomweb://u:{PASSWORD}@h/dicom-web'}}\n")
    assert PASSWORD not in str(error.value)
    with pytest.raises(ConfigError, match=r"phantom_001.*its image .*\.nii\.gz is a file; give push\.server"):
        run_pipeline(pipeline(tmp_path / "c.yaml", nifti, push="push: {}\n"), tmp_path / "c")
    config = pipeline(tmp_path / "d.yaml", nifti, push="push: {server: 'dicomweb://127.0.0.1:9/dicom-web'}\n")
    with pytest.raises(ConfigError, match=r"is not DICOM \(a SEG / RTSTRUCT needs DICOM\)"):
        run_pipeline(config, tmp_path / "d")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
    assert main(["run", str(config.path), "--out", str(tmp_path / "e"), "--push-to", "ftp://h/x"]) == 2
    assert "argument --push-to: ftp://h/x: not a DICOMweb address" in capsys.readouterr().err
