"""The dispatcher: turns committed outbox events into subscription deliveries, exactly once.

One database transaction per event:

1. claim it (``UPDATE events SET dispatched = true WHERE pk = (oldest undispatched) RETURNING pk``; on
   PostgreSQL the inner select is ``FOR UPDATE SKIP LOCKED`` so several processes share the queue, on
   SQLite the UPDATE takes the database's write lock first so two processes never claim the same row);
2. for every active subscription whose filter meets the event, insert a delivery row (unique per event
   and subscription) with its status trail, and call the action provider's ``perform()`` in a savepoint
   so a provider that raises fails only its own delivery;
3. call the registered event hooks (``actions.register_event_hook``: built-in reactions such as the
   Container Service's re-conversion of a scan whose DICOM changed), each in a savepoint;
4. commit.

A crash before the commit rolls everything back, the event stays undispatched and the next dispatcher
(after a restart) delivers it; after the commit it is never delivered again. Providers only queue durable
work in the same transaction, so the work is queued exactly when the delivery is recorded.

When the Event Service is disabled (``PUT /xapi/events/prefs {"enabled": false}``) events are still
consumed but trigger nothing (no subscriptions, no hooks), as in XNAT; they are not replayed when it is
enabled again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from flip_imaging.context import register_service
from flip_imaging.events import bus
from flip_imaging.events.actions import event_hooks, provider_for
from flip_imaging.events.delivery.models import Delivery, Subscription
from flip_imaging.events.jsonpath import FilterSyntaxError, compile_predicate
from flip_imaging.events.models import Event
from flip_imaging.events.service import add_status, is_enabled, open_delivery

if TYPE_CHECKING:
    from flip_imaging.context import AppContext

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
MAX_BACKOFF = 30.0


def _claim(db: Session, skip: list[int]) -> int | None:
    """Mark the oldest undispatched event as dispatched (in ``db``'s transaction); its pk or None."""
    pg = db.get_bind().dialect.name == "postgresql"
    exclude = f" AND pk NOT IN ({','.join(str(int(p)) for p in skip)})" if skip else ""
    lock = " FOR UPDATE SKIP LOCKED" if pg else ""
    sql = text(
        "UPDATE events SET dispatched = :t WHERE pk = (SELECT pk FROM events WHERE dispatched = :f"
        f"{exclude} ORDER BY pk LIMIT 1{lock}) RETURNING pk"
    )
    return db.execute(sql, {"t": True, "f": False}).scalar()


def _applies(sub: Subscription, event: Event) -> bool:
    return not sub.project_ids or (event.project_id is not None and event.project_id in sub.project_ids)


def deliver(db: Session, event: Event) -> list[Delivery]:
    """Record and perform every delivery of ``event`` (already claimed) within ``db``'s transaction."""
    if not is_enabled(db):
        log.debug("event service disabled: event %s consumed without deliveries", event.pk)
        return []
    subs = db.scalars(
        select(Subscription).where(Subscription.event_type == event.event_type,
                                   Subscription.status == event.status,
                                   Subscription.active.is_(True)).order_by(Subscription.id)
    )
    deliveries = []
    for sub in subs:
        if not _applies(sub, event):
            continue
        user = event.user if sub.act_as_event_user and event.user else sub.owner
        delivery = open_delivery(db, event, sub, user)
        deliveries.append(delivery)
        if sub.payload_filter:
            try:
                matched = bool(compile_predicate(sub.payload_filter)(event.payload or {}))
            except FilterSyntaxError as exc:  # validated on save; only a hand-edited row can get here
                add_status(db, delivery, "FAILED", f"Invalid payload filter: {exc}")
                continue
            if not matched:
                add_status(db, delivery, "OBJECT_FILTER_MISMATCH_HALT",
                           f"Payload did not match filter: {sub.payload_filter}")
                continue
            add_status(db, delivery, "OBJECT_FILTERED", f"Payload matched filter: {sub.payload_filter}")
        add_status(db, delivery, "RESOLVING_ATTRIBUTES", "Resolving action attributes.")
        provider, suffix = provider_for(sub.action_key)
        if provider is None:
            add_status(db, delivery, "ACTION_FAILED", f"No action provider for '{sub.action_key}'.")
            continue
        add_status(db, delivery, "ACTION_CALLED", f"Calling action '{sub.action_key}'.")
        db.flush()
        savepoint = db.begin_nested()
        try:
            outcome = provider.perform(db, suffix, event, dict(sub.attributes or {}), user, delivery.id)
            savepoint.commit()
        except Exception as exc:
            savepoint.rollback()
            log.exception("action %s failed for delivery %s", sub.action_key, delivery.id)
            add_status(db, delivery, "ACTION_FAILED", f"Action raised {type(exc).__name__}: {exc}")
            continue
        if outcome.status == "complete":
            add_status(db, delivery, "ACTION_COMPLETE", outcome.message or "Action completed.")
        elif outcome.status == "failed":
            add_status(db, delivery, "ACTION_FAILED", outcome.message or "Action failed.")
        elif outcome.message:
            add_status(db, delivery, "ACTION_STEP", outcome.message)
    for name, hook in event_hooks():
        savepoint = db.begin_nested()
        try:
            hook(db, event)
            savepoint.commit()
        except Exception:
            savepoint.rollback()
            log.exception("event hook %s failed for event %s", name, event.pk)
    db.flush()
    return deliveries


def _waiting(ctx: AppContext, skip: list[int]) -> bool:
    """Whether an undispatched event (not in ``skip``) exists, read without taking any lock."""
    with ctx.sessions() as db:
        q = select(Event.pk).where(Event.dispatched.is_(False))
        if skip:
            q = q.where(Event.pk.not_in(skip))
        return db.scalar(q.limit(1)) is not None


def dispatch_one(ctx: AppContext, skip: list[int] | None = None) -> int | None:
    """Claim and deliver one event in one transaction; its pk, or None when none is waiting."""
    with ctx.session() as db:
        pk = _claim(db, skip or [])
        if pk is None:
            return None
        event = db.get(Event, pk)
        assert event is not None
        deliver(db, event)
        return pk


def dispatch_pending(ctx: AppContext) -> int:
    """Deliver every waiting event (used by tests and at start-up); how many were dispatched."""
    count = 0
    while dispatch_one(ctx) is not None:
        count += 1
    return count


class EventDispatcher:
    """Background thread: wakes on :data:`flip_imaging.events.bus.new_events` or every 0.5 s."""

    name = "event-dispatcher"

    def __init__(self, ctx: AppContext, poll_seconds: float = POLL_SECONDS) -> None:
        self.ctx = ctx
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: events whose delivery raised (a bug or a database outage): retried after a back-off, meanwhile
        #: later events go ahead
        self._retry_at: dict[int, tuple[float, float]] = {}

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        bus.new_events.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _skip(self) -> list[int]:
        now = time.monotonic()
        return [pk for pk, (when, _) in self._retry_at.items() if when > now]

    def run_once(self, *, look_first: bool = True) -> int:
        """Drain the queue; how many events were dispatched.

        ``look_first=False`` when woken by a commit that published events: one is surely waiting.
        """
        count = 0
        while not self._stop.is_set():
            skip = self._skip()
            try:
                # look before claiming: on SQLite claiming takes the write lock, and waiting for it behind
                # a long writer (a big archive transaction) means sleeping in SQLite's busy handler, which
                # wakes up to 100 ms late; a look never waits. It also leaves the lock free for the work
                # just queued (a container worker claiming its job).
                if (count or look_first) and not _waiting(self.ctx, skip):
                    return count
                pk = dispatch_one(self.ctx, skip)
            except Exception:
                log.exception("event dispatch failed; will retry")
                # find which event failed without claiming it, so it can be set aside for a while
                self._set_aside(skip)
                return count
            if pk is None:
                return count
            self._retry_at.pop(pk, None)
            count += 1
        return count

    def _set_aside(self, skip: list[int]) -> None:
        try:
            with self.ctx.session() as db:
                q = select(Event.pk).where(Event.dispatched.is_(False))
                if skip:
                    q = q.where(Event.pk.not_in(skip))
                pk = db.scalar(q.order_by(Event.pk).limit(1))
        except Exception:
            log.exception("event outbox unreadable")
            self._stop.wait(1.0)
            return
        if pk is not None:
            _, backoff = self._retry_at.get(pk, (0.0, 0.25))
            backoff = min(backoff * 2, MAX_BACKOFF)
            self._retry_at[pk] = (time.monotonic() + backoff, backoff)

    def _run(self) -> None:
        woken = False
        while not self._stop.is_set():
            bus.new_events.clear()
            self.run_once(look_first=not woken)
            woken = bus.new_events.wait(self.poll_seconds)


def _factory(ctx: AppContext) -> EventDispatcher:
    return EventDispatcher(ctx)


register_service(_factory)
