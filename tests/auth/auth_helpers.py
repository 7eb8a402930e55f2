"""Helpers for auth tests (importable as ``auth_helpers``): users, projects, free ports."""

from __future__ import annotations

from flip_imaging.archive.models import Project, ProjectMember
from flip_imaging.auth import service
from flip_imaging.auth.models import UserRole
from flip_imaging.auth.principal import ADMIN_ROLE
from flip_imaging.context import AppContext

PASSWORD = "Correct-Horse-9"


def admin_auth(ctx: AppContext) -> tuple[str, str]:
    return ("admin", ctx.settings.admin_password)


def add_user(ctx: AppContext, username: str, password: str | None = PASSWORD, *, admin: bool = False,
             enabled: bool = True, email: str | None = None) -> None:
    with ctx.session() as db:
        user = service.create_user(db, username, password, first_name=username.title(), last_name="Tester",
                                   email=email or f"{username}@example.org", enabled=enabled)
        if admin:
            db.add(UserRole(user_pk=user.pk, role=ADMIN_ROLE))


def add_project(ctx: AppContext, project_id: str, members: dict[str, str] | None = None,
                accessibility: str = "private") -> None:
    """A catalog project row with ``{username: role}`` members (no files: membership is all we need)."""
    with ctx.session() as db:
        project = Project(id=project_id, name=f"{project_id} name", accessibility=accessibility)
        db.add(project)
        db.flush()
        for username, role in (members or {}).items():
            user = service.require_user_named(db, username)
            db.add(ProjectMember(project_pk=project.pk, user_pk=user.pk, role=role))
