"""The same pipeline through a local process pool and through Ray on 127.0.0.1 gives the same results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.errors import ConfigError
from medseg.phantom import write_demo_cohort
from medseg.pipeline import LocalExecutor, RayExecutor, load_pipeline, run_pipeline


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("executors")
    manifest = write_demo_cohort(root, n_cases=4, n_test=2, shape=(6, 40, 40))
    path = root / "pipeline.yaml"
    path.write_text(f"name: executors\ncohort: {manifest}\nmethods:\n  truth: {{type: oracle}}\n", encoding="utf-8")
    return load_pipeline(path)


def results(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text(encoding="utf-8"))["metrics"] for p in sorted((out / "truth").glob("*/result.json"))}


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
        assert {case: m["1"]["dice"] for case, m in results(tmp_path / "ray").items()} == {"phantom_002": 1.0, "phantom_003": 1.0}
        # resources the cluster lacks are refused up front instead of queueing forever
        with pytest.raises(ConfigError, match="asks for 1 GPU but the Ray cluster has 0"):
            run_pipeline(config, tmp_path / "gpu", executor=RayExecutor(num_gpus=1), report=False)
        assert not (tmp_path / "gpu").exists()
        assert ray.is_initialized()  # the executor leaves a Ray it did not start running
    finally:
        ray.shutdown()
