"""The application context: settings, database and archive root, shared by the web app and workers.

Background services (DICOM receivers, the event dispatcher, container workers) register here so that one
``flip-imaging serve`` starts and stops them all with the web app.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from flip_imaging.config import Settings
from flip_imaging.db import make_engine, make_sessionmaker, migrate

log = logging.getLogger(__name__)


class BackgroundService(Protocol):
    """Something that runs beside the web app; ``start`` must return promptly."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


#: factories called by :meth:`AppContext.start_services`, in registration order; each returns a service
SERVICE_FACTORIES: list[Callable[[AppContext], BackgroundService | None]] = []


def register_service(factory: Callable[[AppContext], BackgroundService | None]) -> None:
    if factory not in SERVICE_FACTORIES:
        SERVICE_FACTORIES.append(factory)


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker
    #: sessions for transactions that write (on SQLite they take the write lock up front)
    writer_sessions: sessionmaker
    services: list[BackgroundService] = field(default_factory=list)

    @property
    def archive_root(self) -> Path:
        return self.settings.archive_root

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A writing session that commits on success and rolls back on error."""
        with self.writer_sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def start_services(self) -> None:
        for factory in SERVICE_FACTORIES:
            service = factory(self)
            if service is None:
                continue
            service.start()
            self.services.append(service)
            log.info("started %s", service.name)

    def stop_services(self) -> None:
        while self.services:
            service = self.services.pop()
            try:
                service.stop()
            except Exception:  # keep stopping the others
                log.exception("stopping %s failed", service.name)

    def close(self) -> None:
        self.stop_services()
        self.engine.dispose()


def create_context(settings: Settings, *, run_migrations: bool = True, recover: bool = True) -> AppContext:
    """Prepare folders (private ones owner-only), migrate the database, and build the context.

    ``recover`` finishes or undoes archive transactions interrupted by a crash: only the process that
    owns the archive (``serve``) may do that, never a second process (a standalone worker) started
    beside it, which would undo the server's transactions in flight.
    """
    for path in (settings.data_dir, settings.archive_root):
        path.mkdir(parents=True, exist_ok=True)
    for private in (settings.spool_dir, settings.scratch_dir):
        private.mkdir(parents=True, exist_ok=True)
        os.chmod(private, 0o700)
    url = settings.effective_database_url
    if run_migrations:
        migrate(url)
    engine = make_engine(url)
    ctx = AppContext(settings=settings, engine=engine, sessions=make_sessionmaker(engine),
                     writer_sessions=make_sessionmaker(engine, writer=True))
    if recover:
        from flip_imaging.archive.store import recover as recover_archive  # the store needs AppContext

        recover_archive(ctx)
    return ctx
