"""The Event Service action provider that launches wrappers (XNAT's ``CommandActionProvider``).

Action keys are ``org.nrg.containers.services.CommandActionProvider:<wrapper id>``; a subscription's
``attributes`` become launch inputs. ``perform`` only inserts the queued container in the dispatcher's
transaction; the worker ends the delivery's trail when the container finishes.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flip_imaging.archive.models import Experiment, Project, Scan
from flip_imaging.containers.models import Command, Container, Wrapper
from flip_imaging.containers.registry import NotFound, project_enabled
from flip_imaging.containers.runner import LaunchError, scan_uri
from flip_imaging.containers.service import (
    DICOM,
    PROVIDER_NAME,
    _find_subscription,
    action_key,
    launch,
    queue_reconversion,
    wrapper_for_action,
)
from flip_imaging.events.actions import ActionOutcome, register_action_provider, register_event_hook
from flip_imaging.events.delivery.models import Delivery
from flip_imaging.events.service import add_status, open_delivery

if TYPE_CHECKING:
    from flip_imaging.events.models import Event

log = logging.getLogger(__name__)

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
                scan=scan,
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


# -- re-conversion when a scan's DICOM changes -------------------------------------------------------

_RESOURCE_IN_URI = re.compile(r"/experiments/(?P<e>[^/]+)/scans/(?P<s>[^/]+)/resources/(?P<r>[^/?]+)")


def _resource_event_scan(db: Session, event: Event) -> tuple[Scan, str] | None:
    """(scan, resource label) of a ResourceEvent about a scan's resource, from its URI."""
    payload = event.payload or {}
    for uri in (payload.get("uri"), event.object_uri):
        if not isinstance(uri, str) or (m := _RESOURCE_IN_URI.search(uri)) is None:
            continue
        query = (
            select(Scan).join(Experiment, Experiment.pk == Scan.experiment_pk).where(Scan.scan_id == m["s"])
        )
        scan = db.scalar(query.where(Experiment.id == m["e"]))
        if scan is None and event.project_id:  # a URI naming the session by label
            scan = db.scalar(
                query.join(Project, Project.pk == Experiment.project_pk).where(
                    Project.id == event.project_id, Experiment.label == m["e"]
                )
            )
        if scan is not None:
            return scan, str(payload.get("label") or m["r"])
    return None


def reconvert_on_dicom_change(db: Session, event: Event) -> None:
    """Event hook: a scan's DICOM resource changed after the scan was (or was due to be) converted.

    ``ResourceEvent`` UPDATED of a scan's ``DICOM`` resource (files merged into it by the receiver, a
    late or re-sent series, an upload) queues a re-conversion when the project converts automatically or
    the scan has been converted before; CREATED does so only for a scan converted before (its DICOM
    resource was replaced; a new scan's own ScanEvent triggers its first conversion). At most one
    conversion waits per scan (see :func:`~flip_imaging.containers.service.queue_reconversion`). When the
    project's "DICOM-NIfTI Conversion" subscription is active, the work is recorded as one of its
    deliveries, ended by the container like the subscription's own.
    """
    if not event.event_type.endswith(".ResourceEvent") or event.status not in ("CREATED", "UPDATED"):
        return
    found = _resource_event_scan(db, event)
    if found is None or found[1] != DICOM:
        return
    scan = found[0]
    converted_before = (
        db.scalar(
            select(Container.id).where(Container.scan_pk == scan.pk, Container.conversion.is_(True)).limit(1)
        )
        is not None
    )
    if event.status == "CREATED" and not converted_before:
        return
    sub = _find_subscription(db, scan.experiment.project.id)
    automatic = bool(sub is not None and sub.active)
    if not automatic and not converted_before:
        return
    reason = f"DICOM of scan {scan.scan_id} changed (event {event.pk}: ResourceEvent {event.status})"
    delivery = None
    if automatic and not db.scalar(
        select(Delivery.id).where(Delivery.event_pk == event.pk, Delivery.subscription_id == sub.id)
    ):  # (a subscription edited to fire on this event itself already has its delivery)
        delivery = open_delivery(db, event, sub, sub.owner)
        add_status(db, delivery, "RESOLVING_ATTRIBUTES", "Resolving action attributes.")
        add_status(db, delivery, "ACTION_CALLED", f"Re-converting scan {scan.scan_id}: its DICOM changed.")
        db.flush()
    try:
        with db.begin_nested():
            outcome = queue_reconversion(
                db, scan, reason=reason, delivery_id=delivery.id if delivery else None, automatic=automatic
            )
    except LaunchError as exc:
        log.warning("scan %s of %s: re-conversion not queued: %s", scan.scan_id, scan.experiment.id, exc)
        if delivery is not None:
            add_status(db, delivery, "ACTION_FAILED", f"Re-conversion not queued: {exc}")
        return
    if delivery is not None:
        if outcome.queued:
            add_status(db, delivery, "ACTION_STEP", outcome.message)
        else:
            add_status(db, delivery, "ACTION_COMPLETE", outcome.message)


register_event_hook("containers.reconvert-on-dicom-change", reconvert_on_dicom_change)
