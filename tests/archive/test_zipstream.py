"""The streaming ZIP writer: readable by Python's zipfile and Info-ZIP, ZIP64 records, flat memory."""

from __future__ import annotations

import os
import shutil
import subprocess
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from flip_imaging.archive.zipstream import ZipMember, stream_zip


def _members(tmp_path: Path, sizes: list[int]) -> list[ZipMember]:
    out = []
    for i, size in enumerate(sizes):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(os.urandom(size))
        out.append(ZipMember(f"E1/scans/{i}/resources/DICOM/files/é{i}.dcm", p, size))
    return out


@pytest.mark.parametrize("force_zip64", [False, True])
def test_archive_round_trips(tmp_path: Path, force_zip64: bool) -> None:
    members = _members(tmp_path, [0, 1, 70_000, 3 * 1024 * 1024 + 7])
    target = tmp_path / "out.zip"
    with open(target, "wb") as fh:
        for chunk in stream_zip(members, force_zip64=force_zip64, chunk_size=64 * 1024):
            fh.write(chunk)
    with zipfile.ZipFile(target) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == [m.arcname for m in members]
        for m in members:
            info = zf.getinfo(m.arcname)
            assert info.compress_type == zipfile.ZIP_STORED
            assert zf.read(m.arcname) == m.path.read_bytes()
    if shutil.which("unzip"):
        result = subprocess.run(["unzip", "-t", str(target)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_zip64_central_directory_when_many_members(tmp_path: Path) -> None:
    """More than 65535 members needs the ZIP64 end record (an experiment of many single-frame files)."""
    p = tmp_path / "one.dcm"
    p.write_bytes(b"x")
    members = [ZipMember(f"f/{i}.dcm", p, 1) for i in range(70_000)]
    target = tmp_path / "many.zip"
    with open(target, "wb") as fh:
        for chunk in stream_zip(members):
            fh.write(chunk)
    with zipfile.ZipFile(target) as zf:
        assert len(zf.infolist()) == 70_000
        assert zf.read("f/69999.dcm") == b"x"


def test_memory_stays_flat(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # sparse: cheap on disk, still 64 MiB read
    tracemalloc.start()
    total = 0
    for chunk in stream_zip([ZipMember("big.bin", big, 64 * 1024 * 1024)]):
        total += len(chunk)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total > 64 * 1024 * 1024
    assert peak < 8 * 1024 * 1024, peak


def test_file_that_changed_size_is_described_truthfully(tmp_path: Path) -> None:
    p = tmp_path / "a.bin"
    p.write_bytes(b"12345")
    data = b"".join(stream_zip([ZipMember("a.bin", p, 999)]))
    target = tmp_path / "c.zip"
    target.write_bytes(data)
    with zipfile.ZipFile(target) as zf:
        assert zf.read("a.bin") == b"12345"
