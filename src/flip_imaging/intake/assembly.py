"""Session assembly: file one received study into the archive in a single atomic transaction.

Scans are grouped by (de-identified) Series Instance UID; the scan ID is the Series Number, made unique
within the session; the scan type is the Series Description; experiment and scan types follow the
modality. Files go to ``SCANS/<scan>/DICOM/`` (resource ``DICOM``, format DICOM, content RAW) by hard
link + rename, so the prearchive copy survives an aborted transaction. Events (SessionEvent, ScanEvent,
ResourceEvent) are published inside the same transaction. A scan left with no readable file is an
error, never a success.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections import OrderedDict
from datetime import date, datetime, time
from pathlib import Path
from time import perf_counter
from typing import Any

from sqlalchemy import func, select, update

from flip_imaging.archive.models import Experiment, File, Project, Resource, Scan
from flip_imaging.archive.store import ArchiveWriter
from flip_imaging.intake.models import DicomImport, DicomInstance, DicomQuarantine, DicomSession
from flip_imaging.intake.pipeline import Pipeline, QuarantineError
from flip_imaging.intake.routing import UNASSIGNED, sanitize_label

log = logging.getLogger(__name__)

SESSION_TYPES = {"MR": "mr", "CT": "ct", "PT": "pet", "CR": "cr", "DX": "dx", "US": "us"}
_DICM_OFFSET = 128
_UID = re.compile(r"[0-9][0-9.]{0,63}")


class ArchiveFailed(Exception):
    """A session could not be archived; the reason is shown to administrators."""


def session_xsi_type(modalities: list[str]) -> str:
    """XNAT's choice: PET wins (PET/CT), then MR, then CT, then the first known modality."""
    mods = [m.upper() for m in modalities if m]
    for preferred in ("PT", "MR", "CT", "CR", "DX", "US"):
        if preferred in mods:
            return f"xnat:{SESSION_TYPES[preferred]}SessionData"
    return "xnat:otherDicomSessionData"


def scan_xsi_type(modality: str | None) -> str:
    kind = SESSION_TYPES.get((modality or "").upper())
    return f"xnat:{kind}ScanData" if kind else "xnat:otherDicomScanData"


def _parse_date(value: str | None) -> date | None:
    try:
        return datetime.strptime(value, "%Y%m%d").date() if value and len(value) >= 8 else None
    except ValueError:
        return None


def _parse_time(value: str | None) -> time | None:
    if not value:
        return None
    digits = value.split(".")[0]
    try:
        return datetime.strptime(digits[:6].ljust(6, "0"), "%H%M%S").time()
    except ValueError:
        return None


def _readable(path: Path) -> bool:
    """A cheap check that a file is a Part 10 DICOM file (it was written by us, so its structure is)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_DICM_OFFSET + 4)
        return len(head) == _DICM_OFFSET + 4 and head[_DICM_OFFSET:] == b"DICM"
    except OSError:
        return False


def file_name(inst: DicomInstance) -> str:
    """``<SOP Instance UID>.dcm`` (de-identified UID), so a re-sent instance maps to the same file."""
    uid = inst.sop_uid
    return f"{uid}.dcm" if _UID.fullmatch(uid) else f"{inst.sop_key[:40]}.dcm"


def _unique_scan_id(wanted: str, taken: set[str]) -> str:
    base = sanitize_label(wanted) or "0"
    if base not in taken:
        return base
    n = 1
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def archive_session(
    pipeline: Pipeline,
    session_pk: int,
    *,
    project: str | None = None,
    subject: str | None = None,
    label: str | None = None,
    overwrite: str | None = None,
) -> str:
    """Archive a RECEIVING/READY session; returns the experiment URI. Failures go to quarantine.

    ``project``/``subject``/``label`` override the routing (prearchive → archive); then the files are
    re-derived from the raw spool copies so the scripts see the final labels.
    """
    ctx = pipeline.ctx
    started = perf_counter()
    try:
        with pipeline.lock:
            uri, cleanup = _archive(pipeline, session_pk, project, subject, label, overwrite)
    except (ArchiveFailed, QuarantineError, LookupError, ValueError) as exc:
        _fail(pipeline, session_pk, str(exc))
        raise ArchiveFailed(str(exc)) from exc
    except Exception as exc:
        log.exception("archiving session %s failed", session_pk)
        _fail(pipeline, session_pk, f"internal error while archiving ({type(exc).__name__})")
        raise ArchiveFailed(f"internal error while archiving ({type(exc).__name__})") from exc
    archived = perf_counter()
    _cleanup(pipeline, cleanup)
    with ctx.session() as db:
        from flip_imaging.intake.pipeline import forget_instances

        forget_instances(db, session_pk)
    log.info(
        "session %s archived: %d instances in %.3f s (+%.3f s clean-up)",
        session_pk,
        len(cleanup),
        archived - started,
        perf_counter() - archived,
    )
    pipeline.notify()
    return uri


def _archive(
    pipeline: Pipeline,
    session_pk: int,
    project_override: str | None,
    subject_override: str | None,
    label_override: str | None,
    overwrite_override: str | None,
) -> tuple[str, list[tuple[str, str]]]:
    ctx = pipeline.ctx
    links = pipeline.prearchive_root / ".links"
    links.mkdir(exist_ok=True)
    cleanup: list[tuple[str, str]] = []
    with ArchiveWriter(ctx) as w:
        db = w.db
        session = db.get(DicomSession, session_pk, with_for_update=True)
        if session is None:
            raise LookupError(f"no received session {session_pk}")
        if session.state not in ("RECEIVING", "READY", "ERROR"):
            raise ValueError(f"session is {session.state}, not waiting to be archived")
        target = project_override or session.project
        if not target or target == UNASSIGNED:
            raise ArchiveFailed("no project: archive it from the prearchive with a project")
        project = w.project(target)
        subject_label = sanitize_label(subject_override) if subject_override else session.subject
        exp_label = sanitize_label(label_override) if label_override else session.label
        if not subject_label or not exp_label:
            raise ArchiveFailed("subject and session labels must not be empty")
        relabelled = (
            project.id != session.project or subject_label != session.subject or exp_label != session.label
        )
        if relabelled or session.destination == "prearchive":
            pipeline.rederive(db, session, project.id, subject_label, exp_label)
        mode = overwrite_override or session.overwrite
        overwrite = mode == "delete" or (mode != "append" and project.prearchive_code == 5)
        instances = list(
            db.scalars(
                select(DicomInstance).where(DicomInstance.session_pk == session.pk).order_by(DicomInstance.pk)
            )
        )
        if not instances:
            raise ArchiveFailed("session has no instances")
        subj, _ = w.ensure_subject(project, subject_label)
        xsi = session_xsi_type(session.modalities)
        exp, created = w.ensure_experiment(
            project,
            subj,
            exp_label,
            xsi_type=xsi,
            date=_parse_date(session.study_date),
            time=_parse_time(session.study_time),
            modality=(session.modalities or [None])[0],
            uid=session.study_uid,
            accession_number=session.accession_number,
        )
        if not created:
            if exp.subject_pk != subj.pk:
                raise ArchiveFailed(f"session label {exp_label} is already used by another subject's session")
            if exp.uid and session.study_uid and exp.uid != session.study_uid:
                raise ArchiveFailed(f"session label {exp_label} is already used by another study")
        if exp.accession_number is None and session.accession_number:
            exp.accession_number = session.accession_number
        existing_scans = {s.uid: s for s in db.scalars(select(Scan).where(Scan.experiment_pk == exp.pk))}
        taken = {s.scan_id for s in existing_scans.values()}
        series: OrderedDict[str, list[DicomInstance]] = OrderedDict()
        for inst in sorted(instances, key=lambda i: (_series_sort(i.series_number), i.pk)):
            series.setdefault(inst.series_uid or inst.series_key, []).append(inst)
        added_total = 0
        scan_events: list[tuple[Scan, Resource, bool, int]] = []
        for series_uid, members in series.items():
            first = members[0]
            scan = existing_scans.get(series_uid)
            scan_created = False
            if scan is None:
                scan_id = _unique_scan_id(first.series_number or str(len(taken) + 1), taken)
                taken.add(scan_id)
                scan, scan_created = w.ensure_scan(
                    exp,
                    scan_id,
                    xsi_type=scan_xsi_type(first.modality),
                    type=first.series_description,
                    series_description=first.series_description,
                    modality=first.modality,
                    uid=series_uid,
                )
            res, res_created = w.ensure_resource(scan, "DICOM", format="DICOM", content="RAW")
            added = 0
            for inst in members:
                src = pipeline.prearchive_root / inst.deid_path
                if not _readable(src):
                    continue
                link = links / uuid.uuid4().hex
                try:
                    os.link(src, link)
                    source, move = link, True
                except OSError:  # another file system: copy instead
                    source, move = src, False
                try:
                    w.add_file(
                        res,
                        file_name(inst),
                        source,
                        overwrite=overwrite,
                        move=move,
                        content_type="application/dicom",
                        known=(inst.size, inst.sha256) if move and inst.sha256 else None,
                        flush=False,
                    )
                    added += 1
                except FileExistsError:
                    link.unlink(missing_ok=True)  # a duplicate SOP instance: never overwritten (code 4)
                inst.state = "ARCHIVED"
                cleanup.append((inst.raw_name, inst.deid_path))
            db.flush()  # the bulk of File rows added above, in a few multi-row INSERTs
            n_files = db.scalar(select(func.count(File.pk)).where(File.resource_pk == res.pk)) or 0
            if n_files == 0:
                raise ArchiveFailed(f"scan {scan.scan_id} would have no readable DICOM file")
            scan.frames = n_files
            added_total += added
            if added:
                scan_events.append((scan, res, scan_created or res_created, added))
        if added_total == 0 and not created:
            log.info("session %s: every instance was already archived (duplicates skipped)", session_pk)
        _publish(w, project, subj, exp, created, scan_events)
        session.state = "ARCHIVED"
        session.project, session.subject, session.label = project.id, subject_label, exp_label
        session.experiment_id = exp.id
        session.uri = f"/data/archive/projects/{project.id}/subjects/{subj.label}/experiments/{exp.label}"
        session.reason = None
        session.updated_at = datetime.now().astimezone()
        db.execute(
            update(DicomQuarantine)
            .where(DicomQuarantine.session_pk == session.pk, DicomQuarantine.kind == "session")
            .values(reason="resolved: archived", details={"resolved": True})
        )
        uri = session.uri
    return uri, cleanup


def _series_sort(number: str | None) -> tuple[int, str]:
    try:
        return (int(number or ""), "")
    except ValueError:
        return (1 << 30, number or "")


def _publish(
    w: ArchiveWriter,
    project: Project,
    subj: Any,
    exp: Experiment,
    created: bool,
    scan_events: list[tuple[Scan, Resource, bool, int]],
) -> None:
    base = f"/archive/experiments/{exp.id}"
    for scan, res, is_new, _added in scan_events:
        scan_uri = f"{base}/scans/{scan.scan_id}"
        res_payload = {
            "id": str(res.xnat_id),
            "integer-id": res.xnat_id,
            "label": res.label,
            "xsiType": "xnat:resourceCatalog",
            "format": res.format,
            "content": res.content,
            "uri": f"{scan_uri}/resources/{res.label}",
            "parent-uri": scan_uri,
            "project-id": project.id,
        }
        w.publish(
            "ResourceEvent",
            "CREATED" if is_new else "UPDATED",
            res_payload,
            project_id=project.id,
            object_uri=res_payload["uri"],
        )
        if is_new:
            payload = {
                "id": scan.scan_id,
                "label": scan.scan_id,
                "xsiType": scan.xsi_type,
                "uri": scan_uri,
                "integer-id": scan.pk,
                "scan-type": scan.type,
                "project-id": project.id,
                "session-id": exp.id,
                "session-label": exp.label,
                "subject-id": subj.id,
                "modality": scan.modality,
                "series-description": scan.series_description,
                "resources": [
                    {
                        "label": res.label,
                        "integer-id": res.xnat_id,
                        "format": res.format,
                        "uri": res_payload["uri"],
                    }
                ],
            }
            w.publish("ScanEvent", "CREATED", payload, project_id=project.id, object_uri=scan_uri)
    if created or scan_events:
        session_payload = {
            "id": exp.id,
            "label": exp.label,
            "xsiType": exp.xsi_type,
            "uri": base,
            "project-id": project.id,
            "subject-id": subj.id,
            "modality": exp.modality,
            "scans": [s.scan_id for s, *_ in scan_events],
        }
        w.publish(
            "SessionEvent",
            "CREATED" if created else "MERGED",
            session_payload,
            project_id=project.id,
            object_uri=base,
        )


def _cleanup(pipeline: Pipeline, files: list[tuple[str, str]]) -> None:
    """After the commit: raw and prearchive copies of archived instances are no longer needed."""
    parents: set[Path] = set()
    for raw_name, deid in files:
        (pipeline.spool.held / raw_name).unlink(missing_ok=True)
        path = pipeline.prearchive_root / deid
        path.unlink(missing_ok=True)
        parents.add(path.parent)
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        for p in (parent, parent.parent):
            try:
                if p != pipeline.prearchive_root:
                    p.rmdir()
            except OSError:
                pass


def cleanup_archived(pipeline: Pipeline) -> None:
    """Start-up: finish the clean-up of sessions archived just before a crash."""
    with pipeline.ctx.session() as db:
        rows = db.execute(
            select(
                DicomInstance.pk, DicomInstance.raw_name, DicomInstance.deid_path, DicomInstance.session_pk
            )
            .join(DicomSession, DicomSession.pk == DicomInstance.session_pk)
            .where(DicomSession.state == "ARCHIVED")
        ).all()
        if not rows:
            return
        _cleanup(pipeline, [(r.raw_name, r.deid_path) for r in rows])
        from flip_imaging.intake.pipeline import forget_instances

        for session_pk in {r.session_pk for r in rows}:
            forget_instances(db, session_pk)


def _fail(pipeline: Pipeline, session_pk: int, reason: str) -> None:
    """Mark a session ERROR with the reason and list it in the quarantine (files stay in the prearchive)."""
    log.warning("session %s not archived: %s", session_pk, reason)
    with pipeline.ctx.session() as db:
        session = db.get(DicomSession, session_pk)
        if session is None:
            return
        session.state = "ERROR"
        session.reason = reason
        q = db.scalar(
            select(DicomQuarantine).where(
                DicomQuarantine.session_pk == session_pk, DicomQuarantine.kind == "session"
            )
        )
        if q is None:
            db.add(
                DicomQuarantine(
                    kind="session",
                    reason=reason,
                    session_pk=session_pk,
                    source=session.source,
                    size=0,
                    details={},
                )
            )
        else:
            q.reason, q.details = reason, {}
    pipeline.notify()


def finish_prearchive(pipeline: Pipeline, session_pk: int) -> None:
    """A prearchive-bound session is complete: it waits (READY) for someone to archive it."""
    with pipeline.ctx.session() as db:
        db.execute(
            update(DicomSession)
            .where(DicomSession.pk == session_pk, DicomSession.state == "RECEIVING")
            .values(state="READY")
        )
    pipeline.notify()


def settle_imports(pipeline: Pipeline) -> None:
    """Mark import requests done when every file is processed and none of their sessions is pending."""
    with pipeline.ctx.session() as db:
        for imp in db.scalars(select(DicomImport).where(DicomImport.state == "queued")):
            if imp.n_done < imp.n_files:
                continue
            pending = db.scalar(
                select(func.count(DicomSession.pk)).where(
                    DicomSession.import_pk == imp.pk, DicomSession.state.in_(("RECEIVING", "ARCHIVING"))
                )
            )
            if not pending:
                imp.state = "done"
