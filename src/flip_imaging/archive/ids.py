"""XNAT-style site-unique identifiers (``XNAT_S00001``, ``XNAT_E00001``) from database counters."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from flip_imaging.archive.models import IdCounter

SUBJECT = "XNAT_S"
EXPERIMENT = "XNAT_E"
RESOURCE = "resource"


def next_value(session: Session, name: str) -> int:
    """Atomically increment counter ``name`` inside the caller's transaction and return the new value.

    The UPDATE takes a row lock (PostgreSQL) or the write lock (SQLite), so concurrent transactions
    never hand out the same value.
    """
    result = session.execute(
        update(IdCounter).where(IdCounter.name == name).values(value=IdCounter.value + 1)
        .returning(IdCounter.value)
    ).scalar_one_or_none()
    if result is not None:
        return int(result)
    session.add(IdCounter(name=name, value=1))
    session.flush()
    return 1


def next_xnat_id(session: Session, prefix: str) -> str:
    """``XNAT_S`` → ``XNAT_S00001`` (at least five digits, as XNAT)."""
    return f"{prefix}{next_value(session, prefix):05d}"

