"""XNAT Container Service REST API (``/xapi/commands``, ``/xapi/wrappers``, ``/xapi/containers``...).

Wire shapes follow XNAT 1.8. Our additions (documented in the module docstrings and the README):

* ``GET /xapi/projects/{p}/conversion`` and ``GET /xapi/projects/{p}/experiments/{e}/conversion`` —
  NIfTI conversion state per scan (``pending``/``running``/``done``/``failed``/``stale``/``not-requested``/
  ``not-applicable``) and ``complete`` per experiment, so training never starts on a half-converted study
  (a scan whose DICOM changed after its conversion is not ``done``);
* ``GET|PUT /xapi/projects/{p}/dicom_to_nifti[?enabled=true|false]`` — FLIP's per-project switch (the
  "DICOM-NIfTI Conversion" subscription and the wrapper's project enablement), owner only;
* ``POST /xapi/projects/{p}/commands/dcm2niix/convert-missing`` — queue dcm2niix for every scan with
  DICOM and no current NIfTI (none, or converted from DICOM that changed since), members and owners.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

import flip_imaging.containers.provider  # noqa: F401  (registers the action provider)
import flip_imaging.containers.worker  # noqa: F401  (registers the worker service)
from flip_imaging.archive.models import Experiment, Project
from flip_imaging.auth.deps import check_project, get_ctx, get_db, principal, require_admin, require_user
from flip_imaging.auth.principal import Access, Principal, project_access
from flip_imaging.containers import registry, service
from flip_imaging.containers.models import Container, Wrapper
from flip_imaging.containers.registry import CommandError, NotFound
from flip_imaging.containers.runner import LaunchError
from flip_imaging.db import end_read_snapshot

router = APIRouter(prefix="/xapi")


# -- helpers -----------------------------------------------------------------------------------------


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise HTTPException(400, detail="A JSON body is required")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, detail=f"The body is not valid JSON: {exc}") from exc


async def _launch_params(request: Request) -> dict[str, Any]:
    """Launch inputs from a JSON object body, a form body, or the query string (XNAT accepts all)."""
    params: dict[str, Any] = {k: v for k, v in request.query_params.items() if k != "format"}
    ctype = request.headers.get("content-type", "")
    raw = await request.body()
    if not raw.strip():
        return params
    if "form" in ctype:
        form = await request.form()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
        return params
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LaunchError(f"The launch body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise LaunchError("The launch body must be a JSON object mapping input names to values")
    params.update({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in body.items()})
    return params


def _failure(message: str, status: int) -> JSONResponse:
    return JSONResponse({"status": "failure", "message": message}, status_code=status)


def _command_errors(exc: CommandError) -> JSONResponse:
    return JSONResponse({"message": "Invalid command", "reasons": exc.reasons}, status_code=400)


def _not_found(exc: LookupError) -> HTTPException:
    return HTTPException(404, detail=str(exc))


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise HTTPException(404, detail=f"No {what} with id {value!r}") from exc


def _readable_projects(db: Session, who: Principal) -> list[str] | None:
    if who.is_admin:
        return None
    return [p.id for p in db.scalars(select(Project)) if project_access(db, who, p) >= Access.READ]


# -- commands ----------------------------------------------------------------------------------------


@router.get("/commands")
def list_commands(
    name: str | None = None,
    version: str | None = None,
    image: str | None = None,
    db: Session = Depends(get_db),
    who: Principal = Depends(require_user),
) -> list[dict[str, Any]]:
    return [
        registry.command_json(db, c)
        for c in registry.list_commands(db, name=name, version=version, image=image)
    ]


@router.post("/commands", status_code=201)
async def create_command(
    request: Request, db: Session = Depends(get_db), who: Principal = Depends(require_admin)
) -> Response:
    data = await _json_body(request)
    try:
        cmd = registry.add_command(db, data)
    except CommandError as exc:
        return _command_errors(exc)
    db.commit()
    return JSONResponse(cmd.id, status_code=201)


@router.get("/commands/{command_id}")
def get_command(
    command_id: str, db: Session = Depends(get_db), who: Principal = Depends(require_user)
) -> dict[str, Any]:
    try:
        return registry.command_json(db, registry.get_command(db, _int(command_id, "command")))
    except NotFound as exc:
        raise _not_found(exc) from exc


@router.post("/commands/{command_id}")
async def update_command(
    command_id: str, request: Request, db: Session = Depends(get_db), who: Principal = Depends(require_admin)
) -> Response:
    data = await _json_body(request)
    try:
        registry.update_command(db, _int(command_id, "command"), data)
    except NotFound as exc:
        raise _not_found(exc) from exc
    except CommandError as exc:
        return _command_errors(exc)
    db.commit()
    return Response(status_code=200)


@router.delete("/commands/{command_id}", status_code=204)
def delete_command(
    command_id: str, db: Session = Depends(get_db), who: Principal = Depends(require_admin)
) -> Response:
    try:
        registry.delete_command(db, _int(command_id, "command"))
    except NotFound as exc:
        raise _not_found(exc) from exc
    db.commit()
    return Response(status_code=204)


# -- wrappers: site enablement -----------------------------------------------------------------------


def _wrapper_by_name(db: Session, command_id: str, name: str) -> Wrapper:
    try:
        return registry.find_wrapper(db, _int(command_id, "command"), name)
    except NotFound as exc:
        raise _not_found(exc) from exc


def _wrapper_by_id(db: Session, wrapper_id: str) -> Wrapper:
    try:
        return registry.get_wrapper(db, _int(wrapper_id, "wrapper"))
    except NotFound as exc:
        raise _not_found(exc) from exc


@router.get("/wrappers/{wrapper_id}")
def get_wrapper(
    wrapper_id: str, db: Session = Depends(get_db), who: Principal = Depends(require_user)
) -> dict[str, Any]:
    w = _wrapper_by_id(db, wrapper_id)
    return {**registry.wrapper_json(w), "command-id": w.command_id}


@router.get("/commands/{command_id}/wrappers/{name}/enabled")
def get_site_enabled_by_name(
    command_id: str, name: str, db: Session = Depends(get_db), who: Principal = Depends(require_user)
) -> bool:
    return _wrapper_by_name(db, command_id, name).enabled


@router.get("/wrappers/{wrapper_id}/enabled")
def get_site_enabled(
    wrapper_id: str, db: Session = Depends(get_db), who: Principal = Depends(require_user)
) -> bool:
    return _wrapper_by_id(db, wrapper_id).enabled


def _set_site(db: Session, w: Wrapper, flag: str) -> Response:
    registry.set_site_enabled(db, w, flag == "enabled")
    db.commit()
    return Response(status_code=200)


@router.put("/commands/{command_id}/wrappers/{name}/{flag}")
def set_site_enabled_by_name(
    command_id: str,
    name: str,
    flag: str,
    db: Session = Depends(get_db),
    who: Principal = Depends(require_admin),
) -> Response:
    if flag not in ("enabled", "disabled"):
        raise HTTPException(404, detail=f"Unknown operation '{flag}' (enabled or disabled)")
    return _set_site(db, _wrapper_by_name(db, command_id, name), flag)


@router.put("/wrappers/{wrapper_id}/{flag}")
def set_site_enabled(
    wrapper_id: str, flag: str, db: Session = Depends(get_db), who: Principal = Depends(require_admin)
) -> Response:
    if flag not in ("enabled", "disabled"):
        raise HTTPException(404, detail=f"Unknown operation '{flag}' (enabled or disabled)")
    return _set_site(db, _wrapper_by_id(db, wrapper_id), flag)


# -- wrappers: project enablement --------------------------------------------------------------------


def _project_state(db: Session, w: Wrapper, project: Project) -> dict[str, Any]:
    return {
        "enabled-for-site": w.enabled,
        "enabled-for-project": registry.project_enabled(db, w, project.id),
        "project": project.id,
        "command-id": w.command_id,
        "wrapper-id": w.id,
        "wrapper-name": w.name,
    }


@router.get("/projects/{project_id}/commands/{command_id}/wrappers/{name}/enabled")
def get_project_enabled_by_name(
    project_id: str,
    command_id: str,
    name: str,
    db: Session = Depends(get_db),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    project = check_project(db, who, project_id, Access.READ)
    return _project_state(db, _wrapper_by_name(db, command_id, name), project)


@router.get("/projects/{project_id}/wrappers/{wrapper_id}/enabled")
def get_project_enabled(
    project_id: str, wrapper_id: str, db: Session = Depends(get_db), who: Principal = Depends(principal)
) -> dict[str, Any]:
    project = check_project(db, who, project_id, Access.READ)
    return _project_state(db, _wrapper_by_id(db, wrapper_id), project)


def _set_project(db: Session, who: Principal, project_id: str, w_lookup: Any, flag: str) -> Response:
    if flag not in ("enabled", "disabled"):
        raise HTTPException(404, detail=f"Unknown operation '{flag}' (enabled or disabled)")
    project = check_project(db, who, project_id, Access.MANAGE)
    w = w_lookup()
    registry.set_project_enabled(db, w, project.id, flag == "enabled")
    db.commit()
    return Response(status_code=200)


@router.put("/projects/{project_id}/commands/{command_id}/wrappers/{name}/{flag}")
def set_project_enabled_by_name(
    project_id: str,
    command_id: str,
    name: str,
    flag: str,
    db: Session = Depends(get_db),
    who: Principal = Depends(principal),
) -> Response:
    return _set_project(db, who, project_id, lambda: _wrapper_by_name(db, command_id, name), flag)


@router.put("/projects/{project_id}/wrappers/{wrapper_id}/{flag}")
def set_project_enabled(
    project_id: str,
    wrapper_id: str,
    flag: str,
    db: Session = Depends(get_db),
    who: Principal = Depends(principal),
) -> Response:
    return _set_project(db, who, project_id, lambda: _wrapper_by_id(db, wrapper_id), flag)


# -- launching ---------------------------------------------------------------------------------------


async def _launch(
    request: Request, db: Session, who: Principal, wrapper_lookup: Any, root: str, project_id: str | None
) -> Response:
    if not who.authenticated:
        from flip_imaging.auth.deps import Unauthorized

        raise Unauthorized()
    if project_id is not None:
        project_id = check_project(db, who, project_id, Access.WRITE).id
    try:
        wrapper = wrapper_lookup()
    except HTTPException as exc:
        return _failure(str(exc.detail), exc.status_code)
    try:
        params = await _launch_params(request)

        def authorize(project: Project) -> None:
            check_project(db, who, project.id, Access.WRITE)

        container = service.launch(
            db, wrapper, root, params, user=who.username, project_id=project_id, authorize=authorize
        )
    except LaunchError as exc:
        db.rollback()
        return _failure(str(exc), exc.status)
    db.commit()
    return JSONResponse(
        {
            "status": "success",
            "id": container.id,
            "command-id": container.command_id,
            "wrapper-id": container.wrapper_id,
            "workflow-id": str(container.id),
            "container-id": f"flip-{container.id}",
            "type": "container",
            "params": {k: str(v) for k, v in params.items()},
        }
    )


@router.post("/wrappers/{wrapper_id}/root/{root}/launch")
async def launch_site(
    wrapper_id: str,
    root: str,
    request: Request,
    db: Session = Depends(get_db),
    who: Principal = Depends(principal),
) -> Response:
    return await _launch(request, db, who, lambda: _wrapper_by_id(db, wrapper_id), root, None)


@router.post("/projects/{project_id}/wrappers/{wrapper_id}/root/{root}/launch")
async def launch_project(
    project_id: str,
    wrapper_id: str,
    root: str,
    request: Request,
    db: Session = Depends(get_db),
    who: Principal = Depends(principal),
) -> Response:
    return await _launch(request, db, who, lambda: _wrapper_by_id(db, wrapper_id), root, project_id)


@router.post("/commands/{command_id}/wrappers/{name}/root/{root}/launch")
async def launch_by_name(
    command_id: str,
    name: str,
    root: str,
    request: Request,
    db: Session = Depends(get_db),
    who: Principal = Depends(principal),
) -> Response:
    return await _launch(request, db, who, lambda: _wrapper_by_name(db, command_id, name), root, None)


@router.post("/projects/{project_id}/commands/{command_id}/wrappers/{name}/root/{root}/launch")
async def launch_project_by_name(
    project_id: str,
    command_id: str,
    name: str,
    root: str,
    request: Request,
    db: Session = Depends(get_db),
    who: Principal = Depends(principal),
) -> Response:
    return await _launch(request, db, who, lambda: _wrapper_by_name(db, command_id, name), root, project_id)


# -- containers --------------------------------------------------------------------------------------


def _visible_container(
    db: Session, who: Principal, container_id: str, needed: Access = Access.READ
) -> Container:
    if not who.authenticated:
        from flip_imaging.auth.deps import Unauthorized

        raise Unauthorized()
    try:
        c = service.get_container(db, _int(container_id, "container"))
    except NotFound as exc:
        raise _not_found(exc) from exc
    if who.is_admin:
        return c
    if c.project_id is None:
        raise HTTPException(404, detail=f"No container with id {container_id}")
    try:
        check_project(db, who, c.project_id, needed)
    except HTTPException as exc:
        if exc.status_code == 404:
            raise HTTPException(404, detail=f"No container with id {container_id}") from exc
        raise
    return c


@router.get("/containers")
def list_containers(
    db: Session = Depends(get_db), who: Principal = Depends(require_user)
) -> list[dict[str, Any]]:
    return [
        service.container_json(db, c)
        for c in service.list_containers(db, project_ids=_readable_projects(db, who))
    ]


@router.get("/projects/{project_id}/containers")
def list_project_containers(
    project_id: str, db: Session = Depends(get_db), who: Principal = Depends(principal)
) -> list[dict[str, Any]]:
    project = check_project(db, who, project_id, Access.READ)
    return [service.container_json(db, c) for c in service.list_containers(db, project_ids=[project.id])]


@router.get("/containers/{container_id}")
def get_container(
    container_id: str, db: Session = Depends(get_db), who: Principal = Depends(principal)
) -> dict[str, Any]:
    return service.container_json(db, _visible_container(db, who, container_id))


@router.get("/containers/{container_id}/logs")
def get_logs(
    container_id: str, db: Session = Depends(get_db), who: Principal = Depends(principal)
) -> dict[str, str]:
    c = _visible_container(db, who, container_id)
    return {"stdout": c.stdout or "", "stderr": c.stderr or ""}


@router.get("/containers/{container_id}/logs/{which}")
def get_log(
    container_id: str, which: str, db: Session = Depends(get_db), who: Principal = Depends(principal)
) -> PlainTextResponse:
    if which not in ("stdout", "stderr"):
        raise HTTPException(404, detail=f"Unknown log '{which}' (stdout or stderr)")
    c = _visible_container(db, who, container_id)
    return PlainTextResponse(c.stdout if which == "stdout" else c.stderr)


@router.post("/containers/{container_id}/kill")
def kill_container(
    container_id: str, db: Session = Depends(get_db), who: Principal = Depends(principal)
) -> PlainTextResponse:
    c = _visible_container(db, who, container_id, Access.WRITE)
    service.request_kill(db, c, who.username)
    db.commit()
    return PlainTextResponse(str(c.id))


# -- conversion state and FLIP's switch --------------------------------------------------------------


@router.get("/projects/{project_id}/conversion")
def project_conversion(
    project_id: str, db: Session = Depends(get_db), who: Principal = Depends(principal)
) -> dict[str, Any]:
    project = check_project(db, who, project_id, Access.READ)
    return service.project_conversion_status(db, project)


@router.get("/projects/{project_id}/experiments/{experiment}/conversion")
def experiment_conversion(
    project_id: str, experiment: str, db: Session = Depends(get_db), who: Principal = Depends(principal)
) -> dict[str, Any]:
    project = check_project(db, who, project_id, Access.READ)
    exp = db.scalar(
        select(Experiment).where(Experiment.project_pk == project.pk, Experiment.id == experiment)
    )
    if exp is None:
        exp = db.scalar(
            select(Experiment).where(Experiment.project_pk == project.pk, Experiment.label == experiment)
        )
    if exp is None:
        raise HTTPException(404, detail=f"No experiment {experiment} in project {project.id}")
    return service.conversion_status(db, exp)


def _switch_state(db: Session, project: Project) -> dict[str, Any]:
    sub = service._find_subscription(db, project.id)
    return {
        "project": project.id,
        "enabled": bool(sub is not None and sub.active),
        "subscription-id": sub.id if sub is not None else None,
    }


@router.get("/projects/{project_id}/dicom_to_nifti")
def get_dicom_to_nifti(
    project_id: str, db: Session = Depends(get_db), who: Principal = Depends(principal)
) -> dict[str, Any]:
    return _switch_state(db, check_project(db, who, project_id, Access.READ))


@router.put("/projects/{project_id}/dicom_to_nifti")
def put_dicom_to_nifti(
    request: Request,
    project_id: str,
    enabled: str = "true",
    db: Session = Depends(get_db),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    project = check_project(db, who, project_id, Access.MANAGE)
    if enabled.lower() not in ("true", "false"):
        raise HTTPException(400, detail="'enabled' must be true or false")
    # a writing transaction of its own (SQLite: it has the write lock before it reads), so its writes never
    # fail for a read taken earlier in the request, e.g. while the password was checked
    try:
        with get_ctx(request).session() as wdb:
            service.set_dicom_to_nifti(wdb, project.id, enabled.lower() == "true", who.username)
    except NotFound as exc:
        raise HTTPException(409, detail=str(exc)) from exc
    except ValueError as exc:  # SubscriptionError
        raise HTTPException(400, detail=str(exc)) from exc
    end_read_snapshot(db)  # see the change just committed
    return _switch_state(db, project)


@router.post("/projects/{project_id}/commands/dcm2niix/convert-missing")
def convert_missing(
    request: Request, project_id: str, db: Session = Depends(get_db), who: Principal = Depends(principal)
) -> dict[str, Any]:
    project = check_project(db, who, project_id, Access.WRITE)
    try:
        with get_ctx(request).session() as wdb:  # a writing transaction of its own, as above
            queued = [c.id for c in service.convert_missing(wdb, wdb.merge(project), who.username)]
    except NotFound as exc:
        raise HTTPException(409, detail=str(exc)) from exc
    except LaunchError as exc:
        raise HTTPException(exc.status, detail=str(exc)) from exc
    return {"project": project.id, "queued": len(queued), "container-ids": queued}
