"""Strict DICOM file reading and atomic writing for de-identification.

pydicom quietly accepts truncated or corrupt files (it stops at the damage), which would let a
half-read file through de-identification and out as a "clean" but broken copy. `read_checked`
first walks the element structure (:mod:`flip_imaging.dicom.structure`) and refuses anything that does
not end exactly where it should.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from flip_imaging.dicom.structure import BadDicomFile, check_structure

__all__ = ["BadDicomFile", "read_checked", "write_atomic"]

def read_checked(path: Path, body_checked: bool = False) -> Dataset:
    """Read a DICOM file, refusing truncated, malformed or non-DICOM input with a clear reason."""
    data = path.read_bytes()
    check_structure(data, body_checked)
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise BadDicomFile("not a DICOM Part 10 file") from None
    except Exception as e:
        raise BadDicomFile(f"unreadable DICOM ({type(e).__name__})") from None


def write_atomic(ds: Dataset, dest: Path) -> None:
    """Write to a temporary file next to `dest`, fsync, then rename: never a half-written output."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(dest.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
