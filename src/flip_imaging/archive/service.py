"""Read and query logic over the catalog: lookups by XNAT ID or label, listings with file statistics.

Everything here takes a SQLAlchemy ``Session`` and returns catalog rows; formatting for the wire lives in
:mod:`flip_imaging.xnat_api`. Writes go through :class:`flip_imaging.archive.store.ArchiveWriter`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time
from typing import Any, NamedTuple

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from flip_imaging.archive.models import Assessor, Experiment, File, Project, Resource, Scan, Subject

Owner = Project | Subject | Experiment | Scan | Assessor

#: xsi:type of every image session this archive knows, by DICOM modality
MODALITY_SESSION_TYPES = {
    "MR": "xnat:mrSessionData",
    "CT": "xnat:ctSessionData",
    "PT": "xnat:petSessionData",
    "PET": "xnat:petSessionData",
    "CR": "xnat:crSessionData",
    "DX": "xnat:dxSessionData",
    "US": "xnat:usSessionData",
    "MG": "xnat:mgSessionData",
    "XA": "xnat:xaSessionData",
    "NM": "xnat:nmSessionData",
    "RTSTRUCT": "xnat:rtSessionData",
    "RTPLAN": "xnat:rtSessionData",
    "RTDOSE": "xnat:rtSessionData",
    "RTIMAGE": "xnat:rtSessionData",
    "SEG": "xnat:segSessionData",
    "SR": "xnat:srSessionData",
    "OT": "xnat:otherDicomSessionData",
}
_PREFIXES = [
    "mr",
    "ct",
    "pet",
    "cr",
    "dx",
    "us",
    "mg",
    "xa",
    "nm",
    "rt",
    "seg",
    "sr",
    "otherDicom",
    "dx3DCraniofacial",
    "io",
    "op",
    "opt",
    "rf",
    "xc",
    "ecg",
    "es",
    "gm",
    "hd",
    "sm",
    "xa3D",
]
SESSION_TYPES = frozenset(f"xnat:{p}SessionData" for p in _PREFIXES)
SCAN_TYPES = frozenset(f"xnat:{p}ScanData" for p in _PREFIXES)
ASSESSOR_TYPES = frozenset({"xnat:imageAssessorData"})
_TYPE_RE = re.compile(r"^[A-Za-z][\w.-]*:[A-Za-z][\w.-]*$")


def canonical_type(value: str, allowed: Iterable[str]) -> str | None:
    """Match an xsi:type case-insensitively against the known ones (clients send ``xnat:mrsessiondata``)."""
    lowered = value.lower()
    for known in allowed:
        if known.lower() == lowered:
            return known
    return None


def is_type_name(value: str) -> bool:
    return bool(_TYPE_RE.match(value))


def scan_type_for_session(session_type: str) -> str:
    """``xnat:mrSessionData`` → ``xnat:mrScanData`` (pyxnat and others create scans without a type)."""
    candidate = session_type.replace("SessionData", "ScanData")
    return candidate if candidate in SCAN_TYPES else "xnat:otherDicomScanData"


# -- lookups ------------------------------------------------------------------------------------------


def find_subject(db: Session, project: Project, key: str) -> Subject | None:
    """A subject of ``project`` by XNAT ID or by label (IDs win, as in XNAT)."""
    return db.scalar(select(Subject).where(Subject.project_pk == project.pk, Subject.id == key)) or db.scalar(
        select(Subject).where(Subject.project_pk == project.pk, Subject.label == key)
    )


def subject_by_id(db: Session, subject_id: str) -> Subject | None:
    return db.scalar(select(Subject).where(Subject.id == subject_id))


def find_experiment(
    db: Session, project: Project, key: str, subject: Subject | None = None
) -> Experiment | None:
    """An experiment of ``project`` (optionally of ``subject``) by ID or label."""
    q = select(Experiment).where(Experiment.project_pk == project.pk)
    if subject is not None:
        q = q.where(Experiment.subject_pk == subject.pk)
    return db.scalar(q.where(Experiment.id == key)) or db.scalar(q.where(Experiment.label == key))


def experiment_by_id(db: Session, experiment_id: str) -> Experiment | None:
    return db.scalar(select(Experiment).where(Experiment.id == experiment_id))


def find_scan(db: Session, experiment: Experiment, scan_id: str) -> Scan | None:
    return db.scalar(select(Scan).where(Scan.experiment_pk == experiment.pk, Scan.scan_id == scan_id))


def select_scans(db: Session, experiment: Experiment, spec: str) -> list[Scan]:
    """``ALL``, or a comma-separated list of scan IDs and/or scan types (XNAT's download selector)."""
    scans = list_scans(db, experiment)
    if spec == "ALL":
        return scans
    wanted = {part for part in spec.split(",") if part}
    return [s for s in scans if s.scan_id in wanted or (s.type is not None and s.type in wanted)]


def find_assessor(db: Session, experiment: Experiment, key: str) -> Assessor | None:
    q = select(Assessor).where(Assessor.experiment_pk == experiment.pk)
    return db.scalar(q.where(Assessor.id == key)) or db.scalar(q.where(Assessor.label == key))


def _owner_filter(owner: Owner) -> list[Any]:
    if isinstance(owner, Project):
        return [Resource.owner_kind == "project", Resource.project_pk == owner.pk]
    if isinstance(owner, Subject):
        return [Resource.owner_kind == "subject", Resource.subject_pk == owner.pk]
    if isinstance(owner, Experiment):
        return [Resource.owner_kind == "experiment", Resource.experiment_pk == owner.pk]
    if isinstance(owner, Scan):
        return [Resource.owner_kind == "scan", Resource.scan_pk == owner.pk]
    return [Resource.owner_kind == "assessor", Resource.assessor_pk == owner.pk]


def list_resources(db: Session, owners: Sequence[Owner]) -> list[Resource]:
    """Resources of the given owners (all of one kind), ordered by owner then label."""
    rows: list[Resource] = []
    for owner in owners:
        rows.extend(db.scalars(select(Resource).where(*_owner_filter(owner)).order_by(Resource.label)))
    return rows


def find_resource(db: Session, owner: Owner, key: str) -> Resource | None:
    """A resource by label, or by its integer ``xnat_abstractresource_id``."""
    q = select(Resource).where(*_owner_filter(owner))
    found = db.scalar(q.where(Resource.label == key))
    if found is None and key.isdigit():
        found = db.scalar(q.where(Resource.xnat_id == int(key)))
    return found


def resource_stats(db: Session, resources: Sequence[Resource]) -> dict[int, tuple[int, int]]:
    """``{resource pk: (file count, total bytes)}`` in one query."""
    pks = [r.pk for r in resources]
    if not pks:
        return {}
    rows = db.execute(
        select(File.resource_pk, func.count(File.pk), func.coalesce(func.sum(File.size), 0))
        .where(File.resource_pk.in_(pks))
        .group_by(File.resource_pk)
    )
    stats = {pk: (0, 0) for pk in pks}
    for pk, count, size in rows:
        stats[pk] = (int(count), int(size))
    return stats


class FileEntry(NamedTuple):
    """The columns of a catalogued file that listings and zips need (lighter than ORM rows)."""

    pk: int
    path: str
    size: int
    created_at: datetime | None


def list_files(db: Session, resources: Sequence[Resource]) -> list[tuple[Resource, FileEntry]]:
    """Every file of ``resources``, in resource then path order (plain tuples: a big session's 100,000
    files cost a few MB here, not the hundreds of MB ORM objects would)."""
    by_pk = {r.pk: r for r in resources}
    if not by_pk:
        return []
    out: list[tuple[Resource, FileEntry]] = []
    pks = list(by_pk)
    for start in range(0, len(pks), 500):
        chunk = pks[start : start + 500]
        rows = db.execute(
            select(File.resource_pk, File.pk, File.path, File.size, File.created_at)
            .where(File.resource_pk.in_(chunk))
            .order_by(File.resource_pk, File.path)
        )
        for resource_pk, pk, path, size, created in rows:
            out.append((by_pk[resource_pk], FileEntry(pk, path, size, created)))
    order = {pk: i for i, pk in enumerate(pks)}
    out.sort(key=lambda rf: (order[rf[0].pk], rf[1].path))
    return out


def find_file(db: Session, resource: Resource, path: str) -> File | None:
    return db.scalar(select(File).where(File.resource_pk == resource.pk, File.path == path))


# -- listings -----------------------------------------------------------------------------------------


def list_subjects(db: Session, projects: Sequence[Project]) -> list[Subject]:
    if not projects:
        return []
    return list(
        db.scalars(
            select(Subject)
            .where(Subject.project_pk.in_([p.pk for p in projects]))
            .order_by(Subject.project_pk, Subject.label)
        )
    )


def list_experiments(
    db: Session, projects: Sequence[Project], subject: Subject | None = None
) -> list[Experiment]:
    if not projects:
        return []
    q = select(Experiment).where(Experiment.project_pk.in_([p.pk for p in projects]))
    if subject is not None:
        q = q.where(Experiment.subject_pk == subject.pk)
    return list(db.scalars(q.order_by(Experiment.project_pk, Experiment.label)))


def list_scans(db: Session, experiment: Experiment) -> list[Scan]:
    scans = list(db.scalars(select(Scan).where(Scan.experiment_pk == experiment.pk)))
    return sorted(scans, key=lambda s: _natural_key(s.scan_id))


def list_assessors(db: Session, experiment: Experiment) -> list[Assessor]:
    return list(
        db.scalars(select(Assessor).where(Assessor.experiment_pk == experiment.pk).order_by(Assessor.label))
    )


def _natural_key(value: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", value))


def scanners(db: Session, projects: Sequence[Project]) -> list[str]:
    """Distinct scanner names recorded on sessions or scans of ``projects``."""
    names: set[str] = set()
    for exp in list_experiments(db, projects):
        if exp.extra.get("scanner"):
            names.add(str(exp.extra["scanner"]))
    return sorted(names)


def scan_types(db: Session, projects: Sequence[Project]) -> list[str]:
    if not projects:
        return []
    q = (
        select(Scan.type)
        .join(Experiment, Experiment.pk == Scan.experiment_pk)
        .where(Experiment.project_pk.in_([p.pk for p in projects]), Scan.type.is_not(None))
        .distinct()
    )
    return sorted(t for t in db.scalars(q) if t)


def project_by_key(db: Session, key: str) -> Project | None:
    from flip_imaging.archive.models import ProjectAlias

    return db.scalar(
        select(Project)
        .outerjoin(ProjectAlias, ProjectAlias.project_pk == Project.pk)
        .where(or_(Project.id == key, ProjectAlias.alias == key))
        .limit(1)
    )


# -- value parsing --------------------------------------------------------------------------------------


def parse_date(value: str) -> date:
    """XNAT accepts ISO dates and US-style ``MM/DD/YYYY``."""
    for fmt in ("%Y-%m-%d", "%m/%d/%Y", "%Y%m%d"):
        try:
            return datetime.strptime(value.strip(), fmt).date()
        except ValueError:
            continue
    raise ValueError(f"invalid date {value!r} (expected YYYY-MM-DD)")


def parse_time(value: str) -> time:
    for fmt in ("%H:%M:%S", "%H:%M", "%H%M%S", "%H:%M:%S.%f"):
        try:
            return datetime.strptime(value.strip(), fmt).time()
        except ValueError:
            continue
    raise ValueError(f"invalid time {value!r} (expected HH:MM:SS)")
