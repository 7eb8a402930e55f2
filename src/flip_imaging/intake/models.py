"""Tables of the DICOM intake: receivers, relabel requests, sessions being assembled, instances, quarantine.

Original (identifying) UIDs never enter the database: instances and studies are keyed by a SHA-256 of the
original UID (``*_key`` columns), which is enough to group and de-duplicate. Only values that are labels
in FLIP (the accession number is the session label) are kept in clear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from flip_imaging.archive.models import utcnow
from flip_imaging.db import Base


class DicomReceiver(Base):
    """One DICOM SCP (XNAT's ``DicomSCPInstance``): an AE title on a port plus its routing options."""

    __tablename__ = "dicom_receivers"
    __table_args__ = (UniqueConstraint("ae_title", "port", name="uq_dicom_receiver_ae_port"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), nullable=False)
    port: Mapped[int] = mapped_column(Integer, nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    identifier: Mapped[str] = mapped_column(String(255), nullable=False, default="dicomObjectIdentifier")
    file_namer: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    custom_processing: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    direct_archive: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    anonymization_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    whitelist_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    whitelist: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    routing_expressions_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    project_routing_expression: Mapped[str] = mapped_column(Text, nullable=False, default="")
    subject_routing_expression: Mapped[str] = mapped_column(Text, nullable=False, default="")
    session_routing_expression: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class DicomRelabel(Base):
    """A pre-registered routing for a study about to arrive (FLIP: random subject, session = accession)."""

    __tablename__ = "dicom_relabels"
    __table_args__ = (UniqueConstraint("key_kind", "key_value", name="uq_dicom_relabel_key"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``study_uid`` or ``accession``
    key_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    key_value: Mapped[str] = mapped_column(String(128), nullable=False)
    project: Mapped[str] = mapped_column(String(255), nullable=False)
    subject: Mapped[str | None] = mapped_column(String(255))
    session: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DicomImport(Base):
    """One ``/data/services/import`` request: its overrides and progress (the HTTP reply waits on it)."""

    __tablename__ = "dicom_imports"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(255), nullable=False)
    #: archive | prearchive
    destination: Mapped[str] = mapped_column(String(16), nullable=False, default="archive")
    project: Mapped[str | None] = mapped_column(String(255))
    subject: Mapped[str | None] = mapped_column(String(255))
    session: Mapped[str | None] = mapped_column(String(255))
    overwrite: Mapped[str] = mapped_column(String(16), nullable=False, default="none")
    n_files: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_quarantined: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: receiving (files still being written), queued, done
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="receiving")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class DicomSession(Base):
    """A study being assembled (RECEIVING), waiting in the prearchive (READY), archived or failed (ERROR).

    Keyed by the original Study Instance UID (hashed) and the destination project, as XNAT does.
    """

    __tablename__ = "dicom_sessions"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_key: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    #: project ID, or ``Unassigned``
    project: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    subject: Mapped[str] = mapped_column(String(255), nullable=False)
    label: Mapped[str] = mapped_column(String(255), nullable=False)
    #: RECEIVING, READY (prearchive), ARCHIVING, ARCHIVED, ERROR
    state: Mapped[str] = mapped_column(String(16), nullable=False, index=True, default="RECEIVING")
    #: archive | prearchive: where the session goes once complete
    destination: Mapped[str] = mapped_column(String(16), nullable=False, default="archive")
    direct: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: none | append | delete (import), or derived from the prearchive code
    overwrite: Mapped[str] = mapped_column(String(16), nullable=False, default="none")
    timestamp: Mapped[str] = mapped_column(String(32), nullable=False)
    receiver_pk: Mapped[int | None] = mapped_column(ForeignKey("dicom_receivers.pk", ondelete="SET NULL"))
    import_pk: Mapped[int | None] = mapped_column(ForeignKey("dicom_imports.pk", ondelete="SET NULL"))
    source: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    accession_number: Mapped[str | None] = mapped_column(String(64))
    #: values read from the de-identified headers, as stored in the archive
    study_uid: Mapped[str | None] = mapped_column(String(128))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    modality: Mapped[str | None] = mapped_column(String(16))
    modalities: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    n_instances: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_received: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    reason: Mapped[str | None] = mapped_column(Text)
    experiment_id: Mapped[str | None] = mapped_column(String(64))
    uri: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class DicomInstance(Base):
    """One de-identified instance of a session not yet archived; its raw bytes stay in the spool."""

    __tablename__ = "dicom_instances"
    __table_args__ = (UniqueConstraint("session_pk", "sop_key", name="uq_dicom_instance_sop"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_pk: Mapped[int] = mapped_column(
        ForeignKey("dicom_sessions.pk", ondelete="CASCADE"), nullable=False, index=True
    )
    sop_key: Mapped[str] = mapped_column(String(64), nullable=False)
    series_key: Mapped[str] = mapped_column(String(64), nullable=False)
    #: raw file name in the spool's ``held/`` folder
    raw_name: Mapped[str] = mapped_column(String(255), nullable=False)
    #: de-identified file, relative to the prearchive root
    deid_path: Mapped[str] = mapped_column(String(1024), nullable=False)
    #: de-identified values (they go into the archive as they are)
    sop_uid: Mapped[str] = mapped_column(String(128), nullable=False)
    series_uid: Mapped[str | None] = mapped_column(String(128))
    series_number: Mapped[str | None] = mapped_column(String(16))
    series_description: Mapped[str | None] = mapped_column(String(255))
    modality: Mapped[str | None] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    #: SHA-256 of the de-identified copy, computed (and the copy fsynced) by the worker that wrote it;
    #: None for rows written before that (the archive then hashes the file itself)
    sha256: Mapped[str | None] = mapped_column(String(64))
    #: PENDING, ARCHIVED (files to clean up)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="PENDING")


class DicomQuarantine(Base):
    """An instance (raw file in the spool) or session that could not be archived, with the reason."""

    __tablename__ = "dicom_quarantine"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: instance | session
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="instance")
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    raw_name: Mapped[str | None] = mapped_column(String(255))
    session_pk: Mapped[int | None] = mapped_column(ForeignKey("dicom_sessions.pk", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    size: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
