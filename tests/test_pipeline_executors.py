"""The same pipeline through a local process pool and through Ray on 127.0.0.1 gives the same
results; a worker that dies or hangs is recorded (or retried) and the run goes on."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from medseg.errors import ConfigError
from medseg.phantom import write_demo_cohort
from medseg.pipeline import LocalExecutor, RayExecutor, load_pipeline, run_pipeline
from medseg.pipeline.executors import death_cause
from medseg.pipeline.methods import METHODS, Oracle


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("executors")
    manifest = write_demo_cohort(root, n_cases=4, n_test=2, shape=(6, 40, 40))
    path = root / "pipeline.yaml"
    path.write_text(f"name: executors\ncohort: {manifest}\nmethods:\n  truth: {{type: oracle}}\n", encoding="utf-8")
    return load_pipeline(path)


def results(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text(encoding="utf-8"))["metrics"]
            for p in sorted((out / "truth").glob("*/result.json"))}


@pytest.mark.slow
def test_local_process_pool(tmp_path, config):
    summary = run_pipeline(config, tmp_path / "pool", executor=LocalExecutor(workers=2), report=False)
    assert summary.counts == {"truth": {"ok": 2, "failed": 0, "skipped": 0}}
    reference = run_pipeline(config, tmp_path / "inline", report=False)
    assert reference.counts["truth"]["ok"] == 2
    assert results(tmp_path / "pool") == results(tmp_path / "inline")
    with pytest.raises(ConfigError, match="workers"):
        LocalExecutor(workers=0)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_executor_on_a_local_instance(tmp_path, config):
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        summary = run_pipeline(config, tmp_path / "ray", executor=RayExecutor(num_cpus=1), report=False)
        assert summary.counts == {"truth": {"ok": 2, "failed": 0, "skipped": 0}}
        assert ({case: m["1"]["dice"] for case, m in results(tmp_path / "ray").items()}
                == {"phantom_002": 1.0, "phantom_003": 1.0})
        # resources the cluster lacks are refused up front instead of queueing forever
        with pytest.raises(ConfigError, match="asks for 1 GPU but the Ray cluster has 0"):
            run_pipeline(config, tmp_path / "gpu", executor=RayExecutor(num_gpus=1), report=False)
        assert not (tmp_path / "gpu").exists()
        assert ray.is_initialized()  # the executor leaves a Ray it did not start running
    finally:
        ray.shutdown()


# --- worker death, timeouts, retries -------------------------------------------------------------
@dataclass(frozen=True)
class _NoOptions:
    pass


class _Fragile(Oracle):
    """Kills its own worker process on phantom_003 (as the OOM killer would); hangs on the first
    attempt at phantom_004 (a marker file in $MEDSEG_TEST_MARKERS remembers it); fine elsewhere."""

    kind = "test-fragile"
    Options = _NoOptions

    def from_truth(self, volume, truth, *, case_id):
        if case_id == "phantom_003":
            os.kill(os.getpid(), signal.SIGKILL)
        marker = Path(os.environ["MEDSEG_TEST_MARKERS"]) / case_id
        if case_id == "phantom_004" and not marker.exists():
            marker.touch()
            time.sleep(600)
        return super().from_truth(volume, truth, case_id=case_id)


@pytest.fixture
def fragile(tmp_path_factory, monkeypatch):
    """A 3-case pipeline of ``_Fragile``, registered for this test only."""
    monkeypatch.setitem(METHODS, _Fragile.kind, _Fragile)
    root = tmp_path_factory.mktemp("fragile")
    monkeypatch.setenv("MEDSEG_TEST_MARKERS", str(root))
    manifest = write_demo_cohort(root, n_cases=5, n_test=3, shape=(6, 40, 40))
    path = root / "pipeline.yaml"
    path.write_text(f"name: fragile\ncohort: {manifest}\nmethods:\n  m: {{type: test-fragile}}\n", encoding="utf-8")
    return load_pipeline(path)


def check_fragile_run(summary, out: Path, cause: str) -> None:
    assert summary.counts == {"m": {"ok": 2, "failed": 1, "skipped": 0}}
    died = json.loads((out / "m" / "phantom_003" / "result.json").read_text(encoding="utf-8"))
    assert died["status"] == "failed" and died["attempts"] == 2 and died["error"]["message"].startswith(cause)
    assert summary.failures == [("m", "phantom_003", died["error"]["message"])]
    retried = json.loads((out / "m" / "phantom_004" / "result.json").read_text(encoding="utf-8"))
    assert retried["status"] == "ok" and retried["mean_dice"] == 1.0  # timed out once, then done
    assert sorted(p.name for p in (out / "m").iterdir()) == ["method.json", "phantom_002", "phantom_003", "phantom_004"]


def test_death_causes_are_named():
    assert death_cause(-9) == "worker died: signal 9 (SIGKILL) — out of memory?"
    assert death_cause(-11) == "worker died: signal 11 (SIGSEGV) — a crash in a native library"
    assert death_cause(3) == "worker died: exit code 3"


# An oracle case runs 0.02-0.06 s in a ready worker, its first included (measured with one of 2 cores busy);
# its clock starts when a ready worker gets it, so 10 s stays generous on a loaded machine. The hung attempt
# costs the test those 10 s.
CASE_TIMEOUT = 10


@pytest.mark.slow
def test_a_killed_or_hung_worker_is_replaced_and_the_run_goes_on(tmp_path, fragile):
    executor = LocalExecutor(workers=2, case_timeout=CASE_TIMEOUT, retries=1)
    summary = run_pipeline(fragile, tmp_path / "out", executor=executor, report=False)
    check_fragile_run(summary, tmp_path / "out", "worker died: signal 9 (SIGKILL) — out of memory?")


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_or_hung_ray_worker_is_replaced_and_the_run_goes_on(tmp_path, fragile):
    import ray

    # The fragile plug-in lives in this test module: Ray's workers must be able to import it.
    tests = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": tests}})
    try:
        executor = RayExecutor(num_cpus=1, case_timeout=CASE_TIMEOUT, retries=1)
        summary = run_pipeline(fragile, tmp_path / "out", executor=executor, report=False)
        check_fragile_run(summary, tmp_path / "out", "worker died:")
    finally:
        ray.shutdown()
