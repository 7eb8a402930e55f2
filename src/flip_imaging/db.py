"""Database engine, sessions and migrations (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    """Declarative base shared by every sub-package's models."""


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout so threads can share it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # take over transaction control from pysqlite so that BEGIN IMMEDIATE can be issued
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # A deferred transaction that reads and then writes fails at once with "database is locked"
            # when another writer committed in between (SQLite cannot wait there). Writers therefore
            # ask for IMMEDIATE: they wait for the write lock up front (busy timeout), readers do not.
            immediate = conn.get_execution_options().get(WRITER_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


#: execution option marking a connection whose transactions will write (see ``make_engine``)
WRITER_OPTION = "flip_writer"


def make_sessionmaker(engine: Engine, *, writer: bool = False) -> sessionmaker:
    """Sessions for readers, or (``writer=True``) for transactions that will write."""
    bind = engine.execution_options(**{WRITER_OPTION: True}) if writer else engine
    return sessionmaker(bind, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the schema up to date (every sub-package's branch: ``heads``)."""
    command.upgrade(alembic_config(url), "heads")


def import_all_models() -> None:
    """Import every module that declares tables so ``Base.metadata`` is complete."""
    import importlib
    import pkgutil

    import flip_imaging

    for mod in pkgutil.walk_packages(flip_imaging.__path__, "flip_imaging."):
        if mod.name.endswith(".models"):
            importlib.import_module(mod.name)


def end_read_snapshot(session: Session) -> None:
    """Before a read-then-write request writes, end its read-only transaction.

    On SQLite a transaction that has read cannot wait for the write lock: if another connection
    committed since its first read, the upgrade fails at once with "database is locked". Committing
    the (read-only) transaction first lets the write start afresh and wait its turn. Call it only
    when nothing has been written yet in this session.
    """
    if session.bind is not None and session.bind.dialect.name == "sqlite" and session.in_transaction():
        if session.new or session.dirty or session.deleted:
            raise RuntimeError("end_read_snapshot called with unflushed changes")
        session.commit()
