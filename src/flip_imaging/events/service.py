"""The Event Service without HTTP: subscriptions, delivery history and the on/off switch.

Routes and other sub-packages (the Container Service, the FLIP trust agent) call these functions with a
SQLAlchemy session; the caller commits. Invalid input raises :class:`SubscriptionError` (a ``ValueError``)
whose message is fit to show a user; unknown ids raise :class:`SubscriptionNotFound` (a ``LookupError``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session, selectinload

from flip_imaging.archive.models import Project, ProjectAlias, utcnow
from flip_imaging.events.actions import validate_action_key
from flip_imaging.events.bus import EVENT_PACKAGE, EVENT_TYPES, full_event_type
from flip_imaging.events.delivery.models import Delivery, DeliveryStatus, Subscription
from flip_imaging.events.jsonpath import FilterSyntaxError, compile_predicate
from flip_imaging.events.models import Event
from flip_imaging.prefs import get_pref, set_pref

log = logging.getLogger(__name__)

ENABLED_PREF = "eventservice.enabled"

#: XNAT's delivery statuses (TimedEventStatus), in the order a delivery normally goes through them
DELIVERY_STATUSES = (
    "EVENT_TRIGGERED", "EVENT_DETECTED", "SUBSCRIPTION_TRIGGERED", "SUBSCRIPTION_DISABLED_HALT",
    "OBJECT_SERIALIZED", "OBJECT_SERIALIZATION_FAULT", "OBJECT_FILTERED", "OBJECT_FILTER_MISMATCH_HALT",
    "RESOLVING_ATTRIBUTES", "ACTION_CALLED", "ACTION_STEP", "ACTION_ERROR", "ACTION_FAILED",
    "ACTION_COMPLETE", "FAILED",
)
#: a trail ending in one of these is finished
FINAL_STATUSES = frozenset({"ACTION_COMPLETE", "ACTION_FAILED", "FAILED", "OBJECT_FILTER_MISMATCH_HALT",
                            "SUBSCRIPTION_DISABLED_HALT", "OBJECT_SERIALIZATION_FAULT"})

#: display names and descriptions for ``GET /events/events``
EVENT_DISPLAY: dict[str, tuple[str, str]] = {
    "ProjectEvent": ("Project Event", "Project created or deleted."),
    "SubjectEvent": ("Subject Event", "Subject created or deleted."),
    "SessionEvent": ("Image Session Event", "Image session created, merged or deleted."),
    "ScanEvent": ("Scan Event", "Scan created in an image session."),
    "ResourceEvent": ("Resource Event", "Resource created or updated."),
    "ImageAssessorEvent": ("Image Assessor Event", "Image assessor created or updated."),
    "SubjectAssessorEvent": ("Subject Assessor Event", "Subject assessor created or deleted."),
    "ScheduledEvent": ("Scheduled Event", "Fires on a cron schedule."),
}
EVENT_NODE_TYPE: dict[str, str] = {
    "ProjectEvent": "xnat:projectData", "SubjectEvent": "xnat:subjectData",
    "SessionEvent": "xnat:imageSessionData", "ScanEvent": "xnat:imageScanData",
    "ResourceEvent": "xnat:abstractResource", "ImageAssessorEvent": "xnat:imageAssessorData",
    "SubjectAssessorEvent": "xnat:subjectAssessorData", "ScheduledEvent": "",
}


class SubscriptionError(ValueError):
    """The subscription model is invalid; the message tells the user what to fix."""


class SubscriptionNotFound(LookupError):
    pass


# ---------------------------------------------------------------------------------------------- events

def list_event_types() -> list[dict[str, Any]]:
    """XNAT's ``SimpleEvent`` list: one entry per event type with its statuses."""
    out = []
    for short, statuses in EVENT_TYPES.items():
        display, description = EVENT_DISPLAY.get(short, (short, ""))
        out.append({
            "id": EVENT_PACKAGE + short,
            "type": EVENT_PACKAGE + short,
            "display-name": display,
            "description": description,
            "statuses": list(statuses),
            "is-xsi-type": bool(EVENT_NODE_TYPE.get(short)),
            "xnat-type": EVENT_NODE_TYPE.get(short, ""),
            "event-scope": ["SITE", "PROJECT"] if short != "ScheduledEvent" else ["SITE"],
            "payload": None,
            "event-properties": {},
        })
    return out


def is_enabled(db: Session) -> bool:
    """Whether the Event Service fires subscriptions (XNAT's ``enabled`` preference, default on)."""
    return bool(get_pref(db, ENABLED_PREF, True))


def set_enabled(db: Session, enabled: bool) -> None:
    set_pref(db, ENABLED_PREF, bool(enabled))


# --------------------------------------------------------------------------------------- subscriptions

def _canonical_project(db: Session, project_id: str) -> str | None:
    pid = db.scalar(select(Project.id).where(Project.id == project_id))
    if pid is None:
        pid = db.scalar(select(Project.id).join(ProjectAlias, ProjectAlias.project_pk == Project.pk)
                        .where(ProjectAlias.alias == project_id))
    return pid


def _bool(model: dict[str, Any], key: str, default: bool) -> bool:
    value = model.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise SubscriptionError(f"'{key}' must be true or false")


def _validated(db: Session, model: Any, *, project_id: str | None) -> dict[str, Any]:
    """Check a subscription JSON model; returns the column values. ``project_id`` = project form."""
    if not isinstance(model, dict):
        raise SubscriptionError("The subscription must be a JSON object")
    name = model.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SubscriptionError("'name' is required")
    if len(name) > 255:
        raise SubscriptionError("'name' is longer than 255 characters")
    action_key = model.get("action-key")
    if not isinstance(action_key, str) or not action_key.strip():
        raise SubscriptionError("'action-key' is required")
    attributes = model.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise SubscriptionError("'attributes' must be a JSON object")
    flt = model.get("event-filter")
    if not isinstance(flt, dict):
        raise SubscriptionError("'event-filter' is required and must be a JSON object")
    event_type = flt.get("event-type") or flt.get("event-id")
    if not isinstance(event_type, str) or not event_type.strip():
        raise SubscriptionError("'event-filter.event-type' is required")
    full = full_event_type(event_type.strip())
    short = full.rsplit(".", 1)[-1]
    if not full.startswith(EVENT_PACKAGE) or short not in EVENT_TYPES:
        raise SubscriptionError(f"Unknown event type '{event_type}'; known: "
                                + ", ".join(EVENT_PACKAGE + t for t in EVENT_TYPES))
    status = flt.get("status")
    allowed = EVENT_TYPES[short]
    if status in (None, "") and len(allowed) == 1:
        status = allowed[0]
    if not isinstance(status, str) or status not in allowed:
        raise SubscriptionError(f"Unknown status '{status}' for {short}; expected one of: "
                                + ", ".join(allowed))
    if project_id is not None:
        project_ids = [project_id]
    else:
        raw = flt.get("project-ids") or []
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
            raise SubscriptionError("'event-filter.project-ids' must be a list of project IDs")
        project_ids = []
        for pid in raw:
            canonical = _canonical_project(db, pid)
            if canonical is None:
                raise SubscriptionError(f"Unknown project '{pid}' in 'event-filter.project-ids'")
            if canonical not in project_ids:
                project_ids.append(canonical)
    payload_filter = flt.get("payload-filter", flt.get("json-path-filter"))
    if payload_filter is not None and not isinstance(payload_filter, str):
        raise SubscriptionError("'event-filter.payload-filter' must be a string")
    if payload_filter is not None and payload_filter.strip():
        try:
            compile_predicate(payload_filter)
        except FilterSyntaxError as exc:
            raise SubscriptionError(f"Invalid JsonPath payload-filter '{payload_filter}': {exc}") from exc
    else:
        payload_filter = None
    filter_nodes = flt.get("filter-nodes") or {}
    if not isinstance(filter_nodes, dict):
        raise SubscriptionError("'event-filter.filter-nodes' must be a JSON object")
    reason = validate_action_key(db, action_key.strip(),
                                 project_ids[0] if len(project_ids) == 1 else project_id)
    if reason is not None:
        raise SubscriptionError(reason)
    act_as = False if project_id is not None else _bool(model, "act-as-event-user", False)
    return {
        "name": name.strip(), "active": _bool(model, "active", True), "action_key": action_key.strip(),
        "attributes": attributes, "event_type": full, "status": status, "project_ids": project_ids,
        "payload_filter": payload_filter, "filter_nodes": filter_nodes, "act_as_event_user": act_as,
        "valid": True, "validation_message": None,
    }


def create_subscription(db: Session, model: dict[str, Any], *, project_id: str | None,
                        owner: str) -> Subscription:
    """Validate and add a subscription (flushed, so ``id`` is set); ``project_id`` = project form.

    Project-level subscriptions always filter on exactly their project and never act as the event user.
    """
    if project_id is not None:
        canonical = _canonical_project(db, project_id)
        if canonical is None:
            raise SubscriptionNotFound(f"Project {project_id} not found")
        project_id = canonical
    values = _validated(db, model, project_id=project_id)
    sub = Subscription(scope_project=project_id, owner=owner, created_at=utcnow(), **values)
    db.add(sub)
    db.flush()
    return sub


def update_subscription(db: Session, sub_id: int, model: dict[str, Any], *,
                        project_id: str | None = None) -> Subscription:
    """Apply a (possibly partial) XNAT ``SubscriptionUpdate`` and re-validate the whole subscription."""
    sub = get_subscription(db, sub_id)
    if not isinstance(model, dict):
        raise SubscriptionError("The subscription must be a JSON object")
    merged = to_json(sub)
    for key, value in model.items():
        if key == "event-filter" and isinstance(value, dict):
            merged["event-filter"] = {**merged["event-filter"], **value}
        elif key not in ("id", "subscription-owner", "created", "valid", "validation-message"):
            merged[key] = value
    scope = project_id if project_id is not None else sub.scope_project
    values = _validated(db, merged, project_id=scope)
    for key, value in values.items():
        setattr(sub, key, value)
    db.flush()
    return sub


def get_subscription(db: Session, sub_id: int) -> Subscription:
    sub = db.get(Subscription, sub_id)
    if sub is None:
        raise SubscriptionNotFound(f"Subscription {sub_id} not found")
    return sub


def list_subscriptions(db: Session, project_id: str | None = None) -> list[Subscription]:
    """Every subscription, or those that apply to ``project_id`` (its own and site-wide ones)."""
    subs = list(db.scalars(select(Subscription).order_by(Subscription.id)))
    if project_id is None:
        return subs
    return [s for s in subs if not s.project_ids or project_id in s.project_ids]


def set_active(db: Session, sub_id: int, active: bool) -> Subscription:
    sub = get_subscription(db, sub_id)
    sub.active = bool(active)
    db.flush()
    return sub


def delete_subscription(db: Session, sub_id: int) -> None:
    """Delete a subscription; its delivery history stays (with its snapshot of the subscription)."""
    sub = get_subscription(db, sub_id)
    db.delete(sub)
    db.flush()


def _millis(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def to_json(sub: Subscription) -> dict[str, Any]:
    """XNAT's subscription JSON."""
    return {
        "id": sub.id,
        "name": sub.name,
        "active": bool(sub.active),
        "action-key": sub.action_key,
        "attributes": dict(sub.attributes or {}),
        "event-filter": {
            "event-type": sub.event_type,
            "project-ids": list(sub.project_ids or []),
            "status": sub.status,
            "payload-filter": sub.payload_filter,
            "filter-nodes": dict(sub.filter_nodes or {}),
        },
        "act-as-event-user": bool(sub.act_as_event_user),
        "subscription-owner": sub.owner,
        "valid": bool(sub.valid),
        "validation-message": sub.validation_message,
        "created": _millis(sub.created_at),
    }


def to_display_json(sub: Subscription, project_id: str) -> dict[str, Any]:
    """The project listing's form: editable only from the page of its one project (as XNAT)."""
    out = to_json(sub)
    out["editable"] = list(sub.project_ids or []) == [project_id]
    return out


def revalidate(db: Session, sub: Subscription) -> None:
    """Refresh ``valid``/``validation-message`` (an action's provider may have gone or come back)."""
    scope = sub.project_ids[0] if len(sub.project_ids or []) == 1 else sub.scope_project
    reason = validate_action_key(db, sub.action_key, scope)
    sub.valid = reason is None
    sub.validation_message = reason


# ------------------------------------------------------------------------------------------ deliveries

def add_status(db: Session, delivery: Delivery, status: str, message: str | None = None) -> None:
    """Append a step to a delivery's trail (in the caller's transaction)."""
    if status not in DELIVERY_STATUSES:
        raise ValueError(f"unknown delivery status {status}")
    step = DeliveryStatus(status=status, message=message, at=utcnow())
    if delivery.id is not None and "statuses" in inspect(delivery).unloaded:
        # ending a delivery loaded on its own (a worker finishing it): no need to read its whole trail
        step.delivery_id = delivery.id
        db.add(step)
    else:
        delivery.statuses.append(step)
    delivery.last_status = status
    if status in FINAL_STATUSES:
        delivery.finished = True


def open_delivery(db: Session, event: Event, sub: Subscription, user: str | None) -> Delivery:
    """Record that ``event`` met ``sub``: a delivery with its trail up to OBJECT_SERIALIZED (not flushed)."""
    short = event.event_type.rsplit(".", 1)[-1]
    delivery = Delivery(event_pk=event.pk, subscription_id=sub.id, subscription_json=to_json(sub),
                        project_id=event.project_id, event_type=event.event_type, action_user=user,
                        action_inputs=dict(sub.attributes or {}), last_status="EVENT_TRIGGERED")
    db.add(delivery)
    add_status(db, delivery, "EVENT_TRIGGERED", f"{short} {event.status} triggered.")
    add_status(db, delivery, "EVENT_DETECTED", "Event detected.")
    add_status(db, delivery, "SUBSCRIPTION_TRIGGERED", f"Subscription '{sub.name}' triggered.")
    add_status(db, delivery, "OBJECT_SERIALIZED", "Event payload serialized.")
    return delivery


def finish_delivery(db: Session, delivery_id: int, success: bool, message: str) -> None:
    """End a pending delivery (ACTION_COMPLETE/ACTION_FAILED); a finished one keeps its first ending.

    The row is locked (``FOR UPDATE`` on PostgreSQL) so two finishers cannot both append an ending.
    """
    delivery = db.scalar(select(Delivery).where(Delivery.id == delivery_id).with_for_update())
    if delivery is None:
        raise LookupError(f"Delivery {delivery_id} not found")
    if delivery.finished:
        return
    add_status(db, delivery, "ACTION_COMPLETE" if success else "ACTION_FAILED", message)
    db.flush()


def _delivery_query(project_id: str | None, subscription_id: int | None, include_filter_mismatch: bool):
    q = select(Delivery)
    if project_id is not None:
        q = q.where(Delivery.project_id == project_id)
    if subscription_id is not None:
        q = q.where(Delivery.subscription_id == subscription_id)
    if not include_filter_mismatch:
        q = q.where(Delivery.last_status != "OBJECT_FILTER_MISMATCH_HALT")
    return q


def count_deliveries(db: Session, *, project_id: str | None = None, subscription_id: int | None = None,
                     include_filter_mismatch: bool = False) -> int:
    q = _delivery_query(project_id, subscription_id, include_filter_mismatch)
    return int(db.scalar(select(func.count()).select_from(q.subquery())) or 0)


SORTABLE = {"id": Delivery.id, "timestamp": Delivery.created_at, "project": Delivery.project_id,
            "event-type": Delivery.event_type, "status": Delivery.last_status}


def list_deliveries(db: Session, *, project_id: str | None = None, subscription_id: int | None = None,
                    include_filter_mismatch: bool = False, page: int = 1, size: int = 50,
                    sort_col: str = "id", sort_dir: str = "desc") -> list[Delivery]:
    """One page (1-based) of the delivery history, newest first by default."""
    if page < 1 or size < 1:
        raise ValueError("page and size must be positive")
    column = SORTABLE.get(sort_col)
    if column is None:
        raise ValueError(f"cannot sort by '{sort_col}'; use one of: {', '.join(SORTABLE)}")
    order = column.asc() if sort_dir.lower() == "asc" else column.desc()
    q = (_delivery_query(project_id, subscription_id, include_filter_mismatch)
         .options(selectinload(Delivery.statuses)).order_by(order, Delivery.id.desc())
         .offset((page - 1) * size).limit(size))
    return list(db.scalars(q))


def get_delivery(db: Session, delivery_id: int) -> Delivery:
    delivery = db.get(Delivery, delivery_id)
    if delivery is None:
        raise LookupError(f"Delivery {delivery_id} not found")
    return delivery


def delivery_to_json(db: Session, delivery: Delivery, *, load_children: bool = True) -> dict[str, Any]:
    """XNAT's ``SubscriptionDelivery`` JSON."""
    event = db.get(Event, delivery.event_pk)
    payload = dict(event.payload or {}) if event is not None else {}
    trail = [{"status": s.status, "timestamp": _millis(s.at), "message": s.message}
             for s in delivery.statuses]
    last = delivery.statuses[-1] if delivery.statuses else None
    out: dict[str, Any] = {
        "id": delivery.id,
        "event-type": delivery.event_type,
        "subscription": dict(delivery.subscription_json or {}),
        "action-user-login": delivery.action_user,
        "project": delivery.project_id,
        "action-inputs": dict(delivery.action_inputs or {}),
        "trigger": {
            "uri": event.object_uri if event is not None else None,
            "label": payload.get("label"),
            "xnat-type": payload.get("xsiType"),
            "is-xsi-type": bool(payload.get("xsiType")),
            "status": event.status if event is not None else None,
        },
        "timestamp": _millis(delivery.created_at),
        "status-message": last.message if last is not None else None,
        "error-state": delivery.last_status in ("ACTION_FAILED", "ACTION_ERROR", "FAILED",
                                                "OBJECT_SERIALIZATION_FAULT"),
    }
    if load_children:
        out["status"] = trail
        out["payload"] = payload
    return out


__all__ = [
    "DELIVERY_STATUSES", "SubscriptionError", "SubscriptionNotFound", "add_status", "count_deliveries",
    "create_subscription", "delete_subscription", "delivery_to_json", "finish_delivery", "get_delivery",
    "get_subscription", "is_enabled", "list_deliveries", "list_event_types", "list_subscriptions",
    "open_delivery",
    "revalidate", "set_active", "set_enabled", "to_display_json", "to_json", "update_subscription",
]
