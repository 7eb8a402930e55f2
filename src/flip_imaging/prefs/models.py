"""Site-wide preferences (anonymization script, event-service switch...) as JSON values by key."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from flip_imaging.archive.models import utcnow
from flip_imaging.db import Base


class Preference(Base):
    __tablename__ = "preferences"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
