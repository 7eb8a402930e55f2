"""Action providers: what a subscription does when an event meets it (XNAT's ``EventServiceActionProvider``).

A provider owns a family of action keys ``"{provider.name}:{suffix}"`` (the Container Service's key is
``org.nrg.containers.services.CommandActionProvider:<wrapper id>``). The dispatcher calls
:meth:`ActionProvider.perform` inside the same database transaction that records the delivery and marks
the event dispatched, so a provider must only queue *durable* work in ``db`` there (e.g. insert a container
job row) and never do irreversible outside work before that transaction commits. Long actions finish later
by calling :func:`complete_delivery`, which ends the delivery's status trail.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from flip_imaging.events.models import Event

log = logging.getLogger(__name__)

#: ``complete``: the action is done (trail ends ACTION_COMPLETE); ``pending``: work was queued and the
#: provider will call :func:`complete_delivery` later; ``failed``: the action could not start (ACTION_FAILED)
OutcomeStatus = Literal["complete", "pending", "failed"]


@dataclass(frozen=True)
class ActionOutcome:
    status: OutcomeStatus
    message: str = ""


@runtime_checkable
class ActionProvider(Protocol):
    """One source of actions; ``name`` is the prefix of its action keys (a Java-like class name)."""

    name: str

    def actions(self, db: Session, project_id: str | None) -> list[dict[str, Any]]:
        """XNAT ``/events/actions`` entries: ``{"action-key": f"{name}:{suffix}", "display-name",
        "description", "provider", "attributes": {attr: {"description", "type", "default-value",
        "required"}}}`` available in the project (or site-wide when ``project_id`` is None)."""
        ...

    def validate(self, db: Session, action_key_suffix: str, project_id: str | None) -> str | None:
        """None when the action may be subscribed to (in the project), else the reason why not."""
        ...

    def perform(self, db: Session, action_key_suffix: str, event: Event, attributes: dict[str, Any],
                user: str, delivery_id: int) -> ActionOutcome:
        """Start the action within ``db``'s transaction; must not commit or roll back ``db``."""
        ...


_PROVIDERS: dict[str, ActionProvider] = {}
_LOCK = threading.Lock()


def register_action_provider(provider: ActionProvider) -> None:
    """Make ``provider``'s actions available (a later registration under the same name replaces it)."""
    if ":" in provider.name:
        raise ValueError("an action provider's name must not contain ':'")
    with _LOCK:
        _PROVIDERS[provider.name] = provider


def unregister_action_provider(name: str) -> None:
    with _LOCK:
        _PROVIDERS.pop(name, None)


def providers() -> list[ActionProvider]:
    with _LOCK:
        return list(_PROVIDERS.values())


#: ``hook(db, event)``: a built-in reaction to events that no subscription expresses (the Container
#: Service converts a scan again when its DICOM changes). The dispatcher calls every hook for every event
#: it delivers, after the subscriptions, in the same transaction, each in a savepoint; like ``perform``,
#: a hook only queues durable work in ``db`` and never commits.
EventHook = Callable[[Session, "Event"], None]
_HOOKS: dict[str, EventHook] = {}


def register_event_hook(name: str, hook: EventHook) -> None:
    """Call ``hook`` for every dispatched event (a later registration under the same name replaces it)."""
    with _LOCK:
        _HOOKS[name] = hook


def unregister_event_hook(name: str) -> None:
    with _LOCK:
        _HOOKS.pop(name, None)


def event_hooks() -> list[tuple[str, EventHook]]:
    with _LOCK:
        return list(_HOOKS.items())


def split_action_key(action_key: str) -> tuple[str, str]:
    """``"provider:suffix"`` → ``(provider, suffix)``; a key without ``:`` names the provider alone."""
    name, _, suffix = action_key.partition(":")
    return name, suffix


def provider_for(action_key: str) -> tuple[ActionProvider | None, str]:
    name, suffix = split_action_key(action_key)
    with _LOCK:
        return _PROVIDERS.get(name), suffix


def validate_action_key(db: Session, action_key: str, project_id: str | None) -> str | None:
    """None if the key names an available action, else a reason fit for a 400 reply."""
    if not action_key:
        return "action-key is required"
    provider, suffix = provider_for(action_key)
    if provider is None:
        return f"No action provider for action-key '{action_key}'"
    try:
        return provider.validate(db, suffix, project_id)
    except Exception as exc:  # a provider bug must not become a 500 on subscription creation
        log.exception("action provider %s failed to validate", provider.name)
        return f"Action '{action_key}' could not be validated: {exc}"


def complete_delivery(db: Session, delivery_id: int, success: bool, message: str) -> None:
    """End a pending delivery's trail with ACTION_COMPLETE or ACTION_FAILED (in the caller's transaction).

    Safe to call twice: a delivery that already ended keeps its first ending.
    """
    from flip_imaging.events.service import finish_delivery

    finish_delivery(db, delivery_id, success, message)


LOGGING_ACTION_NAME = "org.nrg.xnat.eventservice.actions.EventServiceLoggingAction"


class LoggingActionProvider:
    """XNAT's built-in "Logging Action": records that the event was detected (no PHI: ids only)."""

    name = LOGGING_ACTION_NAME
    action_key = f"{LOGGING_ACTION_NAME}:{LOGGING_ACTION_NAME}"

    def actions(self, db: Session, project_id: str | None) -> list[dict[str, Any]]:
        return [{
            "id": self.name,
            "action-key": self.action_key,
            "display-name": "Logging Action",
            "description": "Simple action for EventService Event that logs event detection.",
            "provider": self.name,
            "attributes": {
                "param1": {"description": "Free text recorded with the delivery.", "type": "string",
                           "default-value": "", "required": False},
            },
        }]

    def validate(self, db: Session, action_key_suffix: str, project_id: str | None) -> str | None:
        if action_key_suffix not in ("", self.name):
            return f"Unknown logging action '{action_key_suffix}'"
        return None

    def perform(self, db: Session, action_key_suffix: str, event: Event, attributes: dict[str, Any],
                user: str, delivery_id: int) -> ActionOutcome:
        short = event.event_type.rsplit(".", 1)[-1]
        log.info("event %s %s/%s delivered (delivery %s)", event.pk, short, event.status, delivery_id)
        return ActionOutcome("complete", "Logging action completed successfully.")


register_action_provider(LoggingActionProvider())
