"""Shared fixtures: every database-backed test runs on SQLite and on the PostgreSQL server.

PostgreSQL (127.0.0.1:5432, trust auth, user postgres) gets one throw-away template database per test
run, migrated once; each test gets a fresh copy (``CREATE DATABASE ... TEMPLATE``), dropped afterwards.
``FLIP_IMAGING_TEST_DATABASES=sqlite`` narrows the run to one backend.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from flip_imaging.config import Settings
from flip_imaging.db import migrate
from flip_imaging.netutil import free_port

PG_ADMIN_DSN = os.environ.get("FLIP_IMAGING_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = [b for b in os.environ.get("FLIP_IMAGING_TEST_DATABASES", "sqlite,postgresql").split(",") if b]
ADMIN_PASSWORD = "admin-test-Password-1"
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("FLIP_IMAGING_SHARED", REPO_ROOT.parent / "shared"))


def _pg_url(dbname: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


def _pg_exec(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = f"flip_test_{os.getpid()}_{uuid.uuid4().hex[:8]}_tmpl"
    _pg_exec(f'CREATE DATABASE "{name}"')
    try:
        migrate(_pg_url(name))
        yield name
    finally:
        _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty database of each backend."""
    if request.param == "sqlite":
        path = tmp_path / "flip-imaging.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("pg_template")
    name = f"flip_test_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _pg_url(name)
    finally:
        _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')




@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, admin_password=ADMIN_PASSWORD,
                    dicom_port=0, session_quiet_seconds=1.0, port=free_port())


@pytest.fixture
def ctx(settings: Settings):  # type: ignore[no-untyped-def]
    from flip_imaging.auth.bootstrap import ensure_admin
    from flip_imaging.context import create_context

    context = create_context(settings, run_migrations=False)
    ensure_admin(context)
    yield context
    context.close()


@pytest.fixture
def client(ctx):  # type: ignore[no-untyped-def]
    """An in-process HTTP client (no background services); ``client.auth`` is unset (anonymous)."""
    from fastapi.testclient import TestClient

    from flip_imaging.app import create_app

    with TestClient(create_app(ctx, start_services=False)) as c:
        yield c


ADMIN_AUTH = ("admin", ADMIN_PASSWORD)


@pytest.fixture
def live_server(ctx):  # type: ignore[no-untyped-def]
    """The real server (uvicorn + background services) on a free loopback port; yields its base URL."""
    import uvicorn

    from flip_imaging.app import create_app

    config = uvicorn.Config(create_app(ctx), host="127.0.0.1", port=ctx.settings.port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{ctx.settings.port}"
    server.should_exit = True
    thread.join(timeout=20)
