"""Helpers for Event Service tests (importable as ``events_helpers``): users, projects, a recording action.

The recording provider is a test double of an action (nothing real to subscribe to here besides XNAT's
logging action); it records each perform() as a preference row *in the dispatcher's transaction*, so its
count shows exactly-once delivery even across crashes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flip_imaging.archive.models import Project, ProjectMember
from flip_imaging.auth import service as auth_service
from flip_imaging.context import AppContext
from flip_imaging.events.actions import ActionOutcome
from flip_imaging.events.models import Event
from flip_imaging.prefs.models import Preference

PASSWORD = "Correct-Horse-9"
#: tests/conftest.py's admin (``from tests.conftest import ADMIN_AUTH`` does not import: no tests package)
ADMIN_AUTH = ("admin", "admin-test-Password-1")
RECORDING = "org.flip.test.RecordingAction"
RECORDING_KEY = f"{RECORDING}:record"


class RecordingProvider:
    """Records every perform() as preference ``test.performed.<event pk>.<delivery id>``."""

    name = RECORDING

    def __init__(self, outcome: str = "complete", raise_on: str | None = None) -> None:
        self.outcome = outcome
        self.raise_on = raise_on

    def actions(self, db: Session, project_id: str | None) -> list[dict[str, Any]]:
        return [{"action-key": RECORDING_KEY, "display-name": "Record", "description": "test double",
                 "provider": self.name, "attributes": {}}]

    def validate(self, db: Session, action_key_suffix: str, project_id: str | None) -> str | None:
        if action_key_suffix == "forbidden":
            return "this action is not allowed here"
        if action_key_suffix in ("record", "pending", "raise"):
            return None
        return f"no action {action_key_suffix}"

    def perform(self, db: Session, action_key_suffix: str, event: Event, attributes: dict[str, Any],
                user: str, delivery_id: int) -> ActionOutcome:
        db.add(Preference(key=f"test.performed.{event.pk}.{delivery_id}",
                          value={"user": user, "attributes": attributes}))
        db.flush()
        if action_key_suffix == "raise":
            raise RuntimeError("provider exploded")
        if action_key_suffix == "pending":
            return ActionOutcome("pending", "queued")
        return ActionOutcome("complete", "recorded")


def performed(ctx: AppContext) -> list[str]:
    with ctx.session() as db:
        return list(db.scalars(select(Preference.key).where(Preference.key.like("test.performed.%"))))


def add_user(ctx: AppContext, username: str) -> None:
    with ctx.session() as db:
        auth_service.create_user(db, username, PASSWORD, first_name=username.title(), last_name="Tester",
                                 email=f"{username}@example.org")


def add_project(ctx: AppContext, project_id: str, members: dict[str, str]) -> None:
    with ctx.session() as db:
        project = Project(id=project_id, name=f"{project_id} name", accessibility="private")
        db.add(project)
        db.flush()
        for username, role in members.items():
            user = auth_service.require_user_named(db, username)
            db.add(ProjectMember(project_pk=project.pk, user_pk=user.pk, role=role))


def as_user(name: str) -> tuple[str, str]:
    return (name, PASSWORD)


def scan_sub(name: str = "sub", action_key: str = RECORDING_KEY, **extra: Any) -> dict[str, Any]:
    flt = {"event-type": "org.nrg.xnat.eventservice.events.ScanEvent", "status": "CREATED"}
    flt.update(extra.pop("event_filter", {}))
    return {"name": name, "active": True, "action-key": action_key, "attributes": {"bids": "y"},
            "event-filter": flt, **extra}
