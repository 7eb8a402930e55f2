"""XNAT-compatible authentication, users, alias tokens and project membership over HTTP.

Wire shapes follow XNAT 1.8 (``/data/services/auth``, ``/data/JSESSION``, ``/data/auth``,
``/data/services/tokens/...``, ``/xapi/users/...``, ``/data/projects/{p}/users/...``,
``/xapi/access/projects``). Logic lives in :mod:`flip_imaging.auth.service`.

Decisions (where XNAT leaves room or we differ on purpose):

* Sessions idle out after 15 minutes (XNAT's default); ``GET /data/JSESSION`` (xnatpy's heartbeat)
  extends the cookie's session. The ``SESSION_EXPIRATION_TIME`` cookie is ``"<ms>,<timeout ms>"``.
* Alias tokens live 48 hours. ``?singleUse=true`` on ``issue`` makes a single-use token (XNAT has
  single-use tokens but no REST flag). ``validate`` answers ``{"valid": "<username>"}`` or
  ``{"valid": null}`` exactly as XNAT, but does not spend a single-use token; only logging in with it does.
  ``invalidate`` also takes the secret-less form (owner or admin).
* Project membership: one group per user and project (PUT moves); the only owner of a project can
  neither leave nor be demoted (409) so no project is left without an owner; unknown users are a 404
  (XNAT would e-mail an invitation). Groups may be named ``Owners``, ``owner(s)`` or ``P1_owner``.
* ``/xapi/access/projects`` lists the caller's groups; site admins also get every other project with
  role ``owner`` (the access they effectively have).
* User lists (``/xapi/users``, ``/xapi/users/profiles``, ``/data/users``) are open to every user, as
  XNAT's default; the site preference ``security.restrictUserListAccessToAdmins`` limits them to admins.
* Our additions for set-password links: ``GET /set-password`` (a small page; the alias and secret travel
  in the URL fragment, which browsers never send) posting to ``POST /xapi/users/{username}/set-password``,
  which spends the link's single-use token.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flip_imaging.auth import service
from flip_imaging.auth.deps import (
    SESSION_COOKIE,
    Unauthorized,
    authenticate_password,
    check_project,
    get_db,
    principal,
    require_admin,
    require_user,
)
from flip_imaging.auth.models import User
from flip_imaging.auth.principal import Access, Principal
from flip_imaging.db import end_read_snapshot
from flip_imaging.prefs import get_pref

router = APIRouter()

EXPIRATION_COOKIE = "SESSION_EXPIRATION_TIME"
#: site preference (XNAT's name): when true only admins may list all users
RESTRICT_USER_LIST_PREF = "security.restrictUserListAccessToAdmins"
LOGIN_FAILED = "Login attempt failed. Please try again."


@contextmanager
def _service_errors() -> Iterator[None]:
    """Service errors become plain-text 4xx answers with the reason."""
    try:
        yield
    except service.NotFound as exc:
        raise HTTPException(404, detail=str(exc)) from exc
    except service.Conflict as exc:
        raise HTTPException(409, detail=str(exc)) from exc
    except service.Invalid as exc:
        raise HTTPException(400, detail=str(exc)) from exc


def _commit(db: Session) -> None:
    try:
        db.commit()
    except IntegrityError as exc:  # a concurrent request created the same thing first
        db.rollback()
        raise HTTPException(409, detail="Conflicting concurrent change; try again") from exc


async def _raw_body(request: Request) -> bytes:
    return await request.body()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, detail=f"Body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HTTPException(400, detail="Body must be a JSON object")
    return data


def _json_list(body: bytes) -> list[str]:
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, detail=f"Body is not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise HTTPException(400, detail="Body must be a JSON list of strings")
    return data


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise HTTPException(400, detail=f"Not a boolean: {value!r}")


def result_set(rows: list[dict[str, Any]], columns: list[str], fmt: str | None, title: str) -> Response:
    """XNAT's table answer: ``{"ResultSet": {"Result": [...], "totalRecords": "N"}}`` or CSV."""
    fmt = (fmt or "json").lower()
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
        return PlainTextResponse(buf.getvalue(), media_type="text/csv")
    if fmt != "json":
        raise HTTPException(400, detail=f"Unsupported format {fmt!r}; use json or csv")
    cleaned = [{c: "" if row.get(c) is None else str(row.get(c)) for c in columns} for row in rows]
    return JSONResponse({"ResultSet": {"Result": cleaned, "totalRecords": str(len(cleaned)), "title": title,
                                       "Columns": [{"key": c} for c in columns]}})


# ------------------------------------------------------------------------------------ login sessions


def _set_session_cookies(request: Request, response: Response, session_id: str) -> None:
    secure = request.url.scheme == "https"
    response.set_cookie(SESSION_COOKIE, session_id, path="/", httponly=True, samesite="lax", secure=secure)
    timeout_ms = int(service.SESSION_TIMEOUT.total_seconds() * 1000)
    # "<last access, epoch ms>,<timeout ms>": xnatpy times its keep-alive heartbeat from it
    # written by hand: http.cookies would escape the comma as \054, which xnatpy cannot parse
    value = f'"{service.epoch_ms(service.now())},{timeout_ms}"'
    response.headers.append("set-cookie", f"{EXPIRATION_COOKIE}={value}; Path=/; SameSite=lax"
                            + ("; Secure" if secure else ""))


@router.api_route("/data/services/auth", methods=["POST", "PUT"], response_class=PlainTextResponse)
def login(request: Request, db: Session = Depends(get_db), username: str | None = Form(None),
          password: str | None = Form(None), j_username: str | None = Form(None),
          j_password: str | None = Form(None)) -> Response:
    """Username and password (form body, as xnatpy sends them) → a new session id as text."""
    user_name = username or j_username or request.query_params.get("username")
    secret = password if password is not None else j_password
    if secret is None:
        secret = request.query_params.get("password", "")  # an empty form field arrives as None
    if not user_name:
        raise HTTPException(400, detail="username and password are required")
    user = authenticate_password(db, user_name, secret)
    if user is None:
        raise Unauthorized(LOGIN_FAILED)
    end_read_snapshot(db)
    session_id, _row = service.create_session(db, user)
    _commit(db)
    response = PlainTextResponse(session_id)
    _set_session_cookies(request, response, session_id)
    return response


@router.get("/data/JSESSION", response_class=PlainTextResponse)
def get_jsession(request: Request, who: Principal = Depends(require_user),
                 db: Session = Depends(get_db)) -> Response:
    """The caller's session id: the cookie's session is kept alive (heartbeat), else a new one starts."""
    assert who.user is not None
    sid = request.cookies.get(SESSION_COOKIE)
    row = service.find_session(db, sid) if sid else None
    end_read_snapshot(db)
    if sid and row is not None and row.user_pk == who.user.pk:
        service.touch_session(db, row)
        session_id = sid
    else:
        session_id, _row = service.create_session(db, who.user)
    _commit(db)
    response = PlainTextResponse(session_id)
    _set_session_cookies(request, response, session_id)
    return response


@router.delete("/data/JSESSION", response_class=PlainTextResponse)
def delete_jsession(request: Request, db: Session = Depends(get_db)) -> Response:
    """Log out: the cookie's session ends. Always 200, so that a client can always disconnect."""
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        service.end_session(db, sid)
        _commit(db)
    response = PlainTextResponse("")
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(EXPIRATION_COOKIE, path="/")
    return response


@router.get("/data/auth", response_class=PlainTextResponse)
def auth_check(who: Principal = Depends(principal)) -> Response:
    if not who.authenticated:
        raise Unauthorized(LOGIN_FAILED)
    return PlainTextResponse(f"User '{who.username}' is logged in")


# -------------------------------------------------------------------------------------- alias tokens


def _single_use_flag(request: Request) -> bool:
    raw = request.query_params.get("singleUse", request.query_params.get("single_use"))
    return _flag(raw) if raw is not None else False


def _token_target(db: Session, who: Principal, username: str | None) -> User:
    """The user whose tokens are handled: the caller, or another user for admins (as XNAT)."""
    assert who.user is not None
    if username is None or username == who.username:
        return who.user
    if not who.is_admin:
        raise HTTPException(403, detail="Only admins can work with alias tokens for other users")
    with _service_errors():
        return service.require_user_named(db, username)


@router.get("/data/services/tokens/issue")
def issue_token(request: Request, who: Principal = Depends(require_user),
                db: Session = Depends(get_db)) -> JSONResponse:
    return _issue(request, who, db, None)


@router.get("/data/services/tokens/issue/user/{username}")
def issue_token_for(username: str, request: Request, who: Principal = Depends(require_user),
                    db: Session = Depends(get_db)) -> JSONResponse:
    return _issue(request, who, db, username)


def _issue(request: Request, who: Principal, db: Session, username: str | None) -> JSONResponse:
    user = _token_target(db, who, username)
    with _service_errors():
        issued = service.issue_token(db, user, single_use=_single_use_flag(request))
    body = issued.as_json(user)
    _commit(db)
    return JSONResponse(body)


def _token_json(token: Any, user: User) -> dict[str, Any]:
    return {"alias": token.alias, "xdatUserId": user.username, "singleUse": token.single_use,
            "enabled": token.valid, "created": service.epoch_ms(token.created_at),
            "estimatedExpirationTime": service.epoch_ms(token.expires_at)}


@router.get("/data/services/tokens/show")
def show_tokens(who: Principal = Depends(require_user), db: Session = Depends(get_db)) -> JSONResponse:
    assert who.user is not None
    return JSONResponse([_token_json(t, who.user) for t in service.tokens_of(db, who.user)])


@router.get("/data/services/tokens/show/user/{username}")
def show_tokens_for(username: str, who: Principal = Depends(require_user),
                    db: Session = Depends(get_db)) -> JSONResponse:
    user = _token_target(db, who, username)
    return JSONResponse([_token_json(t, user) for t in service.tokens_of(db, user)])


def _owned_token(db: Session, who: Principal, alias: str) -> Any:
    token = service.find_token(db, alias)
    if token is None:
        raise HTTPException(404, detail=f"Can't find an alias token with the alias {alias}")
    assert who.user is not None
    if token.user_pk != who.user.pk and not who.is_admin:
        raise HTTPException(403, detail="Non-admin users can only work with their own alias tokens")
    return token


@router.get("/data/services/tokens/validate/{alias}/{secret}")
def validate_token(alias: str, secret: str, who: Principal = Depends(require_user),
                   db: Session = Depends(get_db)) -> JSONResponse:
    """As XNAT: ``{"valid": "<username>"}`` when alias and secret match a live token, else
    ``{"valid": null}``. Unlike XNAT, validating does not spend a single-use token."""
    _owned_token(db, who, alias)
    owner = service.check_token(db, alias, secret)
    return JSONResponse({"valid": owner.username if owner is not None else None})


@router.get("/data/services/tokens/invalidate/{alias}")
def invalidate_token(alias: str, who: Principal = Depends(require_user),
                     db: Session = Depends(get_db)) -> JSONResponse:
    token = _owned_token(db, who, alias)
    service.invalidate_token(db, token)
    _commit(db)
    return JSONResponse({"result": "OK"})


@router.get("/data/services/tokens/invalidate/{alias}/{secret}")
def invalidate_token_with_secret(alias: str, secret: str, who: Principal = Depends(require_user),
                                 db: Session = Depends(get_db)) -> JSONResponse:
    token = _owned_token(db, who, alias)
    if token.secret_sha256 != service.sha256_hex(secret):
        raise HTTPException(400, detail="The secret does not match the alias token")
    service.invalidate_token(db, token)
    _commit(db)
    return JSONResponse({"result": "OK"})


# -------------------------------------------------------------------------------------------- users


def _may_list_users(db: Session, who: Principal) -> None:
    if get_pref(db, RESTRICT_USER_LIST_PREF, False) and not who.is_admin:
        raise HTTPException(403, detail="Only site administrators can list users on this site")


def _self_or_admin(who: Principal, username: str) -> None:
    if not (who.is_admin or who.username == username):
        raise HTTPException(403, detail="Not authorized for this user")


def _user(db: Session, username: str) -> User:
    with _service_errors():
        return service.require_user_named(db, username)


@router.get("/data/users")
def data_users(request: Request, who: Principal = Depends(require_user),
               db: Session = Depends(get_db)) -> Response:
    """All enabled users as XNAT's ResultSet (pyxnat's ``manage.users``)."""
    _may_list_users(db, who)
    rows = [{"xdat_user_id": u.pk, "login": u.username, "firstname": u.first_name, "lastname": u.last_name,
             "email": u.email} for u in service.list_users(db) if u.enabled]
    return result_set(rows, ["login", "firstname", "lastname", "email", "xdat_user_id"],
                      request.query_params.get("format"), "Users")


@router.get("/xapi/users")
def xapi_users(who: Principal = Depends(require_user), db: Session = Depends(get_db)) -> JSONResponse:
    _may_list_users(db, who)
    return JSONResponse([u.username for u in service.list_users(db)])


@router.post("/xapi/users", status_code=201)
def create_user(body: bytes = Depends(_raw_body), who: Principal = Depends(require_admin),
                db: Session = Depends(get_db)) -> JSONResponse:
    data = _json_object(body)
    for flag in ("enabled", "verified"):
        if data.get(flag) is not None and not isinstance(data[flag], bool):
            raise HTTPException(400, detail=f"{flag} must be true or false")
    with _service_errors():
        user = service.create_user(db, data.get("username"), data.get("password"),
                                    first_name=data.get("firstName"), last_name=data.get("lastName"),
                                    email=data.get("email"), enabled=data.get("enabled", True) is not False,
                                    verified=data.get("verified", True) is not False)
    result = service.user_json(db, user)
    _commit(db)
    return JSONResponse(result, status_code=201)


@router.get("/xapi/users/profiles")
def user_profiles(who: Principal = Depends(require_user), db: Session = Depends(get_db)) -> JSONResponse:
    _may_list_users(db, who)
    users = service.list_users(db)
    return JSONResponse([service.user_json(db, u, include_admin=who.is_admin) for u in users])


@router.get("/xapi/users/{username}")
def get_user(username: str, who: Principal = Depends(require_user),
             db: Session = Depends(get_db)) -> JSONResponse:
    _self_or_admin(who, username)
    return JSONResponse(service.user_json(db, _user(db, username)))


@router.put("/xapi/users/{username}")
def update_user(username: str, body: bytes = Depends(_raw_body), who: Principal = Depends(require_user),
                db: Session = Depends(get_db)) -> Response:
    """Admins update any field; users their own names, e-mail and (with ``currentPassword``) password.
    Nothing changed → 304, as XNAT."""
    _self_or_admin(who, username)
    user = _user(db, username)
    with _service_errors():
        changed = service.update_user(db, user, _json_object(body), by_admin=who.is_admin)
    if not changed:
        return Response(status_code=304)
    result = service.user_json(db, user)
    _commit(db)
    return JSONResponse(result)


@router.get("/xapi/users/{username}/enabled")
def get_enabled(username: str, who: Principal = Depends(require_user),
                db: Session = Depends(get_db)) -> JSONResponse:
    _self_or_admin(who, username)
    return JSONResponse(_user(db, username).enabled)


@router.put("/xapi/users/{username}/enabled/{flag}")
def put_enabled(username: str, flag: str, who: Principal = Depends(require_admin),
                db: Session = Depends(get_db)) -> Response:
    user = _user(db, username)
    value = _flag(flag)
    if user.enabled != value:
        with _service_errors():
            service.set_enabled(db, user, value)
        _commit(db)
    return Response(status_code=200)


@router.get("/xapi/users/{username}/verified")
def get_verified(username: str, who: Principal = Depends(require_user),
                 db: Session = Depends(get_db)) -> JSONResponse:
    _self_or_admin(who, username)
    return JSONResponse(_user(db, username).verified)


@router.put("/xapi/users/{username}/verified/{flag}")
def put_verified(username: str, flag: str, who: Principal = Depends(require_admin),
                 db: Session = Depends(get_db)) -> Response:
    user = _user(db, username)
    user.verified = _flag(flag)
    _commit(db)
    return Response(status_code=200)


@router.get("/xapi/users/{username}/roles")
def get_roles(username: str, who: Principal = Depends(require_user),
              db: Session = Depends(get_db)) -> JSONResponse:
    _self_or_admin(who, username)
    return JSONResponse(service.user_roles(db, _user(db, username)))


@router.put("/xapi/users/{username}/roles")
def put_roles(username: str, body: bytes = Depends(_raw_body), who: Principal = Depends(require_admin),
              db: Session = Depends(get_db)) -> JSONResponse:
    """Add several roles (JSON list); 202 with the roles that could not be added, as XNAT."""
    return _change_roles(db, _user(db, username), _json_list(body), add=True)


@router.delete("/xapi/users/{username}/roles")
def delete_roles(username: str, body: bytes = Depends(_raw_body), who: Principal = Depends(require_admin),
                 db: Session = Depends(get_db)) -> JSONResponse:
    return _change_roles(db, _user(db, username), _json_list(body), add=False)


def _change_roles(db: Session, user: User, roles: list[str], *, add: bool) -> JSONResponse:
    failed = []
    for role in roles:
        try:
            service.add_role(db, user, role) if add else service.remove_role(db, user, role)
        except service.AuthServiceError:
            failed.append(role)
    _commit(db)
    return JSONResponse(failed, status_code=202 if failed else 200)


@router.put("/xapi/users/{username}/roles/{role}")
def put_role(username: str, role: str, who: Principal = Depends(require_admin),
             db: Session = Depends(get_db)) -> Response:
    user = _user(db, username)
    with _service_errors():
        service.add_role(db, user, role)
    _commit(db)
    return Response(status_code=200)


@router.delete("/xapi/users/{username}/roles/{role}")
def delete_role(username: str, role: str, who: Principal = Depends(require_admin),
                db: Session = Depends(get_db)) -> Response:
    user = _user(db, username)
    with _service_errors():
        service.remove_role(db, user, role)
    _commit(db)
    return Response(status_code=200)


@router.get("/xapi/users/{username}/groups")
def get_groups(username: str, who: Principal = Depends(require_user),
               db: Session = Depends(get_db)) -> JSONResponse:
    _self_or_admin(who, username)
    return JSONResponse(service.user_groups(db, _user(db, username)))


def _group_project(db: Session, who: Principal, group: str, needed: Access) -> tuple[Any, str]:
    parsed = service.parse_group_id(group)
    if parsed is None:
        raise HTTPException(404, detail=f"Group {group} not found")
    project_id, role = parsed
    return check_project(db, who, project_id, needed), role


@router.put("/xapi/users/{username}/groups/{group}")
def put_group(username: str, group: str, who: Principal = Depends(require_user),
              db: Session = Depends(get_db)) -> Response:
    """Add the user to a project group (``P1_member``...): project owners and admins."""
    project, role = _group_project(db, who, group, Access.MANAGE)
    user = _user(db, username)
    with _service_errors():
        service.set_member(db, project, user, role)
    _commit(db)
    return Response(status_code=200)


@router.delete("/xapi/users/{username}/groups/{group}")
def delete_group(username: str, group: str, who: Principal = Depends(require_user),
                 db: Session = Depends(get_db)) -> Response:
    """Leave a project group: the user themself (as XNAT), project owners and admins."""
    needed = Access.READ if who.username == username else Access.MANAGE
    project, role = _group_project(db, who, group, needed)
    user = _user(db, username)
    with _service_errors():
        service.remove_member(db, project, user, role)
    _commit(db)
    return Response(status_code=200)


@router.post("/xapi/users/{username}/set-password", response_class=PlainTextResponse)
def set_password_with_link(username: str, request: Request, body: bytes = Depends(_raw_body),
                           db: Session = Depends(get_db)) -> Response:
    """Our addition for set-password links: ``{"alias","secret","password"}`` (JSON or form). Needs no
    login: the single-use alias token of the link is the credential, and it is spent."""
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        from urllib.parse import parse_qs

        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        data: dict[str, Any] = form
    else:
        data = _json_object(body)
    alias, secret, password = data.get("alias"), data.get("secret"), data.get("password")
    if not all(isinstance(v, str) and v for v in (alias, secret, password)):
        raise HTTPException(400, detail="alias, secret and password are required")
    with _service_errors():
        service.set_password_with_token(db, username, alias, secret, password)  # type: ignore[arg-type]
    _commit(db)
    return PlainTextResponse("Password set")


_SET_PASSWORD_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Set your password</title></head>
<body><h1>Set your imaging archive password</h1>
<form id="f"><p>Username: <b id="u"></b></p>
<p><label>New password <input type="password" id="p1" minlength="8" required></label></p>
<p><label>Repeat <input type="password" id="p2" minlength="8" required></label></p>
<p><button>Set password</button></p></form><p id="m"></p>
<script>
const q = new URLSearchParams(location.hash.slice(1));
document.getElementById("u").textContent = q.get("username") || "?";
document.getElementById("f").addEventListener("submit", async (e) => {
  e.preventDefault();
  const p1 = document.getElementById("p1").value, m = document.getElementById("m");
  if (p1 !== document.getElementById("p2").value) { m.textContent = "The passwords differ."; return; }
  const r = await fetch("/xapi/users/" + encodeURIComponent(q.get("username")) + "/set-password", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({alias: q.get("alias"), secret: q.get("secret"), password: p1})});
  m.textContent = await r.text();
  if (r.ok) { history.replaceState(null, "", location.pathname); document.getElementById("f").remove(); }
});
</script></body></html>
"""


@router.get("/set-password", response_class=HTMLResponse, include_in_schema=False)
def set_password_page() -> HTMLResponse:
    """The page a set-password link opens; the credentials stay in the URL fragment (never sent)."""
    return HTMLResponse(_SET_PASSWORD_PAGE, headers={"Cache-Control": "no-store",
                                                     "Referrer-Policy": "no-referrer"})


# --------------------------------------------------------------------------------- project members


@router.get("/data/projects/{project_id}/users")
@router.get("/data/archive/projects/{project_id}/users")
def project_users(project_id: str, request: Request, who: Principal = Depends(require_user),
                  db: Session = Depends(get_db)) -> Response:
    return _members_table(db, check_project(db, who, project_id, Access.READ), request)


def _members_table(db: Session, project: Any, request: Request) -> Response:
    hidden = request.query_params.get("DISPLAY_HIDDEN_USERS", "false").lower() == "true"
    rows = [{"GROUP_ID": service.group_id(project, role), "displayname": service.GROUPS[role],
             "login": u.username, "firstname": u.first_name, "lastname": u.last_name, "email": u.email,
             "xdat_user_id": u.pk} for role, u in service.members(db, project, include_disabled=hidden)]
    return result_set(rows, ["GROUP_ID", "displayname", "login", "firstname", "lastname", "email",
                             "xdat_user_id"], request.query_params.get("format"), "Projects")


def _resolve_users(db: Session, ids: str) -> list[User]:
    """Users named by login, numeric user id or e-mail, comma-separated (as XNAT); unknown → 404."""
    found: list[User] = []
    unknown: list[str] = []
    for ref in (p.strip() for p in ids.split(",")):
        if not ref:
            continue
        user = service.get_user(db, ref)
        if user is None and ref.isdigit():
            user = db.get(User, int(ref))
        matches = [user] if user is not None else service.find_users_by_email(db, ref)
        if matches:
            found.extend(m for m in matches if m not in found)
        else:
            unknown.append(ref)
    if unknown:
        raise HTTPException(404, detail=f"Unknown user(s): {', '.join(unknown)}")
    if not found:
        raise HTTPException(400, detail="No user given")
    return found


def _member_change(db: Session, who: Principal, project_id: str, group: str, user_ids: str,
                   request: Request, *, add: bool) -> Response:
    project = check_project(db, who, project_id, Access.MANAGE)
    role = service.parse_group(project.id, group) or service.parse_group(project_id, group)
    if role is None:
        raise HTTPException(404, detail=f"{project_id}: group {group} not found")
    with _service_errors():
        for user in _resolve_users(db, user_ids):
            if add:
                service.set_member(db, project, user, role)
            else:
                service.remove_member(db, project, user, role)
    _commit(db)
    return _members_table(db, project, request)  # no access check: an owner may just have left


@router.put("/data/projects/{project_id}/users/{group}/{user_ids}")
@router.put("/data/archive/projects/{project_id}/users/{group}/{user_ids}")
def add_project_user(project_id: str, group: str, user_ids: str, request: Request,
                     who: Principal = Depends(require_user), db: Session = Depends(get_db)) -> Response:
    """Put users in a project group (moving them out of their previous group): owners and admins."""
    return _member_change(db, who, project_id, group, user_ids, request, add=True)


@router.delete("/data/projects/{project_id}/users/{group}/{user_ids}")
@router.delete("/data/archive/projects/{project_id}/users/{group}/{user_ids}")
def remove_project_user(project_id: str, group: str, user_ids: str, request: Request,
                        who: Principal = Depends(require_user), db: Session = Depends(get_db)) -> Response:
    """Remove users from a project group; the only owner cannot be removed (409)."""
    return _member_change(db, who, project_id, group, user_ids, request, add=False)


# ------------------------------------------------------------------------------------------- access


@router.get("/xapi/access/projects")
def access_projects(who: Principal = Depends(require_user), db: Session = Depends(get_db)) -> JSONResponse:
    assert who.user is not None
    return JSONResponse(service.accessible_projects(db, who.user, admin=who.is_admin))


__all__ = ["router", "result_set"]
