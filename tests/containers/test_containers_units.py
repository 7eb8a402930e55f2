"""Pure units: matchers, command-line assembly, NIfTI header checks."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from flip_imaging.containers.matcher import MatcherSyntaxError, compile_matcher
from flip_imaging.containers.runner import _command_input_text, check_nifti_slices, map_args, nifti_shape

SCAN = {
    "label": "1",
    "modality": "CT",
    "scan-type": "T1 AXIAL",
    "frames": 12,
    "resources": [{"label": "DICOM"}, {"label": "SNAPSHOTS"}],
}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("'DICOM' in @.resources[*].label", True),
        ("'NIFTI' in @.resources[*].label", False),
        ("@.modality == 'CT'", True),
        ("@.modality != 'CT'", False),
        ("@.modality == 'MR' || 'DICOM' in @.resources[*].label", True),
        ("@.modality == 'CT' && 'NIFTI' in @.resources[*].label", False),
        ("@.scan-type =~ /T1.*/", True),
        ("@.scan-type =~ /t2.*/i", False),
        ("@.frames == 12", True),
        ("@.missing", False),
        ("(@.modality == 'MR' || @.modality == 'CT') && @.frames", True),
    ],
)
def test_matchers(text: str, expected: bool) -> None:
    assert compile_matcher(text)(SCAN) is expected


@pytest.mark.parametrize("text", ["", "'x' in", "@.a ==", "@.a === 'b'", "'a' 'b'", "@.a =~ 'x'", "(@.a"])
def test_bad_matchers(text: str) -> None:
    with pytest.raises(MatcherSyntaxError):
        compile_matcher(text)


def test_command_line_pieces() -> None:
    bids = {
        "name": "bids",
        "type": "boolean",
        "command-line-flag": "-b",
        "true-value": "y",
        "false-value": "n",
        "default-value": "true",
    }
    assert _command_input_text(bids, None) == "-b y"
    assert _command_input_text(bids, "false") == "-b n"
    other = {"name": "o", "type": "string"}
    assert _command_input_text(other, None) == ""
    assert _command_input_text(other, "-z y") == "-z y"
    assert map_args(
        ["x", "/input", "/output/a", "--o=/output", "/inputs"],
        {"/input": Path("/s/in"), "/output": Path("/s/out")},
    ) == ["x", "/s/in", "/s/out/a", "--o=/s/out", "/inputs"]


def _nifti(path: Path, dims: tuple[int, ...]) -> Path:
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    with gzip.open(path, "wb") as fh:
        fh.write(bytes(header) + b"\x00" * 4)
    return path


def test_slice_count_check(tmp_path: Path) -> None:
    vol = _nifti(tmp_path / "a.nii.gz", (64, 64, 30))
    assert nifti_shape(vol) == (64, 64, 30)
    assert check_nifti_slices([vol], 30, False) is None
    assert "29" in (check_nifti_slices([vol], 29, False) or "")  # a dropped slice fails the container
    four_d = _nifti(tmp_path / "b.nii.gz", (64, 64, 10, 3))
    assert check_nifti_slices([four_d], 30, False) is None
    assert check_nifti_slices([vol, four_d], 60, False) is None
    assert check_nifti_slices([], 3, False) == "dcm2niix produced no NIfTI file"
    assert check_nifti_slices([vol], 1, True) is None  # mosaics pack slices into one frame
    bad = tmp_path / "c.nii.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"x" * 400)
    assert "not a readable NIfTI" in (check_nifti_slices([bad], 1, False) or "")
