"""The SAM2 embedding store with the real SAM2 encoder (random weights, image size 128, tiny volumes)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.errors import Cancelled
from medseg.geometry import Geometry
from medseg.preprocess import get_preset
from medseg.prompts import Prompts
from medseg.sam2 import EmbeddingStore, FeatureCache, Sam2VolumePredictor, VolumeFrames, load_model
from medseg.sam2.embeddings import model_key, volume_key
from medseg.volume import Volume

SHAPE = (6, 40, 48)


def make_volume(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 10, shape).astype(np.float32)
    array[:, 10:26, 14:36] += 200
    return Volume(array, Geometry(shape, (3.0, 0.8, 0.8)), modality="MR")


def block_mask() -> np.ndarray:
    mask = np.zeros(SHAPE[1:], dtype=bool)
    mask[12:22, 18:30] = True
    return mask


@pytest.fixture(scope="module")
def model():
    return load_model("untrained", image_size=128, device="cpu")


def _precompute(model, volume, store, preset=None) -> int:
    cache = FeatureCache(model, store=store)
    return cache.precompute(VolumeFrames(volume, preset))


# --- keys ---------------------------------------------------------------------------------
def test_key_hits_on_the_same_inputs_and_misses_on_voxel_preset_size_or_checkpoint(model, tmp_path):
    store = EmbeddingStore(tmp_path / "store")
    volume = make_volume()
    assert _precompute(model, volume, store) == SHAPE[0]
    assert _precompute(model, make_volume(), store) == 0  # same voxels in another object: all hits
    changed = volume.array.copy()
    changed[3, 5, 5] += 1.0
    assert _precompute(model, volume.with_array(changed), store) == SHAPE[0]  # one voxel
    assert _precompute(model, volume, store, preset="mri:1,99") == SHAPE[0]  # the preset
    small = load_model("untrained", image_size=64, device="cpu")
    assert _precompute(small, volume, store) == SHAPE[0]  # the image size
    path = tmp_path / "same_weights.pt"
    torch.save({"model": model.net.state_dict()}, path)
    assert _precompute(load_model(path, image_size=128, device="cpu"), volume, store) == SHAPE[0]  # the checkpoint
    assert len(store.entries()) == 5
    mri = get_preset("mri")
    assert volume_key(volume, mri) == volume_key(make_volume(), mri) != volume_key(make_volume(seed=1), mri)
    assert model_key("untrained:0:cfg", 128, torch.device("cpu")) != model_key("untrained:1:cfg", 128, torch.device("cpu"))
    assert model_key("sha", 128, torch.device("cpu")) != model_key("sha", 128, torch.device("cuda"))


def test_weights_only_in_memory_never_use_the_store(model, tmp_path):
    """A model being trained has no name for its weights: two states of it must not share features."""
    store = EmbeddingStore(tmp_path / "store")
    in_training = dataclasses.replace(model, name="in training", checkpoint=None, checkpoint_sha256=None, seed=None)
    assert in_training.weights_id is None
    cache = FeatureCache(in_training, store=store)
    assert cache.store is None
    assert cache.precompute(VolumeFrames(make_volume())) == SHAPE[0]
    assert store.entries() == []
    assert _precompute(in_training, make_volume(), store) == SHAPE[0]  # encoded again: nothing was kept


def test_stored_features_are_the_encoders_at_float32_and_close_at_float16(model, tmp_path):
    frames = VolumeFrames(make_volume())
    fresh, _ = FeatureCache(model, store=False).features(frames[2])
    for dtype, tolerance in (("float32", 0.0), ("float16", 2e-3)):
        store = EmbeddingStore(tmp_path / dtype, dtype=dtype)
        FeatureCache(model, store=store).precompute(frames)
        reader = FeatureCache(model, store=store)
        stored, _ = reader.features(frames[2])
        assert (reader.encoder_calls, reader.disk_hits) == (0, 1)
        for a, b in zip(stored, fresh):
            torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * float(b.abs().max()))


# --- results ------------------------------------------------------------------------------
def test_labels_identical_with_and_without_the_store_at_float32(model, tmp_path):
    volume = make_volume()
    prompts = Prompts().add_mask(1, 1, block_mask()).add_point(2, 4, 30, 10)
    without = Sam2VolumePredictor(model, store=False).segment(volume, prompts)
    predictor = Sam2VolumePredictor(model, store=EmbeddingStore(tmp_path, dtype="float32"))
    cold = predictor.segment(volume, prompts)  # encodes and writes the store
    warm_session = predictor.session(volume)
    warm_session.set_prompts(prompts)
    warm = warm_session.propagate()  # reads every slice from disk
    assert warm_session.cache.encoder_calls == 0 and warm_session.cache.disk_hits == SHAPE[0]
    assert np.array_equal(without.array, cold.array) and np.array_equal(without.array, warm.array)


def test_a_correction_reruns_no_encoder(model):
    session = Sam2VolumePredictor(model, store=False).session(make_volume())
    session.add_mask(1, 1, block_mask())
    session.propagate()
    calls = session.cache.encoder_calls
    assert calls == SHAPE[0]
    session.add_point(1, 4, 15, 20, positive=False)
    session.propagate()
    assert session.cache.encoder_calls == calls


# --- precompute: cancel, kill, progress -----------------------------------------------------
def test_precompute_stops_between_batches_and_resumes(model, tmp_path):
    store = EmbeddingStore(tmp_path)
    session = Sam2VolumePredictor(model, store=store).session(make_volume())
    steps = []
    with pytest.raises(Cancelled, match="after 2 of 6 slices"):
        session.precompute(progress=lambda d, t: steps.append((d, t)), should_stop=lambda: len(steps) > 2)
    assert steps == [(0, 6), (1, 6), (2, 6)]
    again = Sam2VolumePredictor(model, store=store).session(make_volume())
    assert again.precompute() == 4 and again.precompute() == 0


_CHILD = """
import sys, numpy as np
from medseg.geometry import Geometry
from medseg.sam2 import EmbeddingStore, Sam2Session, load_model
from medseg.volume import Volume
array = np.load(sys.argv[1])
volume = Volume(array, Geometry(array.shape, (3.0, 0.8, 0.8)), modality="MR")
session = Sam2Session(load_model("untrained", image_size=128, device="cpu"), volume, store=EmbeddingStore(sys.argv[2]))
session.precompute(progress=lambda done, total: print(done, flush=True))
print("finished", flush=True)
"""


def test_a_process_killed_mid_precompute_leaves_a_usable_store(model, tmp_path):
    volume = make_volume(shape=(16, 40, 48))
    np.save(tmp_path / "volume.npy", volume.array)
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CHILD), str(tmp_path / "volume.npy"), str(tmp_path / "store")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    for line in child.stdout:
        if line.strip() == "3":
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    folder = next((tmp_path / "store").iterdir())
    stored = sorted(folder.glob("z*.npy"))
    assert 3 <= len(stored) < 16
    for path in stored:
        assert np.load(path).shape == np.load(stored[0]).shape  # whole slices only
    session = Sam2VolumePredictor(model, store=EmbeddingStore(tmp_path / "store")).session(volume)
    assert session.precompute() == 16 - len(stored)
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]  # a killed writer's temporary is swept
    assert len(list(folder.glob("z*.npy"))) == 16


# --- the disk store: cap, info, clear -------------------------------------------------------
def _entry(store: EmbeddingStore, name: str, nbytes: int) -> Path:
    volume = store.open(name, "model", {"model": "m"})
    volume.put(0, [np.zeros(nbytes // 2, dtype=np.float32)])  # float16 on disk
    return volume.folder


def test_size_cap_evicts_the_least_recently_used(tmp_path):
    store = EmbeddingStore(tmp_path, max_bytes=10**9)
    a, b = _entry(store, "a", 40_000), _entry(store, "b", 40_000)
    time.sleep(0.02)
    store.open("a", "model", {})  # a used after b
    time.sleep(0.02)
    store.max_bytes = 100_000
    c = _entry(store, "c", 40_000)  # over the cap now: enforced when a folder opens or a precompute ends
    assert store.enforce_cap(keep=[c]) == [b]
    assert a.exists() and c.exists() and not b.exists()
    assert [e.path for e in store.entries()] == [a, c]
    store.max_bytes = 10
    assert store.enforce_cap(keep=[c]) == [a] and c.exists()  # the folder in use stays, even alone over the cap


def test_cli_precompute_info_and_clear_touch_only_the_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDSEG_EMBEDDINGS", "on")
    volume = make_volume()
    image = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(volume.array.transpose(2, 1, 0), volume.affine), image)
    weights = tmp_path / "home" / "weights" / "kept.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    assert main(["precompute", str(image), "--model", "untrained", "--image-size", "128", "--device", "cpu", "--no-progress"]) == 0
    assert f"6 of {SHAPE[0]} slices encoded now" in capsys.readouterr().out
    root = tmp_path / "home" / "embeddings"
    (root / "notes.txt").write_text("not medseg's")
    assert main(["cache", "info"]) == 0
    info = capsys.readouterr().out
    assert "1 volume(s)" in info and "6 slices" in info and "model untrained size 128" in info
    assert main(["cache", "clear"]) == 0
    assert not list(root.glob("*/store.json")) and (root / "notes.txt").exists() and weights.exists()
