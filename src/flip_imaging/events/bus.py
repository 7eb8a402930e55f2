"""Publishing events into the outbox (see :mod:`flip_imaging.events.models`)."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.orm import Session

from flip_imaging.events.models import Event

EVENT_PACKAGE = "org.nrg.xnat.eventservice.events."
EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "ProjectEvent": ("CREATED", "DELETED"),
    "SubjectEvent": ("CREATED", "DELETED"),
    "SessionEvent": ("CREATED", "MERGED", "DELETED"),
    "ScanEvent": ("CREATED",),
    "ResourceEvent": ("CREATED", "UPDATED"),
    "ImageAssessorEvent": ("CREATED", "UPDATED"),
    "SubjectAssessorEvent": ("CREATED", "DELETED"),
    "ScheduledEvent": ("CRON",),
}

#: set whenever an event is committed, so a dispatcher can wake up without polling hard
new_events = threading.Event()


def full_event_type(short_or_full: str) -> str:
    """``ScanEvent`` → ``org.nrg.xnat.eventservice.events.ScanEvent`` (full names pass through)."""
    return short_or_full if "." in short_or_full else EVENT_PACKAGE + short_or_full


def publish(session: Session, event_type: str, status: str, payload: dict[str, Any], *,
            project_id: str | None = None, object_uri: str | None = None, user: str | None = None) -> Event:
    """Add an event to the caller's transaction; it becomes visible when the caller commits."""
    full = full_event_type(event_type)
    short = full.rsplit(".", 1)[-1]
    if short not in EVENT_TYPES or status not in EVENT_TYPES[short]:
        raise ValueError(f"unknown event {short}/{status}")
    ev = Event(event_type=full, status=status, payload=payload, project_id=project_id,
               object_uri=object_uri, user=user)
    session.add(ev)
    session.info["flip_events_published"] = True
    return ev


def notify() -> None:
    """Wake dispatchers (call after committing a transaction that published events)."""
    new_events.set()
