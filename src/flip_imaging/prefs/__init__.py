"""Site-wide preferences: small typed values stored by key (namespaced, e.g. ``anonymize.site.script``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from flip_imaging.archive.models import utcnow
from flip_imaging.prefs.models import Preference

_MISSING = object()


def get_pref(session: Session, key: str, default: Any = None) -> Any:
    row = session.get(Preference, key)
    return default if row is None else row.value


def set_pref(session: Session, key: str, value: Any) -> None:
    """Set a preference inside the caller's transaction (the caller commits)."""
    row = session.get(Preference, key)
    if row is None:
        session.add(Preference(key=key, value=value, updated_at=utcnow()))
    else:
        row.value = value
        row.updated_at = utcnow()


__all__ = ["get_pref", "set_pref"]
