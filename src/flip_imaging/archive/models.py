"""Catalog tables: projects → subjects → experiments → scans → resources → files (XNAT's model).

Every object keeps XNAT's identities: a site-unique ``id`` (``XNAT_S00001``, ``XNAT_E00001``) and a
per-project ``label``. Integer ``pk`` columns are internal and never leave the process.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    Time,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from flip_imaging.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class IdCounter(Base):
    """Monotonic counters behind XNAT-style IDs (``XNAT_S`` + 5 digits, resource integer IDs...)."""

    __tablename__ = "id_counters"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class Project(Base):
    __tablename__ = "projects"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    secondary_id: Mapped[str | None] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    keywords: Mapped[str | None] = mapped_column(Text)
    pi_firstname: Mapped[str | None] = mapped_column(String(255))
    pi_lastname: Mapped[str | None] = mapped_column(String(255))
    #: private | protected | public
    accessibility: Mapped[str] = mapped_column(String(16), nullable=False, default="private")
    #: 0 = everything to the prearchive, 4 = auto-archive never overwrite, 5 = auto-archive and overwrite
    prearchive_code: Mapped[int] = mapped_column(Integer, nullable=False, default=4)
    quarantine_code: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    current_arc: Mapped[str] = mapped_column(String(64), nullable=False, default="arc001")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)

    aliases: Mapped[list[ProjectAlias]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class ProjectAlias(Base):
    __tablename__ = "project_aliases"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"), nullable=False)
    alias: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)


class ProjectMember(Base):
    """A user's role in a project: ``owner``, ``member`` or ``collaborator`` (XNAT's three groups)."""

    __tablename__ = "project_members"
    __table_args__ = (
        UniqueConstraint("project_pk", "user_pk"),
        CheckConstraint("role in ('owner','member','collaborator')", name="ck_member_role"),
    )
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"), nullable=False)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.pk", ondelete="CASCADE"), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)


class Subject(Base):
    __tablename__ = "subjects"
    __table_args__ = (UniqueConstraint("project_pk", "label"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"), nullable=False)
    label: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    #: further xnat:subjectData fields (gender, yob, group, ...) as sent by clients
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)

    project: Mapped[Project] = relationship(lazy="joined")


class Experiment(Base):
    """An image session (or other subject assessor). ``label`` is usually the accession number in FLIP."""

    __tablename__ = "experiments"
    __table_args__ = (UniqueConstraint("project_pk", "label"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"), nullable=False)
    subject_pk: Mapped[int] = mapped_column(ForeignKey("subjects.pk", ondelete="CASCADE"), nullable=False)
    label: Mapped[str] = mapped_column(String(255), nullable=False)
    #: e.g. xnat:mrSessionData, xnat:ctSessionData
    xsi_type: Mapped[str] = mapped_column(String(64), nullable=False)
    date: Mapped[date | None] = mapped_column(Date)
    time: Mapped[time | None] = mapped_column(Time)
    modality: Mapped[str | None] = mapped_column(String(16))
    #: Study Instance UID
    uid: Mapped[str | None] = mapped_column(String(128), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)

    project: Mapped[Project] = relationship(lazy="joined")
    subject: Mapped[Subject] = relationship(lazy="joined")


class Scan(Base):
    __tablename__ = "scans"
    __table_args__ = (UniqueConstraint("experiment_pk", "scan_id"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_pk: Mapped[int] = mapped_column(ForeignKey("experiments.pk", ondelete="CASCADE"),
                                               nullable=False)
    #: XNAT's scan ID: a string, usually the Series Number
    scan_id: Mapped[str] = mapped_column(String(64), nullable=False)
    #: e.g. xnat:mrScanData, xnat:ctScanData
    xsi_type: Mapped[str] = mapped_column(String(64), nullable=False)
    type: Mapped[str | None] = mapped_column(String(255))
    series_description: Mapped[str | None] = mapped_column(String(255))
    modality: Mapped[str | None] = mapped_column(String(16))
    #: Series Instance UID
    uid: Mapped[str | None] = mapped_column(String(128), index=True)
    frames: Mapped[int | None] = mapped_column(Integer)
    quality: Mapped[str | None] = mapped_column(String(32), default="usable")
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)

    experiment: Mapped[Experiment] = relationship(lazy="joined")


class Assessor(Base):
    """An image assessor (e.g. a segmentation) under an experiment."""

    __tablename__ = "assessors"
    __table_args__ = (UniqueConstraint("experiment_pk", "label"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    experiment_pk: Mapped[int] = mapped_column(ForeignKey("experiments.pk", ondelete="CASCADE"),
                                               nullable=False)
    label: Mapped[str] = mapped_column(String(255), nullable=False)
    xsi_type: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)

    experiment: Mapped[Experiment] = relationship(lazy="joined")


class Resource(Base):
    """A labelled folder of files (``DICOM``, ``NIFTI``...) owned by exactly one catalog object.

    ``xnat_id`` is XNAT's integer ``xnat_abstractresource_id``. ``path`` is the folder relative to the
    archive root.
    """

    __tablename__ = "resources"
    __table_args__ = (
        UniqueConstraint("project_pk", "subject_pk", "experiment_pk", "scan_pk", "assessor_pk", "label",
                         name="uq_resource_owner_label"),
    )
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    xnat_id: Mapped[int] = mapped_column(Integer, unique=True, nullable=False)
    label: Mapped[str] = mapped_column(String(255), nullable=False)
    format: Mapped[str | None] = mapped_column(String(64))
    content: Mapped[str | None] = mapped_column(String(255))
    #: one of project, subject, experiment, scan, assessor: which owner column is set
    owner_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"), nullable=False)
    subject_pk: Mapped[int | None] = mapped_column(ForeignKey("subjects.pk", ondelete="CASCADE"))
    experiment_pk: Mapped[int | None] = mapped_column(ForeignKey("experiments.pk", ondelete="CASCADE"))
    scan_pk: Mapped[int | None] = mapped_column(ForeignKey("scans.pk", ondelete="CASCADE"))
    assessor_pk: Mapped[int | None] = mapped_column(ForeignKey("assessors.pk", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class File(Base):
    """One file of a resource; ``path`` is relative to the resource folder (may contain ``/``)."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("resource_pk", "path"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_pk: Mapped[int] = mapped_column(ForeignKey("resources.pk", ondelete="CASCADE"), nullable=False,
                                             index=True)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    content_type: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class ArchiveTxn(Base):
    """Marks an archive write transaction as committed, so crash recovery knows which way to go.

    A row is inserted in the same database transaction as the catalog change; if it exists after a
    crash, the file moves stand and pending deletions are finished; if not, the moves are undone.
    """

    __tablename__ = "archive_txns"
    txid: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
