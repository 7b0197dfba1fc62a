"""DICOMweb against a real Orthanc (``pacs`` fixture): addresses, credentials, upload, search,
retrieval into the verified cache with exactly the geometry of files, label objects on the server,
and the faults (wrong password, server down, a series deleted or cut short during retrieval)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest

from medseg.errors import ConfigError, InputError, ServerError, ServerUnreachable
from medseg.io import load_labels, load_volume, save_labels
from medseg.io.dicomweb import (Credentials, DicomwebRef, DicomwebServer, credentials_from_env, local_copy,
                                parse_dicomweb_url, store_labels)
from medseg.io.dicomweb.cache import cache_dir
from medseg.io.dicomweb.orthanc import LocalOrthanc, free_port
from medseg.phantom import make_phantom, write_dicom_series
from medseg.volume import LabelVolume
from pacs_support import PASSWORD, USER

UID = "1.2.826.0.1.3680043.8.498.1"


def upload(url: str, folder) -> DicomwebRef:
    """Store a folder's series on the server (environment credentials); its address."""
    datasets = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    server = DicomwebServer(url)
    server.store(datasets)
    return DicomwebRef(server.url, str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID))


@pytest.fixture
def series(pacs_env, tmp_path):
    """A fresh 8-slice phantom series on the server: (local folder, its address)."""
    volume, _ = make_phantom(3, shape=(8, 24, 28))
    folder = tmp_path / "series"
    write_dicom_series(volume, folder)
    return folder, upload(pacs_env.url, folder)


def test_addresses_name_a_series_and_never_hold_credentials():
    ref = parse_dicomweb_url(f"dicomweb://pacs.example:8042/dicom-web/studies/{UID}/series/{UID}.2")
    assert (ref.server, ref.study, ref.series) == ("http://pacs.example:8042/dicom-web", UID, f"{UID}.2")
    assert ref.instance is None
    assert str(ref) == f"dicomweb://pacs.example:8042/dicom-web/studies/{UID}/series/{UID}.2"
    assert parse_dicomweb_url(f"https://h/wado/studies/{UID}/series/{UID}/instances/{UID}.9").server == "https://h/wado"
    assert str(parse_dicomweb_url("dicomwebs://h:443/dicom-web")) == "dicomwebs://h:443/dicom-web"
    with pytest.raises(InputError, match="name a series"):
        parse_dicomweb_url(f"dicomweb://h/dicom-web/studies/{UID}", level="series")
    with pytest.raises(InputError, match="not a DICOM UID"):
        parse_dicomweb_url("dicomweb://h/dicom-web/studies/1.2.x/series/1.3")
    with pytest.raises(InputError, match="expected .../studies/<uid>"):
        parse_dicomweb_url(f"dicomweb://h/dicom-web/studies/{UID}/instances/{UID}")
    with pytest.raises(InputError, match="credentials do not go in the address") as error:
        parse_dicomweb_url(f"dicomweb://someone:{PASSWORD}@h/dicom-web/studies/{UID}/series/{UID}")
    assert PASSWORD not in str(error.value) and "someone" not in str(error.value)


def test_credentials_come_from_the_environment_or_a_file_and_never_show(tmp_path):
    assert credentials_from_env({}).given is False
    assert credentials_from_env({"MEDSEG_DICOMWEB_TOKEN": "tok", "MEDSEG_DICOMWEB_USER": "u"}).token == "tok"
    basic = credentials_from_env({"MEDSEG_DICOMWEB_USER": "u", "MEDSEG_DICOMWEB_PASSWORD": PASSWORD})
    assert (basic.user, basic.password) == ("u", PASSWORD)
    assert PASSWORD not in repr(basic) + basic.describe()
    with pytest.raises(ConfigError, match="MEDSEG_DICOMWEB_PASSWORD is not set"):
        credentials_from_env({"MEDSEG_DICOMWEB_USER": "u"})
    file = tmp_path / "pacs.json"
    file.write_text(json.dumps({"user": "u", "password": PASSWORD}), encoding="utf-8")
    file.chmod(0o644)
    with pytest.warns(UserWarning, match="can be read by other users; chmod 600 it"):
        from_file = credentials_from_env({"MEDSEG_DICOMWEB_CREDENTIALS": str(file)})
    assert (from_file.user, from_file.password) == ("u", PASSWORD)
    file.write_text('{"user": "u", "password": "' + PASSWORD, encoding="utf-8")  # cut short
    file.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(ConfigError, match="not a readable JSON file") as error:
        credentials_from_env({"MEDSEG_DICOMWEB_CREDENTIALS": str(file)})
    assert PASSWORD not in str(error.value)


def test_upload_search_and_retrieve_give_exactly_the_files_geometry(series, dicom_phantom, tmp_path):
    folder, ref = series
    server = DicomwebServer(ref.server)
    listed = {s.ref: s for s in server.series(ref.study)}
    assert listed[ref].n_instances == 8 and listed[ref].modality == "CT"
    assert any(study.ref.study == ref.study for study in server.studies())
    oblique = upload(ref.server, dicom_phantom.image)  # sagittal-like, tilted, files not in slice order
    for local, address in ((folder, ref), (dicom_phantom.image, oblique)):
        from_file, from_server = load_volume(local), load_volume(str(address))
        assert from_server.array.tobytes() == from_file.array.tobytes()
        assert from_server.spacing == from_file.spacing and from_server.origin == from_file.origin
        assert np.array_equal(from_server.direction, from_file.direction)
        assert {k: v for k, v in from_server.metadata.items() if k != "dicomweb"} == from_file.metadata
        assert from_server.metadata["dicomweb"] == str(address)
    # the second load is served from the cache: a marker put into the cached folder survives it
    cached = local_copy(ref)
    (cached / "marker").write_text("kept", encoding="utf-8")
    assert local_copy(ref) == cached and (cached / "marker").exists()
    assert cached.is_relative_to(cache_dir()) and ref.series not in str(cached)  # no UID in a path


def test_a_damaged_or_outdated_cache_entry_is_fetched_again(series, pacs_env):
    folder, ref = series
    cached = local_copy(ref)
    victim = sorted(cached.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:100])  # a file cut short
    (cached.parent / f".{cached.name}.4242.partial").mkdir()  # a download some killed process left
    fresh = local_copy(ref)
    assert load_volume(fresh).array.tobytes() == load_volume(folder).array.tobytes()
    # a slice deleted on the server: the cache follows the server and the gap is refused, not hidden
    middle = sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in folder.iterdir())[0]
    pacs_env.delete_instance(middle)
    assert len(list(local_copy(ref).iterdir())) == 7


class _DeletesAfterListing(DicomwebServer):
    """The real server, with the series changed by someone else right after medseg listed it."""

    def __init__(self, url, pacs, *, instance=None):
        super().__init__(url)
        self.pacs, self.instance = pacs, instance

    def instance_uids(self, ref):
        listed = super().instance_uids(ref)
        if self.instance is None:
            self.pacs.delete_series(ref.series)
        else:
            self.pacs.delete_instance(listed[self.instance])
        return listed


@pytest.mark.parametrize("what", ["series", "one instance"])
def test_a_series_changed_between_search_and_retrieval_is_not_cached(series, pacs_env, tmp_path, what):
    _, ref = series
    server = _DeletesAfterListing(ref.server, pacs_env, instance=2 if what == "one instance" else None)
    root = tmp_path / "cache"
    expected = "listed 8 instance.*sent 7" if what == "one instance" else "has no such object \\(HTTP 404"
    with pytest.raises(InputError, match=expected):
        local_copy(ref, server=server, root=root)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-kept
    if what == "series":
        with pytest.raises(InputError, match="the server lists no such series"):
            local_copy(ref, root=root)
    else:  # asked again, the server's new state is cached whole
        assert len(list(local_copy(ref, root=root).iterdir())) == 7


def test_the_cache_keeps_within_its_bound(pacs_env, tmp_path, monkeypatch):
    refs = []
    for seed in range(3):
        volume, _ = make_phantom(seed, shape=(6, 24, 24))
        write_dicom_series(volume, tmp_path / f"s{seed}")
        refs.append(upload(pacs_env.url, tmp_path / f"s{seed}"))
    size = sum(f.stat().st_size for f in (tmp_path / "s0").iterdir())
    monkeypatch.setenv("MEDSEG_DICOMWEB_CACHE_GB", str(2.5 * size / 1e9))  # room for two series
    folders = [local_copy(ref) for ref in refs]
    assert [f.exists() for f in folders] == [False, True, True]  # the least recently used went
    monkeypatch.setenv("MEDSEG_DICOMWEB_CACHE_GB", "0")
    with pytest.raises(ConfigError, match="MEDSEG_DICOMWEB_CACHE_GB"):
        local_copy(refs[0])


def test_wrong_password_no_password_and_no_server_are_one_clear_error(series, monkeypatch):
    _, ref = series
    monkeypatch.setenv("MEDSEG_DICOMWEB_PASSWORD", "wrong-" + PASSWORD)
    with pytest.raises(ServerError, match=f"refused the credentials \\(HTTP 401.*user '{USER}'") as error:
        load_volume(str(ref))
    assert PASSWORD not in str(error.value) and ref.server.split("//")[1] in str(error.value)
    monkeypatch.delenv("MEDSEG_DICOMWEB_USER")
    monkeypatch.delenv("MEDSEG_DICOMWEB_PASSWORD")
    with pytest.raises(ServerError, match="asks for credentials"):
        DicomwebServer(ref.server).check()
    down = DicomwebRef(f"http://127.0.0.1:{free_port()}/dicom-web", ref.study, ref.series)
    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match="unreachable while listing the instances .*connection refused"):
        load_volume(down)
    assert time.monotonic() - started < 10  # a few quick retries, not the library's half minute of back-off
    given = Credentials(user=USER, password=PASSWORD, source="test")
    assert DicomwebServer(ref.server, credentials=given).series(ref.study)  # given, not from the environment


def test_a_local_server_on_a_port_another_holds_is_refused_not_shared(pacs, tmp_path):
    """Two servers given one port (two test workers can draw the same free port): the second must not
    take the first's answers as its own start, and so share its studies."""
    second = LocalOrthanc(tmp_path / "second", port=pacs.server.port, users={USER: PASSWORD}, timeout=30)
    with pytest.raises(ServerUnreachable, match=f"Orthanc on port {pacs.server.port} did not start"):
        second.start()
    assert second.process is None and pacs.server._answers()  # the first server is untouched


def test_seg_and_rtstruct_on_the_server_read_like_their_files(series, tmp_path):
    folder, ref = series
    volume = load_volume(str(ref))
    truth = make_phantom(3, shape=(8, 24, 28))[1]
    labels = LabelVolume(truth.array, volume.geometry, label_names=dict(truth.label_names))
    for format in ("seg", "rtstruct"):
        address, sent = store_labels(labels, volume, format=format, key=("test",))
        assert sent and store_labels(labels, volume, format=format, key=("test",)) == (address, False)  # once
        local = save_labels(labels, load_volume(folder), tmp_path / f"{format}.dcm", format=format)
        from_server = load_labels(str(address), volume)
        assert np.array_equal(from_server.array, load_labels(local, load_volume(folder)).array)
        assert np.array_equal(from_server.array, labels.array)
        series_address = DicomwebRef(address.server, address.study, address.series)  # a series of one object
        assert np.array_equal(load_labels(series_address, volume).array, labels.array)
    with pytest.raises(InputError, match="no such series|lists no such"):
        load_labels(DicomwebRef(ref.server, ref.study, UID), volume)


# A user presses Ctrl-C on a server in the foreground. A test run started in the background of a
# non-interactive shell (`make test &`, some CI runners) has SIGINT ignored; a child inherits that, and
# Python then never raises KeyboardInterrupt: `pacs serve` stayed up 120 s after its Ctrl-C in 3 of about
# 8 full-suite runs, all so started. The server here gets SIGINT at its default, as in a terminal.
_SERVE_IN_THE_FOREGROUND = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                            "from medseg.cli import main; sys.exit(main(sys.argv[1:]))")


def test_the_command_line_serves_lists_and_reads_a_server(pacs_env, series, tmp_path, capsys):
    from medseg.cli import main

    _, ref = series
    port = free_port()
    # -X faulthandler: SIGABRT on a hang prints every thread's stack, the evidence the hang needs
    serve = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", _SERVE_IN_THE_FOREGROUND, "pacs", "serve",
                              "--storage", str(tmp_path / "o"),
                              "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        line = serve.stdout.readline()  # printed once Orthanc answers
        assert line == f"Orthanc serving dicomweb://127.0.0.1:{port}/dicom-web (user '{USER}'); Ctrl-C stops it\n"
        DicomwebServer(f"dicomweb://127.0.0.1:{port}/dicom-web").check()  # the environment's user and password
    finally:
        serve.send_signal(signal.SIGINT)
        try:  # communicate drains both pipes: a server blocked on writing a full stderr pipe would never exit
            _, err = serve.communicate(timeout=120)  # only against a hang
        except subprocess.TimeoutExpired:
            serve.send_signal(signal.SIGABRT)
            _, stacks = serve.communicate(timeout=60)
            pytest.fail(f"pacs serve did not exit within 120 s of Ctrl-C; its stacks:\n{stacks}")
        assert serve.returncode == 130, f"pacs serve exited with {serve.returncode}; its stderr:\n{err}"
    with pytest.raises(ServerUnreachable):  # Ctrl-C stopped Orthanc too
        DicomwebServer(f"dicomweb://127.0.0.1:{port}/dicom-web").check()
    assert main(["pacs", "ls", f"{ref.server.replace('http://', 'dicomweb://')}/studies/{ref.study}"]) == 0
    assert capsys.readouterr().out == f"{ref}  CT  8 instance(s)  'medseg phantom'\n"
    assert main(["info", str(ref)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{ref}: CT volume (dicom-series)") and f"dicomweb: {ref}" in printed
    assert main(["pacs", "ls", "dicomweb://user:secret@127.0.0.1/dicom-web"]) == 2
    err = capsys.readouterr().err
    assert "credentials do not go in the address" in err and "secret" not in err
