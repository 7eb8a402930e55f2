"""The prearchive (sessions waiting for a person) and the quarantine, as services for the API.

Prearchive sessions are :class:`DicomSession` rows in state READY (also RECEIVING / ERROR while they
are shown); their files are de-identified copies under ``<data>/prearchive/<pk>/`` and the raw bytes stay
in the spool until archived, so archiving with other labels re-derives the files.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flip_imaging.intake.models import DicomInstance, DicomQuarantine, DicomSession
from flip_imaging.intake.pipeline import Pipeline
from flip_imaging.intake.routing import UNASSIGNED

PREARCHIVE_STATES = ("RECEIVING", "READY", "ERROR")
_SRC = re.compile(r"^(?:/data)?/prearchive/projects/([^/]+)/([^/]+)/([^/]+)/?$")


def session_url(s: DicomSession) -> str:
    return f"/prearchive/projects/{s.project}/{s.timestamp}/{s.label}"


def prearchive_status(s: DicomSession) -> str:
    return {"RECEIVING": "RECEIVING", "READY": "READY", "ERROR": "ERROR"}.get(s.state, s.state)


def row_json(s: DicomSession) -> dict[str, Any]:
    """One prearchive listing row with XNAT's field names."""
    date = s.study_date or ""
    return {
        "project": s.project,
        "timestamp": s.timestamp,
        "lastmod": s.updated_at.isoformat() if s.updated_at else "",
        "uploaded": s.created_at.isoformat() if s.created_at else "",
        "scan_date": f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else "",
        "scan_time": s.study_time or "",
        "subject": s.subject,
        "folderName": s.label,
        "name": s.label,
        "tag": s.study_uid or "",
        "status": prearchive_status(s),
        "url": session_url(s),
        "autoarchive": "Never" if s.destination == "prearchive" else "AutoArchive",
        "prevent_anon": "false",
        "prevent_auto_commit": "false",
        "SOURCE": s.source,
        "VISIT": "",
        "PROTOCOL": "",
        "TIMEZONE": "",
        "modality": ",".join(s.modalities or []),
        "instances": s.n_instances,
        "reason": s.reason or "",
    }


def list_sessions(db: Session, projects: list[str] | None) -> list[DicomSession]:
    """Prearchive sessions, limited to ``projects`` (None = all)."""
    q = select(DicomSession).where(DicomSession.state.in_(PREARCHIVE_STATES)).order_by(DicomSession.pk)
    if projects is not None:
        q = q.where(DicomSession.project.in_(projects))
    rows = list(db.scalars(q))
    # sessions still being received for the archive are not prearchive content unless they failed
    return [s for s in rows if s.destination == "prearchive" or s.state == "ERROR"]


def find_session(db: Session, project: str, timestamp: str, name: str) -> DicomSession | None:
    return db.scalar(
        select(DicomSession).where(
            DicomSession.project == project,
            DicomSession.timestamp == timestamp,
            DicomSession.label == name,
            DicomSession.state.in_(PREARCHIVE_STATES),
        )
    )


def parse_src(src: str) -> tuple[str, str, str] | None:
    m = _SRC.match(src.strip())
    return (m.group(1), m.group(2), m.group(3)) if m else None


def session_detail(db: Session, s: DicomSession) -> dict[str, Any]:
    """A prearchive session with its scans (grouped by series)."""
    rows = db.execute(
        select(
            DicomInstance.series_uid,
            DicomInstance.series_number,
            DicomInstance.series_description,
            DicomInstance.modality,
            func.count(DicomInstance.pk),
        )
        .where(DicomInstance.session_pk == s.pk)
        .group_by(
            DicomInstance.series_uid,
            DicomInstance.series_number,
            DicomInstance.series_description,
            DicomInstance.modality,
        )
    ).all()
    out = row_json(s)
    out["scans"] = [
        {
            "ID": num or "",
            "series_description": desc or "",
            "modality": mod or "",
            "UID": uid or "",
            "files": n,
        }
        for uid, num, desc, mod, n in rows
    ]
    return out


def delete_session(pipeline: Pipeline, db: Session, s: DicomSession) -> None:
    """Remove a prearchive session with its de-identified files and raw spool copies."""
    for raw in db.scalars(select(DicomInstance.raw_name).where(DicomInstance.session_pk == s.pk)):
        (pipeline.spool.held / raw).unlink(missing_ok=True)
    shutil.rmtree(pipeline.prearchive_root / str(s.pk), ignore_errors=True)
    db.delete(s)


def move_session(db: Session, s: DicomSession, project: str) -> None:
    """Move to another project's prearchive (files are re-derived when archived)."""
    s.project = project
    s.destination = "prearchive"
    if project != UNASSIGNED:
        s.reason = None


# -- quarantine ----------------------------------------------------------------------------------------
def quarantine_json(q: DicomQuarantine, session: DicomSession | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": q.pk,
        "kind": q.kind,
        "reason": q.reason,
        "source": q.source,
        "size": q.size,
        "created": q.created_at.isoformat() if q.created_at else None,
        "file": q.raw_name,
    }
    if session is not None:
        out["session"] = {
            "project": session.project,
            "subject": session.subject,
            "label": session.label,
            "state": session.state,
            "url": session_url(session),
            "instances": session.n_instances,
        }
    return out


def list_quarantine(db: Session) -> list[tuple[DicomQuarantine, DicomSession | None]]:
    rows = db.scalars(
        select(DicomQuarantine)
        .where(DicomQuarantine.reason != "resolved: archived")
        .order_by(DicomQuarantine.pk)
    )
    return [(q, db.get(DicomSession, q.session_pk) if q.session_pk else None) for q in rows]


def retry_quarantined(pipeline: Pipeline, db: Session, q: DicomQuarantine) -> None:
    """Instance: its raw file goes back to the queue. Session: archived again at once."""
    if q.kind == "instance":
        src = pipeline.spool.quarantine / (q.raw_name or "")
        if not q.raw_name or not src.exists():
            raise FileNotFoundError("the quarantined file is gone")
        os.rename(src, pipeline.spool.incoming / q.raw_name)
        db.delete(q)
        pipeline.spool.wakeup.set()
        return
    session = db.get(DicomSession, q.session_pk) if q.session_pk else None
    if session is None:
        db.delete(q)
        return
    session.state = "RECEIVING"
    session.direct = True
    session.reason = None
    db.delete(q)
    pipeline.spool.wakeup.set()


def delete_quarantined(pipeline: Pipeline, db: Session, q: DicomQuarantine) -> None:
    if q.kind == "instance":
        if q.raw_name:
            (pipeline.spool.quarantine / q.raw_name).unlink(missing_ok=True)
        db.delete(q)
        return
    session = db.get(DicomSession, q.session_pk) if q.session_pk else None
    db.delete(q)
    if session is not None:
        delete_session(pipeline, db, session)
