"""Subscriptions (what to do when an event happens) and deliveries (what happened, with a status trail).

A delivery row is unique per (event, subscription): the dispatcher creates it in the same transaction that
claims the event, so a crash anywhere rolls both back and the event is delivered again, once, later.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from flip_imaging.archive.models import utcnow
from flip_imaging.db import Base


class Subscription(Base):
    """XNAT's subscription: an event filter plus an action key and its attributes."""

    __tablename__ = "event_subscriptions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    #: the project whose owners manage it (project-level subscriptions); None = site-level (admins only)
    scope_project: Mapped[str | None] = mapped_column(String(255), index=True)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    action_key: Mapped[str] = mapped_column(String(512), nullable=False)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    #: full class name, e.g. ``org.nrg.xnat.eventservice.events.ScanEvent``
    event_type: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    #: empty = every project
    project_ids: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    payload_filter: Mapped[str | None] = mapped_column(Text)
    filter_nodes: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    act_as_event_user: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    owner: Mapped[str] = mapped_column(String(255), nullable=False)
    valid: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    validation_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class Delivery(Base):
    """One event meeting one subscription (XNAT's ``SubscriptionDelivery``)."""

    __tablename__ = "event_deliveries"
    __table_args__ = (UniqueConstraint("event_pk", "subscription_id", name="uq_event_delivery_once"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_pk: Mapped[int] = mapped_column(ForeignKey("events.pk", ondelete="CASCADE"), nullable=False,
                                          index=True)
    #: kept (NULL) when the subscription is deleted so the history stays
    subscription_id: Mapped[int | None] = mapped_column(
        ForeignKey("event_subscriptions.id", ondelete="SET NULL"), index=True)
    #: a snapshot of the subscription's JSON when it fired
    subscription_json: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    project_id: Mapped[str | None] = mapped_column(String(255), index=True)
    event_type: Mapped[str] = mapped_column(String(128), nullable=False)
    action_user: Mapped[str | None] = mapped_column(String(255))
    action_inputs: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    #: the last status of the trail, for filtering without a join
    last_status: Mapped[str] = mapped_column(String(40), nullable=False)
    #: set when the trail reached ACTION_COMPLETE, ACTION_FAILED, FAILED or OBJECT_FILTER_MISMATCH_HALT
    finished: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    statuses: Mapped[list[DeliveryStatus]] = relationship(
        back_populates="delivery", order_by="DeliveryStatus.id", cascade="all, delete-orphan")


class DeliveryStatus(Base):
    """One step of a delivery's trail (XNAT's ``TimedEventStatus``)."""

    __tablename__ = "event_delivery_statuses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("event_deliveries.id", ondelete="CASCADE"),
                                             nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(40), nullable=False)
    message: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    delivery: Mapped[Delivery] = relationship(back_populates="statuses")
