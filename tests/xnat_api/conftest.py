"""Fixtures for the archive REST API tests: admin credentials and users with project roles."""

from __future__ import annotations

import pytest

from flip_imaging.archive.models import ProjectMember
from flip_imaging.auth.models import User
from flip_imaging.auth.passwords import hash_password

USER_PASSWORD = "user-test-Password-1"


@pytest.fixture
def admin_auth(ctx) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    return ("admin", ctx.settings.admin_password)


@pytest.fixture
def admin_client(client, admin_auth):  # type: ignore[no-untyped-def]
    client.auth = admin_auth
    return client


@pytest.fixture
def make_user(ctx):  # type: ignore[no-untyped-def]
    """``make_user(name)`` creates an enabled user; returns its (username, password)."""

    def make(name: str) -> tuple[str, str]:
        with ctx.session() as db:
            db.add(
                User(
                    username=name,
                    password_hash=hash_password(USER_PASSWORD),
                    email=f"{name}@example.org",
                    enabled=True,
                    verified=True,
                )
            )
        return (name, USER_PASSWORD)

    return make


@pytest.fixture
def add_member(ctx):  # type: ignore[no-untyped-def]
    """``add_member(project_id, username, role)`` puts a user in a project group directly."""

    def add(project_id: str, username: str, role: str) -> None:
        from sqlalchemy import select

        from flip_imaging.archive.models import Project

        with ctx.session() as db:
            project = db.scalar(select(Project).where(Project.id == project_id))
            user = db.scalar(select(User).where(User.username == username))
            db.add(ProjectMember(project_pk=project.pk, user_pk=user.pk, role=role))

    return add
