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
from medseg.errors import Cancelled, ConfigError
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
def model(test_seed):
    return load_model("untrained", image_size=128, device="cpu", seed=test_seed)


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
    assert _precompute(model, volume, EmbeddingStore(tmp_path / "store", dtype="float16")) == SHAPE[0]  # the dtype
    assert len(store.entries()) == 6
    mri = get_preset("mri")
    assert volume_key(volume, mri) == volume_key(make_volume(), mri) != volume_key(make_volume(seed=1), mri)
    assert (model_key("untrained:0:cfg", 128, torch.device("cpu"))
            != model_key("untrained:1:cfg", 128, torch.device("cpu")))
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


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 0.0), ("float16", 2e-3)])
def test_a_session_uses_features_as_the_store_holds_them_from_the_first_encoding(model, tmp_path, test_seed, dtype,
                                                                                 tolerance):
    frames = VolumeFrames(make_volume(test_seed))
    encoder, _ = FeatureCache(model, store=False).features(frames[2])
    store = EmbeddingStore(tmp_path, dtype=dtype)
    first = FeatureCache(model, store=store)
    fresh, _ = first.features(frames[2])  # encoded now and written to the store
    reader = FeatureCache(model, store=store)
    stored, _ = reader.features(frames[2])  # read back in another cache, as another process would
    assert (first.encoder_calls, reader.encoder_calls, reader.disk_hits) == (1, 0, 1)
    for used, read, exact in zip(fresh, stored, encoder):
        assert used.dtype == read.dtype == torch.float32 and torch.equal(used, read)
        assert torch.equal(used, exact.to(getattr(torch, dtype)).float())  # the encoder's numbers in the store's dtype
        torch.testing.assert_close(used, exact, rtol=tolerance, atol=tolerance * float(exact.abs().max()))


# --- results ------------------------------------------------------------------------------
def test_labels_identical_with_and_without_the_store_at_float32(model, tmp_path, test_seed):
    volume = make_volume(test_seed)
    prompts = Prompts().add_mask(1, 1, block_mask()).add_point(2, 4, 30, 10)
    without = Sam2VolumePredictor(model, store=False).segment(volume, prompts)
    predictor = Sam2VolumePredictor(model, store=EmbeddingStore(tmp_path, dtype="float32"))
    cold = predictor.segment(volume, prompts)  # encodes and writes the store
    warm_session = predictor.session(volume)
    warm_session.set_prompts(prompts)
    warm = warm_session.propagate()  # reads every slice from disk
    assert warm_session.cache.encoder_calls == 0 and warm_session.cache.disk_hits == SHAPE[0]
    assert np.array_equal(without.array, cold.array) and np.array_equal(without.array, warm.array)


def test_labels_from_a_float16_store_are_the_same_cold_warm_and_half_warm(model, tmp_path, test_seed):
    volume = make_volume(test_seed)
    prompts = Prompts().add_mask(1, 1, block_mask()).add_point(2, 4, 30, 10)
    full = Sam2VolumePredictor(model, store=EmbeddingStore(tmp_path / "full", dtype="float16"))
    cold = full.segment(volume, prompts)  # encodes every slice
    warm = full.segment(volume, prompts)  # reads every slice
    half = Sam2VolumePredictor(model, store=EmbeddingStore(tmp_path / "half", dtype="float16"))
    filling = half.session(volume)
    filling.cache.precompute(filling.frames[::2])  # as a process killed half-way would leave it
    mixed_session = half.session(volume)
    mixed_session.set_prompts(prompts)
    mixed = mixed_session.propagate()
    assert (mixed_session.cache.disk_hits, mixed_session.cache.encoder_calls) == (3, 3)
    assert np.array_equal(cold.array, warm.array) and np.array_equal(cold.array, mixed.array)
    assert 0 < np.count_nonzero(cold.array) < cold.array.size


def test_the_store_dtype_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSEG_EMBEDDINGS", "on")
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path))
    monkeypatch.delenv("MEDSEG_EMBEDDINGS_DTYPE", raising=False)
    assert EmbeddingStore.default().dtype == np.float32
    monkeypatch.setenv("MEDSEG_EMBEDDINGS_DTYPE", "Float16")
    assert EmbeddingStore.default().dtype == np.float16
    monkeypatch.setenv("MEDSEG_EMBEDDINGS_DTYPE", "bfloat16")
    with pytest.raises(ConfigError, match="MEDSEG_EMBEDDINGS_DTYPE='bfloat16'"):
        EmbeddingStore.default()


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


# A precompute in its own process, killed by SIGKILL (as by the OOM killer) after writing its 4th slice
# and before renaming it into place: the kill point does not depend on timing.
_CHILD = """
import os, signal, sys
from pathlib import Path
import numpy as np
from medseg.geometry import Geometry
from medseg.sam2 import EmbeddingStore, Sam2Session, load_model
from medseg.volume import Volume

replace = os.replace

def replace_or_die(source, target):
    target = Path(target)
    if target.name.startswith("z") and len(list(target.parent.glob("z*.npy"))) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    replace(source, target)

os.replace = replace_or_die
array = np.load(sys.argv[1])
volume = Volume(array, Geometry(array.shape, (3.0, 0.8, 0.8)), modality="MR")
model = load_model("untrained", image_size=128, device="cpu", seed=int(sys.argv[3]))
Sam2Session(model, volume, store=EmbeddingStore(sys.argv[2])).precompute()
"""


def test_a_process_killed_mid_precompute_leaves_a_usable_store(model, tmp_path, test_seed):
    volume = make_volume(shape=(16, 40, 48))
    np.save(tmp_path / "volume.npy", volume.array)
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD), str(tmp_path / "volume.npy"), str(tmp_path / "store"),
         str(test_seed)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=1800,  # only against a hang: it takes seconds
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    folder = next((tmp_path / "store").iterdir())
    stored = sorted(folder.glob("z*.npy"))
    assert len(stored) == 3 and len([p for p in folder.iterdir() if ".tmp-" in p.name]) == 1  # the 4th, half-done
    for path in stored:
        assert np.load(path).shape == np.load(stored[0]).shape  # whole slices only
    session = Sam2VolumePredictor(model, store=EmbeddingStore(tmp_path / "store")).session(volume)
    assert session.precompute() == 13
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]  # a killed writer's temporary is swept
    assert len(list(folder.glob("z*.npy"))) == 16


# --- the disk store: cap, info, clear -------------------------------------------------------
def _entry(store: EmbeddingStore, name: str, nbytes: int) -> Path:
    volume = store.open(name, "model", {"model": "m"})
    volume.put(0, [np.zeros(nbytes // 4, dtype=np.float32)])
    return volume.folder


def test_size_cap_evicts_the_least_recently_used(tmp_path):
    store = EmbeddingStore(tmp_path, max_bytes=10**9)
    a, b = _entry(store, "a", 40_000), _entry(store, "b", 40_000)
    now = time.time()
    for folder, age in ((a, 3000), (b, 2000)):  # last used long ago, b after a (set, not waited for:
        os.utime(folder / "store.json", (now - age, now - age))  # no file-clock resolution involved)
    store.open("a", "model", {})  # a used now, after b
    store.max_bytes = 100_000
    c = _entry(store, "c", 40_000)  # over the cap now: enforced when a folder opens or a precompute ends
    assert store.enforce_cap(keep=[c]) == [b]
    assert a.exists() and c.exists() and not b.exists()
    assert {e.path for e in store.entries()} == {a, c}
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
    assert main(["precompute", str(image), "--model", "untrained", "--image-size", "128", "--device", "cpu",
                 "--no-progress"]) == 0
    assert f"6 of {SHAPE[0]} slices encoded now" in capsys.readouterr().out
    root = tmp_path / "home" / "embeddings"
    (root / "notes.txt").write_text("not medseg's")
    assert main(["cache", "info"]) == 0
    info = capsys.readouterr().out
    assert "1 volume(s)" in info and "6 slices" in info and "model untrained size 128 on cpu, float32" in info
    assert main(["cache", "clear"]) == 0
    assert not list(root.glob("*/store.json")) and (root / "notes.txt").exists() and weights.exists()
