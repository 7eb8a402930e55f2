"""FastAPI dependencies: the database session, the caller, and permission checks.

Every route takes its caller from :func:`principal` (HTTP basic with a password or an alias token, or
the ``JSESSIONID`` cookie) and checks access with :func:`require_project`; services never see requests.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import Depends, HTTPException, Request
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from flip_imaging.archive.models import Project, ProjectAlias
from flip_imaging.auth.models import AliasToken, User, WebSession
from flip_imaging.auth.passwords import sha256_hex, verify_password
from flip_imaging.auth.principal import ANONYMOUS, Access, Principal, load_principal, project_access
from flip_imaging.context import AppContext

SESSION_COOKIE = "JSESSIONID"


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


def get_db(request: Request) -> Iterator[Session]:
    """One session per request; committed by the route itself where it writes."""
    with get_ctx(request).sessions() as session:
        yield session


class Unauthorized(HTTPException):
    def __init__(self, detail: str = "Authentication required") -> None:
        super().__init__(401, detail=detail, headers={"WWW-Authenticate": 'Basic realm="XNAT"'})


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized("Malformed basic authorization header") from exc
    return user, password


def authenticate_password(db: Session, username: str, password: str) -> User | None:
    """A user by username/password, or by alias token/secret; None when either is wrong or disabled."""
    user = db.scalar(select(User).where(User.username == username))
    if user is not None:
        # as XNAT: disabled and unverified accounts cannot log in (a set-password link verifies them)
        ok = user.enabled and user.verified and verify_password(password, user.password_hash)
        return user if ok else None
    token = db.scalar(select(AliasToken).where(AliasToken.alias == username))
    if token is None:
        verify_password(password, None)  # same cost as a real check
        return None
    # a single-use token is spent with a conditional UPDATE so that two concurrent requests cannot both
    # use it; the spend is committed at once so that it sticks even if the request fails later
    from flip_imaging.auth.service import consume_token

    owner = consume_token(db, username, password)
    if token.single_use:
        db.commit()
    return owner


def session_user(db: Session, session_id: str) -> User | None:
    row = db.scalar(select(WebSession).where(WebSession.token_sha256 == sha256_hex(session_id)))
    if row is None or row.user_pk is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires <= datetime.now(UTC):
        return None
    user = db.get(User, row.user_pk)
    return user if user is not None and user.enabled else None


def principal(request: Request, db: Session = Depends(get_db)) -> Principal:
    """The caller; anonymous when no credentials were sent. Wrong credentials are a 401."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    creds = _basic_credentials(request)
    result = ANONYMOUS
    if creds is not None:
        user = authenticate_password(db, *creds)
        if user is None:
            raise Unauthorized("Bad username or password")
        result = load_principal(db, user)
    elif (sid := request.cookies.get(SESSION_COOKIE)) is not None:
        user = session_user(db, sid)
        if user is not None:
            result = load_principal(db, user)
    request.state.principal = result
    return result


def require_user(who: Principal = Depends(principal)) -> Principal:
    if not who.authenticated:
        raise Unauthorized()
    return who


def require_admin(who: Principal = Depends(require_user)) -> Principal:
    if not who.is_admin:
        raise HTTPException(403, detail="Site administrators only")
    return who


def find_project(db: Session, project_id: str) -> Project | None:
    """A project by ID or alias."""
    return db.scalar(
        select(Project).outerjoin(ProjectAlias, ProjectAlias.project_pk == Project.pk)
        .where(or_(Project.id == project_id, ProjectAlias.alias == project_id)).limit(1)
    )


def check_project(db: Session, who: Principal, project_id: str, needed: Access) -> Project:
    """The project if the caller has ``needed`` access.

    As XNAT (with guest access off): anonymous callers get 401; a project the caller may not see is
    a 404 (its existence is not revealed); a visible project without enough rights is a 403.
    """
    if not who.authenticated:
        raise Unauthorized()
    project = find_project(db, project_id)
    if project is None:
        raise HTTPException(404, detail=f"Project {project_id} not found")
    have = project_access(db, who, project)
    if have >= needed:
        return project
    if have == Access.NONE and project.accessibility == "private":
        raise HTTPException(404, detail=f"Project {project_id} not found")
    raise HTTPException(403, detail=f"Insufficient privileges for project {project_id}")
