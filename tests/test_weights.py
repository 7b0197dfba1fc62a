"""medseg.weights against a real HTTP server on 127.0.0.1 (the only stand-in for a remote host)."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import medseg.weights
from medseg.errors import Cancelled, WeightsError
from medseg.runtime import read_checkpoint
from medseg.weights import (
    REGISTRY,
    ModelSpec,
    fetch_checkpoint,
    get_spec,
    medseg_home,
    weights_dir,
)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """Serves PAYLOAD at /ckpt.pt; honours Range unless told not to; can drop a response midway."""

    def __init__(self) -> None:
        self.honour_range = True
        self.cut_after: int | None = None  # send this many body bytes of the next response, then hang up
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.headers.get("Range"))
                if self.path != "/ckpt.pt":
                    self.send_error(404)
                    return
                start = 0
                if server.honour_range and self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    if start >= len(PAYLOAD):
                        self.send_error(416)
                        return
                body = PAYLOAD[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[: server.cut_after])
                    server.cut_after = None
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ckpt.pt"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _spec(url: str, sha256: str | None = PAYLOAD_SHA, size: int | None = len(PAYLOAD)) -> ModelSpec:
    return ModelSpec("test-model", "configs/sam2.1/sam2.1_hiera_t.yaml", 128, "ckpt.pt", url, "test", "test",
                     None, size, sha256)


def test_download_verifies_and_caches(server, tmp_path):
    path = fetch_checkpoint(_spec(server.url), directory=tmp_path)
    assert path == tmp_path / "ckpt.pt"
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["ckpt.pt"]
    fetch_checkpoint(_spec(server.url), directory=tmp_path)
    assert len(server.requests) == 1  # the second call used the cache


def test_checksum_mismatch_leaves_nothing_in_cache(server, tmp_path):
    with pytest.raises(WeightsError, match="SHA-256") as info:
        fetch_checkpoint(_spec(server.url, sha256="0" * 64), directory=tmp_path)
    assert server.url in str(info.value)
    assert not (tmp_path / "ckpt.pt").exists()
    assert not (tmp_path / "ckpt.pt.part").exists()


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.cut_after = 300_000
    with pytest.raises(WeightsError, match="run again to resume"):
        fetch_checkpoint(_spec(server.url), directory=tmp_path)
    assert not (tmp_path / "ckpt.pt").exists()  # no half-written file under the final name
    assert (tmp_path / "ckpt.pt.part").stat().st_size == 300_000
    path = fetch_checkpoint(_spec(server.url), directory=tmp_path)
    assert server.requests == [None, "bytes=300000-"]
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "ckpt.pt.part").exists()


def test_interrupted_download_restarts_when_server_ignores_range(server, tmp_path):
    server.cut_after = 300_000
    with pytest.raises(WeightsError):
        fetch_checkpoint(_spec(server.url), directory=tmp_path)
    server.honour_range = False
    path = fetch_checkpoint(_spec(server.url), directory=tmp_path)
    assert path.read_bytes() == PAYLOAD


def test_unknown_hash_is_recorded_on_first_download_and_checked_after(server, tmp_path):
    spec = _spec(server.url, sha256=None, size=None)
    path = fetch_checkpoint(spec, directory=tmp_path)
    assert (tmp_path / "ckpt.pt.sha256").read_text(encoding="utf-8").split()[0] == PAYLOAD_SHA
    path.write_bytes(PAYLOAD[:-1] + b"\x00")  # the file changes on disk later
    with pytest.raises(WeightsError, match="expected " + PAYLOAD_SHA):
        fetch_checkpoint(spec, directory=tmp_path)


def test_offline_error_names_file_url_and_place(tmp_path):
    spec = _spec("http://127.0.0.1:9/ckpt.pt")  # port 9 (discard) refuses connections
    with pytest.raises(WeightsError) as info:
        fetch_checkpoint(spec, directory=tmp_path)
    message = str(info.value)
    assert "ckpt.pt" in message and spec.url in message and str(tmp_path / "ckpt.pt") in message
    assert not list(tmp_path.glob("ckpt.pt*.part"))


def test_cache_location_follows_medseg_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "home"))
    assert medseg_home() == tmp_path / "home"
    assert weights_dir() == tmp_path / "home" / "weights"


def test_registry_names_licences_and_unknown_name():
    assert {"sam2.1-tiny", "sam2.1-small", "sam2.1-base-plus", "sam2.1-large", "medsam2", "untrained"} <= set(REGISTRY)
    assert "CC-BY-SA-4.0" in REGISTRY["medsam2"].licence
    assert REGISTRY["medsam2"].image_size == 512
    assert all("Apache-2.0" in REGISTRY[n].licence for n in REGISTRY if n.startswith("sam2.1"))
    assert REGISTRY["untrained"].untrained and not REGISTRY["sam2.1-tiny"].untrained
    with pytest.raises(WeightsError, match="sam2.1-tiny"):
        get_spec("sam3-huge")


def test_read_checkpoint_formats_and_bad_files(tmp_path):
    weights = {"a.weight": torch.ones(2, 3)}
    torch.save({"model": weights}, tmp_path / "wrapped.pt")
    torch.save(weights, tmp_path / "bare.pt")
    assert torch.equal(read_checkpoint(tmp_path / "wrapped.pt")["a.weight"], weights["a.weight"])
    assert set(read_checkpoint(tmp_path / "bare.pt")) == {"a.weight"}
    data = (tmp_path / "wrapped.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated.pt.*truncated, corrupt"):
        read_checkpoint(tmp_path / "truncated.pt")
    torch.save({"epoch": 3}, tmp_path / "not_weights.pt")
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        read_checkpoint(tmp_path / "not_weights.pt")
    with pytest.raises(WeightsError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_stopped_download_keeps_a_resumable_part_and_reports_bytes(server, tmp_path, monkeypatch):
    monkeypatch.setattr(medseg.weights, "_CHUNK", 256 * 1024)
    seen = []
    with pytest.raises(Cancelled, match="resumable"):
        fetch_checkpoint(_spec(server.url), directory=tmp_path, progress=lambda done, total: seen.append((done, total)),
                         should_stop=lambda: len(seen) >= 2)
    assert seen == [(256 * 1024, len(PAYLOAD)), (512 * 1024, len(PAYLOAD))]
    assert not (tmp_path / "ckpt.pt").exists()
    assert (tmp_path / "ckpt.pt.part").stat().st_size == 512 * 1024
    path = fetch_checkpoint(_spec(server.url), directory=tmp_path)
    assert server.requests == [None, f"bytes={512 * 1024}-"]
    assert path.read_bytes() == PAYLOAD


# --- the base model that ships with medseg -------------------------------------------------------
def test_the_shipped_base_model_loads_by_name_offline_with_its_checksum_and_says_what_it_learned_from(
        monkeypatch, tmp_path):
    import json

    from medseg.sam2 import load_model
    from medseg.sam2.model_dir import read_model_json

    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "empty-cache"))  # nothing downloaded, nothing needed
    spec = get_spec("medseg-micro")
    assert spec.url is None and not spec.untrained and spec.model_dir.is_dir()
    assert spec.size_bytes <= 25 * 2**20 and (spec.model_dir / spec.filename).stat().st_size == spec.size_bytes
    model = load_model("medseg-micro", device="cpu")
    assert model.name == "medseg-micro" and not model.untrained and model.image_size == 128
    assert model.checkpoint_sha256 == spec.sha256 and model.provenance()["licence"] == spec.licence
    assert all(p.dtype == torch.float16 for p in read_checkpoint(spec.model_dir / spec.filename).values()
               if p.is_floating_point())
    info = read_model_json(spec.model_dir)
    assert info["weights_sha256"] == spec.sha256 and info["dtype"] == "float16"
    assert info["statement"].startswith("trained on synthetic scenes only") and info["cohort"]["name"] == "synthetic"
    assert info["architecture"]["name"] == "hiera-micro" and json.dumps(info["training"])  # the recipe, in full
    assert not (tmp_path / "empty-cache").exists()


def test_shipped_weights_that_do_not_match_the_registry_are_refused(tmp_path):
    import shutil

    shipped = get_spec("medseg-micro")
    copy = tmp_path / "medseg-micro"
    shutil.copytree(shipped.model_dir, copy)
    data = bytearray((copy / "weights.pt").read_bytes())
    data[-64] ^= 0xFF
    (copy / "weights.pt").write_bytes(bytes(data))
    tampered = ModelSpec(**{**shipped.__dict__, "packaged": str(copy)})
    with pytest.raises(WeightsError, match="has SHA-256 .* expected .* for medseg-micro"):
        fetch_checkpoint(tampered)
    (copy / "weights.pt").unlink()
    with pytest.raises(WeightsError, match="ship with medseg are missing .* reinstall medseg"):
        fetch_checkpoint(tampered)


def test_faces_offer_the_shipped_model_until_metas_tiny_checkpoint_is_downloaded(monkeypatch, tmp_path, qtbot):
    from medseg.weights import default_model, weights_dir
    from napari_plugin._model_picker import ModelPicker

    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path))
    picker = ModelPicker()
    qtbot.addWidget(picker)
    assert default_model() == picker.choice().model == "medseg-micro"
    assert picker.licence.text().startswith("Ships with medseg (20 MB), trained on synthetic scenes only")
    weights_dir().mkdir(parents=True)
    (weights_dir() / get_spec("sam2.1-tiny").filename).write_bytes(b"downloaded earlier")
    again = ModelPicker()
    qtbot.addWidget(again)
    assert default_model() == again.choice().model == "sam2.1-tiny"


def test_the_command_line_offers_the_same_default_model(monkeypatch, tmp_path, phantom_case):
    """`segment`, `fewshot` and `precompute` without --model: medseg-micro offline, sam2.1-tiny once downloaded."""
    from medseg.cli import build_parser
    from medseg.weights import weights_dir

    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path))
    image, label = str(phantom_case.image), str(phantom_case.label)
    commands = [["segment", image, "--out", "o.nii.gz"], ["precompute", image],
                ["fewshot", "--support", image, label, "--query", image, "--out", "o.nii.gz"]]
    assert [build_parser().parse_args(argv).model for argv in commands] == ["medseg-micro"] * 3
    assert build_parser().parse_args([*commands[0], "--model", "untrained"]).model == "untrained"
    weights_dir().mkdir(parents=True)
    (weights_dir() / get_spec("sam2.1-tiny").filename).write_bytes(b"downloaded earlier")
    assert [build_parser().parse_args(argv).model for argv in commands] == ["sam2.1-tiny"] * 3
