"""``/data/services/import``: DICOM zips and single files through the same spool and pipeline as the SCP.

The request body is streamed to the private spool (never held in memory), checked (zip-slip, non-DICOM
members), each member is spooled as a raw file tagged with the import request, and the reply waits until
every session of the request is archived (or left in the prearchive / quarantine).
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy import select

from flip_imaging.context import AppContext
from flip_imaging.intake.models import DicomImport, DicomSession
from flip_imaging.intake.pipeline import Pipeline, due_sessions
from flip_imaging.intake.prearchive import session_url
from flip_imaging.intake.routing import UNASSIGNED

_CHUNK = 1 << 20


class ImportError_(ValueError):
    """A client error in an import request (400, or 404/403 decided by the caller)."""


@dataclass
class Destination:
    where: str  # archive | prearchive
    project: str | None
    subject: str | None
    session: str | None


def parse_dest(
    dest: str | None, project: str | None, subject: str | None, session: str | None
) -> Destination:
    """``/archive/projects/P[/subjects/S[/experiments/E]]`` or ``/prearchive[/projects/P]``; query
    parameters fill what the path leaves out."""
    where, p, s, e = "archive", None, None, None
    if dest:
        parts = [x for x in PurePosixPath(dest).parts if x not in ("/",)]
        if parts and parts[0] == "data":
            parts = parts[1:]
        if not parts or parts[0] not in ("archive", "prearchive"):
            raise ImportError_(f"dest must start with /archive or /prearchive, not {dest!r}")
        where = parts[0]
        rest = parts[1:]
        keys = ["projects", "subjects", "experiments"]
        values: dict[str, str] = {}
        while rest:
            if len(rest) < 2 or rest[0] not in keys:
                raise ImportError_(f"cannot understand dest {dest!r}")
            values[rest[0]] = rest[1]
            rest = rest[2:]
        p, s, e = values.get("projects"), values.get("subjects"), values.get("experiments")
    return Destination(where, project or p, subject or s, session or e)


def new_import(ctx: AppContext, user: str, dest: Destination, overwrite: str) -> int:
    if overwrite not in ("none", "append", "delete"):
        raise ImportError_("overwrite must be none, append or delete")
    with ctx.session() as db:
        imp = DicomImport(
            user=user,
            destination=dest.where,
            project=dest.project,
            subject=dest.subject,
            session=dest.session,
            overwrite=overwrite,
            state="receiving",
            n_files=0,
            n_done=0,
            n_quarantined=0,
        )
        db.add(imp)
        db.flush()
        return imp.pk


def _is_dicom_head(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def spool_upload(pipeline: Pipeline, import_pk: int, body: Path, handler: str) -> int:
    """Check the uploaded body and spool its DICOM files; returns how many. Nothing is spooled on error."""
    source = f"i{import_pk}"
    if handler == "gradual-DICOM":
        with open(body, "rb") as fh:
            if not _is_dicom_head(fh.read(132)):
                raise ImportError_("the request body is not a DICOM Part 10 file")
        pipeline.spool.write_file(source, body)
        return 1
    try:
        zf = zipfile.ZipFile(body)
    except zipfile.BadZipFile:
        raise ImportError_("the request body is not a zip archive") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        bad_names = [m.filename for m in members if _unsafe(m.filename)]
        if bad_names:
            raise ImportError_("unsafe path(s) in zip, nothing imported: " + ", ".join(bad_names[:10]))
        wanted = []
        not_dicom = []
        for m in members:
            name = PurePosixPath(m.filename).name
            if name.upper() == "DICOMDIR" or name.startswith("._") or "__MACOSX" in m.filename:
                continue
            try:
                with zf.open(m) as fh:
                    head = fh.read(132)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as exc:
                raise ImportError_(f"cannot read zip member {m.filename}: {exc}") from None
            if _is_dicom_head(head):
                wanted.append(m)
            else:
                not_dicom.append(m.filename)
        if not_dicom:
            raise ImportError_(
                "not DICOM Part 10 file(s) in zip, nothing imported: " + ", ".join(not_dicom[:10])
            )
        if not wanted:
            raise ImportError_("the zip holds no DICOM files")
        for m in wanted:
            with zf.open(m) as fh:
                pipeline.spool.write_file(source, fh)
    return len(wanted)


def _unsafe(name: str) -> bool:
    if "\x00" in name or "\\" in name or name.startswith("/"):
        return True
    parts = PurePosixPath(name).parts
    return any(p == ".." for p in parts) or (len(name) > 1 and name[1] == ":")


def queue_import(ctx: AppContext, import_pk: int, n_files: int) -> None:
    with ctx.session() as db:
        imp = db.get(DicomImport, import_pk)
        assert imp is not None
        imp.n_files = n_files
        imp.state = "queued"


def drain_inline(pipeline: Pipeline, import_pk: int) -> None:
    """Without a running DICOM service (tests, CLI), the request thread does the worker's job."""
    from flip_imaging.intake.assembly import ArchiveFailed, archive_session, finish_prearchive, settle_imports

    ctx = pipeline.ctx
    while pipeline.process_batch().processed or pipeline.spool.pending(1):
        pass
    with ctx.session() as db:
        due = [
            pk
            for pk in due_sessions(db, ctx.settings.session_quiet_seconds)
            if db.get(DicomSession, pk).import_pk == import_pk
        ]  # type: ignore[union-attr]
        kinds = {pk: db.get(DicomSession, pk).destination for pk in due}  # type: ignore[union-attr]
    for pk in due:
        if kinds[pk] == "prearchive":
            finish_prearchive(pipeline, pk)
            continue
        try:
            archive_session(pipeline, pk)
        except ArchiveFailed:
            pass
    settle_imports(pipeline)


@dataclass
class ImportOutcome:
    uris: list[str]
    quarantined: int
    errors: list[str]


def wait_import(pipeline: Pipeline, import_pk: int, timeout: float = 3600.0) -> ImportOutcome:
    ctx = pipeline.ctx
    deadline = time.monotonic() + timeout
    while True:
        with ctx.session() as db:
            imp = db.get(DicomImport, import_pk)
            assert imp is not None
            if imp.state == "done":
                sessions = list(
                    db.scalars(
                        select(DicomSession)
                        .where(DicomSession.import_pk == import_pk)
                        .order_by(DicomSession.pk)
                    )
                )
                uris, errors = [], []
                for s in sessions:
                    if s.state == "ARCHIVED" and s.uri:
                        if s.uri not in uris:
                            uris.append(s.uri)
                    elif s.state == "READY":
                        uris.append(session_url(s))
                    elif s.state == "ERROR":
                        errors.append(s.reason or "archiving failed")
                return ImportOutcome(uris, imp.n_quarantined, errors)
        if time.monotonic() > deadline:
            raise TimeoutError("import not finished in time")
        pipeline.spool.wakeup.set()
        pipeline.wait_changed(0.2)


__all__ = [
    "UNASSIGNED",
    "Destination",
    "ImportError_",
    "ImportOutcome",
    "drain_inline",
    "new_import",
    "parse_dest",
    "queue_import",
    "spool_upload",
    "wait_import",
]
