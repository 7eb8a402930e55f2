"""Where a received instance goes: project, subject and session, read from the ORIGINAL header.

Order, as XNAT's classic identifier, first non-empty wins: explicit overrides (import request), a
pre-registered relabel entry (by Study Instance UID, then Accession Number), the receiver's routing
expressions when enabled, ``Project:``/``Subject:``/``Session:`` in the comment fields, then Study
Description / Accession Number (project), Patient Name (subject), Patient ID (session). A project that
does not exist routes to ``Unassigned`` (the prearchive).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from flip_imaging.archive.models import Project, ProjectAlias
from flip_imaging.intake.models import DicomRelabel

UNASSIGNED = "Unassigned"
COMMENT_TAGS = (0x00104000, 0x00324000, 0x001021B0)
STUDY_DESCRIPTION = 0x00081030
ACCESSION_NUMBER = 0x00080050
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
STUDY_UID = 0x0020000D
#: every header value routing reads (a memo key for files of one study)
ROUTING_TAGS = (*COMMENT_TAGS, STUDY_DESCRIPTION, ACCESSION_NUMBER, PATIENT_NAME, PATIENT_ID, STUDY_UID)
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_EXPR = re.compile(r"^\s*\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?\s*:(.*?)(?::(\d+))?\s*$")


def comment_value(text: str, key: str) -> str | None:
    """``Project: P1`` style key-value inside a comment: case-insensitive key at start or after , ; space."""
    m = re.search(rf"(?:^|[\s,;]){re.escape(key)}\s*:\s*([\w\-]*)", text, re.IGNORECASE)
    return m.group(1) if m and m.group(1) else None


def header_text(ds: Dataset, tag: int) -> str:
    """A header value as text ('' if absent or unreadable); multi-values are joined with backslashes."""
    try:
        elem = ds.get(tag)
        if elem is None or elem.value is None:
            return ""
        value = elem.value
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            return "\\".join(str(v) for v in value)
        return str(value).strip()
    except Exception:  # an undecodable value routes like an absent one
        return ""


def sanitize_label(value: str | None) -> str:
    """XNAT labels allow letters, digits, ``_`` and ``-``; anything else becomes ``_``."""
    if not value:
        return ""
    return _LABEL_UNSAFE.sub("_", value.strip())[:255].strip("_") or ""


def parse_expressions(text: str) -> list[tuple[int, re.Pattern[str], int]]:
    """Routing expressions, one per line: ``(gggg,eeee):regex[:group]``; group 1 unless given."""
    out = []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        m = _EXPR.match(line)
        if not m:
            raise ValueError(f"routing expression {line!r} is not '(gggg,eeee):regex[:group]'")
        tag = int(m.group(1) + m.group(2), 16)
        try:
            rx = re.compile(m.group(3))
        except re.error as exc:
            raise ValueError(f"bad regular expression in routing expression {line!r}: {exc}") from None
        group = int(m.group(4)) if m.group(4) else (1 if rx.groups else 0)
        out.append((tag, rx, group))
    return out


def _by_expressions(ds: Dataset, text: str) -> str | None:
    for tag, rx, group in parse_expressions(text):
        m = rx.search(header_text(ds, tag))
        if m:
            try:
                value = m.group(group)
            except IndexError:
                continue
            if value:
                return value
    return None


@dataclass
class RoutingRules:
    """What the receiver or import request contributes to routing."""

    expressions_enabled: bool = False
    project_expression: str = ""
    subject_expression: str = ""
    session_expression: str = ""
    project: str | None = None
    subject: str | None = None
    session: str | None = None


@dataclass
class Route:
    project: str  # project ID or UNASSIGNED
    subject: str
    session: str
    accession: str | None
    relabel_pk: int | None = None
    #: the project named by the data when it does not exist (never a header value: only the label)
    unknown_project: str | None = None


def resolve_project(db: Session, name: str | None) -> str | None:
    """The project ID named by ``name`` (ID or alias), or None."""
    if not name:
        return None
    return db.scalar(
        select(Project.id)
        .outerjoin(ProjectAlias, ProjectAlias.project_pk == Project.pk)
        .where(or_(Project.id == name, ProjectAlias.alias == name))
        .limit(1)
    )


def find_relabel(db: Session, ds: Dataset) -> DicomRelabel | None:
    study = header_text(ds, STUDY_UID)
    accession = header_text(ds, ACCESSION_NUMBER)
    for kind, value in (("study_uid", study), ("accession", accession)):
        if value:
            row = db.scalar(
                select(DicomRelabel).where(DicomRelabel.key_kind == kind, DicomRelabel.key_value == value)
            )
            if row is not None:
                return row
    return None


def route(db: Session, ds: Dataset, rules: RoutingRules) -> Route:
    """Decide project/subject/session for one original header (see the module docstring)."""
    comments = [header_text(ds, t) for t in COMMENT_TAGS]

    def from_comments(key: str) -> str | None:
        for text in comments:
            if text:
                value = comment_value(text, key)
                if value:
                    return value
        return None

    relabel = find_relabel(db, ds)
    accession = header_text(ds, ACCESSION_NUMBER) or None

    def pick(
        kind: str, explicit: str | None, relabel_value: str | None, expression: str, fallbacks: list[str]
    ) -> str | None:
        if explicit:
            return explicit
        if relabel_value:
            return relabel_value
        if rules.expressions_enabled and expression:
            value = _by_expressions(ds, expression)
            if value:
                return value
        value = from_comments(kind)
        if value:
            return value
        for fallback in fallbacks:
            if fallback:
                return fallback
        return None

    project_name = pick(
        "Project", rules.project, relabel.project if relabel else None, rules.project_expression, []
    )
    project = resolve_project(db, project_name) if project_name else None
    if project is None and not project_name:
        # classic fallbacks: the whole Study Description, then the Accession Number, must name a project
        for candidate in (header_text(ds, STUDY_DESCRIPTION), accession or ""):
            project = resolve_project(db, candidate)
            if project:
                break
    subject = pick(
        "Subject",
        rules.subject,
        relabel.subject if relabel else None,
        rules.subject_expression,
        [header_text(ds, PATIENT_NAME)],
    )
    relabel_session = (relabel.session or accession) if relabel else None
    session = pick(
        "Session", rules.session, relabel_session, rules.session_expression, [header_text(ds, PATIENT_ID)]
    )
    unknown = sanitize_label(project_name) if project_name and project is None else None
    return Route(
        project=project or UNASSIGNED,
        subject=sanitize_label(subject),
        session=sanitize_label(session),
        accession=accession,
        relabel_pk=relabel.pk if relabel else None,
        unknown_project=unknown,
    )
