"""XNAT's Event Service REST API under ``/xapi``: subscriptions, event types, actions, prefs, history.

Site forms are for administrators; project forms (``/xapi/projects/{p}/events/...``) for the project's
owners (and admins), as XNAT. Invalid subscriptions are refused with 400 and a plain-text reason. Logic
lives in :mod:`flip_imaging.events.service`; importing this module also registers the dispatcher.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.orm import Session

from flip_imaging.auth.deps import check_project, find_project, get_db, require_admin, require_user
from flip_imaging.auth.principal import Access, Principal, project_access
from flip_imaging.events import dispatcher as _dispatcher  # noqa: F401  (registers the background service)
from flip_imaging.events import service
from flip_imaging.events.actions import providers
from flip_imaging.events.bus import EVENT_PACKAGE, EVENT_TYPES, full_event_type
from flip_imaging.events.delivery.models import Subscription
from flip_imaging.events.jsonpath import FilterSyntaxError, compile_predicate

router = APIRouter(prefix="/xapi")


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except service.SubscriptionNotFound as exc:
        raise HTTPException(404, detail=str(exc)) from exc
    except service.SubscriptionError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    except LookupError as exc:
        raise HTTPException(404, detail=str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(400, detail=str(exc)) from exc


async def _json_body(request: Request, *, required: bool = True) -> Any:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise HTTPException(400, detail="A JSON body is required")
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, detail=f"Malformed JSON body: {exc}") from exc


def _fresh(db: Session, sub: Subscription) -> Subscription:
    """Recompute ``valid`` for display (an action may have disappeared since; not committed by GETs)."""
    service.revalidate(db, sub)
    return sub


def _created(sub: Subscription) -> PlainTextResponse:
    return PlainTextResponse(f"{sub.name}:{sub.id}", status_code=201)


def _owns_all(db: Session, who: Principal, project_ids: list[str]) -> bool:
    if who.is_admin:
        return True
    for pid in project_ids:
        project = find_project(db, pid)
        if project is None or project_access(db, who, project) < Access.MANAGE:
            return False
    return True


def _project_sub(db: Session, who: Principal, project_id: str, sub_id: int, *, write: bool) -> Subscription:
    """A subscription seen from a project page (XNAT's checks: read = site-wide or covers the project;
    write = covers the project and the caller owns every project it covers)."""
    project = check_project(db, who, project_id, Access.MANAGE)
    with _errors():
        sub = service.get_subscription(db, sub_id)
    ids = list(sub.project_ids or [])
    if write:
        if not ids or project.id not in ids or not _owns_all(db, who, ids):
            scope = ",".join(ids) if ids else "Site"
            raise HTTPException(403, detail=f"{who.username} not authorized to modify subscriptions for "
                                            f"project(s): {scope}")
    elif ids and project.id not in ids:
        raise HTTPException(403, detail=f"{who.username} not authorized to read subscriptions for other "
                                        "projects")
    return sub


# ------------------------------------------------------------------------------------- subscriptions

@router.post("/events/subscription")
async def create_site_subscription(request: Request, db: Session = Depends(get_db),
                                   who: Principal = Depends(require_admin)) -> Response:
    model = await _json_body(request)
    with _errors():
        sub = service.create_subscription(db, model, project_id=None, owner=who.username)
    db.commit()
    return _created(sub)


@router.post("/projects/{project_id}/events/subscription")
async def create_project_subscription(project_id: str, request: Request, db: Session = Depends(get_db),
                                      who: Principal = Depends(require_user)) -> Response:
    project = check_project(db, who, project_id, Access.MANAGE)
    model = await _json_body(request)
    with _errors():
        sub = service.create_subscription(db, model, project_id=project.id, owner=who.username)
    db.commit()
    return _created(sub)


@router.post("/events/subscription/filter/validate")
async def validate_filter(request: Request, _who: Principal = Depends(require_user)) -> Response:
    raw = (await request.body()).decode("utf-8", errors="replace")
    try:
        compile_predicate(raw)
    except FilterSyntaxError as exc:
        raise HTTPException(400, detail=f"JsonPath format failed to validate.\n{exc}") from exc
    return Response(status_code=200)


@router.get("/events/subscriptions")
def list_site_subscriptions(db: Session = Depends(get_db),
                            _who: Principal = Depends(require_admin)) -> list[dict[str, Any]]:
    return [service.to_json(_fresh(db, s)) for s in service.list_subscriptions(db)]


@router.get("/projects/{project_id}/events/subscriptions")
def list_project_subscriptions(project_id: str, db: Session = Depends(get_db),
                               who: Principal = Depends(require_user)) -> list[dict[str, Any]]:
    project = check_project(db, who, project_id, Access.MANAGE)
    return [service.to_display_json(_fresh(db, s), project.id)
            for s in service.list_subscriptions(db, project.id)]


@router.get("/events/subscription/{sub_id}")
def get_site_subscription(sub_id: int, db: Session = Depends(get_db),
                          _who: Principal = Depends(require_admin)) -> dict[str, Any]:
    with _errors():
        return service.to_json(_fresh(db, service.get_subscription(db, sub_id)))


@router.get("/projects/{project_id}/events/subscription/{sub_id}")
def get_project_subscription(project_id: str, sub_id: int, db: Session = Depends(get_db),
                             who: Principal = Depends(require_user)) -> dict[str, Any]:
    sub = _project_sub(db, who, project_id, sub_id, write=False)
    project = find_project(db, project_id)
    assert project is not None
    return service.to_display_json(_fresh(db, sub), project.id)


@router.put("/events/subscription/{sub_id}")
async def update_site_subscription(sub_id: int, request: Request, db: Session = Depends(get_db),
                                   _who: Principal = Depends(require_admin)) -> Response:
    model = await _json_body(request)
    with _errors():
        service.update_subscription(db, sub_id, model)
    db.commit()
    return Response(status_code=200)


@router.put("/projects/{project_id}/events/subscription/{sub_id}")
async def update_project_subscription(project_id: str, sub_id: int, request: Request,
                                      db: Session = Depends(get_db),
                                      who: Principal = Depends(require_user)) -> Response:
    sub = _project_sub(db, who, project_id, sub_id, write=True)
    model = await _json_body(request)
    project = find_project(db, project_id)
    assert project is not None
    with _errors():
        service.update_subscription(db, sub.id, model, project_id=project.id)
    db.commit()
    return Response(status_code=200)


@router.delete("/events/subscription/{sub_id}")
def delete_site_subscription(sub_id: int, db: Session = Depends(get_db),
                             _who: Principal = Depends(require_admin)) -> Response:
    with _errors():
        service.delete_subscription(db, sub_id)
    db.commit()
    return Response(status_code=204)


@router.delete("/projects/{project_id}/events/subscription/{sub_id}")
def delete_project_subscription(project_id: str, sub_id: int, db: Session = Depends(get_db),
                                who: Principal = Depends(require_user)) -> Response:
    sub = _project_sub(db, who, project_id, sub_id, write=True)
    service.delete_subscription(db, sub.id)
    db.commit()
    return Response(status_code=204)


def _activation(db: Session, sub_id: int, active: bool) -> Response:
    with _errors():
        service.set_active(db, sub_id, active)
    db.commit()
    return Response(status_code=200)


@router.post("/events/subscription/{sub_id}/activate")
def activate_site(sub_id: int, db: Session = Depends(get_db),
                  _who: Principal = Depends(require_admin)) -> Response:
    return _activation(db, sub_id, True)


@router.post("/events/subscription/{sub_id}/deactivate")
def deactivate_site(sub_id: int, db: Session = Depends(get_db),
                    _who: Principal = Depends(require_admin)) -> Response:
    return _activation(db, sub_id, False)


@router.post("/projects/{project_id}/events/subscription/{sub_id}/activate")
def activate_project(project_id: str, sub_id: int, db: Session = Depends(get_db),
                     who: Principal = Depends(require_user)) -> Response:
    _project_sub(db, who, project_id, sub_id, write=True)
    return _activation(db, sub_id, True)


@router.post("/projects/{project_id}/events/subscription/{sub_id}/deactivate")
def deactivate_project(project_id: str, sub_id: int, db: Session = Depends(get_db),
                       who: Principal = Depends(require_user)) -> Response:
    _project_sub(db, who, project_id, sub_id, write=True)
    return _activation(db, sub_id, False)


# ------------------------------------------------------------------------------ events, actions, prefs

@router.get("/events/events")
def list_events(_who: Principal = Depends(require_user)) -> list[dict[str, Any]]:
    return service.list_event_types()


@router.get("/projects/{project_id}/events/events")
def list_project_events(project_id: str, db: Session = Depends(get_db),
                        who: Principal = Depends(require_user)) -> list[dict[str, Any]]:
    check_project(db, who, project_id, Access.READ)
    return [e for e in service.list_event_types() if "PROJECT" in e["event-scope"]]


@router.get("/events/event")
def get_event_type(event_type: str = Query(alias="event-type"),
                   _who: Principal = Depends(require_user)) -> dict[str, Any]:
    full = full_event_type(event_type)
    for entry in service.list_event_types():
        if entry["id"] == full:
            return entry
    raise HTTPException(404, detail=f"Unknown event type '{event_type}'")


def _actions(db: Session, project_id: str | None, event_type: str | None) -> list[dict[str, Any]]:
    if event_type is not None:
        full = full_event_type(event_type)
        if not full.startswith(EVENT_PACKAGE) or full.rsplit(".", 1)[-1] not in EVENT_TYPES:
            raise HTTPException(400, detail=f"Unknown event type '{event_type}'")
    out: list[dict[str, Any]] = []
    for provider in providers():
        out.extend(provider.actions(db, project_id))
    return out


@router.get("/events/actions")
def list_actions(project: str | None = None, event_type: str | None = Query(None, alias="event-type"),
                 db: Session = Depends(get_db),
                 who: Principal = Depends(require_admin)) -> list[dict[str, Any]]:
    project_id = check_project(db, who, project, Access.MANAGE).id if project else None
    return _actions(db, project_id, event_type)


@router.get("/events/actionsbyevent")
def list_actions_by_event(event_type: str = Query(alias="event-type"), project: str | None = None,
                          db: Session = Depends(get_db),
                          who: Principal = Depends(require_admin)) -> list[dict[str, Any]]:
    project_id = check_project(db, who, project, Access.MANAGE).id if project else None
    return _actions(db, project_id, event_type)


@router.get("/events/allactions")
def list_all_actions(db: Session = Depends(get_db),
                     _who: Principal = Depends(require_user)) -> list[dict[str, Any]]:
    return _actions(db, None, None)


@router.get("/events/action")
def get_action(actionkey: str, project: str | None = None, db: Session = Depends(get_db),
               who: Principal = Depends(require_user)) -> dict[str, Any]:
    project_id = check_project(db, who, project, Access.READ).id if project else None
    for action in _actions(db, project_id, None):
        if action.get("action-key") == actionkey:
            return action
    raise HTTPException(404, detail=f"No action '{actionkey}'")


@router.get("/projects/{project_id}/events/actions")
def list_project_actions(project_id: str, event_type: str | None = Query(None, alias="event-type"),
                         db: Session = Depends(get_db),
                         who: Principal = Depends(require_user)) -> list[dict[str, Any]]:
    project = check_project(db, who, project_id, Access.MANAGE)
    return _actions(db, project.id, event_type)


@router.get("/projects/{project_id}/events/actionsbyevent")
def list_project_actions_by_event(project_id: str, event_type: str = Query(alias="event-type"),
                                  db: Session = Depends(get_db),
                                  who: Principal = Depends(require_user)) -> list[dict[str, Any]]:
    project = check_project(db, who, project_id, Access.MANAGE)
    return _actions(db, project.id, event_type)


@router.get("/events/prefs")
def get_prefs(db: Session = Depends(get_db), _who: Principal = Depends(require_user)) -> dict[str, Any]:
    return {"enabled": service.is_enabled(db)}


@router.put("/events/prefs")
async def put_prefs(request: Request, db: Session = Depends(get_db),
                    _who: Principal = Depends(require_admin)) -> Response:
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
        raise HTTPException(400, detail='Expected {"enabled": true|false}')
    service.set_enabled(db, body["enabled"])
    db.commit()
    return Response(status_code=200)


# ------------------------------------------------------------------------------------------ deliveries

def _flag(value: str | None, name: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise HTTPException(400, detail=f"'{name}' must be true or false")


def _paging(body: Any, params: dict[str, str]) -> dict[str, Any]:
    """XNAT's paginated request (``page`` 1-based, ``size``, ``sort_col``, ``sort_dir``) from a JSON body
    or the query string."""
    src: dict[str, Any] = {}
    if body is not None:
        if not isinstance(body, dict):
            raise HTTPException(400, detail="The paginated request must be a JSON object")
        src.update(body)
    for key in ("page", "size", "sort_col", "sort_dir"):
        if key in params:
            src[key] = params[key]
    try:
        page = int(src["page"]) if src.get("page") not in (None, "") else 1
        size = int(src["size"]) if src.get("size") not in (None, "") else 50
    except (TypeError, ValueError) as exc:
        raise HTTPException(400, detail="'page' and 'size' must be integers") from exc
    if page < 1 or not 1 <= size <= 1000:
        raise HTTPException(400, detail="'page' must be >= 1 and 'size' between 1 and 1000")
    return {"page": page, "size": size, "sort_col": str(src.get("sort_col") or "id"),
            "sort_dir": str(src.get("sort_dir") or "desc")}


def _subscription_id(params: dict[str, str]) -> int | None:
    raw = params.get("subscription-id")
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise HTTPException(400, detail="'subscription-id' must be an integer") from exc


def _deliveries(db: Session, project_id: str | None, request: Request, body: Any) -> JSONResponse:
    params = dict(request.query_params)
    paging = _paging(body, params)
    load_children = _flag(params.get("load-children"), "load-children", True)
    with _errors():
        rows = service.list_deliveries(
            db, project_id=project_id, subscription_id=_subscription_id(params),
            include_filter_mismatch=_flag(params.get("include-filter-mismatch"), "include-filter-mismatch",
                                          False), **paging)
    return JSONResponse([service.delivery_to_json(db, d, load_children=load_children) for d in rows])


def _count(db: Session, project_id: str | None, request: Request) -> int:
    params = dict(request.query_params)
    mismatch = _flag(params.get("include-filter-mismatch"), "include-filter-mismatch", False)
    return service.count_deliveries(db, project_id=project_id, subscription_id=_subscription_id(params),
                                    include_filter_mismatch=mismatch)


@router.get("/events/delivered/count")
def count_site_deliveries(request: Request, project: str | None = None, db: Session = Depends(get_db),
                          _who: Principal = Depends(require_admin)) -> int:
    return _count(db, project, request)


@router.get("/events/delivered")
def get_site_deliveries(request: Request, project: str | None = None, db: Session = Depends(get_db),
                        _who: Principal = Depends(require_admin)) -> Response:
    return _deliveries(db, project, request, None)


@router.post("/events/delivered")
async def post_site_deliveries(request: Request, project: str | None = None, db: Session = Depends(get_db),
                               _who: Principal = Depends(require_admin)) -> Response:
    return _deliveries(db, project, request, await _json_body(request, required=False))


@router.get("/events/delivered/{delivery_id}")
def get_site_delivery(delivery_id: int, db: Session = Depends(get_db),
                      _who: Principal = Depends(require_admin)) -> dict[str, Any]:
    with _errors():
        return service.delivery_to_json(db, service.get_delivery(db, delivery_id))


@router.get("/projects/{project_id}/events/delivered/count")
def count_project_deliveries(project_id: str, request: Request, db: Session = Depends(get_db),
                             who: Principal = Depends(require_user)) -> int:
    project = check_project(db, who, project_id, Access.MANAGE)
    return _count(db, project.id, request)


@router.get("/projects/{project_id}/events/delivered")
def get_project_deliveries(project_id: str, request: Request, db: Session = Depends(get_db),
                           who: Principal = Depends(require_user)) -> Response:
    project = check_project(db, who, project_id, Access.MANAGE)
    return _deliveries(db, project.id, request, None)


@router.post("/projects/{project_id}/events/delivered")
async def post_project_deliveries(project_id: str, request: Request, db: Session = Depends(get_db),
                                  who: Principal = Depends(require_user)) -> Response:
    project = check_project(db, who, project_id, Access.MANAGE)
    return _deliveries(db, project.id, request, await _json_body(request, required=False))


@router.get("/projects/{project_id}/events/delivered/{delivery_id}")
def get_project_delivery(project_id: str, delivery_id: int, db: Session = Depends(get_db),
                         who: Principal = Depends(require_user)) -> dict[str, Any]:
    project = check_project(db, who, project_id, Access.MANAGE)
    with _errors():
        delivery = service.get_delivery(db, delivery_id)
    if delivery.project_id != project.id:
        raise HTTPException(404, detail=f"Delivery {delivery_id} not found in project {project.id}")
    return service.delivery_to_json(db, delivery)
