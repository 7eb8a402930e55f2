"""Fixtures for auth tests: a team of users in a project, a real SMTP server."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from auth_helpers import add_project, add_user, free_port

from flip_imaging.context import AppContext


@pytest.fixture
def team(ctx: AppContext) -> AppContext:
    """Users owner/member/collab/outsider (password ``PASSWORD``) and private project P1 owned by owner."""
    for name in ("owner", "member", "collab", "outsider"):
        add_user(ctx, name)
    add_project(ctx, "P1", {"owner": "owner", "member": "member", "collab": "collaborator"})
    return ctx


@dataclass
class Mailbox:
    host: str
    port: int
    messages: list = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def smtp_server() -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) on a free loopback port collecting messages."""
    from aiosmtpd.controller import Controller

    box = Mailbox("127.0.0.1", free_port())

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
            box.messages.append(envelope)
            box.arrived.set()
            return "250 OK"

    controller = Controller(Handler(), hostname=box.host, port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


WORLD_ADMIN_PASSWORD = "world-admin-Password-1"


@pytest.fixture
def world_factory(request: pytest.FixtureRequest, tmp_path, database_url: str):  # type: ignore[no-untyped-def]
    """Make fresh, independent app contexts on the current backend (the first one uses
    ``database_url``, the others copies of the migrated template), each with its own data folder."""
    import os
    import shutil
    import uuid

    import psycopg

    from flip_imaging.config import Settings
    from flip_imaging.context import create_context

    pg_admin = os.environ.get("FLIP_IMAGING_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    contexts: list[AppContext] = []
    pg_dbs: list[str] = []

    def make() -> AppContext:
        n = len(contexts)
        url = database_url
        if n:
            if database_url.startswith("sqlite"):
                path = tmp_path / f"world{n}.db"
                shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
                url = f"sqlite:///{path}"
            else:
                name = f"flip_test_{uuid.uuid4().hex[:12]}"
                template = request.getfixturevalue("pg_template")
                with psycopg.connect(pg_admin, autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
                pg_dbs.append(name)
                base = pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
                url = f"{base}/{name}"
        settings = Settings(data_dir=tmp_path / f"world{n}", database_url=url,
                            admin_password=WORLD_ADMIN_PASSWORD, dicom_port=0, port=free_port())
        ctx = create_context(settings, run_migrations=False)
        _add_admin(ctx)
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        ctx.close()
    for name in pg_dbs:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@functools.cache
def _world_admin_hash() -> str:
    from flip_imaging.auth.passwords import hash_password

    return hash_password(WORLD_ADMIN_PASSWORD)


def _add_admin(ctx: AppContext) -> None:
    """What ``ensure_admin`` does, with the argon2 hash computed once per run (worlds are many)."""
    from flip_imaging.auth.bootstrap import ADMIN_USERNAME
    from flip_imaging.auth.models import User, UserRole
    from flip_imaging.auth.principal import ADMIN_ROLE

    with ctx.session() as db:
        user = User(username=ADMIN_USERNAME, password_hash=_world_admin_hash(), first_name="Site",
                    last_name="Administrator", email="admin@localhost", enabled=True, verified=True)
        db.add(user)
        db.flush()
        db.add(UserRole(user_pk=user.pk, role=ADMIN_ROLE))
