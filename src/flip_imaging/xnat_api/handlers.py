"""What each archive call does: dispatch by method and target, listings, objects, object writes.

Reads use the request's session; writes go through one :class:`ArchiveWriter` each, so a failed call
changes nothing. Errors are :class:`HTTPException` with a plain-text reason.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from flip_imaging.archive import service as svc
from flip_imaging.archive.models import (
    Assessor,
    Experiment,
    Project,
    Resource,
    Scan,
    Subject,
)
from flip_imaging.archive.store import (
    ArchiveWriter,
    safe_label,
)
from flip_imaging.auth.deps import Unauthorized
from flip_imaging.auth.principal import Access, Principal, can_see_project, project_access
from flip_imaging.context import AppContext
from flip_imaging.xnat_api import render
from flip_imaging.xnat_api.common import (
    Resolved,
    event_user,
    not_found,
    owner_in,
    publish_resource,
    qs_fields,
    readable_projects,
    reload,
    resolve,
    write_errors,
)
from flip_imaging.xnat_api.files import delete_file, download_file, list_or_zip_files
from flip_imaging.xnat_api.paths import Parsed
from flip_imaging.xnat_api.projects import put_project, put_setting

log = logging.getLogger(__name__)

# -- dispatch -------------------------------------------------------------------------------------------


def dispatch(
    ctx: AppContext, db: Session, who: Principal, method: str, parsed: Parsed, query: dict[str, str]
) -> Response:
    if method == "GET":
        return _get(ctx, db, who, parsed, query)
    if method in ("PUT", "POST"):
        if parsed.tail is None and parsed.chain:
            return _put_object(ctx, db, who, parsed, query)
        if parsed.tail in ("prearchive_code", "quarantine_code", "current_arc", "accessibility"):
            return put_setting(ctx, db, who, parsed, query)
        if parsed.tail == "files":
            raise HTTPException(400, detail="A file path is required after /files/")
        raise HTTPException(405, detail=f"{method} is not supported here")
    if method == "DELETE":
        if parsed.tail == "files" and parsed.arg:
            return delete_file(ctx, db, who, parsed)
        if parsed.tail is None and parsed.chain:
            return _delete_object(ctx, db, who, parsed, query)
        raise HTTPException(405, detail="DELETE is not supported here")
    raise HTTPException(405, detail=f"{method} is not supported")


# -- GET ------------------------------------------------------------------------------------------------


def _get(ctx: AppContext, db: Session, who: Principal, parsed: Parsed, query: dict[str, str]) -> Response:
    fmt = (query.get("format") or "").lower() or None
    if parsed.tail in ("prearchive_code", "quarantine_code", "current_arc", "accessibility"):
        r = resolve(db, who, parsed, Access.READ)
        assert r.project is not None
        value = {
            "prearchive_code": r.project.prearchive_code,
            "quarantine_code": r.project.quarantine_code,
            "current_arc": r.project.current_arc,
            "accessibility": r.project.accessibility,
        }[parsed.tail]
        return PlainTextResponse(str(value))
    if parsed.tail == "files":
        r = resolve(db, who, parsed, Access.READ)
        if parsed.arg:
            return download_file(ctx, db, r, parsed.arg)
        return list_or_zip_files(ctx, db, r, fmt, query)
    if parsed.tail is not None:
        return _listing(db, who, parsed, fmt, query)
    r = resolve(db, who, parsed, Access.READ)
    return _object(db, r, fmt or "xml")


def _listing(db: Session, who: Principal, parsed: Parsed, fmt: str | None, query: dict[str, str]) -> Response:
    tail = parsed.tail
    rows: list[render.Row]
    if not parsed.chain:
        if tail == "projects":
            if not who.authenticated:
                raise Unauthorized()
            projects = [
                p for p in db.scalars(select(Project).order_by(Project.id)) if can_see_project(db, who, p)
            ]
            with_aliases = "alias" in (query.get("columns") or "").split(",")
            rows = [row for p in projects for row in render.project_rows(p, with_aliases)]
        else:
            projects = readable_projects(db, who)
            if query.get("project"):
                wanted = svc.project_by_key(db, query["project"])
                projects = [p for p in projects if wanted is not None and p.pk == wanted.pk]
            if tail == "subjects":
                rows = [render.subject_row(s) for s in svc.list_subjects(db, projects)]
            else:
                rows = [render.experiment_row(e) for e in svc.list_experiments(db, projects)]
        return _rows_response(rows, fmt, query, tail or "")
    r = resolve(db, who, parsed, Access.READ)
    if tail == "subjects":
        assert r.project is not None
        rows = [render.subject_row(s) for s in svc.list_subjects(db, [r.project])]
    elif tail == "experiments":
        assert r.project is not None
        rows = [render.experiment_row(e) for e in svc.list_experiments(db, [r.project], r.subject)]
    elif tail == "scans":
        assert r.experiment is not None
        rows = [render.scan_row(s) for s in svc.list_scans(db, r.experiment)]
    elif tail == "assessors":
        assert r.experiment is not None
        rows = [render.assessor_row(a) for a in svc.list_assessors(db, r.experiment)]
    elif tail == "reconstructions":
        rows = []
    elif tail == "resources":
        owners = r.scans if r.scans is not None else [r.owner]
        resources = svc.list_resources(db, owners)
        stats = svc.resource_stats(db, resources)
        category = "scans" if (r.scans is not None or r.scan is not None) else "resources"
        rows = [render.resource_row(res, stats[res.pk], category) for res in resources]
        return render.listing_response(
            render.filter_rows(rows, query), fmt, header=render.HEADERS["resources"]
        )
    else:
        raise HTTPException(404, detail=f"Unknown collection {tail}")
    return _rows_response(rows, fmt, query, tail or "")


def _rows_response(rows: list[render.Row], fmt: str | None, query: dict[str, str], kind: str) -> Response:
    rows = render.filter_rows(rows, query)
    rows = render.select_columns(rows, query.get("columns"))
    return render.listing_response(rows, fmt, header=render.empty_header(kind, query.get("columns")))


def with_stats(db: Session, resources: list[Resource]) -> list[tuple[Resource, tuple[int, int]]]:
    stats = svc.resource_stats(db, resources)
    return [(res, stats[res.pk]) for res in resources]


def _object(db: Session, r: Resolved, fmt: str) -> Response:
    if fmt not in ("json", "xml"):
        raise HTTPException(400, detail=f"Unsupported format {fmt!r}")
    if r.resources is not None or r.scans is not None:
        raise HTTPException(400, detail="A single object is required here, not a selection")
    if r.resource is not None:
        item = render.resource_item(r.resource, svc.resource_stats(db, [r.resource])[r.resource.pk])
        return render.items_response(item)
    if r.assessor is not None:
        a = r.assessor
        if fmt == "json":
            return render.items_response(render.assessor_item(a))
        return render.xml_response(render.assessor_xml(a, with_stats(db, svc.list_resources(db, [a]))))
    if r.scan is not None:
        s = r.scan
        res = with_stats(db, svc.list_resources(db, [s]))
        if fmt == "json":
            return render.items_response(render.scan_item(s, res))
        return render.xml_response(render.scan_xml(s, res))
    if r.experiment is not None:
        e = r.experiment
        scans = svc.list_scans(db, e)
        res = with_stats(db, svc.list_resources(db, [e]))
        assessors = svc.list_assessors(db, e)
        if fmt == "json":
            return render.items_response(render.experiment_item(e, scans, res, assessors))
        scan_res = [(s, with_stats(db, svc.list_resources(db, [s]))) for s in scans]
        return render.xml_response(render.experiment_xml(e, scan_res, res, assessors))
    if r.subject is not None:
        if fmt == "json":
            return render.items_response(render.subject_item(r.subject))
        return render.xml_response(
            render.subject_xml(r.subject, with_stats(db, svc.list_resources(db, [r.subject])))
        )
    assert r.project is not None
    if fmt == "json":
        return render.items_response(render.project_item(r.project))
    return render.xml_response(
        render.project_xml(r.project, with_stats(db, svc.list_resources(db, [r.project])))
    )


# -- writes ---------------------------------------------------------------------------------------------


def _put_object(
    ctx: AppContext, db: Session, who: Principal, parsed: Parsed, query: dict[str, str]
) -> Response:
    kind, key = parsed.chain[-1]
    if kind == "project":
        return put_project(ctx, db, who, key, query)
    r = resolve(db, who, parsed, Access.WRITE, allow_missing=True)
    fields = qs_fields(query)
    xsi = query.get("xsiType")
    db.rollback()  # release the read transaction before the writer's (SQLite allows one writer)
    with write_errors(), ArchiveWriter(ctx) as w:
        if kind == "subject":
            return _put_subject(w, who, r, key, fields)
        if kind == "experiment":
            return _put_experiment(w, who, r, key, fields, xsi)
        if kind == "scan":
            return _put_scan(w, who, r, key, fields, xsi)
        if kind == "assessor":
            return _put_assessor(w, who, r, key, fields, xsi)
        if kind == "resource":
            return _put_resource(w, who, r, key, fields, query)
    raise HTTPException(405, detail=f"Cannot create a {kind} here")


def _relabel(w: ArchiveWriter, obj: Subject | Experiment | Assessor, fields: dict[str, str]) -> None:
    new = fields.get("label")
    if new and new != obj.label:
        obj.label = safe_label(new)
        w.db.flush()


def _put_subject(w: ArchiveWriter, who: Principal, r: Resolved, key: str, fields: dict[str, str]) -> Response:
    if r.missing is None:
        subject = reload(w, r.subject)
        _relabel(w, subject, fields)
        _apply_extra(subject, fields, skip={"label", "id", "project"})
        return PlainTextResponse(subject.id)
    project = reload(w, r.project)
    _folder_free(w, project, f"{project.id}/subjects/{fields.get('label') or key}/")
    subject, _created = w.ensure_subject(project, fields.get("label") or key)
    _apply_extra(subject, fields, skip={"label", "id", "project"})
    if who.user is not None:
        subject.extra = {**subject.extra, "insert_user": who.username}
    w.db.flush()
    w.publish(
        "SubjectEvent",
        "CREATED",
        {
            "id": subject.id,
            "label": subject.label,
            "project-id": project.id,
            "uri": f"/archive/subjects/{subject.id}",
        },
        project_id=project.id,
        object_uri=f"/archive/subjects/{subject.id}",
        user=event_user(who),
    )
    return PlainTextResponse(subject.id)


def _folder_free(w: ArchiveWriter, project: Project, prefix: str) -> None:
    """Refuse a new object whose archive folder still holds the files of a relabelled one.

    Folders are named after labels; after a relabel the old folder stays with the old object, and a
    new object taking the old label would otherwise write into it.
    """
    clash = w.db.scalar(
        select(Resource.pk)
        .where(Resource.project_pk == project.pk, Resource.path.startswith(prefix, autoescape=True))
        .limit(1)
    )
    if clash is not None:
        raise HTTPException(
            409,
            detail=f"The archive folder {prefix.rstrip('/')} still holds the files of a relabelled object",
        )


def _apply_extra(obj: Any, fields: dict[str, str], skip: set[str]) -> None:
    extra = dict(obj.extra or {})
    for name, value in fields.items():
        if name in skip:
            continue
        extra[name.rsplit("/", 1)[-1]] = value
    obj.extra = extra


def _experiment_columns(exp: Experiment, fields: dict[str, str]) -> None:
    try:
        if "date" in fields:
            exp.date = svc.parse_date(fields["date"]) if fields["date"] else None
        if "time" in fields:
            exp.time = svc.parse_time(fields["time"]) if fields["time"] else None
    except ValueError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    if "modality" in fields:
        exp.modality = fields["modality"] or None
    if "uid" in fields:
        exp.uid = fields["uid"] or None
    if "dcmaccessionnumber" in fields:
        exp.accession_number = fields["dcmaccessionnumber"] or None
    _apply_extra(
        exp,
        fields,
        skip={
            "date",
            "time",
            "modality",
            "uid",
            "dcmaccessionnumber",
            "label",
            "id",
            "project",
            "subject_id",
            "subject_label",
        },
    )


def _put_experiment(
    w: ArchiveWriter, who: Principal, r: Resolved, key: str, fields: dict[str, str], xsi: str | None
) -> Response:
    if r.missing is None:
        exp = reload(w, r.experiment)
        _relabel(w, exp, fields)
        _experiment_columns(exp, fields)
        w.db.flush()
        return PlainTextResponse(exp.id)
    if not xsi:
        raise HTTPException(
            400, detail="xsiType is required to create an experiment (e.g. xnat:mrSessionData)"
        )
    xsi_type = svc.canonical_type(xsi, svc.SESSION_TYPES)
    if xsi_type is None:
        raise HTTPException(400, detail=f"Unsupported experiment type {xsi}")
    project = reload(w, r.project)
    subject = reload(w, r.subject)
    if subject is None:
        subject_key = fields.get("subject_id") or fields.get("subject_label")
        if not subject_key:
            raise HTTPException(
                400,
                detail="A subject is required: create the experiment under "
                "/subjects/{subject} or pass subject_ID",
            )
        subject = svc.find_subject(w.db, project, subject_key)
        if subject is None:
            raise not_found("subject", subject_key)
    label = fields.get("label") or key
    _folder_free(w, project, f"{project.id}/{project.current_arc}/{label}/")
    exp, _created = w.ensure_experiment(project, subject, label, xsi_type=xsi_type)
    _experiment_columns(exp, fields)
    w.db.flush()
    uri = f"/archive/experiments/{exp.id}"
    w.publish(
        "SessionEvent",
        "CREATED",
        {
            "id": exp.id,
            "label": exp.label,
            "xsiType": exp.xsi_type,
            "project-id": project.id,
            "subject-id": subject.id,
            "uri": uri,
        },
        project_id=project.id,
        object_uri=uri,
        user=event_user(who),
    )
    return PlainTextResponse(exp.id)


def _scan_columns(scan: Scan, fields: dict[str, str]) -> None:
    for name in ("type", "series_description", "quality", "modality", "note"):
        if name in fields:
            setattr(scan, name, fields[name] or None)
    if "uid" in fields:
        scan.uid = fields["uid"] or None
    if "frames" in fields:
        try:
            scan.frames = int(fields["frames"]) if fields["frames"] else None
        except ValueError as exc:
            raise HTTPException(400, detail=f"frames must be an integer, got {fields['frames']!r}") from exc
    _apply_extra(
        scan,
        fields,
        skip={
            "type",
            "series_description",
            "quality",
            "modality",
            "note",
            "uid",
            "frames",
            "id",
            "image_session_id",
            "project",
            "label",
        },
    )


def _put_scan(
    w: ArchiveWriter, who: Principal, r: Resolved, key: str, fields: dict[str, str], xsi: str | None
) -> Response:
    if r.missing is None:
        if r.scan is None:
            raise HTTPException(400, detail="Select a single scan to update")
        scan = reload(w, r.scan)
        _scan_columns(scan, fields)
        w.db.flush()
        return PlainTextResponse(scan.scan_id)
    exp = reload(w, r.experiment)
    if xsi:
        xsi_type = svc.canonical_type(xsi, svc.SCAN_TYPES)
        if xsi_type is None:
            raise HTTPException(400, detail=f"Unsupported scan type {xsi}")
    else:
        xsi_type = svc.scan_type_for_session(exp.xsi_type)
    scan, _created = w.ensure_scan(exp, key, xsi_type=xsi_type)
    _scan_columns(scan, fields)
    w.db.flush()
    uri = f"/archive/experiments/{exp.id}/scans/{scan.scan_id}"
    w.publish(
        "ScanEvent",
        "CREATED",
        {
            "id": scan.scan_id,
            "label": scan.scan_id,
            "xsiType": scan.xsi_type,
            "uri": uri,
            "integer-id": scan.pk,
            "scan-type": scan.type,
            "project-id": exp.project.id,
            "session-id": exp.id,
            "modality": scan.modality,
            "series-description": scan.series_description,
        },
        project_id=exp.project.id,
        object_uri=uri,
        user=event_user(who),
    )
    return PlainTextResponse(scan.scan_id)


def _put_assessor(
    w: ArchiveWriter, who: Principal, r: Resolved, key: str, fields: dict[str, str], xsi: str | None
) -> Response:
    if r.missing is None:
        assessor = reload(w, r.assessor)
        _relabel(w, assessor, fields)
        _apply_extra(assessor, fields, skip={"label", "id", "project", "imagesession_id"})
        return PlainTextResponse(assessor.id)
    xsi_type = svc.canonical_type(xsi or "xnat:imageAssessorData", svc.ASSESSOR_TYPES)
    if xsi_type is None:
        raise HTTPException(400, detail=f"Unsupported assessor type {xsi}")
    exp = reload(w, r.experiment)
    assessor, _created = w.ensure_assessor(exp, fields.get("label") or key, xsi_type=xsi_type)
    _apply_extra(assessor, fields, skip={"label", "id", "project", "imagesession_id"})
    uri = f"/archive/experiments/{exp.id}/assessors/{assessor.id}"
    w.publish(
        "ImageAssessorEvent",
        "CREATED",
        {
            "id": assessor.id,
            "label": assessor.label,
            "xsiType": xsi_type,
            "project-id": exp.project.id,
            "session-id": exp.id,
            "uri": uri,
        },
        project_id=exp.project.id,
        object_uri=uri,
        user=event_user(who),
    )
    return PlainTextResponse(assessor.id)


def _put_resource(
    w: ArchiveWriter, who: Principal, r: Resolved, key: str, fields: dict[str, str], query: dict[str, str]
) -> Response:
    if r.scans is not None:
        raise HTTPException(400, detail="Select a single scan to create a resource")
    res_format = fields.get("format") or query.get("format") or None
    content = fields.get("content") or query.get("content") or None
    if r.missing is None:
        res = reload(w, r.resource)
        if res_format:
            res.format = res_format
        if content:
            res.content = content
        w.db.flush()
        return PlainTextResponse(str(res.xnat_id))
    owner = owner_in(w, r)
    label = fields.get("label") or key
    res, _created = w.ensure_resource(owner, label, format=res_format, content=content)
    publish_resource(w, who, owner, res, "CREATED")
    return PlainTextResponse(str(res.xnat_id))


def _delete_object(
    ctx: AppContext, db: Session, who: Principal, parsed: Parsed, query: dict[str, str]
) -> Response:
    r = resolve(db, who, parsed, Access.DELETE)
    if r.scans is not None or r.resources is not None:
        raise HTTPException(400, detail="Select a single object to delete")
    db.rollback()
    with write_errors(), ArchiveWriter(ctx) as w:
        if r.resource is not None:
            res = reload(w, r.resource)
            w.delete_resource(res)
            return PlainTextResponse("")
        target = r.assessor or r.scan or r.experiment or r.subject or r.project
        obj = reload(w, target)
        project_id = r.project.id if r.project else None
        if isinstance(obj, Experiment | Subject):
            event_type, folder = ("SessionEvent", "experiments") if isinstance(obj, Experiment) else (
                "SubjectEvent", "subjects")
            uri = f"/archive/{folder}/{obj.id}"
            w.publish(
                event_type,
                "DELETED",
                {"id": obj.id, "label": obj.label, "project-id": project_id, "uri": uri},
                project_id=project_id,
                object_uri=uri,
                user=event_user(who),
            )
        elif isinstance(obj, Project):
            if not who.is_admin and project_access(w.db, who, obj) < Access.MANAGE:
                raise HTTPException(403, detail="Only project owners may delete a project")
            uri = f"/archive/projects/{obj.id}"
            w.publish(
                "ProjectEvent",
                "DELETED",
                {"id": obj.id, "uri": uri},
                project_id=obj.id,
                object_uri=uri,
                user=event_user(who),
            )
        w.delete(obj)
    return PlainTextResponse("")


# -- site-wide helpers ----------------------------------------------------------------------------------


def site_scanners(db: Session, who: Principal) -> list[str]:
    return svc.scanners(db, readable_projects(db, who))


def site_scan_types(db: Session, who: Principal) -> list[str]:
    return svc.scan_types(db, readable_projects(db, who))


__all__ = ["dispatch", "site_scan_types", "site_scanners"]
