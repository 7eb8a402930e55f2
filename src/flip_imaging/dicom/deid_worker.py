"""The CPU-heavy part of intake, runnable in a worker process: strict read, scripts, atomic write.

Routing happened before (it needs the database and the original header); a job carries the scripts'
texts and the variables, so a worker process needs nothing but the files. Results carry no PHI: only the
de-identified values that go into the archive catalog.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flip_imaging.dicomedit import DicomEditRuntimeError
from flip_imaging.dicomedit.fileio import BadDicomFile, read_checked

SOP_UID, SERIES_UID, STUDY_UID = 0x00080018, 0x0020000E, 0x0020000D


@dataclass
class DeidJob:
    """One file to de-identify: raw spool path in, de-identified copy out."""

    raw: str
    out: str
    #: (which, script id, text) in application order
    scripts: list[tuple[str, int, str]] = field(default_factory=list)
    variables: dict[str, str | None] = field(default_factory=dict)


@dataclass
class DeidResult:
    ok: bool
    reason: str = ""
    size: int = 0
    values: dict[str, str | None] = field(default_factory=dict)


def _text(ds, tag: int, limit: int) -> str | None:  # type: ignore[no-untyped-def]
    from flip_imaging.dicom.routing import header_text

    value = header_text(ds, tag)
    return value[:limit] or None


def run(job: DeidJob) -> DeidResult:
    """Read the raw file strictly, apply the scripts in order, write the result atomically."""
    from flip_imaging.dicom import anonymize

    try:
        ds = read_checked(Path(job.raw))
    except BadDicomFile as exc:
        return DeidResult(False, str(exc))
    except OSError as exc:
        return DeidResult(False, f"unreadable spool file ({exc.strerror})")
    for which, script_id, text in job.scripts:
        stored = anonymize.StoredScript(script_id, text, True)
        try:
            res = anonymize.apply(stored, ds, dict(job.variables))
        except DicomEditRuntimeError as exc:
            return DeidResult(False, f"{which} anonymization script failed: {exc}")
        except Exception as exc:  # an engine bug must not lose the file: quarantine it
            return DeidResult(False, f"{which} anonymization script failed ({type(exc).__name__})")
        if res.rejected:
            return DeidResult(False, "rejected by script")
    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            size = fh.tell()
        # no fsync: this copy is derived data. The raw file stays durable in the spool until the archive
        # transaction (which fsyncs what it files) commits, and start-up re-derives unarchived copies.
        os.replace(tmp, out)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        return DeidResult(False, f"cannot write the de-identified file ({type(exc).__name__})")
    values = {
        "sop_uid": _text(ds, SOP_UID, 128),
        "series_uid": _text(ds, SERIES_UID, 128),
        "study_uid": _text(ds, STUDY_UID, 128),
        "series_number": _text(ds, 0x00200011, 16),
        "series_description": _text(ds, 0x0008103E, 255),
        "modality": _text(ds, 0x00080060, 16),
        "study_date": _text(ds, 0x00080020, 8),
        "study_time": _text(ds, 0x00080030, 16),
    }
    return DeidResult(True, size=size, values=values)


def run_many(jobs: list[DeidJob]) -> list[DeidResult]:
    return [run(j) for j in jobs]


def lower_priority() -> None:
    """Worker-process initializer: de-identification yields the CPU to the receivers, whose latency
    paces every sender (each C-STORE waits for its answer); the backlog is worked off in between."""
    try:
        os.nice(10)
    except OSError:
        pass
