"""Users, login sessions, alias tokens and project membership (the logic behind ``auth/routes.py``).

Every function takes the caller's SQLAlchemy ``Session`` and leaves committing to the caller, so a route
can combine several changes in one transaction. Secrets (session ids, token secrets, passwords) are never
stored: sessions and tokens keep a SHA-256, passwords an argon2id hash.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from flip_imaging.archive.models import Project, ProjectMember
from flip_imaging.auth.models import AliasToken, User, UserRole, WebSession
from flip_imaging.auth.passwords import hash_password, new_secret, sha256_hex, verify_password
from flip_imaging.auth.principal import ADMIN_ROLE

#: idle time after which a login session ends (XNAT's default ``sessionTimeout`` is 15 minutes);
#: ``GET /data/JSESSION`` (xnatpy's heartbeat) extends it
SESSION_TIMEOUT = timedelta(minutes=15)
#: lifetime of an alias token (XNAT's default ``aliasTokenTimeout`` is two days)
TOKEN_LIFETIME = timedelta(hours=48)
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

#: XNAT's three project groups: role → (group id suffix, display name)
GROUPS = {"owner": "Owners", "member": "Members", "collaborator": "Collaborators"}
#: site roles that can be granted; ``Administrator`` makes a site admin, the others are kept and reported
KNOWN_ROLES = (ADMIN_ROLE, "DataManager", "NonExpiring")

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,254}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_NAME_FORBIDDEN = re.compile(r"[<>\"'&\x00-\x1f]")
RESERVED_USERNAMES = {"guest", "anonymous"}


class AuthServiceError(Exception):
    """Base of the errors below; the message is safe to show to the caller."""


class NotFound(AuthServiceError):
    pass


class Conflict(AuthServiceError):
    pass


class Invalid(AuthServiceError):
    pass


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes (stored as UTC): make them comparable."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def epoch_ms(value: datetime | None) -> int | None:
    return None if value is None else int(aware(value).timestamp() * 1000)


# --------------------------------------------------------------------------------------------- users


def get_user(db: Session, username: str) -> User | None:
    return db.scalar(select(User).where(User.username == username))


def require_user_named(db: Session, username: str) -> User:
    user = get_user(db, username)
    if user is None:
        raise NotFound(f"User {username} not found")
    return user


def is_admin(db: Session, user: User) -> bool:
    return db.scalar(select(UserRole.pk).where(UserRole.user_pk == user.pk, UserRole.role == ADMIN_ROLE)) \
        is not None


def check_password_policy(password: str) -> None:
    if not isinstance(password, str) or not (MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH):
        raise Invalid(f"Passwords must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long")


def _check_name(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 255 or _NAME_FORBIDDEN.search(value):
        raise Invalid(f"Invalid {field}")
    return value


def _check_email(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 255 or not _EMAIL.match(value):
        raise Invalid("Invalid email")
    return value


def check_username(username: Any) -> str:
    if not isinstance(username, str) or not username:
        raise Invalid("A username is required")
    if not _USERNAME.match(username) or username.lower() in RESERVED_USERNAMES or _UUID.match(username):
        # UUID-shaped names are reserved for alias tokens (xnatpy logs those in as tokens)
        raise Invalid(f"Invalid username {username!r}: use letters, digits, '.', '_', '-' or '@'")
    return username


def create_user(db: Session, username: Any, password: str | None = None, *, first_name: Any = None,
                last_name: Any = None, email: Any = None, enabled: bool = True,
                verified: bool = True) -> User:
    """A new account; without a password nobody can log in until a set-password link is used."""
    username = check_username(username)
    if password is not None and password != "":
        check_password_policy(password)
    if get_user(db, username) is not None:
        raise Conflict(f"User {username} already exists")
    user = User(username=username, first_name=_check_name("firstName", first_name),
                last_name=_check_name("lastName", last_name), email=_check_email(email),
                password_hash=hash_password(password) if password else None,
                enabled=bool(enabled), verified=bool(verified))
    db.add(user)
    db.flush()
    return user


def find_users_by_email(db: Session, email: str) -> list[User]:
    return list(db.scalars(select(User).where(func.lower(User.email) == email.lower()).order_by(User.pk)))


def list_users(db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.username)))


def user_json(db: Session, user: User, *, include_admin: bool = True) -> dict[str, Any]:
    """XNAT's user model (``org.nrg.xapi.model.users.User``) as far as we keep the fields."""
    data: dict[str, Any] = {
        "id": user.pk,
        "username": user.username,
        "firstName": user.first_name,
        "lastName": user.last_name,
        "email": user.email,
        "enabled": user.enabled,
        "verified": user.verified,
        "lastSuccessfulLogin": epoch_ms(user.last_login),
        "created": epoch_ms(user.created_at),
    }
    if include_admin:
        data["admin"] = is_admin(db, user)
    return data


def set_password(db: Session, user: User, password: str) -> None:
    """Replace the password; other sessions of the user end (as after a password change in XNAT)."""
    check_password_policy(password)
    user.password_hash = hash_password(password)
    end_user_sessions(db, user)


def update_user(db: Session, user: User, changes: dict[str, Any], *, by_admin: bool) -> bool:
    """Apply a JSON user model; returns whether anything changed.

    Non-admins may change their own names and e-mail, and their password only with ``currentPassword``.
    ``enabled``/``verified`` are for admins only (silently ignored otherwise, as XNAT does).
    """
    if "username" in changes and changes["username"] not in (None, "", user.username):
        raise Invalid("The username of the submitted user must match the username of the call")
    changed = False
    for field, attr in (("firstName", "first_name"), ("lastName", "last_name")):
        if changes.get(field) not in (None, ""):
            value = _check_name(field, changes[field])
            if value != getattr(user, attr):
                setattr(user, attr, value)
                changed = True
    if changes.get("email") not in (None, ""):
        email = _check_email(changes["email"])
        if email != user.email:
            if not by_admin and any(u.pk != user.pk for u in find_users_by_email(db, email or "")):
                raise Invalid("The email address is already in use")
            user.email = email
            changed = True
    if changes.get("password") not in (None, ""):
        current = str(changes.get("currentPassword") or "")
        if not by_admin and not verify_password(current, user.password_hash):
            raise Invalid("The current password is needed to change the password")
        set_password(db, user, changes["password"])
        changed = True
    if by_admin:
        for field in ("enabled", "verified"):
            value = changes.get(field)
            if value is None:
                continue
            if not isinstance(value, bool):
                raise Invalid(f"{field} must be true or false")
            if field == "enabled" and value != user.enabled:
                set_enabled(db, user, value)
                changed = True
            elif field == "verified" and value != user.verified:
                user.verified = value
                changed = True
    return changed


def set_enabled(db: Session, user: User, enabled: bool) -> None:
    """Disabling ends the user's sessions and invalidates their alias tokens (as XNAT does)."""
    if not enabled and is_admin(db, user) and _enabled_admin_count(db) <= 1:
        raise Conflict("The last enabled site administrator cannot be disabled")
    user.enabled = enabled
    if not enabled:
        end_user_sessions(db, user)
        db.execute(update(AliasToken).where(AliasToken.user_pk == user.pk).values(valid=False))


def _enabled_admin_count(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(UserRole).join(User, User.pk == UserRole.user_pk)
                     .where(UserRole.role == ADMIN_ROLE, User.enabled.is_(True))) or 0


def user_roles(db: Session, user: User) -> list[str]:
    return sorted(db.scalars(select(UserRole.role).where(UserRole.user_pk == user.pk)))


def add_role(db: Session, user: User, role: str) -> bool:
    """Grant a site role; returns False when the user already had it."""
    if role not in KNOWN_ROLES:
        raise Invalid(f"Unknown role {role!r}; known roles: {', '.join(KNOWN_ROLES)}")
    if role in user_roles(db, user):
        return False
    db.add(UserRole(user_pk=user.pk, role=role))
    db.flush()
    return True


def remove_role(db: Session, user: User, role: str) -> bool:
    """Revoke a site role; the last enabled administrator keeps theirs (XNAT answers 409 too)."""
    if role not in user_roles(db, user):
        return False
    if role == ADMIN_ROLE and user.enabled and _enabled_admin_count(db) <= 1:
        raise Conflict("The last site administrator cannot lose the Administrator role")
    db.execute(delete(UserRole).where(UserRole.user_pk == user.pk, UserRole.role == role))
    return True


# ------------------------------------------------------------------------------------------ sessions


def create_session(db: Session, user: User) -> tuple[str, WebSession]:
    """A new login session; returns the session id (32 hex digits like Tomcat's) and its row.

    Logins are also when dead sessions and tokens are cleared out, so the tables stay small without a
    background job."""
    purge_expired(db)
    session_id = secrets.token_hex(16).upper()
    row = WebSession(token_sha256=sha256_hex(session_id), user_pk=user.pk, created_at=now(),
                     expires_at=now() + SESSION_TIMEOUT)
    db.add(row)
    user.last_login = now()
    db.flush()
    return session_id, row


def find_session(db: Session, session_id: str) -> WebSession | None:
    """A live session by its id (None when unknown, ended or expired)."""
    row = db.scalar(select(WebSession).where(WebSession.token_sha256 == sha256_hex(session_id)))
    if row is None or aware(row.expires_at) <= now():
        return None
    return row


def touch_session(db: Session, row: WebSession) -> None:
    row.expires_at = now() + SESSION_TIMEOUT


def end_session(db: Session, session_id: str) -> bool:
    result = db.execute(delete(WebSession).where(WebSession.token_sha256 == sha256_hex(session_id)))
    return bool(result.rowcount)


def end_user_sessions(db: Session, user: User) -> None:
    db.execute(delete(WebSession).where(WebSession.user_pk == user.pk))


def purge_expired(db: Session) -> int:
    """Remove ended sessions and dead tokens (housekeeping; safe to call any time)."""
    moment = now()
    # synchronize_session=False: SQLite hands back naive datetimes, which Python cannot compare to ``moment``
    n = db.execute(delete(WebSession).where(WebSession.expires_at <= moment)
                   .execution_options(synchronize_session=False)).rowcount or 0
    n += db.execute(delete(AliasToken).where(AliasToken.expires_at <= moment)
                    .execution_options(synchronize_session=False)).rowcount or 0
    return n


# -------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class IssuedToken:
    alias: str
    secret: str
    token: AliasToken

    def as_json(self, user: User) -> dict[str, Any]:
        """The shape of XNAT's serialized ``AliasToken`` (the secret is shown only here, once)."""
        return {
            "alias": self.alias,
            "secret": self.secret,
            "xdatUserId": user.username,
            "singleUse": self.token.single_use,
            "enabled": True,
            "created": epoch_ms(self.token.created_at),
            "estimatedExpirationTime": epoch_ms(self.token.expires_at),
            "validIPAddresses": [],
        }


def issue_token(db: Session, user: User, *, single_use: bool = False,
                lifetime: timedelta = TOKEN_LIFETIME) -> IssuedToken:
    """A new alias token: a UUID alias (xnatpy recognises those) and a random secret."""
    if not user.enabled:
        raise Invalid(f"User {user.username} is disabled")
    alias = str(uuid.uuid4())
    secret = new_secret(48)
    token = AliasToken(alias=alias, secret_sha256=sha256_hex(secret), user_pk=user.pk, single_use=single_use,
                       valid=True, created_at=now(), expires_at=now() + lifetime)
    db.add(token)
    db.flush()
    return IssuedToken(alias, secret, token)


def find_token(db: Session, alias: str) -> AliasToken | None:
    return db.scalar(select(AliasToken).where(AliasToken.alias == alias))


def _token_usable(token: AliasToken | None, secret: str) -> bool:
    if token is None or not token.valid or aware(token.expires_at) <= now():
        return False
    return secrets.compare_digest(token.secret_sha256, sha256_hex(secret))


def check_token(db: Session, alias: str, secret: str) -> User | None:
    """The token's (enabled) owner if alias and secret match a live token; does not consume it."""
    token = find_token(db, alias)
    if not _token_usable(token, secret):
        return None
    owner = db.get(User, token.user_pk)  # type: ignore[union-attr]
    return owner if owner is not None and owner.enabled else None


def consume_token(db: Session, alias: str, secret: str) -> User | None:
    """Like :func:`check_token`, but a single-use token is spent atomically: of two concurrent callers
    exactly one gets the user (a conditional UPDATE, so it holds on PostgreSQL and SQLite alike).

    For a single-use token this commits the caller's transaction before spending it: on SQLite a read
    transaction cannot become a write transaction once another connection has written ("database is
    locked" at once), while one that starts with the UPDATE waits for the lock. Call it before writing.
    """
    token = find_token(db, alias)
    if not _token_usable(token, secret):
        return None
    assert token is not None
    if token.single_use:
        db.commit()
        spent = db.execute(update(AliasToken).where(AliasToken.pk == token.pk, AliasToken.valid.is_(True),
                                                    AliasToken.expires_at > now()).values(valid=False)
                           .execution_options(synchronize_session=False))
        if spent.rowcount != 1:
            return None
    owner = db.get(User, token.user_pk)
    return owner if owner is not None and owner.enabled else None


def invalidate_token(db: Session, token: AliasToken) -> None:
    token.valid = False


def tokens_of(db: Session, user: User) -> list[AliasToken]:
    return list(db.scalars(select(AliasToken).where(AliasToken.user_pk == user.pk, AliasToken.valid.is_(True),
                                                    AliasToken.expires_at > now()).order_by(AliasToken.pk)))


def set_password_link(db: Session, user: User, site_url: str, *,
                      lifetime: timedelta = TOKEN_LIFETIME) -> tuple[str, str, str]:
    """A one-time set-password link for ``user``: returns ``(alias, secret, url)``.

    The link carries a single-use alias token; opening it does nothing by itself, the password is set by
    ``POST /xapi/users/{username}/set-password`` with the alias and secret (which spends the token).
    """
    issued = issue_token(db, user, single_use=True, lifetime=lifetime)
    # the credentials ride in the fragment: browsers never send it, so it stays out of access logs
    url = f"{site_url.rstrip('/')}/set-password#username={quote(user.username)}&alias={issued.alias}" \
          f"&secret={issued.secret}"
    return issued.alias, issued.secret, url


def set_password_with_token(db: Session, username: str, alias: str, secret: str, password: str) -> User:
    """Spend a single-use token of ``username`` to set their password (the set-password link)."""
    check_password_policy(password)
    token = find_token(db, alias)
    user = get_user(db, username)
    if token is None or user is None or token.user_pk != user.pk or not token.single_use:
        raise Invalid("Invalid or expired link")
    if consume_token(db, alias, secret) is None:
        raise Invalid("Invalid or expired link")
    set_password(db, user, password)
    if not user.verified:
        user.verified = True  # they proved they read the e-mail
    return user


# ---------------------------------------------------------------------------------------- membership


def group_id(project: Project, role: str) -> str:
    return f"{project.id}_{role}"


def parse_group(project_id: str, group: str) -> str | None:
    """The role named by an XNAT group reference: ``Owners``/``owner``/``owners``/``P1_owner``."""
    text = group.strip()
    if text.startswith(project_id + "_"):
        text = text[len(project_id) + 1:]
    lowered = text.lower()
    for role, display in GROUPS.items():
        if lowered in (role, display.lower()):
            return role
    return None


def parse_group_id(group: str) -> tuple[str, str] | None:
    """``P1_owner`` → (``P1``, ``owner``); None if it does not look like a project group."""
    project_id, sep, suffix = group.rpartition("_")
    if not sep or not project_id:
        return None
    role = parse_group(project_id, suffix)
    return (project_id, role) if role else None


def members(db: Session, project: Project, *, include_disabled: bool = False) -> list[tuple[str, User]]:
    query = (select(ProjectMember.role, User).join(User, User.pk == ProjectMember.user_pk)
             .where(ProjectMember.project_pk == project.pk).order_by(ProjectMember.role, User.username))
    if not include_disabled:
        query = query.where(User.enabled.is_(True))
    return [(role, user) for role, user in db.execute(query).all()]


def membership(db: Session, project: Project, user: User) -> ProjectMember | None:
    return db.scalar(select(ProjectMember).where(ProjectMember.project_pk == project.pk,
                                                 ProjectMember.user_pk == user.pk))


def _owner_count(db: Session, project: Project) -> int:
    return db.scalar(select(func.count()).select_from(ProjectMember)
                     .where(ProjectMember.project_pk == project.pk, ProjectMember.role == "owner")) or 0


def set_member(db: Session, project: Project, user: User, role: str) -> bool:
    """Put ``user`` in the project group ``role`` (one group per user: this moves them); returns whether
    anything changed. Demoting the only owner is refused so that no project is left without an owner."""
    if role not in GROUPS:
        raise Invalid(f"Unknown project group {role!r}")
    row = membership(db, project, user)
    if row is not None and row.role == role:
        return False
    if row is None:
        db.add(ProjectMember(project_pk=project.pk, user_pk=user.pk, role=role))
    else:
        if row.role == "owner" and _owner_count(db, project) <= 1:
            raise Conflict(f"{user.username} is the only owner of project {project.id}; add another owner "
                           "first")
        row.role = role
    db.flush()
    return True


def remove_member(db: Session, project: Project, user: User, role: str | None = None) -> bool:
    """Take ``user`` out of the project (only if in group ``role`` when given); the only owner stays."""
    row = membership(db, project, user)
    if row is None or (role is not None and row.role != role):
        return False
    if row.role == "owner" and _owner_count(db, project) <= 1:
        raise Conflict(f"{user.username} is the only owner of project {project.id}; add another owner first")
    db.delete(row)
    db.flush()
    return True


def user_groups(db: Session, user: User) -> list[str]:
    rows = db.execute(select(Project.id, ProjectMember.role)
                      .join(Project, Project.pk == ProjectMember.project_pk)
                      .where(ProjectMember.user_pk == user.pk).order_by(Project.id))
    return [f"{pid}_{role}" for pid, role in rows]


def accessible_projects(db: Session, user: User, *, admin: bool) -> list[dict[str, str]]:
    """``/xapi/access/projects``: the caller's project groups; site admins also get every other project
    with role ``owner`` (the access they effectively have)."""
    roles = {pid: role for pid, role in db.execute(
        select(Project.id, ProjectMember.role).join(Project, Project.pk == ProjectMember.project_pk)
        .where(ProjectMember.user_pk == user.pk))}
    if admin:
        for pid in db.scalars(select(Project.id)):
            roles.setdefault(pid, "owner")
    return [{"ID": pid, "role": roles[pid]} for pid in sorted(roles)]
