"""The event outbox: events are written in the same transaction as the change that caused them.

That makes every event durable and exactly-once: an archived scan and its ``ScanEvent`` commit together,
and the dispatcher marks an event dispatched only after it has recorded its deliveries.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from flip_imaging.archive.models import utcnow
from flip_imaging.db import Base


class Event(Base):
    __tablename__ = "events"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: full class name, e.g. ``org.nrg.xnat.eventservice.events.ScanEvent``
    event_type: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    project_id: Mapped[str | None] = mapped_column(String(255), index=True)
    #: the object's XNAT ID or URI the event is about
    object_uri: Mapped[str | None] = mapped_column(String(1024))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    user: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    dispatched: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, index=True)
