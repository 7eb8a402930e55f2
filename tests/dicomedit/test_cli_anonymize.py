"""`flip-imaging anonymize` through typer's CliRunner on generated DICOM files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from typer.testing import CliRunner

from flip_imaging.dicomedit import hash_uid
from flip_imaging.dicomedit.cli import app

runner = CliRunner()
SCRIPT = """version "6.6"
(0010,0010) := subject
(0010,0020) := session
(0008,1030) := project
-(0010,0030)
(0020,000D) := hashUID[(0020,000D)]
(0008,0060) = "SR" ? reject[]
"""


def make_file(path: Path, sop: str, modality: str = "CT", name: str = "Secret^Patient") -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop
    ds.PatientName = name
    ds.PatientID = "MRN-SECRET"
    ds.PatientBirthDate = "19700101"
    ds.StudyInstanceUID = "1.2.3"
    ds.Modality = modality
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.arange(16, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "site.das"
    p.write_text(SCRIPT, encoding="utf-8")
    return p


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def test_files_and_folders_recursing(tmp_path: Path, script: Path) -> None:
    a = make_file(tmp_path / "in" / "a.dcm", "1.2.3.1")
    make_file(tmp_path / "tree" / "sub" / "b.dcm", "1.2.3.2")
    out = tmp_path / "out"
    res = invoke("--script", str(script), "--var", "project=P1", "--var", "subject=S01", "--var",
                 "session=E01", str(a), str(tmp_path / "tree"), "--out", str(out))
    assert res.exit_code == 0, res.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.dcm", "tree/sub/b.dcm"]
    ds = pydicom.dcmread(out / "a.dcm")
    assert ds.PatientName == "S01" and ds.PatientID == "E01" and ds.StudyDescription == "P1"
    assert "PatientBirthDate" not in ds
    assert ds.StudyInstanceUID == hash_uid("1.2.3")
    assert ds.PixelData == np.arange(16, dtype="<u2").tobytes()
    assert "Secret" not in res.output and "MRN-SECRET" not in res.output
    assert "done" in res.output


def test_rejected_files_are_not_written(tmp_path: Path, script: Path) -> None:
    make_file(tmp_path / "in" / "sr.dcm", "1.2.3.9", modality="SR")
    out = tmp_path / "out"
    res = invoke("--script", str(script), str(tmp_path / "in"), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert not any(out.rglob("*.dcm"))
    assert "rejected" in res.output


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b"not dicom at all" * 20, "not a DICOM"),
        (lambda b: b[:128] + b"DICX" + b[132:], "not a DICOM"),
        (lambda b: b.replace(b"PN", b"QQ", 1), "unknown VR"),
        (lambda b: b.replace(b"PN\x0e\x00", b"PN\xf0\xff", 1), "truncated"),
    ],
)
def test_bad_input_gives_reason_and_no_output(tmp_path: Path, script: Path, damage, reason: str) -> None:  # type: ignore[no-untyped-def]
    good = make_file(tmp_path / "in" / "good.dcm", "1.2.3.1")
    bad = tmp_path / "in" / "bad.dcm"
    bad.write_bytes(damage(make_file(tmp_path / "tmp" / "x.dcm", "1.2.3.2").read_bytes()))
    out = tmp_path / "out"
    res = invoke("--script", str(script), str(good), str(bad), "--out", str(out))
    assert res.exit_code == 1, res.output
    assert (out / "good.dcm").is_file()
    assert not (out / "bad.dcm").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
    assert reason in res.output and "bad.dcm" in res.output
    assert "Secret" not in res.output


def test_script_runtime_error_fails_file_without_output(tmp_path: Path) -> None:
    s = tmp_path / "s.das"
    s.write_text('version "6.6"\n(0010,0010) := uppercase[(0008,103E)]\n', encoding="utf-8")
    f = make_file(tmp_path / "in" / "a.dcm", "1.2.3.1")
    out = tmp_path / "out"
    res = invoke("--script", str(s), str(f), "--out", str(out))
    assert res.exit_code == 1
    assert not (out / "a.dcm").exists()
    assert "line 2" in res.output


def test_invalid_script_and_bad_var(tmp_path: Path) -> None:
    s = tmp_path / "s.das"
    s.write_text('(0010,0010) := "x"\n', encoding="utf-8")
    f = make_file(tmp_path / "a.dcm", "1.2.3.1")
    res = invoke("--script", str(s), str(f), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "version" in res.output
    s.write_text('version "6.6"\n', encoding="utf-8")
    res = invoke("--script", str(s), "--var", "novalue", str(f), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2


def test_missing_input_is_a_failure(tmp_path: Path, script: Path) -> None:
    res = invoke("--script", str(script), str(tmp_path / "nope.dcm"), "--out", str(tmp_path / "o"))
    assert res.exit_code == 1 and "no such file" in res.output


def test_does_not_overwrite_input(tmp_path: Path, script: Path) -> None:
    f = make_file(tmp_path / "a.dcm", "1.2.3.1")
    before = f.read_bytes()
    res = invoke("--script", str(script), str(f), "--out", str(tmp_path))
    assert res.exit_code == 1 and "overwrite" in res.output
    assert f.read_bytes() == before
