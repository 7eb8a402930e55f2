"""The CPU-heavy part of intake, runnable in a worker process: strict read, scripts, atomic write.

Routing happened before (it needs the database and the original header); a job carries the scripts'
texts and the variables, so a worker process needs nothing but the files. Results carry no PHI: only the
de-identified values that go into the archive catalog.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flip_imaging.dicomedit import DicomEditRuntimeError, Script
from flip_imaging.dicomedit.fileio import BadDicomFile, read_checked

SOP_UID, SERIES_UID, STUDY_UID = 0x00080018, 0x0020000E, 0x0020000D


@dataclass(frozen=True)
class ScriptRef:
    """A script a job applies, by reference: jobs cross a process boundary by the hundred per second,
    and a site script is tens of kilobytes. A worker compiles each text once (keyed by its digest) and
    reads it from ``path``, written by the pipeline, only the first time it meets the digest."""

    which: str
    script_id: int
    digest: str
    path: str


@dataclass
class DeidJob:
    """One file to de-identify: raw spool path in, de-identified copy out."""

    raw: str
    out: str
    #: scripts in application order
    scripts: list[ScriptRef] = field(default_factory=list)
    variables: dict[str, str | None] = field(default_factory=dict)
    #: the receiver already walked the data set's structure before acknowledging it (only the file
    #: meta is checked again); uploads and deflated data sets are walked here
    structure_checked: bool = False


@dataclass
class DeidResult:
    ok: bool
    reason: str = ""
    size: int = 0
    #: SHA-256 of the de-identified copy, computed from the bytes the worker wrote
    sha256: str | None = None
    values: dict[str, str | None] = field(default_factory=dict)


#: compiled scripts of this process by text digest
_scripts: dict[str, Script] = {}


def _script(ref: ScriptRef) -> Script:
    from flip_imaging.intake import scriptstore

    script = _scripts.get(ref.digest)
    if script is None:
        text = Path(ref.path).read_text(encoding="utf-8")
        if hashlib.sha256(text.encode()).hexdigest() != ref.digest:
            raise DicomEditRuntimeError("the stored script changed while it was in use")
        script = scriptstore.compiled(text)
        if len(_scripts) > 64:
            _scripts.clear()
        _scripts[ref.digest] = script
    return script


def _text(ds, tag: int, limit: int) -> str | None:  # type: ignore[no-untyped-def]
    from flip_imaging.intake.routing import header_text

    value = header_text(ds, tag)
    return value[:limit] or None


def run(job: DeidJob) -> DeidResult:
    """Read the raw file strictly, apply the scripts in order, write the result atomically."""
    from flip_imaging.intake import scriptstore

    try:
        ds = read_checked(Path(job.raw), body_checked=job.structure_checked)
    except BadDicomFile as exc:
        return DeidResult(False, str(exc))
    except OSError as exc:
        return DeidResult(False, f"unreadable spool file ({exc.strerror})")
    for ref in job.scripts:
        try:
            res = scriptstore.apply(_script(ref), ref.script_id, ds, dict(job.variables))
        except DicomEditRuntimeError as exc:
            return DeidResult(False, f"{ref.which} anonymization script failed: {exc}")
        except OSError as exc:
            return DeidResult(False, f"{ref.which} anonymization script unreadable ({exc.strerror})")
        except Exception as exc:  # an engine bug must not lose the file: quarantine it
            return DeidResult(False, f"{ref.which} anonymization script failed ({type(exc).__name__})")
        if res.rejected:
            return DeidResult(False, "rejected by script")
    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        buf = io.BytesIO()  # one instance in memory (it is already, decoded): hash what is written
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getbuffer()
        size = len(data)
        digest = hashlib.sha256(data).hexdigest()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # no fsync here: the archive transaction that files this inode (hard-linked, with the digest
            # above) fsyncs a whole batch at once; until then the raw file stays durable in the spool
            # and start-up re-derives unarchived copies
        finally:
            os.close(fd)
            del data
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
    return DeidResult(True, size=size, sha256=digest, values=values)


def run_many(jobs: list[DeidJob]) -> list[DeidResult]:
    return [run(j) for j in jobs]


def warm(scripts: list[ScriptRef]) -> int:
    """Get a fresh worker process ready before the first study arrives: import the reader and writer,
    compile the scripts. Otherwise the first files of a study pay for it while the sender waits."""
    import pydicom.filewriter  # noqa: F401

    for ref in scripts:
        _script(ref)
    return os.getpid()


def init_worker(server_pid: int) -> None:
    """Worker-process initializer.

    De-identification yields the CPU to the receivers, whose latency paces every sender (each C-STORE
    waits for its answer); the backlog is worked off in between. And the process ends when the server
    does: a pool's workers otherwise wait on their task queue for ever after the server was killed."""
    try:
        os.nice(10)
    except OSError:
        pass

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # the pid was reused by another user's process: ours is gone
                os._exit(0)

    threading.Thread(target=watch, name="server-watch", daemon=True).start()
