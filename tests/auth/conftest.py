"""Fixtures for auth tests: a team of users in a project, a real SMTP server."""

from __future__ import annotations

import functools
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from auth_helpers import add_project, add_user

from flip_imaging.context import AppContext
from flip_imaging.netutil import free_port


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
PG_ADMIN_DSN = os.environ.get("FLIP_IMAGING_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_url(name: str) -> str:
    return PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"


def _pg_exec(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)


@dataclass
class Snapshot:
    """A seeded world frozen once per backend: its database (file or PG template) and data folder,
    plus what the seed returned (sample values, a session id per role)."""

    backend: str
    database: str  # sqlite file path or PostgreSQL database name
    data_dir: Path
    sample: dict[str, str]
    sessions: dict[str, str]


@pytest.fixture(scope="session")
def _pg_dropper() -> Iterator[Callable[[str], None]]:
    """Drop throw-away PostgreSQL databases in a background thread (a DROP takes about a second; the
    matrix makes hundreds of worlds), all dropped before the session ends."""
    import queue

    todo: queue.Queue[str | None] = queue.Queue()

    def work() -> None:
        while (name := todo.get()) is not None:
            try:
                _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                todo.task_done()
        todo.task_done()

    worker = threading.Thread(target=work, name="pg-dropper", daemon=True)
    worker.start()
    yield todo.put
    todo.put(None)
    todo.join()


@pytest.fixture(scope="session")
def _snapshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Snapshot]]:
    made: dict[str, Snapshot] = {}
    yield made
    for snap in made.values():
        if snap.backend == "postgresql":
            _pg_exec(f'DROP DATABASE IF EXISTS "{snap.database}" WITH (FORCE)')


def _make_snapshot(request: pytest.FixtureRequest, backend: str, root: Path, seed: Callable[..., Any],
                   password: str, role_users: dict[str, str | None]) -> Snapshot:
    from datetime import timedelta

    from flip_imaging.auth import service
    from flip_imaging.config import Settings
    from flip_imaging.context import create_context

    if backend == "sqlite":
        database = str(root / "snapshot.db")
        shutil.copyfile(request.getfixturevalue("sqlite_template"), database)
        url = f"sqlite:///{database}"
    else:
        database = f"flip_test_{uuid.uuid4().hex[:12]}_snap"
        _pg_exec(f'CREATE DATABASE "{database}" TEMPLATE "{request.getfixturevalue("pg_template")}"')
        url = _pg_url(database)
    settings = Settings(data_dir=root / "data", database_url=url, admin_password=WORLD_ADMIN_PASSWORD,
                        dicom_port=0)
    ctx = create_context(settings, run_migrations=False)
    try:
        _add_admin(ctx)
        sample = seed(ctx, password)
        sessions: dict[str, str] = {}
        with ctx.session() as db:
            for role, username in role_users.items():
                if username is not None:
                    sid, row = service.create_session(db, service.require_user_named(db, username))
                    row.expires_at = service.now() + timedelta(days=1)  # outlives a slow test run
                    sessions[role] = sid
    finally:
        ctx.close()  # no connection may stay open on a PostgreSQL template
    return Snapshot(backend, database, settings.data_dir, sample, sessions)


BACKENDS = [b for b in os.environ.get("FLIP_IMAGING_TEST_DATABASES", "sqlite,postgresql").split(",") if b]


@pytest.fixture(params=BACKENDS)
def world_factory(request: pytest.FixtureRequest, tmp_path: Path,  # type: ignore[no-untyped-def]
                  _snapshots: dict[str, Snapshot], tmp_path_factory: pytest.TempPathFactory,
                  _pg_dropper: Callable[[str], None]):
    """``make(seed, password, role_users)`` → (ctx, snapshot): an independent copy of the world that
    ``seed`` builds, on the current backend. The seed runs once per backend and test session; every
    copy gets its own database and data folder, so one copy's changes never reach another."""
    from flip_imaging.config import Settings
    from flip_imaging.context import create_context

    backend = request.param  # the same choice of backends as the root ``database_url`` fixture
    contexts: list[AppContext] = []
    pg_dbs: list[str] = []

    def make(seed: Callable[..., Any], password: str,
             role_users: dict[str, str | None]) -> tuple[AppContext, Snapshot]:
        snap = _snapshots.get(backend)
        if snap is None:
            snap = _snapshots[backend] = _make_snapshot(request, backend, tmp_path_factory.mktemp("snapshot"),
                                                        seed, password, role_users)
        n = len(contexts)
        if backend == "sqlite":
            path = tmp_path / f"world{n}.db"
            shutil.copyfile(snap.database, path)
            url = f"sqlite:///{path}"
        else:
            name = f"flip_test_{uuid.uuid4().hex[:12]}"
            _pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{snap.database}"')
            pg_dbs.append(name)
            url = _pg_url(name)
        data_dir = tmp_path / f"world{n}"
        shutil.copytree(snap.data_dir, data_dir, symlinks=True)
        settings = Settings(data_dir=data_dir, database_url=url, admin_password=WORLD_ADMIN_PASSWORD,
                            dicom_port=0, port=free_port())
        ctx = create_context(settings, run_migrations=False)
        contexts.append(ctx)
        return ctx, snap

    yield make
    for ctx in contexts:
        ctx.close()
    for name in pg_dbs:
        _pg_dropper(name)


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
