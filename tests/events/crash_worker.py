"""Run as a separate process by the crash tests: dispatch one event and die in the middle of it.

``python crash_worker.py <database url> <data dir> <mode>``; the action provider writes its record in the
dispatcher's transaction, prints ``PERFORMING`` and then, by mode, sleeps until SIGKILLed (``kill``) or
leaves at once with ``os._exit`` (``exit``), so the transaction never commits. Mode ``drain`` instead
behaves and delivers every waiting event (several such processes run side by side in a test).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from events_helpers import RECORDING, RecordingProvider
from sqlalchemy.orm import Session

from flip_imaging.config import Settings
from flip_imaging.context import create_context
from flip_imaging.events.actions import ActionOutcome, register_action_provider
from flip_imaging.events.dispatcher import dispatch_one, dispatch_pending
from flip_imaging.events.models import Event
from flip_imaging.prefs.models import Preference


class DyingProvider:
    name = RECORDING

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def actions(self, db: Session, project_id: str | None) -> list[dict[str, Any]]:
        return []

    def validate(self, db: Session, action_key_suffix: str, project_id: str | None) -> str | None:
        return None

    def perform(self, db: Session, action_key_suffix: str, event: Event, attributes: dict[str, Any],
                user: str, delivery_id: int) -> ActionOutcome:
        db.add(Preference(key=f"test.performed.{event.pk}.{delivery_id}", value={"by": "dying"}))
        db.flush()
        print("PERFORMING", flush=True)
        if self.mode == "exit":
            os._exit(3)
        time.sleep(120)
        return ActionOutcome("complete", "should never get here")


def main() -> None:
    url, data_dir, mode = sys.argv[1:4]
    ctx = create_context(Settings(data_dir=Path(data_dir), database_url=url), run_migrations=False)
    if mode == "drain":
        register_action_provider(RecordingProvider())
        print("DISPATCHED", dispatch_pending(ctx), flush=True)
        return
    register_action_provider(DyingProvider(mode))
    dispatch_one(ctx)
    print("DISPATCHED", flush=True)


if __name__ == "__main__":
    main()
