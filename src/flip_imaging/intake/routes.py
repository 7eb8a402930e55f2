"""HTTP API of the DICOM intake (XNAT wire shapes, logic in the service modules).

* ``/xapi/dicomscp``: receivers (list, create, get, update, delete, ``/{id}/enabled[/{flag}]``,
  ``/title/{ae}/{port}``, ``/start``, ``/stop``), admin only for changes.
* ``/xapi/dicomscp/quarantine``: our addition. ``GET`` lists what could not be archived (instances with
  the reason, sessions with the reason); ``GET /{id}``; ``POST /{id}/retry`` (an instance goes back to
  the queue, a session is archived again); ``DELETE /{id}`` (the data is deleted). Admin only.
* ``/xapi/dicomscp/relabel``: our addition for FLIP. ``POST`` JSON ``{"studyInstanceUid"|"accessionNumber",
  "project", "subject", "session"}`` pre-registers the routing of a study about to be sent (e.g. before
  a C-MOVE); ``GET`` lists, ``DELETE /{id}`` removes. Admins, or members of the project.
* ``/xapi/anonymize/...``: site and project DicomEdit scripts.
* ``/data/prearchive/...``, ``/data/services/archive``, ``/data/services/prearchive/delete|move``.
* ``/data/services/import``: DICOM zip or single file, answered with the session URI once archived.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from flip_imaging.auth.deps import check_project, get_ctx, get_db, require_admin, require_user
from flip_imaging.auth.principal import Access, Principal, project_access
from flip_imaging.context import AppContext
from flip_imaging.intake import importer, prearchive, scriptstore
from flip_imaging.intake import receivers as rx
from flip_imaging.intake.models import DicomQuarantine, DicomReceiver, DicomRelabel, DicomSession
from flip_imaging.intake.pipeline import Pipeline
from flip_imaging.intake.routing import UNASSIGNED
from flip_imaging.prefs import set_pref

router = APIRouter()


# -- helpers --------------------------------------------------------------------------------------------
_PIPELINES: dict[int, Pipeline] = {}


def pipeline_for(ctx: AppContext) -> Pipeline:
    """The running service's pipeline, or one for this context (requests then drain the spool)."""
    service = rx.service_for(ctx)
    if service is not None:
        return service.pipeline
    pipe = _PIPELINES.get(id(ctx))
    if pipe is None or pipe.ctx is not ctx:
        pipe = _PIPELINES[id(ctx)] = Pipeline(ctx)
    return pipe


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise HTTPException(400, detail="request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, detail="request body must be a JSON object")
    return body


@contextmanager
def _receiver_errors() -> Iterator[None]:
    try:
        yield
    except rx.ReceiverError as exc:
        raise HTTPException(409 if exc.conflict else 400, detail=str(exc)) from exc


def _flag(value: str) -> bool:
    v = value.lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise HTTPException(400, detail=f"expected true or false, not {value!r}")


def _receiver(db: Session, receiver_id: int) -> DicomReceiver:
    r = db.get(DicomReceiver, receiver_id)
    if r is None:
        raise HTTPException(404, detail=f"no DICOM receiver with id {receiver_id}")
    return r


# -- /xapi/dicomscp ------------------------------------------------------------------------------------
@router.get("/xapi/dicomscp")
def list_receivers(
    db: Session = Depends(get_db), _: Principal = Depends(require_user)
) -> list[dict[str, Any]]:
    return [rx.to_json(r) for r in db.scalars(select(DicomReceiver).order_by(DicomReceiver.pk))]


@router.post("/xapi/dicomscp")
async def create_receiver(request: Request, _: Principal = Depends(require_admin)) -> dict[str, Any]:
    body = await _json_body(request)
    ctx = get_ctx(request)
    with ctx.session() as db, _receiver_errors():
        receiver = rx.create_receiver(db, body)
        out = rx.to_json(receiver)
    await run_in_threadpool(rx.apply_changes, ctx)
    return out


@router.put("/xapi/dicomscp/start")
def start_receivers(request: Request, _: Principal = Depends(require_admin)) -> Response:
    ctx = get_ctx(request)
    with ctx.session() as db:
        set_pref(db, rx.SCP_ENABLED_PREF, True)
    rx.apply_changes(ctx)
    return Response(status_code=200)


@router.put("/xapi/dicomscp/stop")
def stop_receivers(request: Request, _: Principal = Depends(require_admin)) -> Response:
    ctx = get_ctx(request)
    with ctx.session() as db:
        set_pref(db, rx.SCP_ENABLED_PREF, False)
    rx.apply_changes(ctx)
    return Response(status_code=200)


@router.get("/xapi/dicomscp/title/{ae_title}/{port}")
def receiver_by_title(
    ae_title: str, port: int, db: Session = Depends(get_db), _: Principal = Depends(require_user)
) -> dict[str, Any]:
    r = db.scalar(select(DicomReceiver).where(DicomReceiver.ae_title == ae_title, DicomReceiver.port == port))
    if r is None:
        raise HTTPException(404, detail=f"no DICOM receiver {ae_title}:{port}")
    return rx.to_json(r)


# -- quarantine (before /{id} so that the literal path wins) ------------------------------------------
@router.get("/xapi/dicomscp/quarantine")
def list_quarantine(
    db: Session = Depends(get_db), _: Principal = Depends(require_admin)
) -> list[dict[str, Any]]:
    return [prearchive.quarantine_json(q, s) for q, s in prearchive.list_quarantine(db)]


def _quarantined(db: Session, qid: int) -> DicomQuarantine:
    q = db.get(DicomQuarantine, qid)
    if q is None:
        raise HTTPException(404, detail=f"no quarantine entry {qid}")
    return q


@router.get("/xapi/dicomscp/quarantine/{qid}")
def get_quarantined(qid: int, db: Session = Depends(get_db), _: Principal = Depends(require_admin)) -> Any:
    q = _quarantined(db, qid)
    return prearchive.quarantine_json(q, db.get(DicomSession, q.session_pk) if q.session_pk else None)


@router.post("/xapi/dicomscp/quarantine/{qid}/retry")
def retry_quarantined(qid: int, request: Request, _: Principal = Depends(require_admin)) -> Response:
    ctx = get_ctx(request)
    pipe = pipeline_for(ctx)
    with ctx.session() as db:
        q = _quarantined(db, qid)
        try:
            prearchive.retry_quarantined(pipe, db, q)
        except FileNotFoundError as exc:
            raise HTTPException(410, detail=str(exc)) from exc
    if rx.service_for(ctx) is None:
        _drain(pipe)
    return PlainTextResponse("queued for another attempt")


@router.delete("/xapi/dicomscp/quarantine/{qid}")
def delete_quarantined(qid: int, request: Request, _: Principal = Depends(require_admin)) -> Response:
    ctx = get_ctx(request)
    with ctx.session() as db:
        prearchive.delete_quarantined(pipeline_for(ctx), db, _quarantined(db, qid))
    return Response(status_code=200)


def _drain(pipe: Pipeline) -> None:
    """No worker thread: do its job in the request (used when the service is not running)."""
    from flip_imaging.intake.assembly import ArchiveFailed, archive_session, finish_prearchive
    from flip_imaging.intake.pipeline import due_sessions

    while pipe.process_batch().processed:
        pass
    with pipe.ctx.session() as db:
        due = due_sessions(db, pipe.ctx.settings.session_quiet_seconds)
        kinds = {pk: db.get(DicomSession, pk).destination for pk in due}  # type: ignore[union-attr]
    for pk in due:
        if kinds[pk] == "prearchive":
            finish_prearchive(pipe, pk)
        else:
            try:
                archive_session(pipe, pk)
            except ArchiveFailed:
                pass


# -- relabel map ---------------------------------------------------------------------------------------
def _relabel_json(r: DicomRelabel) -> dict[str, Any]:
    key = "studyInstanceUid" if r.key_kind == "study_uid" else "accessionNumber"
    return {
        "id": r.pk,
        key: r.key_value,
        "project": r.project,
        "subject": r.subject,
        "session": r.session,
        "created": r.created_at.isoformat() if r.created_at else None,
        "used": r.used_at.isoformat() if r.used_at else None,
    }


@router.get("/xapi/dicomscp/relabel")
def list_relabels(
    db: Session = Depends(get_db), _: Principal = Depends(require_admin)
) -> list[dict[str, Any]]:
    return [_relabel_json(r) for r in db.scalars(select(DicomRelabel).order_by(DicomRelabel.pk))]


@router.post("/xapi/dicomscp/relabel")
async def create_relabel(request: Request, who: Principal = Depends(require_user)) -> JSONResponse:
    body = await _json_body(request)
    ctx = get_ctx(request)
    study, accession = body.get("studyInstanceUid"), body.get("accessionNumber")
    if bool(study) == bool(accession):
        raise HTTPException(400, detail="give exactly one of studyInstanceUid and accessionNumber")
    kind, value = ("study_uid", study) if study else ("accession", accession)
    if not isinstance(value, str) or len(value) > 128:
        raise HTTPException(400, detail="the key must be a string of at most 128 characters")
    fields = {k: body.get(k) for k in ("project", "subject", "session")}
    if not isinstance(fields["project"], str) or not fields["project"]:
        raise HTTPException(400, detail="project is required")
    for k in ("subject", "session"):
        if fields[k] is not None and (not isinstance(fields[k], str) or len(fields[k]) > 255):
            raise HTTPException(400, detail=f"{k} must be a string")
    with ctx.session() as db:
        project = check_project(db, who, fields["project"], Access.WRITE)
        row = db.scalar(
            select(DicomRelabel).where(DicomRelabel.key_kind == kind, DicomRelabel.key_value == value)
        )
        if row is None:
            row = DicomRelabel(key_kind=kind, key_value=value, project=project.id)
            db.add(row)
        row.project, row.subject, row.session = project.id, fields["subject"], fields["session"]
        db.flush()
        out = _relabel_json(row)
    return JSONResponse(out, status_code=201)


@router.delete("/xapi/dicomscp/relabel/{relabel_id}")
def delete_relabel(relabel_id: int, request: Request, who: Principal = Depends(require_user)) -> Response:
    ctx = get_ctx(request)
    with ctx.session() as db:
        row = db.get(DicomRelabel, relabel_id)
        if row is None:
            raise HTTPException(404, detail=f"no relabel entry {relabel_id}")
        check_project(db, who, row.project, Access.WRITE)
        db.delete(row)
    return Response(status_code=200)


# -- /xapi/dicomscp/{id} -------------------------------------------------------------------------------
@router.get("/xapi/dicomscp/{receiver_id}")
def get_receiver(
    receiver_id: int, db: Session = Depends(get_db), _: Principal = Depends(require_user)
) -> dict[str, Any]:
    return rx.to_json(_receiver(db, receiver_id))


@router.put("/xapi/dicomscp/{receiver_id}")
async def update_receiver(
    receiver_id: int, request: Request, _: Principal = Depends(require_admin)
) -> dict[str, Any]:
    body = await _json_body(request)
    ctx = get_ctx(request)
    with ctx.session() as db, _receiver_errors():
        r = _receiver(db, receiver_id)
        rx.apply_fields(db, r, {k: v for k, v in body.items() if k != "id"})
        db.flush()
        out = rx.to_json(r)
    await run_in_threadpool(rx.apply_changes, ctx)
    return out


@router.delete("/xapi/dicomscp/{receiver_id}")
def delete_receiver(receiver_id: int, request: Request, _: Principal = Depends(require_admin)) -> Response:
    ctx = get_ctx(request)
    with ctx.session() as db:
        db.delete(_receiver(db, receiver_id))
    rx.apply_changes(ctx)
    return Response(status_code=200)


@router.get("/xapi/dicomscp/{receiver_id}/enabled")
def receiver_enabled(
    receiver_id: int, db: Session = Depends(get_db), _: Principal = Depends(require_user)
) -> bool:
    return _receiver(db, receiver_id).enabled


@router.put("/xapi/dicomscp/{receiver_id}/enabled/{flag}")
def set_receiver_enabled(
    receiver_id: int, flag: str, request: Request, _: Principal = Depends(require_admin)
) -> dict[str, Any]:
    ctx = get_ctx(request)
    with ctx.session() as db:
        r = _receiver(db, receiver_id)
        r.enabled = _flag(flag)
        out = rx.to_json(r)
    rx.apply_changes(ctx)
    return out


# -- /xapi/anonymize -----------------------------------------------------------------------------------
async def _text_body(request: Request) -> str:
    raw = await request.body()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, detail="script must be UTF-8 text") from None


@router.get("/xapi/anonymize/default", response_class=PlainTextResponse)
def default_script(_: Principal = Depends(require_user)) -> str:
    return scriptstore.default_script_text()


@router.get("/xapi/anonymize/site", response_class=PlainTextResponse)
def get_site_script(request: Request, _: Principal = Depends(require_user)) -> str:
    with get_ctx(request).session() as db:
        return scriptstore.site_script(db).text


@router.put("/xapi/anonymize/site")
async def put_site_script(request: Request, _: Principal = Depends(require_admin)) -> Response:
    text = await _text_body(request)
    with get_ctx(request).session() as db:
        try:
            scriptstore.set_site_script(db, text)
        except scriptstore.ScriptInvalid as exc:
            raise HTTPException(400, detail=f"invalid DicomEdit script: {exc}") from exc
    return Response(status_code=200)


@router.get("/xapi/anonymize/site/enabled")
def get_site_enabled(request: Request, _: Principal = Depends(require_user)) -> bool:
    with get_ctx(request).session() as db:
        return scriptstore.site_script(db).enabled


@router.put("/xapi/anonymize/site/enabled")
def put_site_enabled(
    request: Request, enable: str = "true", _: Principal = Depends(require_admin)
) -> Response:
    with get_ctx(request).session() as db:
        scriptstore.set_site_enabled(db, _flag(enable))
    return Response(status_code=200)


@router.get("/xapi/anonymize/projects/{project_id}")
def get_project_script(project_id: str, request: Request, who: Principal = Depends(require_user)) -> Response:
    with get_ctx(request).session() as db:
        project = check_project(db, who, project_id, Access.READ)
        stored = scriptstore.project_script(db, project.id)
    if stored is None:
        return Response(status_code=204)
    return PlainTextResponse(stored.text)


@router.put("/xapi/anonymize/projects/{project_id}")
async def put_project_script(
    project_id: str, request: Request, who: Principal = Depends(require_user)
) -> Response:
    text = await _text_body(request)
    with get_ctx(request).session() as db:
        project = check_project(db, who, project_id, Access.MANAGE)
        try:
            scriptstore.set_project_script(db, project.id, text)
        except scriptstore.ScriptInvalid as exc:
            raise HTTPException(400, detail=f"invalid DicomEdit script: {exc}") from exc
    return Response(status_code=200)


@router.get("/xapi/anonymize/projects/{project_id}/enabled")
def get_project_enabled(project_id: str, request: Request, who: Principal = Depends(require_user)) -> bool:
    with get_ctx(request).session() as db:
        project = check_project(db, who, project_id, Access.READ)
        return scriptstore.project_enabled(db, project.id)


@router.put("/xapi/anonymize/projects/{project_id}/enabled")
def put_project_enabled(
    project_id: str, request: Request, enable: str = "true", who: Principal = Depends(require_user)
) -> Response:
    with get_ctx(request).session() as db:
        project = check_project(db, who, project_id, Access.MANAGE)
        scriptstore.set_project_enabled(db, project.id, _flag(enable))
    return Response(status_code=200)


# -- prearchive ----------------------------------------------------------------------------------------
def _visible_projects(db: Session, who: Principal) -> list[str] | None:
    """Projects whose prearchive the caller may see (None = all, for admins)."""
    if who.is_admin:
        return None
    from flip_imaging.archive.models import Project

    return [p.id for p in db.scalars(select(Project)) if project_access(db, who, p) >= Access.WRITE]


def _result_set(rows: list[dict[str, Any]], title: str) -> dict[str, Any]:
    return {"ResultSet": {"Result": rows, "title": title, "totalRecords": str(len(rows))}}


@router.get("/data/prearchive/projects")
@router.get("/data/prearchive")
def prearchive_all(request: Request, who: Principal = Depends(require_user)) -> Any:
    with get_ctx(request).session() as db:
        rows = [prearchive.row_json(s) for s in prearchive.list_sessions(db, _visible_projects(db, who))]
    return _result_set(rows, "Prearchive")


def _prearchive_project_check(db: Session, who: Principal, project_id: str) -> str:
    if project_id == UNASSIGNED:
        if not who.is_admin:
            raise HTTPException(403, detail="only administrators may see unassigned sessions")
        return UNASSIGNED
    return check_project(db, who, project_id, Access.WRITE).id


@router.get("/data/prearchive/projects/{project_id}")
def prearchive_project(project_id: str, request: Request, who: Principal = Depends(require_user)) -> Any:
    with get_ctx(request).session() as db:
        pid = _prearchive_project_check(db, who, project_id)
        rows = [prearchive.row_json(s) for s in prearchive.list_sessions(db, [pid])]
    return _result_set(rows, f"Prearchive: {pid}")


def _prearchived(db: Session, who: Principal, project: str, timestamp: str, name: str) -> DicomSession:
    pid = _prearchive_project_check(db, who, project)
    s = prearchive.find_session(db, pid, timestamp, name)
    if s is None:
        raise HTTPException(404, detail=f"no prearchive session {project}/{timestamp}/{name}")
    return s


@router.get("/data/prearchive/projects/{project_id}/{timestamp}/{name}")
def prearchive_session(
    project_id: str, timestamp: str, name: str, request: Request, who: Principal = Depends(require_user)
) -> Any:
    with get_ctx(request).session() as db:
        s = _prearchived(db, who, project_id, timestamp, name)
        return _result_set([prearchive.session_detail(db, s)], "Prearchive session")


@router.delete("/data/prearchive/projects/{project_id}/{timestamp}/{name}")
def prearchive_session_delete(
    project_id: str, timestamp: str, name: str, request: Request, who: Principal = Depends(require_user)
) -> Response:
    ctx = get_ctx(request)
    with ctx.session() as db:
        s = _prearchived(db, who, project_id, timestamp, name)
        prearchive.delete_session(pipeline_for(ctx), db, s)
    return Response(status_code=200)


async def _params(request: Request) -> dict[str, list[str]]:
    """Query parameters plus form fields (XNAT clients send both ways)."""
    out: dict[str, list[str]] = {}
    for k, v in request.query_params.multi_items():
        out.setdefault(k, []).append(v)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/x-www-form-urlencoded") or ctype.startswith("multipart/form-data"):
        form = await request.form()
        for k, v in form.multi_items():
            if isinstance(v, str):
                out.setdefault(k, []).append(v)
    return out


def _srcs(params: dict[str, list[str]]) -> list[tuple[str, str, str]]:
    raw = [s for v in params.get("src", []) for s in v.split(",") if s.strip()]
    if not raw:
        raise HTTPException(400, detail="src is required (a prearchive session URI)")
    out = []
    for s in raw:
        parsed = prearchive.parse_src(s)
        if parsed is None:
            raise HTTPException(400, detail=f"src {s!r} is not /prearchive/projects/<p>/<timestamp>/<name>")
        out.append(parsed)
    return out


@router.post("/data/services/archive")
async def archive_from_prearchive(request: Request, who: Principal = Depends(require_user)) -> Response:
    from flip_imaging.intake.assembly import ArchiveFailed, archive_session

    params = await _params(request)
    ((project, timestamp, name),) = _srcs(params)[:1]
    first = {k: (v[0] if v else None) for k, v in params.items()}
    target_project = first.get("project")
    subject = first.get("subject")
    label = first.get("session") or first.get("label")
    overwrite = first.get("overwrite")
    if overwrite not in (None, "none", "append", "delete"):
        raise HTTPException(400, detail="overwrite must be none, append or delete")
    ctx = get_ctx(request)
    with ctx.session() as db:
        s = _prearchived(db, who, project, timestamp, name)
        dest = target_project or s.project
        if dest == UNASSIGNED:
            raise HTTPException(400, detail="the session has no project: give one with project=")
        dest = check_project(db, who, dest, Access.WRITE).id
        pk = s.pk
    try:
        uri = await run_in_threadpool(
            archive_session,
            pipeline_for(ctx),
            pk,
            project=dest,
            subject=subject,
            label=label,
            overwrite=overwrite,
        )
    except ArchiveFailed as exc:
        raise HTTPException(409, detail=f"session not archived: {exc}") from exc
    return PlainTextResponse(uri)


@router.post("/data/services/prearchive/delete")
async def prearchive_delete(request: Request, who: Principal = Depends(require_user)) -> Response:
    params = await _params(request)
    ctx = get_ctx(request)
    with ctx.session() as db:
        for project, timestamp, name in _srcs(params):
            s = _prearchived(db, who, project, timestamp, name)
            prearchive.delete_session(pipeline_for(ctx), db, s)
    return PlainTextResponse("deleted")


@router.post("/data/services/prearchive/move")
async def prearchive_move(request: Request, who: Principal = Depends(require_user)) -> Response:
    params = await _params(request)
    new_project = (params.get("newProject") or params.get("project") or [None])[0]
    if not new_project:
        raise HTTPException(400, detail="newProject is required")
    ctx = get_ctx(request)
    with ctx.session() as db:
        target = (
            UNASSIGNED if new_project == UNASSIGNED else check_project(db, who, new_project, Access.WRITE).id
        )
        for project, timestamp, name in _srcs(params):
            prearchive.move_session(db, _prearchived(db, who, project, timestamp, name), target)
    return PlainTextResponse("moved")


# -- /data/services/import -----------------------------------------------------------------------------
@router.post("/data/services/import")
async def import_dicom(request: Request, who: Principal = Depends(require_user)) -> Response:
    q = request.query_params
    handler = q.get("import-handler") or "DICOM-zip"
    if handler not in ("DICOM-zip", "gradual-DICOM"):
        raise HTTPException(
            400, detail=f"import-handler {handler!r} is not supported (DICOM-zip, gradual-DICOM)"
        )
    try:
        dest = importer.parse_dest(
            q.get("dest"), q.get("project"), q.get("subject"), q.get("session") or q.get("label")
        )
    except importer.ImportError_ as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    ctx = get_ctx(request)
    with ctx.session() as db:
        if dest.project:
            dest.project = check_project(db, who, dest.project, Access.WRITE).id
        # otherwise routed by the DICOM tags: the pipeline checks the user's rights per file
    pipe = pipeline_for(ctx)
    upload = pipe.spool.uploads / f"{uuid.uuid4().hex}.upload"
    limit = ctx.settings.max_upload_bytes
    size = 0
    fd = os.open(upload, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, detail=f"upload larger than {limit} bytes")
                fh.write(chunk)
        if size == 0:
            raise HTTPException(400, detail="empty request body")
        overwrite = q.get("overwrite") or "none"
        try:
            import_pk = importer.new_import(ctx, who.username, dest, overwrite)
            n = await run_in_threadpool(importer.spool_upload, pipe, import_pk, upload, handler)
        except importer.ImportError_ as exc:
            raise HTTPException(400, detail=str(exc)) from exc
    finally:
        upload.unlink(missing_ok=True)
    importer.queue_import(ctx, import_pk, n)
    if rx.service_for(ctx) is None:
        await run_in_threadpool(importer.drain_inline, pipe, import_pk)
    outcome = await run_in_threadpool(importer.wait_import, pipe, import_pk)
    if not outcome.uris:
        reasons = outcome.errors or (
            [f"{outcome.quarantined} file(s) quarantined"] if outcome.quarantined else []
        )
        raise HTTPException(422, detail="nothing was archived: " + "; ".join(reasons or ["no session"]))
    return PlainTextResponse("\n".join(outcome.uris))
