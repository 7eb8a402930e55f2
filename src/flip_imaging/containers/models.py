"""Container Service tables: the command registry, per-project enablement, and the container job queue.

A ``containers`` row is both what XNAT shows as a container and the durable job a worker claims: workers
in any process (or on any machine sharing the database) take ``Queued`` rows with a guarded UPDATE and
hold a lease they renew while the process runs, so a dead worker's job is found and re-queued.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from flip_imaging.archive.models import utcnow
from flip_imaging.db import Base


class Command(Base):
    """An XNAT command JSON; its ``xnat`` wrappers live in :class:`Wrapper` rows."""

    __tablename__ = "container_commands"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    version: Mapped[str | None] = mapped_column(String(64))
    image: Mapped[str | None] = mapped_column(String(255))
    #: the command JSON without ``id`` and without ``xnat`` (wrappers are rows of their own)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class Wrapper(Base):
    """One ``xnat`` entry of a command: how to feed the command from XNAT objects and where outputs go."""

    __tablename__ = "container_wrappers"
    __table_args__ = (UniqueConstraint("command_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    command_id: Mapped[int] = mapped_column(
        ForeignKey("container_commands.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    #: enabled site-wide (XNAT's "enabled-for-site")
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class WrapperProject(Base):
    """A wrapper's enablement in one project (XNAT's "enabled-for-project")."""

    __tablename__ = "container_wrapper_projects"
    __table_args__ = (UniqueConstraint("wrapper_id", "project_id"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    wrapper_id: Mapped[int] = mapped_column(
        ForeignKey("container_wrappers.id", ondelete="CASCADE"), nullable=False
    )
    project_id: Mapped[str] = mapped_column(String(255), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class Container(Base):
    """A launched command: XNAT's container record and the worker queue's job at once.

    ``status``: Queued → Running → Finalizing → Complete, or Failed / Killed. ``lease_owner`` and
    ``lease_expires`` belong to the worker running it; an expired lease means the worker died.
    """

    __tablename__ = "containers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    command_id: Mapped[int | None] = mapped_column(Integer)
    wrapper_id: Mapped[int | None] = mapped_column(Integer)
    command_name: Mapped[str] = mapped_column(String(255), nullable=False)
    wrapper_name: Mapped[str] = mapped_column(String(255), nullable=False)
    project_id: Mapped[str | None] = mapped_column(String(255), index=True)
    user: Mapped[str] = mapped_column(String(255), nullable=False)
    status: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    status_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    #: the root (external) input's name and the XNAT URI it was given
    root_input: Mapped[str] = mapped_column(String(255), nullable=False)
    root_uri: Mapped[str] = mapped_column(Text, nullable=False)
    scan_pk: Mapped[int | None] = mapped_column(ForeignKey("scans.pk", ondelete="SET NULL"), index=True)
    #: whether this container produces a scan's NIfTI (its state is the scan's conversion state)
    conversion: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: the launch plan: resolved inputs, command line, mounts and output handlers (see runner.LaunchPlan)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    outputs: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    #: what the worker actually ran on, recorded when it linked the inputs: per input mount
    #: ``{"resource-pk", "label", "files", "fingerprint"}`` (see ``runner.files_fingerprint``). A
    #: conversion is current only while its DICOM resource still has this fingerprint.
    input_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    delivery_id: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    kill_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    stdout: Mapped[str] = mapped_column(Text, nullable=False, default="")
    stderr: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class ContainerHistory(Base):
    """One entry of a container's history (``[{status, time-recorded, message, exitCode}]``)."""

    __tablename__ = "container_history"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    container_id: Mapped[int] = mapped_column(
        ForeignKey("containers.id", ondelete="CASCADE"), nullable=False, index=True
    )
    status: Mapped[str] = mapped_column(String(64), nullable=False)
    time_recorded: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    message: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
