"""The Event Service action provider that launches wrappers (XNAT's ``CommandActionProvider``).

Action keys are ``org.nrg.containers.services.CommandActionProvider:<wrapper id>``; a subscription's
``attributes`` become launch inputs. ``perform`` only inserts the queued container in the dispatcher's
transaction; the worker ends the delivery's trail when the container finishes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flip_imaging.archive.models import Experiment, Scan
from flip_imaging.containers.models import Command, Wrapper
from flip_imaging.containers.registry import NotFound, project_enabled
from flip_imaging.containers.runner import LaunchError, scan_uri
from flip_imaging.containers.service import PROVIDER_NAME, action_key, launch, wrapper_for_action
from flip_imaging.events.actions import ActionOutcome, register_action_provider

if TYPE_CHECKING:
    from flip_imaging.events.models import Event

_SCAN_IN_URI = re.compile(r"/experiments/(?P<e>[^/]+)/scans/(?P<s>[^/?]+)")


def _event_scan(db: Session, event: Event) -> Scan | None:
    """The scan a ScanEvent is about, from its payload (``uri``, ``session-id`` + ``id``) or object URI."""
    payload = event.payload or {}
    candidates = [payload.get("uri"), event.object_uri]
    for uri in candidates:
        if isinstance(uri, str) and (m := _SCAN_IN_URI.search(uri)):
            scan = db.scalar(
                select(Scan)
                .join(Experiment, Experiment.pk == Scan.experiment_pk)
                .where(Experiment.id == m["e"], Scan.scan_id == m["s"])
            )
            if scan is not None:
                return scan
    session_id, scan_id = payload.get("session-id"), payload.get("id")
    if session_id and scan_id is not None:
        scan = db.scalar(
            select(Scan)
            .join(Experiment, Experiment.pk == Scan.experiment_pk)
            .where(Experiment.id == str(session_id), Scan.scan_id == str(scan_id))
        )
        if scan is not None:
            return scan
    integer_id = payload.get("integer-id")
    if isinstance(integer_id, int):
        return db.get(Scan, integer_id)
    return None


class CommandActionProvider:
    name = PROVIDER_NAME

    def actions(self, db: Session, project_id: str | None) -> list[dict[str, Any]]:
        out = []
        rows = db.execute(
            select(Wrapper, Command).join(Command, Command.id == Wrapper.command_id).order_by(Wrapper.id)
        ).all()
        for wrapper, command in rows:
            if not wrapper.enabled or (
                project_id is not None and not project_enabled(db, wrapper, project_id)
            ):
                continue
            attributes = {
                inp["name"]: {
                    "description": inp.get("description", ""),
                    "type": inp.get("type", "string"),
                    "default-value": inp.get("default-value"),
                    "required": bool(inp.get("required")),
                }
                for inp in command.definition.get("inputs") or []
            }
            out.append(
                {
                    "id": str(wrapper.id),
                    "action-key": action_key(wrapper.id),
                    "display-name": wrapper.definition.get("label") or wrapper.name,
                    "description": wrapper.definition.get("description")
                    or command.definition.get("description", ""),
                    "provider": self.name,
                    "attributes": attributes,
                    "contexts": wrapper.definition.get("contexts") or [],
                }
            )
        return out

    def validate(self, db: Session, action_key_suffix: str, project_id: str | None) -> str | None:
        try:
            wrapper = wrapper_for_action(db, action_key_suffix)
        except NotFound as exc:
            return f"Unknown container action '{action_key_suffix}': {exc}"
        if not wrapper.enabled:
            return f"Wrapper '{wrapper.name}' (id {wrapper.id}) is disabled on this site"
        if project_id is not None and not project_enabled(db, wrapper, project_id):
            return f"Wrapper '{wrapper.name}' (id {wrapper.id}) is not enabled in project {project_id}"
        return None

    def perform(
        self,
        db: Session,
        action_key_suffix: str,
        event: Event,
        attributes: dict[str, Any],
        user: str,
        delivery_id: int,
    ) -> ActionOutcome:
        try:
            wrapper = wrapper_for_action(db, action_key_suffix)
        except NotFound as exc:
            return ActionOutcome("failed", str(exc))
        scan = _event_scan(db, event)
        if scan is None:
            return ActionOutcome("failed", "The event does not name an archived scan")
        externals = wrapper.definition.get("external-inputs") or []
        root = next((e["name"] for e in externals if e.get("type") == "Scan"), None)
        if root is None:
            return ActionOutcome("failed", f"Wrapper '{wrapper.name}' does not take a scan")
        params = {k: v for k, v in (attributes or {}).items() if k != root}
        params[root] = scan_uri(scan)
        try:
            container = launch(
                db,
                wrapper,
                root,
                params,
                user=user,
                project_id=scan.experiment.project.id,
                delivery_id=delivery_id,
            )
        except LaunchError as exc:
            return ActionOutcome("failed", f"Container not launched: {exc}")
        return ActionOutcome(
            "pending",
            f"Container {container.id} queued ({wrapper.name} on scan "
            f"{scan.scan_id} of {scan.experiment.id}).",
        )


PROVIDER = CommandActionProvider()
register_action_provider(PROVIDER)
