"""Seeded fuzzing of the readers: every damaged file is loaded correctly or refused with a MedsegError.

The corpus is generated here from real files (pydicom's shipped CT and MR slices, a small
series, an RTSTRUCT and a SEG written by medseg, NIfTI files), never stored: truncations,
random byte flips in headers and in pixel data, wrong value representations, missing
required attributes and absurd values. Any other exception type fails the test (a hang
fails it through pytest-timeout, a crash ends the run). Counts of variants and outcomes are
printed (``pytest -s``). A "load" is what the file says: damage no format can detect (flipped voxel
values, a moved position) loads as written. What a load must then be is checked against the
undamaged file: a cut file that loads is the whole file; flipped data bytes change at most as many
voxels (8 per byte for a SEG's bit-packed frames); header damage never adds, drops or invents
voxels (a DICOM image equals pydicom's own decoding of the same bytes, rescaled; one damaged file
changes at most its own slice of a series).
"""

from __future__ import annotations

import gzip
import io
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement

from medseg.datasets import pydicom_test_file
from medseg.errors import MedsegError
from medseg.io import load_labels, load_volume, save_labels
from medseg.phantom import make_phantom, write_dicom_series

pytestmark = pytest.mark.filterwarnings("ignore")  # damaged files warn about every odd value
SEED = 20261201
TIMEOUT = 900  # against a hanging reader only: each test takes seconds, ~30 s on a loaded 2-core machine
# Damage the DICOM image reader accepts today (GDCM decodes it), found by the checks below; listed
# so that the rest stays checked. Strict: a listed variant that stops being a bug fails the test.
_COLUMNS = "Columns 65535 with pixel data for 128 or 64: loaded with invented voxels"
_SLOPE = "RescaleSlope inf: loaded as if it were 1"
KNOWN_DICOM_BUGS: dict[str, dict[str, str]] = {
    "CT_small.dcm": {"absurd-Columns": _COLUMNS, "absurd-RescaleSlope": _SLOPE,
                     "header-flip-12": "Rows 128 flipped to 9088: loaded with invented voxels"},
    "MR_small.dcm": {"absurd-Columns": _COLUMNS, "absurd-RescaleSlope": _SLOPE},
}
REQUIRED = ("Rows", "Columns", "PixelData", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
            "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel", "SOPClassUID", "SeriesInstanceUID",
            "RescaleSlope", "PhotometricInterpretation", "TransferSyntaxUID")
ABSURD = {"Rows": 0, "Columns": 65535, "PixelSpacing": ["0", "0"], "ImagePositionPatient": ["nan", "1", "2"],
          "ImageOrientationPatient": ["0"] * 6, "BitsAllocated": 12, "SamplesPerPixel": 3, "RescaleSlope": "inf",
          "NumberOfFrames": 7, "SliceThickness": "-1", "PixelRepresentation": 5}
WRONG_VRS = (("Rows", "DS", "12.5"), ("ImagePositionPatient", "US", b"\x01\x00"), ("PixelSpacing", "LO", "a\\b"),
             ("SeriesInstanceUID", "SQ", None), ("Columns", "FD", b"\x00" * 8),
             ("RescaleIntercept", "UL", b"\xff\xff\xff\xff"))


def _pixel_offset(data: bytes) -> int:
    at = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    return at if at > 0 else len(data) // 2


def _byte_variants(data: bytes, rng: np.random.Generator, header_end: int, n: int) -> Iterator[tuple[str, bytes]]:
    for i in range(n):
        yield f"truncated-{i}", data[: int(rng.integers(0, len(data)))]
    for i in range(n):
        flipped = bytearray(data)
        for at in rng.integers(0, header_end, size=int(rng.integers(1, 9))):
            flipped[at] ^= int(rng.integers(1, 256))
        yield f"header-flip-{i}", bytes(flipped)
    for i in range(n // 2):
        flipped = bytearray(data)
        for at in rng.integers(header_end, len(data), size=int(rng.integers(1, 33))):
            flipped[at] ^= int(rng.integers(1, 256))
        yield f"data-flip-{i}", bytes(flipped)


def _dataset_variants(path: Path) -> Iterator[tuple[str, Callable[[pydicom.Dataset], None]]]:
    for keyword in REQUIRED:
        yield f"missing-{keyword}", lambda ds, k=keyword: (ds.file_meta if k == "TransferSyntaxUID"
                                                           else ds).pop(k, None)
    for keyword, value in ABSURD.items():
        yield f"absurd-{keyword}", lambda ds, k=keyword, v=value: setattr(ds, k, v)
    for keyword, vr, value in WRONG_VRS:
        def wrong_vr(ds, k=keyword, vr=vr, value=value):
            tag = pydicom.datadict.tag_for_keyword(k)
            ds[tag] = DataElement(tag, vr, pydicom.Sequence([pydicom.Dataset()]) if vr == "SQ" else value)
        yield f"wrong-vr-{keyword}-{vr}", wrong_vr


def _write_dataset_variant(source: Path, target: Path, change: Callable[[pydicom.Dataset], None]) -> bool:
    ds = pydicom.dcmread(source)
    change(ds)
    try:
        ds.save_as(target, enforce_file_format=False)
    except Exception:  # pydicom itself refuses to encode this variant: nothing to read
        return False
    return True


def _outcome(load: Callable[[], object], check: Callable[[object], str | None] = lambda _: None) -> str:
    """``loaded``, the MedsegError's name, or ``BUG ...``: another exception, or a load that ``check`` finds wrong."""
    try:
        loaded = load()
    except MedsegError as error:
        return type(error).__name__
    except Exception as error:  # the failure this test exists to find
        return f"BUG {type(error).__name__}: {str(error)[:200]}"
    wrong = check(loaded)
    return "loaded" if wrong is None else f"BUG loaded wrongly: {wrong}"


def _flipped(original: bytes, damaged: bytes) -> int:
    """How many bytes of two equally long byte strings differ."""
    return int(np.count_nonzero(np.frombuffer(original, np.uint8) != np.frombuffer(damaged, np.uint8)))


def _changed(variant: str, loaded: np.ndarray, original: np.ndarray, max_changed: int) -> str | None:
    """Why ``loaded`` cannot be ``original`` with at most ``max_changed`` voxels changed, or None."""
    if loaded.shape != original.shape:
        return f"{variant}: shape {loaded.shape}, the undamaged file's {original.shape}"
    changed = int(np.count_nonzero(loaded != original))
    return None if changed <= max_changed else f"{variant}: {changed} voxels changed, at most {max_changed} may"


def _expect(variant: str, original, *, flips: int = 0, per_byte: int | None = 1,
            otherwise: Callable[[object], str | None] = lambda _: None) -> Callable[[object], str | None]:
    """The check of a loaded variant: a cut file loads whole, flipped data bytes change at most
    ``per_byte`` voxels each (and keep the grid); other damage, and every damage when ``per_byte``
    is None (no bound: RTSTRUCT contours are text), is checked by ``otherwise``."""
    def check(loaded) -> str | None:
        if variant.startswith(("truncated", "data-flip", "gz-")) and per_byte is not None:
            if not loaded.geometry.same_grid(original.geometry):
                return f"{variant}: the grid changed ({original.geometry.describe_difference(loaded.geometry)})"
            return _changed(variant, loaded.array, original.array, flips * per_byte if "data-flip" in variant else 0)
        return otherwise(loaded)
    return check


def _as_the_file_says(path: Path, variant: str, original) -> Callable[[object], str | None]:
    """A loaded single DICOM image is what pydicom decodes from the same bytes, rescaled; where pydicom
    cannot decode them (a decoding attribute is missing or odd), it is the undamaged image (the reader
    assumed the value the file had). A non-finite rescale is never loaded."""
    def check(loaded) -> str | None:
        header = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        try:
            slope, intercept = float(header.get("RescaleSlope", 1)), float(header.get("RescaleIntercept", 0))
        except (TypeError, ValueError):
            slope = intercept = float("nan")
        if not np.isfinite([slope, intercept]).all():
            return f"{variant}: loaded although the rescale is slope {slope}, intercept {intercept}"
        try:
            stored = pydicom.dcmread(path, force=True).pixel_array.astype(np.float64)
        except Exception as error:
            wrong = _changed(variant, loaded.array, original.array, 0)
            return None if wrong is None else f"{wrong} (and pydicom cannot decode it: {type(error).__name__})"
        return _changed(variant, loaded.array, (stored * slope + intercept).astype(np.float32)[None], 0)
    return check


def _report(name: str, outcomes: dict[str, str], known: dict[str, str] | None = None) -> None:
    """Fail on every ``BUG`` outcome, except the ``known`` ones, which must still be bugs (strict)."""
    counts = Counter(o if not o.startswith("BUG") else "BUG" for o in outcomes.values())
    print(f"\n{name}: {len(outcomes)} variants -> {dict(sorted(counts.items()))}")
    known = {v: why for v, why in (known or {}).items() if v in outcomes}
    fixed = sorted(v for v in known if not outcomes[v].startswith("BUG"))
    assert not fixed, f"known reader bugs no longer happen, remove them from KNOWN_DICOM_BUGS[{name!r}]: {fixed}"
    bugs = {variant: o for variant, o in outcomes.items() if o.startswith("BUG") and variant not in known}
    assert not bugs, "readers failed on:\n" + "\n".join(f"  {v}: {o}" for v, o in list(bugs.items())[:20])


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_fuzzed_single_dicom_files(name, tmp_path):
    source = Path(pydicom_test_file(name))
    original = load_volume(source)
    assert _as_the_file_says(source, "undamaged", original)(original) is None  # pydicom agrees on the real file
    rng = np.random.default_rng([SEED, len(name)])
    data = source.read_bytes()
    outcomes = {}
    for variant, mutated in _byte_variants(data, rng, _pixel_offset(data), 20):
        path = tmp_path / f"{variant}.dcm"
        path.write_bytes(mutated)
        flips = _flipped(data, mutated) if len(mutated) == len(data) else 0
        check = _expect(variant, original, flips=flips, otherwise=_as_the_file_says(path, variant, original))
        outcomes[variant] = _outcome(lambda p=path: load_volume(p), check)
    for variant, change in _dataset_variants(source):
        path = tmp_path / f"{variant}.dcm"
        if _write_dataset_variant(source, path, change):
            outcomes[variant] = _outcome(lambda p=path: load_volume(p), _as_the_file_says(path, variant, original))
    _report(name, outcomes, known=KNOWN_DICOM_BUGS[name])


@pytest.fixture(scope="module")
def small_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_series")
    volume, labels = make_phantom(7, shape=(4, 16, 16))
    write_dicom_series(volume, folder / "series")
    series = load_volume(folder / "series")
    rt = save_labels(labels.array, series, folder / "labels" / "rt.dcm", format="rtstruct")
    seg = save_labels(labels.array, series, folder / "labels" / "seg.dcm")
    return folder / "series", rt, seg


@pytest.mark.timeout(TIMEOUT)
def test_fuzzed_file_in_a_series(small_series, tmp_path):
    series, _, _ = small_series
    rng = np.random.default_rng([SEED, 1])
    victim_name = sorted(p.name for p in series.iterdir())[1]
    data = (series / victim_name).read_bytes()
    outcomes = {}

    original = load_volume(series)
    one_slice = int(np.prod(original.shape[1:]))

    def load_with(variant: str, write: Callable[[Path], bool], flips: int = 0) -> None:
        folder = tmp_path / variant
        shutil.copytree(series, folder)
        if write(folder / victim_name):
            at_most_one_slice = lambda loaded: _changed(variant, loaded.array, original.array, one_slice)  # noqa: E731
            outcomes[variant] = _outcome(lambda: load_volume(folder),
                                         _expect(variant, original, flips=flips, otherwise=at_most_one_slice))

    for variant, mutated in _byte_variants(data, rng, _pixel_offset(data), 12):
        flips = _flipped(data, mutated) if len(mutated) == len(data) else 0
        load_with(variant, lambda p, m=mutated: p.write_bytes(m) is not None, flips)
    for variant, change in _dataset_variants(series / victim_name):
        load_with(variant, lambda p, c=change: _write_dataset_variant(series / victim_name, p, c))
    _report("one file of a 4-slice series", outcomes)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("kind", ["rtstruct", "seg"])
def test_fuzzed_label_objects(kind, small_series, tmp_path):
    series, rt, seg = small_series
    volume = load_volume(series)
    source = rt if kind == "rtstruct" else seg
    rng = np.random.default_rng([SEED, 2, len(kind)])
    data = source.read_bytes()
    original = load_labels(source, volume)
    values = set(np.unique(original.array).tolist())

    def known_values(variant: str) -> Callable[[object], str | None]:
        def check(loaded) -> str | None:
            new = set(np.unique(loaded.array).tolist()) - values
            return f"{variant}: label values {sorted(new)} the undamaged file does not have" if new else None
        return check

    outcomes = {}
    for variant, mutated in _byte_variants(data, rng, min(len(data), 4000), 20):
        path = tmp_path / f"{variant}.dcm"
        path.write_bytes(mutated)
        flips = _flipped(data, mutated) if len(mutated) == len(data) else 0
        check = _expect(variant, original, flips=flips, per_byte=8 if kind == "seg" else None,  # SEG: 1 bit a voxel
                        otherwise=known_values(variant))
        outcomes[variant] = _outcome(lambda p=path: load_labels(p, volume), check)
    for i in range(10):  # contour points or segment frames moved off the grid, ROI references broken
        ds = pydicom.dcmread(source)
        if kind == "rtstruct":
            contour = ds.ROIContourSequence[int(rng.integers(len(ds.ROIContourSequence)))].ContourSequence[0]
            points = np.asarray(contour.ContourData, float)
            points[int(rng.integers(len(points)))] += float(rng.normal(0, 50))
            contour.ContourData = [f"{v:.4f}" for v in points]
            ds.ROIContourSequence[0].ReferencedROINumber = int(rng.integers(-2, 9))
        else:
            ds.NumberOfFrames = int(rng.integers(0, 9))
        path = tmp_path / f"values-{i}.dcm"
        ds.save_as(path)
        outcomes[f"values-{i}"] = _outcome(lambda p=path: load_labels(p, volume), known_values(f"values-{i}"))
    _report(kind, outcomes)


def _nifti_header_variants(path: Path) -> Iterator[tuple[str, Callable[[nib.Nifti1Header], None]]]:
    fields = {"dim": [[3, 0, 4, 4, 1, 1, 1, 1], [5, 4, 4, 4, 2, 2, 1, 1], [-1, 4, 4, 4, 1, 1, 1, 1],
                      [3, 4, 4, 30000, 1, 1, 1, 1]],
              "pixdim": [[1, 0, 0, 0, 1, 1, 1, 1], [1, np.nan, 1, 1, 1, 1, 1, 1], [-1, -2, 1e30, 1, 1, 1, 1, 1]],
              "datatype": [0, 1, 2048, 32767], "bitpix": [0, 3], "vox_offset": [0, 1e9, -5],
              "scl_slope": [np.nan, np.inf, 0],
              "sform_code": [7, -1], "qform_code": [9], "srow_x": [[0, 0, 0, 0], [np.nan, 0, 0, 0]], "quatern_b": [5.0]}
    for field, values in fields.items():
        for i, value in enumerate(values):
            def change(header, f=field, v=value):
                header[f] = v
            yield f"{field}-{i}", change


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_fuzzed_nifti(suffix, tmp_path):
    volume, _ = make_phantom(3, shape=(6, 20, 24))
    source = tmp_path / f"source{suffix}"
    nib.save(nib.Nifti1Image(volume.array.transpose(2, 1, 0).astype(np.int16), volume.affine), source)
    original = load_volume(source)
    rng = np.random.default_rng([SEED, len(suffix)])
    raw = gzip.decompress(source.read_bytes()) if suffix == ".nii.gz" else source.read_bytes()
    outcomes = {}
    for variant, mutated in _byte_variants(raw, rng, 352, 25):
        path = tmp_path / f"{variant}{suffix}"
        path.write_bytes(gzip.compress(mutated) if suffix == ".nii.gz" else mutated)
        flips = _flipped(raw, mutated) if len(mutated) == len(raw) else 0
        outcomes[variant] = _outcome(lambda p=path: load_volume(p), _expect(variant, original, flips=flips))
    if suffix == ".nii.gz":  # damage to the compressed stream itself: what loads passed gzip's CRC, so it is whole
        for variant, mutated in _byte_variants(source.read_bytes(), rng, 30, 10):
            path = tmp_path / f"gz-{variant}{suffix}"
            path.write_bytes(mutated)
            outcomes[f"gz-{variant}"] = _outcome(lambda p=path: load_volume(p), _expect(f"gz-{variant}", original))
    for variant, change in _nifti_header_variants(source):
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
        change(header)
        mutated = header.binaryblock + raw[348:]
        path = tmp_path / f"hdr-{variant}{suffix}"
        path.write_bytes(gzip.compress(mutated) if suffix == ".nii.gz" else mutated)
        outcomes[f"hdr-{variant}"] = _outcome(lambda p=path: load_volume(p))
    _report(f"NIfTI {suffix}", outcomes)
