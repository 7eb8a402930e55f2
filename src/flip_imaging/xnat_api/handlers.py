"""What each archive call does: resolve the URL to catalog objects, check access, read or write.

Reads use the request's session; writes go through one :class:`ArchiveWriter` each, so a failed call
changes nothing. Errors are :class:`HTTPException` with a plain-text reason.
"""

from __future__ import annotations

import logging
import re
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from xml.etree import ElementTree as ET

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from flip_imaging.archive import service as svc
from flip_imaging.archive.models import (
    Assessor,
    Experiment,
    File,
    Project,
    ProjectAlias,
    ProjectMember,
    Resource,
    Scan,
    Subject,
)
from flip_imaging.archive.store import (
    STAGING,
    ArchiveWriter,
    UnsafePathError,
    file_path,
    safe_label,
    safe_relpath,
)
from flip_imaging.archive.zipstream import ZipMember, stream_zip
from flip_imaging.auth.deps import Unauthorized, check_project, find_project
from flip_imaging.auth.principal import Access, Principal, can_see_project, project_access
from flip_imaging.context import AppContext
from flip_imaging.events import bus
from flip_imaging.prefs import get_pref
from flip_imaging.xnat_api import render
from flip_imaging.xnat_api.paths import Parsed

log = logging.getLogger(__name__)

XML_TYPES = {"text/xml", "application/xml"}
MAX_XML_BODY = 1024 * 1024
PROJECT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")
#: site preference: may users who are not admins create projects (XNAT's default: yes)
PREF_NON_ADMIN_PROJECTS = "archive.allow_non_admin_project_creation"
#: query parameters that never set a field of the object being written
RESERVED = {"xsiType", "req_format", "format", "event_reason", "event_type", "event_action", "event_id",
            "allowDataDeletion", "inbody", "removeFiles", "overwrite", "extract", "content", "tags",
            "columns", "activate", "quarantine", "fixScanTypes", "pullDataFromHeaders", "triggerPipelines"}


# -- resolution -----------------------------------------------------------------------------------------

@dataclass
class Resolved:
    project: Project | None = None
    subject: Subject | None = None
    experiment: Experiment | None = None
    scan: Scan | None = None
    scans: list[Scan] | None = None
    assessor: Assessor | None = None
    resource: Resource | None = None
    #: several resources (one label across several scans)
    resources: list[Resource] | None = None
    #: the last chain step when it does not exist yet (PUT creates it)
    missing: tuple[str, str] | None = None
    owners: list[Any] = field(default_factory=list)

    @property
    def owner(self) -> Any:
        """The object a resource below would belong to."""
        return self.assessor or self.scan or self.experiment or self.subject or self.project


def _not_found(kind: str, key: str) -> HTTPException:
    return HTTPException(404, detail=f"{kind.capitalize()} {key} not found")


def resolve(db: Session, who: Principal, parsed: Parsed, needed: Access, *, allow_missing: bool = False) -> Resolved:
    """Walk the chain; the first project met is checked for ``needed`` access (401/403/404)."""
    if not who.authenticated:
        raise Unauthorized()
    r = Resolved()
    chain = parsed.chain
    for index, (kind, key) in enumerate(chain):
        last = index == len(chain) - 1
        if kind == "project":
            if find_project(db, key) is None and last and allow_missing:
                r.missing = (kind, key)
                return r
            r.project = check_project(db, who, key, needed)
            continue
        if kind == "subject":
            found = (svc.find_subject(db, r.project, key) if r.project is not None
                     else svc.subject_by_id(db, key))
            if found is not None and r.project is None:
                r.project = check_project(db, who, found.project.id, needed)
            if found is None:
                if last and allow_missing and r.project is not None:
                    r.missing = (kind, key)
                    return r
                raise _not_found(kind, key)
            r.subject = found
            continue
        if kind == "experiment":
            if r.project is None:
                exp = svc.experiment_by_id(db, key)
                if exp is not None:
                    r.project = check_project(db, who, exp.project.id, needed)
            else:
                exp = svc.find_experiment(db, r.project, key, r.subject)
            if exp is None:
                if last and allow_missing and r.project is not None:
                    r.missing = (kind, key)
                    return r
                raise _not_found(kind, key)
            r.experiment, r.subject = exp, exp.subject
            continue
        if kind == "scan":
            assert r.experiment is not None
            scan = None if ("," in key or key == "ALL") else svc.find_scan(db, r.experiment, key)
            if scan is not None:
                r.scan = scan
                continue
            if last and allow_missing and "," not in key and key != "ALL":
                r.missing = (kind, key)
                return r
            selected = svc.select_scans(db, r.experiment, key)
            if not selected and key != "ALL":
                raise _not_found(kind, key)
            r.scans = selected
            continue
        if kind == "assessor":
            assert r.experiment is not None
            assessor = svc.find_assessor(db, r.experiment, key)
            if assessor is None:
                if last and allow_missing:
                    r.missing = (kind, key)
                    return r
                raise _not_found(kind, key)
            r.assessor = assessor
            continue
        if kind == "resource":
            if r.scans is not None:
                r.resources = [res for s in r.scans if (res := svc.find_resource(db, s, key)) is not None]
                continue
            owner = r.owner
            res = svc.find_resource(db, owner, key)
            if res is None:
                if last and allow_missing:
                    r.missing = (kind, key)
                    return r
                raise _not_found(kind, key)
            r.resource = res
            continue
        raise HTTPException(404, detail=f"{kind} is not supported by this archive")
    return r


def readable_projects(db: Session, who: Principal) -> list[Project]:
    if not who.authenticated:
        raise Unauthorized()
    projects = db.scalars(select(Project).order_by(Project.id))
    return [p for p in projects if project_access(db, who, p) >= Access.READ]


# -- dispatch -------------------------------------------------------------------------------------------

def dispatch(ctx: AppContext, db: Session, who: Principal, method: str, parsed: Parsed,
             query: dict[str, str]) -> Response:
    if method == "GET":
        return _get(ctx, db, who, parsed, query)
    if method in ("PUT", "POST"):
        if parsed.tail is None and parsed.chain:
            return _put_object(ctx, db, who, parsed, query)
        if parsed.tail in ("prearchive_code", "quarantine_code", "current_arc", "accessibility"):
            return _put_setting(ctx, db, who, parsed, query)
        if parsed.tail == "files":
            raise HTTPException(400, detail="A file path is required after /files/")
        raise HTTPException(405, detail=f"{method} is not supported here")
    if method == "DELETE":
        if parsed.tail == "files" and parsed.arg:
            return _delete_file(ctx, db, who, parsed)
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
        value = {"prearchive_code": r.project.prearchive_code, "quarantine_code": r.project.quarantine_code,
                 "current_arc": r.project.current_arc, "accessibility": r.project.accessibility}[parsed.tail]
        return PlainTextResponse(str(value))
    if parsed.tail == "files":
        r = resolve(db, who, parsed, Access.READ)
        if parsed.arg:
            return _download_file(ctx, db, r, parsed.arg)
        return _files(ctx, db, r, fmt, query)
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
            projects = [p for p in db.scalars(select(Project).order_by(Project.id)) if can_see_project(db, who, p)]
            rows = [render.project_row(p) for p in projects]
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
        return render.listing_response(render.filter_rows(rows, query), fmt,
                                       header=render.HEADERS["resources"])
    else:
        raise HTTPException(404, detail=f"Unknown collection {tail}")
    return _rows_response(rows, fmt, query, tail or "")


def _rows_response(rows: list[render.Row], fmt: str | None, query: dict[str, str], kind: str) -> Response:
    rows = render.filter_rows(rows, query)
    rows = render.select_columns(rows, query.get("columns"))
    return render.listing_response(rows, fmt, header=render.empty_header(kind, query.get("columns")))


def _with_stats(db: Session, resources: list[Resource]) -> list[tuple[Resource, tuple[int, int]]]:
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
        return render.xml_response(render.assessor_xml(a, _with_stats(db, svc.list_resources(db, [a]))))
    if r.scan is not None:
        s = r.scan
        res = _with_stats(db, svc.list_resources(db, [s]))
        if fmt == "json":
            return render.items_response(render.scan_item(s, res))
        return render.xml_response(render.scan_xml(s, res))
    if r.experiment is not None:
        e = r.experiment
        scans = svc.list_scans(db, e)
        res = _with_stats(db, svc.list_resources(db, [e]))
        assessors = svc.list_assessors(db, e)
        if fmt == "json":
            return render.items_response(render.experiment_item(e, scans, res, assessors))
        scan_res = [(s, _with_stats(db, svc.list_resources(db, [s]))) for s in scans]
        return render.xml_response(render.experiment_xml(e, scan_res, res, assessors))
    if r.subject is not None:
        if fmt == "json":
            return render.items_response(render.subject_item(r.subject))
        return render.xml_response(render.subject_xml(r.subject, _with_stats(db, svc.list_resources(db, [r.subject]))))
    assert r.project is not None
    if fmt == "json":
        return render.items_response(render.project_item(r.project))
    return render.xml_response(render.project_xml(r.project, _with_stats(db, svc.list_resources(db, [r.project]))))


# -- files ----------------------------------------------------------------------------------------------

def _owner_paths(owner: Any) -> tuple[str, str]:
    """(REST base URI, folder inside download zips) of a resource owner, as XNAT names them."""
    if isinstance(owner, Scan):
        e = owner.experiment
        scan_dir = owner.scan_id + (f"-{_safe_component(owner.type)}" if owner.type else "")
        return f"/data/experiments/{e.id}/scans/{owner.scan_id}", f"{e.label}/scans/{scan_dir}"
    if isinstance(owner, Assessor):
        e = owner.experiment
        return f"/data/experiments/{e.id}/assessors/{owner.id}", f"{e.label}/assessors/{owner.label}"
    if isinstance(owner, Experiment):
        return f"/data/experiments/{owner.id}", owner.label
    if isinstance(owner, Subject):
        return f"/data/projects/{owner.project.id}/subjects/{owner.id}", owner.label
    return f"/data/projects/{owner.id}", owner.id


def _safe_component(value: str) -> str:
    return re.sub(r"[^\w.-]", "_", value)


def _selected_files(db: Session, r: Resolved) -> list[tuple[Any, Resource, File]]:
    """The files a ``.../files`` URL selects, each with the resource's owner."""
    if r.resources is not None:
        resources = r.resources
    elif r.resource is not None:
        resources = [r.resource]
    else:
        owners = r.scans if r.scans is not None else [r.owner]
        if r.scans is None and isinstance(r.owner, Experiment):
            owners = [r.owner, *svc.list_scans(db, r.owner)]
        resources = svc.list_resources(db, owners)
    owner_of: dict[int, Any] = {}
    for res in resources:
        owner_of[res.pk] = _resource_owner(db, res, r)
    return [(owner_of[res.pk], res, f) for res, f in svc.list_files(db, resources)]


def _resource_owner(db: Session, res: Resource, r: Resolved) -> Any:
    if res.owner_kind == "scan":
        for s in (r.scans or []) + ([r.scan] if r.scan else []):
            if s.pk == res.scan_pk:
                return s
        return db.get(Scan, res.scan_pk)
    if res.owner_kind == "assessor":
        return db.get(Assessor, res.assessor_pk)
    if res.owner_kind == "experiment":
        return db.get(Experiment, res.experiment_pk)
    if res.owner_kind == "subject":
        return db.get(Subject, res.subject_pk)
    return db.get(Project, res.project_pk)


def _files(ctx: AppContext, db: Session, r: Resolved, fmt: str | None, query: dict[str, str]) -> Response:
    selected = _selected_files(db, r)
    if fmt == "zip":
        if not selected:
            raise HTTPException(404, detail="No files match this request")
        members = []
        for owner, res, f in selected:
            _base, folder = _owner_paths(owner)
            members.append(ZipMember(f"{folder}/resources/{res.label}/files/{f.path}",
                                     file_path(ctx.archive_root, res, f), f.size,
                                     f.created_at.timestamp() if f.created_at else None))
        name = _safe_component(_owner_paths(r.owner)[1].replace("/", "_")) if r.owner is not None else "download"
        return StreamingResponse(stream_zip(members), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="{name}.zip"'})
    rows = [render.file_row(_owner_paths(owner)[0], res, f) for owner, res, f in selected]
    rows = render.filter_rows(rows, query)
    return render.listing_response(rows, fmt, header=render.HEADERS["files"])


def _download_file(ctx: AppContext, db: Session, r: Resolved, path: str) -> Response:
    try:
        rel = safe_relpath(path)
    except UnsafePathError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    resources = r.resources if r.resources is not None else ([r.resource] if r.resource else None)
    if resources is None:
        resources = svc.list_resources(db, r.scans if r.scans is not None else [r.owner])
    for res in resources:
        f = svc.find_file(db, res, rel)
        if f is not None:
            disk = file_path(ctx.archive_root, res, f)
            if not disk.is_file():
                raise HTTPException(404, detail=f"File {rel} is catalogued but missing from the archive")
            return FileResponse(disk, media_type=f.content_type or "application/octet-stream",
                                filename=rel.rsplit("/", 1)[-1])
    raise HTTPException(404, detail=f"File {rel} not found")


# -- writes ---------------------------------------------------------------------------------------------

@contextmanager
def _write_errors() -> Iterator[None]:
    try:
        yield
    except UnsafePathError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    except FileExistsError as exc:
        raise HTTPException(409, detail=f"{exc} (add overwrite=true to replace it)") from exc
    except IntegrityError as exc:
        raise HTTPException(409, detail="Conflicts with an existing object (duplicate ID or label)") from exc
    except LookupError as exc:
        raise HTTPException(404, detail=str(exc)) from exc


def qs_fields(query: dict[str, str]) -> dict[str, str]:
    """Fields from XNAT's ``req_format=qs`` parameters, keyed by lower-case field path.

    ``xnat:mrSessionData/date=...`` → ``date``; ``xnat:projectData/PI/firstname`` → ``pi/firstname``;
    bracketed selectors such as ``demographics[@xsi:type=xnat:demographicData]`` are dropped.
    """
    out: dict[str, str] = {}
    for key, value in query.items():
        if key in RESERVED:
            continue
        head, sep, path = key.partition("/")
        if sep and ":" in head:
            name = path
        elif not sep and ":" not in key:
            name = key
        else:
            continue
        name = re.sub(r"\[[^\]]*\]", "", name).strip("/").lower()
        if name:
            out[name] = value
    return out


def _event_user(who: Principal) -> str | None:
    return who.username if who.authenticated else None


def _put_object(ctx: AppContext, db: Session, who: Principal, parsed: Parsed, query: dict[str, str]) -> Response:
    kind, key = parsed.chain[-1]
    if kind == "project":
        return _put_project(ctx, db, who, key, query)
    r = resolve(db, who, parsed, Access.WRITE, allow_missing=True)
    fields = qs_fields(query)
    xsi = query.get("xsiType")
    db.rollback()  # release the read transaction before the writer's (SQLite allows one writer)
    with _write_errors(), ArchiveWriter(ctx) as w:
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


def _reload(w: ArchiveWriter, obj: Any) -> Any:
    return None if obj is None else w.db.get(type(obj), obj.pk)


def _relabel(w: ArchiveWriter, obj: Subject | Experiment | Assessor, fields: dict[str, str]) -> None:
    new = fields.get("label")
    if new and new != obj.label:
        obj.label = safe_label(new)
        w.db.flush()


def _put_subject(w: ArchiveWriter, who: Principal, r: Resolved, key: str, fields: dict[str, str]) -> Response:
    if r.missing is None:
        subject = _reload(w, r.subject)
        _relabel(w, subject, fields)
        _apply_extra(subject, fields, skip={"label", "id", "project"})
        return PlainTextResponse(subject.id)
    project = _reload(w, r.project)
    subject, _created = w.ensure_subject(project, fields.get("label") or key)
    _apply_extra(subject, fields, skip={"label", "id", "project"})
    if who.user is not None:
        subject.extra = {**subject.extra, "insert_user": who.username}
    w.db.flush()
    w.publish("SubjectEvent", "CREATED", {"id": subject.id, "label": subject.label, "project-id": project.id,
                                         "uri": f"/archive/subjects/{subject.id}"},
              project_id=project.id, object_uri=f"/archive/subjects/{subject.id}", user=_event_user(who))
    return PlainTextResponse(subject.id)


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
    _apply_extra(exp, fields, skip={"date", "time", "modality", "uid", "dcmaccessionnumber", "label", "id",
                                    "project", "subject_id", "subject_label"})


def _put_experiment(w: ArchiveWriter, who: Principal, r: Resolved, key: str, fields: dict[str, str],
                    xsi: str | None) -> Response:
    if r.missing is None:
        exp = _reload(w, r.experiment)
        _relabel(w, exp, fields)
        _experiment_columns(exp, fields)
        w.db.flush()
        return PlainTextResponse(exp.id)
    if not xsi:
        raise HTTPException(400, detail="xsiType is required to create an experiment (e.g. xnat:mrSessionData)")
    xsi_type = svc.canonical_type(xsi, svc.SESSION_TYPES)
    if xsi_type is None:
        raise HTTPException(400, detail=f"Unsupported experiment type {xsi}")
    project = _reload(w, r.project)
    subject = _reload(w, r.subject)
    if subject is None:
        subject_key = fields.get("subject_id") or fields.get("subject_label")
        if not subject_key:
            raise HTTPException(400, detail="A subject is required: create the experiment under "
                                            "/subjects/{subject} or pass subject_ID")
        subject = svc.find_subject(w.db, project, subject_key)
        if subject is None:
            raise _not_found("subject", subject_key)
    label = fields.get("label") or key
    exp, _created = w.ensure_experiment(project, subject, label, xsi_type=xsi_type)
    _experiment_columns(exp, fields)
    w.db.flush()
    uri = f"/archive/experiments/{exp.id}"
    w.publish("SessionEvent", "CREATED", {"id": exp.id, "label": exp.label, "xsiType": exp.xsi_type,
                                         "project-id": project.id, "subject-id": subject.id, "uri": uri},
              project_id=project.id, object_uri=uri, user=_event_user(who))
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
    _apply_extra(scan, fields, skip={"type", "series_description", "quality", "modality", "note", "uid",
                                     "frames", "id", "image_session_id", "project", "label"})


def _put_scan(w: ArchiveWriter, who: Principal, r: Resolved, key: str, fields: dict[str, str],
              xsi: str | None) -> Response:
    if r.missing is None:
        if r.scan is None:
            raise HTTPException(400, detail="Select a single scan to update")
        scan = _reload(w, r.scan)
        _scan_columns(scan, fields)
        w.db.flush()
        return PlainTextResponse(scan.scan_id)
    exp = _reload(w, r.experiment)
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
    w.publish("ScanEvent", "CREATED", {"id": scan.scan_id, "label": scan.scan_id, "xsiType": scan.xsi_type,
                                      "uri": uri, "integer-id": scan.pk, "scan-type": scan.type,
                                      "project-id": exp.project.id, "session-id": exp.id,
                                      "modality": scan.modality, "series-description": scan.series_description},
              project_id=exp.project.id, object_uri=uri, user=_event_user(who))
    return PlainTextResponse(scan.scan_id)


def _put_assessor(w: ArchiveWriter, who: Principal, r: Resolved, key: str, fields: dict[str, str],
                  xsi: str | None) -> Response:
    if r.missing is None:
        assessor = _reload(w, r.assessor)
        _relabel(w, assessor, fields)
        _apply_extra(assessor, fields, skip={"label", "id", "project", "imagesession_id"})
        return PlainTextResponse(assessor.id)
    xsi_type = svc.canonical_type(xsi or "xnat:imageAssessorData", svc.ASSESSOR_TYPES)
    if xsi_type is None:
        raise HTTPException(400, detail=f"Unsupported assessor type {xsi}")
    exp = _reload(w, r.experiment)
    assessor, _created = w.ensure_assessor(exp, fields.get("label") or key, xsi_type=xsi_type)
    _apply_extra(assessor, fields, skip={"label", "id", "project", "imagesession_id"})
    uri = f"/archive/experiments/{exp.id}/assessors/{assessor.id}"
    w.publish("ImageAssessorEvent", "CREATED", {"id": assessor.id, "label": assessor.label,
                                               "xsiType": xsi_type, "project-id": exp.project.id,
                                               "session-id": exp.id, "uri": uri},
              project_id=exp.project.id, object_uri=uri, user=_event_user(who))
    return PlainTextResponse(assessor.id)


def _owner_in(w: ArchiveWriter, r: Resolved) -> Any:
    owner = r.owner
    if owner is None:
        raise HTTPException(404, detail="No owner for this resource")
    return w.db.get(type(owner), owner.pk)


def _put_resource(w: ArchiveWriter, who: Principal, r: Resolved, key: str, fields: dict[str, str],
                  query: dict[str, str]) -> Response:
    if r.scans is not None:
        raise HTTPException(400, detail="Select a single scan to create a resource")
    res_format = fields.get("format") or query.get("format") or None
    content = fields.get("content") or query.get("content") or None
    if r.missing is None:
        res = _reload(w, r.resource)
        if res_format:
            res.format = res_format
        if content:
            res.content = content
        w.db.flush()
        return PlainTextResponse(str(res.xnat_id))
    owner = _owner_in(w, r)
    label = fields.get("label") or key
    res, _created = w.ensure_resource(owner, label, format=res_format, content=content)
    _publish_resource(w, who, owner, res, "CREATED")
    return PlainTextResponse(str(res.xnat_id))


def _project_of(owner: Any) -> Project:
    if isinstance(owner, Project):
        return owner
    if isinstance(owner, Subject | Experiment):
        return owner.project
    return owner.experiment.project


def _publish_resource(w: ArchiveWriter, who: Principal, owner: Any, res: Resource, status: str) -> None:
    base, _folder = _owner_paths(owner)
    uri = base.replace("/data", "/archive", 1) + f"/resources/{res.label}"
    project = _project_of(owner)
    w.publish("ResourceEvent", status, {"id": str(res.xnat_id), "label": res.label, "uri": uri,
                                       "project-id": project.id, "format": res.format},
              project_id=project.id, object_uri=uri, user=_event_user(who))


def _delete_object(ctx: AppContext, db: Session, who: Principal, parsed: Parsed, query: dict[str, str]) -> Response:
    r = resolve(db, who, parsed, Access.DELETE)
    if r.scans is not None or r.resources is not None:
        raise HTTPException(400, detail="Select a single object to delete")
    db.rollback()
    with _write_errors(), ArchiveWriter(ctx) as w:
        if r.resource is not None:
            res = _reload(w, r.resource)
            w.delete_resource(res)
            return PlainTextResponse("")
        target = r.assessor or r.scan or r.experiment or r.subject or r.project
        obj = _reload(w, target)
        project_id = r.project.id if r.project else None
        if isinstance(obj, Experiment):
            uri = f"/archive/experiments/{obj.id}"
            w.publish("SessionEvent", "DELETED", {"id": obj.id, "label": obj.label, "project-id": project_id,
                                                 "uri": uri}, project_id=project_id, object_uri=uri,
                      user=_event_user(who))
        elif isinstance(obj, Subject):
            uri = f"/archive/subjects/{obj.id}"
            w.publish("SubjectEvent", "DELETED", {"id": obj.id, "label": obj.label, "project-id": project_id,
                                                 "uri": uri}, project_id=project_id, object_uri=uri,
                      user=_event_user(who))
        elif isinstance(obj, Project):
            if not who.is_admin and project_access(w.db, who, obj) < Access.MANAGE:
                raise HTTPException(403, detail="Only project owners may delete a project")
            uri = f"/archive/projects/{obj.id}"
            w.publish("ProjectEvent", "DELETED", {"id": obj.id, "uri": uri}, project_id=obj.id, object_uri=uri,
                      user=_event_user(who))
        w.delete(obj)
    return PlainTextResponse("")


def _delete_file(ctx: AppContext, db: Session, who: Principal, parsed: Parsed) -> Response:
    r = resolve(db, who, parsed, Access.DELETE)
    try:
        rel = safe_relpath(parsed.arg or "")
    except UnsafePathError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    if r.resource is None:
        raise HTTPException(400, detail="Delete files through their resource: .../resources/{label}/files/{path}")
    f = svc.find_file(db, r.resource, rel)
    if f is None:
        raise HTTPException(404, detail=f"File {rel} not found")
    db.rollback()
    with _write_errors(), ArchiveWriter(ctx) as w:
        row = w.db.get(File, f.pk)
        if row is None:
            raise HTTPException(404, detail=f"File {rel} not found")
        w.delete_file(row)
    return PlainTextResponse("")


# -- projects -------------------------------------------------------------------------------------------

def _may_create_projects(db: Session, who: Principal) -> None:
    if not who.authenticated:
        raise Unauthorized()
    if who.is_admin:
        return
    if not get_pref(db, PREF_NON_ADMIN_PROJECTS, True):
        raise HTTPException(403, detail="Only site administrators may create projects on this site")


def _check_project_id(project_id: str) -> None:
    if not PROJECT_ID_RE.match(project_id):
        raise HTTPException(400, detail=f"Invalid project ID {project_id!r}: use letters, digits, '_' and '-'")


def _apply_project_fields(db: Session, project: Project, fields: dict[str, str]) -> None:
    mapping = {"name": "name", "secondary_id": "secondary_id", "description": "description",
               "keywords": "keywords", "pi/firstname": "pi_firstname", "pi_firstname": "pi_firstname",
               "pi/lastname": "pi_lastname", "pi_lastname": "pi_lastname"}
    for key, attr in mapping.items():
        if key in fields:
            value = fields[key].strip()
            if attr == "name" and not value:
                raise HTTPException(400, detail="A project name cannot be empty")
            setattr(project, attr, value or None)
    aliases = [a.strip() for k in ("aliases/alias", "alias") if k in fields for a in fields[k].split(",")
               if a.strip()]
    for alias in aliases:
        _check_project_id(alias)
        clash = find_project(db, alias)
        if clash is not None and clash.pk != project.pk:
            raise HTTPException(409, detail=f"Alias {alias} is already used by project {clash.id}")
        if clash is None:
            project.aliases.append(ProjectAlias(alias=alias))


def _create_project(ctx: AppContext, who: Principal, project_id: str, fields: dict[str, str],
                    *, allow_existing: bool) -> Response:
    _check_project_id(project_id)
    with _write_errors(), ctx.session() as db:
        _may_create_projects(db, who)
        existing = find_project(db, project_id)
        if existing is not None:
            if not allow_existing:
                raise HTTPException(409, detail=f"Project {project_id} already exists")
            check_project(db, who, project_id, Access.MANAGE)
            _apply_project_fields(db, existing, fields)
            _unique_name(db, existing)
            return PlainTextResponse(existing.id)
        name = (fields.get("name") or project_id).strip()
        project = Project(id=project_id, name=name, secondary_id=project_id, extra={})
        _apply_project_fields(db, project, fields)
        _unique_name(db, project)
        if "accessibility" in fields:
            project.accessibility = _accessibility(fields["accessibility"])
        db.add(project)
        db.flush()
        if who.user is not None:
            db.add(ProjectMember(project_pk=project.pk, user_pk=who.user.pk, role="owner"))
        uri = f"/archive/projects/{project.id}"
        bus.publish(db, "ProjectEvent", "CREATED", {"id": project.id, "uri": uri}, project_id=project.id,
                    object_uri=uri, user=_event_user(who))
        db.flush()
    bus.notify()
    return PlainTextResponse(project_id, status_code=200)


def _unique_name(db: Session, project: Project) -> None:
    clash = db.scalar(select(Project).where(Project.name == project.name, Project.pk != project.pk)) \
        if project.pk else db.scalar(select(Project).where(Project.name == project.name))
    if clash is not None:
        raise HTTPException(409, detail=f"Project name {project.name!r} is already used by project {clash.id}")


def _put_project(ctx: AppContext, db: Session, who: Principal, key: str, query: dict[str, str]) -> Response:
    fields = qs_fields(query)
    if fields.get("id") and fields["id"] != key and find_project(db, key) is None:
        raise HTTPException(400, detail=f"ID {fields['id']} does not match the URL's {key}")
    db.rollback()
    return _create_project(ctx, who, key, fields, allow_existing=True)


async def read_small_body(request: Request, limit: int = MAX_XML_BODY) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, detail=f"Request body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, detail=f"Request body larger than {limit} bytes")
    return bytes(body)


def parse_project_xml(body: bytes) -> dict[str, str]:
    """An ``xnat:projectData`` document → fields; DTDs and entities are refused outright."""
    text = body.decode("utf-8", errors="strict") if body else ""
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        raise HTTPException(400, detail="DOCTYPE and ENTITY declarations are not accepted")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise HTTPException(400, detail=f"Malformed XML: {exc}") from exc
    local = root.tag.rsplit("}", 1)[-1]
    xsi = root.get(f"{{{render.XSI_NS}}}type", "")
    if local not in ("Project", "projectData") and xsi != "xnat:projectData":
        raise HTTPException(400, detail=f"Expected an xnat:projectData document, got <{local}>")
    fields: dict[str, str] = {}
    if root.get("ID"):
        fields["id"] = root.get("ID", "")
    if root.get("secondary_ID"):
        fields["secondary_id"] = root.get("secondary_ID", "")
    aliases: list[str] = []
    for child in root:
        name = child.tag.rsplit("}", 1)[-1]
        if name in ("name", "description", "keywords"):
            fields[name] = (child.text or "").strip()
        elif name == "aliases":
            aliases += [(a.text or "").strip() for a in child if (a.text or "").strip()]
        elif name == "PI":
            for part in child:
                pname = part.tag.rsplit("}", 1)[-1]
                if pname in ("firstname", "lastname"):
                    fields[f"pi/{pname}"] = (part.text or "").strip()
    if aliases:
        fields["aliases/alias"] = ",".join(aliases)
    return fields


def create_project_xml(ctx: AppContext, db: Session, who: Principal, body: bytes,
                       url_id: str | None = None) -> Response:
    if not who.authenticated:
        raise Unauthorized()
    try:
        fields = parse_project_xml(body)
    except UnicodeDecodeError as exc:
        raise HTTPException(400, detail="XML body is not UTF-8") from exc
    project_id = fields.pop("id", None) or url_id
    if not project_id:
        raise HTTPException(400, detail="The project document has no ID")
    if url_id and project_id != url_id:
        raise HTTPException(400, detail=f"ID {project_id} does not match the URL's {url_id}")
    db.rollback()
    return _create_project(ctx, who, project_id, fields, allow_existing=url_id is not None)


def _accessibility(value: str) -> str:
    value = value.lower()
    if value not in ("private", "protected", "public"):
        raise HTTPException(400, detail="accessibility must be private, protected or public")
    return value


def _put_setting(ctx: AppContext, db: Session, who: Principal, parsed: Parsed, query: dict[str, str]) -> Response:
    r = resolve(db, who, parsed, Access.MANAGE)
    assert r.project is not None
    value = parsed.arg
    if value is None:
        raise HTTPException(400, detail=f"A value is required: .../{parsed.tail}/{{value}}")
    project_pk = r.project.pk
    db.rollback()
    with ctx.session() as wdb:
        project = wdb.get(Project, project_pk)
        assert project is not None
        if parsed.tail in ("prearchive_code", "quarantine_code"):
            allowed = {"prearchive_code": {0, 4, 5}, "quarantine_code": {0, 1}}[parsed.tail]
            if not value.isdigit() or int(value) not in allowed:
                raise HTTPException(400, detail=f"{parsed.tail} must be one of {sorted(allowed)}")
            setattr(project, parsed.tail, int(value))
        elif parsed.tail == "current_arc":
            project.current_arc = safe_label(value) if re.match(r"^[\w-]+$", value) else _bad_arc(value)
        else:
            project.accessibility = _accessibility(value)
    return PlainTextResponse(value)


def _bad_arc(value: str) -> str:
    raise HTTPException(400, detail=f"Invalid archive folder name {value!r}")


# -- uploads --------------------------------------------------------------------------------------------

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes", "y")


async def upload(ctx: AppContext, db: Session, who: Principal, parsed: Parsed, query: dict[str, str],
                 request: Request) -> Response:
    """Stream the body to a staging file, then archive it (or the members of a zip/tar) atomically."""
    try:
        rel = safe_relpath(parsed.arg or "")
    except UnsafePathError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    r = await run_in_threadpool(resolve, db, who, parsed, Access.WRITE, allow_missing=True)
    if r.missing is not None and r.missing[0] != "resource":
        raise _not_found(*r.missing)
    if r.scans is not None or r.resources is not None:
        raise HTTPException(400, detail="Upload into a single resource")
    limit = ctx.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, detail=f"Upload larger than the limit of {limit} bytes")
    await run_in_threadpool(db.rollback)
    staging = ctx.archive_root / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"upload-{uuid.uuid4().hex}"
    try:
        size = 0
        fh = await run_in_threadpool(open, tmp, "wb")
        try:
            buffer = bytearray()
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, detail=f"Upload larger than the limit of {limit} bytes")
                buffer.extend(chunk)
                if len(buffer) >= 1024 * 1024:
                    await run_in_threadpool(fh.write, bytes(buffer))
                    buffer.clear()
            if buffer:
                await run_in_threadpool(fh.write, bytes(buffer))
        finally:
            await run_in_threadpool(fh.close)
        return await run_in_threadpool(_store_upload, ctx, who, r, rel, tmp, query)
    except ClientDisconnect:
        log.info("upload aborted by the client; nothing stored")
        return PlainTextResponse("Upload aborted", status_code=400)
    finally:
        tmp.unlink(missing_ok=True)


def _store_upload(ctx: AppContext, who: Principal, r: Resolved, rel: str, tmp: Path,
                  query: dict[str, str]) -> Response:
    overwrite = _truthy(query.get("overwrite"))
    extract = _truthy(query.get("extract")) and rel.lower().endswith(ARCHIVE_SUFFIXES)
    limit = ctx.settings.max_upload_bytes
    with _write_errors(), ArchiveWriter(ctx) as w:
        owner = _owner_in(w, r)
        if r.resource is not None:
            res = w.db.get(Resource, r.resource.pk)
            created = False
        else:
            assert r.missing is not None
            res, created = w.ensure_resource(owner, r.missing[1], format=None, content=None)
        try:
            if extract:
                base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
                count = _extract_into(w, res, tmp, base, overwrite=overwrite, limit=limit)
                if count == 0:
                    raise HTTPException(400, detail="The archive contains no files")
            else:
                w.add_file(res, rel, tmp, overwrite=overwrite, move=True,
                           content_type=None)
        except ValueError as exc:
            if isinstance(exc, UnsafePathError):
                raise
            raise HTTPException(413, detail=str(exc)) from exc
        _publish_resource(w, who, owner, res, "CREATED" if created else "UPDATED")
    return PlainTextResponse("")


def _extract_into(w: ArchiveWriter, res: Resource, archive: Path, base: str, *, overwrite: bool,
                  limit: int) -> int:
    """Add every regular member of a zip or tar archive; any unsafe member name fails the whole upload."""
    count = 0
    total = 0
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode == 0o120000:
                        raise HTTPException(400, detail=f"Symbolic links are not accepted: {info.filename}")
                    name = safe_relpath(base + info.filename)
                    total += info.file_size
                    if total > limit:
                        raise ValueError(f"extracted content larger than the limit of {limit} bytes")
                    with zf.open(info) as src:
                        w.add_file(res, name, src, overwrite=overwrite, max_bytes=limit)
                    count += 1
        except zipfile.BadZipFile as exc:
            raise HTTPException(400, detail=f"Corrupt zip archive: {exc}") from exc
        return count
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise HTTPException(400, detail=f"Only regular files are accepted in archives: {member.name}")
                name = safe_relpath(base + member.name.removeprefix("./"))
                total += member.size
                if total > limit:
                    raise ValueError(f"extracted content larger than the limit of {limit} bytes")
                src: IO[bytes] | None = tf.extractfile(member)
                if src is None:
                    continue
                with src:
                    w.add_file(res, name, src, overwrite=overwrite, max_bytes=limit)
                count += 1
    except tarfile.TarError as exc:
        raise HTTPException(400, detail=f"Not a readable zip or tar archive: {exc}") from exc
    return count


# -- site-wide helpers ----------------------------------------------------------------------------------

def site_scanners(db: Session, who: Principal) -> list[str]:
    return svc.scanners(db, readable_projects(db, who))


def site_scan_types(db: Session, who: Principal) -> list[str]:
    return svc.scan_types(db, readable_projects(db, who))


__all__ = ["dispatch", "upload", "create_project_xml", "read_small_body", "XML_TYPES"]
