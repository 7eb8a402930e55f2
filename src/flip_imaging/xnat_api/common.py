"""Shared by the archive handlers: URL resolution with access checks, error mapping, event helpers.

A URL's chain of steps (see :mod:`.paths`) is resolved against the catalog here; the first project met
is checked for the access the call needs (401 anonymous, 404 invisible, 403 not enough).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flip_imaging.archive import service as svc
from flip_imaging.archive.models import (
    Assessor,
    Experiment,
    Project,
    Resource,
    Scan,
    Subject,
)
from flip_imaging.archive.store import (
    ArchiveWriter,
    UnsafePathError,
)
from flip_imaging.auth.deps import Unauthorized, check_project, find_project
from flip_imaging.auth.principal import Access, Principal, project_access
from flip_imaging.xnat_api.paths import Parsed

log = logging.getLogger(__name__)


XML_TYPES = {"text/xml", "application/xml"}
MAX_XML_BODY = 1024 * 1024
PROJECT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")
#: site preference: may users who are not admins create projects (XNAT's default: yes)
PREF_NON_ADMIN_PROJECTS = "archive.allow_non_admin_project_creation"
#: query parameters that never set a field of the object being written
RESERVED = {
    "xsiType",
    "req_format",
    "format",
    "event_reason",
    "event_type",
    "event_action",
    "event_id",
    "allowDataDeletion",
    "inbody",
    "removeFiles",
    "overwrite",
    "extract",
    "content",
    "tags",
    "columns",
    "activate",
    "quarantine",
    "fixScanTypes",
    "pullDataFromHeaders",
    "triggerPipelines",
}


# -- resolution -----------------------------------------------------------------------------------------


@dataclass
class Resolved:
    project: Project | None = None
    subject: Subject | None = None
    experiment: Experiment | None = None
    scan: Scan | None = None
    scans: list[Scan] | None = None
    assessor: Assessor | None = None
    resource: Resource | None = None
    #: several resources (one label across several scans)
    resources: list[Resource] | None = None
    #: the last chain step when it does not exist yet (PUT creates it)
    missing: tuple[str, str] | None = None
    owners: list[Any] = field(default_factory=list)

    @property
    def owner(self) -> Any:
        """The object a resource below would belong to."""
        return self.assessor or self.scan or self.experiment or self.subject or self.project


def not_found(kind: str, key: str) -> HTTPException:
    return HTTPException(404, detail=f"{kind.capitalize()} {key} not found")


def resolve(
    db: Session, who: Principal, parsed: Parsed, needed: Access, *, allow_missing: bool = False
) -> Resolved:
    """Walk the chain; the first project met is checked for ``needed`` access (401/403/404)."""
    if not who.authenticated:
        raise Unauthorized()
    r = Resolved()
    chain = parsed.chain
    for index, (kind, key) in enumerate(chain):
        last = index == len(chain) - 1
        if kind == "project":
            if find_project(db, key) is None and last and allow_missing:
                r.missing = (kind, key)
                return r
            r.project = check_project(db, who, key, needed)
            continue
        if kind == "subject":
            found = (
                svc.find_subject(db, r.project, key) if r.project is not None else svc.subject_by_id(db, key)
            )
            if found is not None and r.project is None:
                r.project = check_project(db, who, found.project.id, needed)
            if found is None:
                if last and allow_missing and r.project is not None:
                    r.missing = (kind, key)
                    return r
                raise not_found(kind, key)
            r.subject = found
            continue
        if kind == "experiment":
            if r.project is None:
                exp = svc.experiment_by_id(db, key)
                if exp is not None:
                    r.project = check_project(db, who, exp.project.id, needed)
            else:
                exp = svc.find_experiment(db, r.project, key, r.subject)
            if exp is None:
                if last and allow_missing and r.project is not None:
                    r.missing = (kind, key)
                    return r
                raise not_found(kind, key)
            r.experiment, r.subject = exp, exp.subject
            continue
        if kind == "scan":
            assert r.experiment is not None
            scan = None if ("," in key or key == "ALL") else svc.find_scan(db, r.experiment, key)
            if scan is not None:
                r.scan = scan
                continue
            if last and allow_missing and "," not in key and key != "ALL":
                r.missing = (kind, key)
                return r
            selected = svc.select_scans(db, r.experiment, key)
            if not selected and key != "ALL":
                raise not_found(kind, key)
            r.scans = selected
            continue
        if kind == "assessor":
            assert r.experiment is not None
            assessor = svc.find_assessor(db, r.experiment, key)
            if assessor is None:
                if last and allow_missing:
                    r.missing = (kind, key)
                    return r
                raise not_found(kind, key)
            r.assessor = assessor
            continue
        if kind == "resource":
            if r.scans is not None:
                r.resources = [res for s in r.scans if (res := svc.find_resource(db, s, key)) is not None]
                continue
            owner = r.owner
            res = svc.find_resource(db, owner, key)
            if res is None:
                if last and allow_missing:
                    r.missing = (kind, key)
                    return r
                raise not_found(kind, key)
            r.resource = res
            continue
        raise HTTPException(404, detail=f"{kind} is not supported by this archive")
    return r


def readable_projects(db: Session, who: Principal) -> list[Project]:
    if not who.authenticated:
        raise Unauthorized()
    projects = db.scalars(select(Project).order_by(Project.id))
    return [p for p in projects if project_access(db, who, p) >= Access.READ]


# -- shared write helpers ---------------------------------------------------------------------------------


@contextmanager
def write_errors() -> Iterator[None]:
    try:
        yield
    except UnsafePathError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    except FileExistsError as exc:
        raise HTTPException(409, detail=f"{exc} (add overwrite=true to replace it)") from exc
    except IntegrityError as exc:
        raise HTTPException(409, detail="Conflicts with an existing object (duplicate ID or label)") from exc
    except LookupError as exc:
        raise HTTPException(404, detail=str(exc)) from exc


def event_user(who: Principal) -> str | None:
    return who.username if who.authenticated else None


def reload(w: ArchiveWriter, obj: Any) -> Any:
    return None if obj is None else w.db.get(type(obj), obj.pk)


def owner_in(w: ArchiveWriter, r: Resolved) -> Any:
    owner = r.owner
    if owner is None:
        raise HTTPException(404, detail="No owner for this resource")
    return w.db.get(type(owner), owner.pk)


def project_of(owner: Any) -> Project:
    if isinstance(owner, Project):
        return owner
    if isinstance(owner, Subject | Experiment):
        return owner.project
    return owner.experiment.project


def publish_resource(w: ArchiveWriter, who: Principal, owner: Any, res: Resource, status: str) -> None:
    base, _folder = owner_paths(owner)
    uri = base.replace("/data", "/archive", 1) + f"/resources/{res.label}"
    project = project_of(owner)
    w.publish(
        "ResourceEvent",
        status,
        {
            "id": str(res.xnat_id),
            "label": res.label,
            "uri": uri,
            "project-id": project.id,
            "format": res.format,
        },
        project_id=project.id,
        object_uri=uri,
        user=event_user(who),
    )


def owner_paths(owner: Any) -> tuple[str, str]:
    """(REST base URI, folder inside download zips) of a resource owner, as XNAT names them."""
    if isinstance(owner, Scan):
        e = owner.experiment
        scan_dir = owner.scan_id + (f"-{safe_component(owner.type)}" if owner.type else "")
        return f"/data/experiments/{e.id}/scans/{owner.scan_id}", f"{e.label}/scans/{scan_dir}"
    if isinstance(owner, Assessor):
        e = owner.experiment
        return f"/data/experiments/{e.id}/assessors/{owner.id}", f"{e.label}/assessors/{owner.label}"
    if isinstance(owner, Experiment):
        return f"/data/experiments/{owner.id}", owner.label
    if isinstance(owner, Subject):
        return f"/data/projects/{owner.project.id}/subjects/{owner.id}", owner.label
    return f"/data/projects/{owner.id}", owner.id


def safe_component(value: str) -> str:
    return re.sub(r"[^\w.-]", "_", value)


def qs_fields(query: dict[str, str]) -> dict[str, str]:
    """Fields from XNAT's ``req_format=qs`` parameters, keyed by lower-case field path.

    ``xnat:mrSessionData/date=...`` → ``date``; ``xnat:projectData/PI/firstname`` → ``pi/firstname``;
    bracketed selectors such as ``demographics[@xsi:type=xnat:demographicData]`` are dropped.
    """
    out: dict[str, str] = {}
    for key, value in query.items():
        if key in RESERVED:
            continue
        head, sep, path = key.partition("/")
        if sep and ":" in head:
            name = path
        elif not sep and ":" not in key:
            name = key
        else:
            continue
        name = re.sub(r"\[[^\]]*\]", "", name).strip("/").lower()
        if name:
            out[name] = value
    return out
