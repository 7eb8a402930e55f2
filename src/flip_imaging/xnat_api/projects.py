"""Projects: creation (query string or ``xnat:projectData`` XML), ownership, settings, aliases."""

from __future__ import annotations

import logging
import re
from xml.etree import ElementTree as ET

from fastapi import HTTPException, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from flip_imaging.archive.models import (
    Project,
    ProjectAlias,
    ProjectMember,
)
from flip_imaging.auth.deps import Unauthorized, check_project, find_project
from flip_imaging.auth.principal import Access, Principal
from flip_imaging.context import AppContext
from flip_imaging.events import bus
from flip_imaging.prefs import get_pref
from flip_imaging.xnat_api import render
from flip_imaging.xnat_api.common import (
    MAX_XML_BODY,
    PREF_NON_ADMIN_PROJECTS,
    PROJECT_ID_RE,
    event_user,
    qs_fields,
    resolve,
    write_errors,
)
from flip_imaging.xnat_api.paths import Parsed

log = logging.getLogger(__name__)

# -- projects -------------------------------------------------------------------------------------------


def _may_create_projects(db: Session, who: Principal) -> None:
    if not who.authenticated:
        raise Unauthorized()
    if who.is_admin:
        return
    if not get_pref(db, PREF_NON_ADMIN_PROJECTS, True):
        raise HTTPException(403, detail="Only site administrators may create projects on this site")


def _check_project_id(project_id: str) -> None:
    if not PROJECT_ID_RE.match(project_id):
        raise HTTPException(
            400, detail=f"Invalid project ID {project_id!r}: use letters, digits, '_' and '-'"
        )


def _apply_project_fields(db: Session, project: Project, fields: dict[str, str]) -> None:
    mapping = {
        "name": "name",
        "secondary_id": "secondary_id",
        "description": "description",
        "keywords": "keywords",
        "pi/firstname": "pi_firstname",
        "pi_firstname": "pi_firstname",
        "pi/lastname": "pi_lastname",
        "pi_lastname": "pi_lastname",
    }
    for key, attr in mapping.items():
        if key in fields:
            value = fields[key].strip()
            if attr == "name" and not value:
                raise HTTPException(400, detail="A project name cannot be empty")
            setattr(project, attr, value or None)
    aliases = [
        a.strip()
        for k in ("aliases/alias", "alias")
        if k in fields
        for a in fields[k].split(",")
        if a.strip()
    ]
    for alias in aliases:
        _check_project_id(alias)
        clash = find_project(db, alias)
        if clash is not None and clash.pk != project.pk:
            raise HTTPException(409, detail=f"Alias {alias} is already used by project {clash.id}")
        if clash is None:
            project.aliases.append(ProjectAlias(alias=alias))


def _create_project(
    ctx: AppContext, who: Principal, project_id: str, fields: dict[str, str], *, allow_existing: bool
) -> Response:
    _check_project_id(project_id)
    with write_errors(), ctx.session() as db:
        _may_create_projects(db, who)
        existing = find_project(db, project_id)
        if existing is not None:
            if not allow_existing:
                raise HTTPException(409, detail=f"Project {project_id} already exists")
            check_project(db, who, project_id, Access.MANAGE)
            _apply_project_fields(db, existing, fields)
            _unique_name(db, existing)
            return PlainTextResponse(existing.id)
        name = (fields.get("name") or project_id).strip()
        project = Project(id=project_id, name=name, secondary_id=project_id, extra={})
        _apply_project_fields(db, project, fields)
        _unique_name(db, project)
        if "accessibility" in fields:
            project.accessibility = _accessibility(fields["accessibility"])
        db.add(project)
        db.flush()
        if who.user is not None:
            db.add(ProjectMember(project_pk=project.pk, user_pk=who.user.pk, role="owner"))
        uri = f"/archive/projects/{project.id}"
        bus.publish(
            db,
            "ProjectEvent",
            "CREATED",
            {"id": project.id, "uri": uri},
            project_id=project.id,
            object_uri=uri,
            user=event_user(who),
        )
        db.flush()
    bus.notify()
    return PlainTextResponse(project_id, status_code=200)


def _unique_name(db: Session, project: Project) -> None:
    clash = (
        db.scalar(select(Project).where(Project.name == project.name, Project.pk != project.pk))
        if project.pk
        else db.scalar(select(Project).where(Project.name == project.name))
    )
    if clash is not None:
        raise HTTPException(
            409, detail=f"Project name {project.name!r} is already used by project {clash.id}"
        )


def put_project(ctx: AppContext, db: Session, who: Principal, key: str, query: dict[str, str]) -> Response:
    fields = qs_fields(query)
    if fields.get("id") and fields["id"] != key and find_project(db, key) is None:
        raise HTTPException(400, detail=f"ID {fields['id']} does not match the URL's {key}")
    db.rollback()
    return _create_project(ctx, who, key, fields, allow_existing=True)


async def read_small_body(request: Request, limit: int = MAX_XML_BODY) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, detail=f"Request body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, detail=f"Request body larger than {limit} bytes")
    return bytes(body)


def parse_project_xml(body: bytes) -> dict[str, str]:
    """An ``xnat:projectData`` document → fields; DTDs and entities are refused outright."""
    text = body.decode("utf-8", errors="strict") if body else ""
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        raise HTTPException(400, detail="DOCTYPE and ENTITY declarations are not accepted")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise HTTPException(400, detail=f"Malformed XML: {exc}") from exc
    local = root.tag.rsplit("}", 1)[-1]
    xsi = root.get(f"{{{render.XSI_NS}}}type", "")
    if local not in ("Project", "projectData") and xsi != "xnat:projectData":
        raise HTTPException(400, detail=f"Expected an xnat:projectData document, got <{local}>")
    fields: dict[str, str] = {}
    if root.get("ID"):
        fields["id"] = root.get("ID", "")
    if root.get("secondary_ID"):
        fields["secondary_id"] = root.get("secondary_ID", "")
    aliases: list[str] = []
    for child in root:
        name = child.tag.rsplit("}", 1)[-1]
        if name in ("name", "description", "keywords"):
            fields[name] = (child.text or "").strip()
        elif name == "aliases":
            aliases += [(a.text or "").strip() for a in child if (a.text or "").strip()]
        elif name == "PI":
            for part in child:
                pname = part.tag.rsplit("}", 1)[-1]
                if pname in ("firstname", "lastname"):
                    fields[f"pi/{pname}"] = (part.text or "").strip()
    if aliases:
        fields["aliases/alias"] = ",".join(aliases)
    return fields


def create_project_xml(
    ctx: AppContext, db: Session, who: Principal, body: bytes, url_id: str | None = None
) -> Response:
    if not who.authenticated:
        raise Unauthorized()
    try:
        fields = parse_project_xml(body)
    except UnicodeDecodeError as exc:
        raise HTTPException(400, detail="XML body is not UTF-8") from exc
    project_id = fields.pop("id", None) or url_id
    if not project_id:
        raise HTTPException(400, detail="The project document has no ID")
    if url_id and project_id != url_id:
        raise HTTPException(400, detail=f"ID {project_id} does not match the URL's {url_id}")
    db.rollback()
    return _create_project(ctx, who, project_id, fields, allow_existing=url_id is not None)


def _accessibility(value: str) -> str:
    value = value.lower()
    if value not in ("private", "protected", "public"):
        raise HTTPException(400, detail="accessibility must be private, protected or public")
    return value


def put_setting(
    ctx: AppContext, db: Session, who: Principal, parsed: Parsed, query: dict[str, str]
) -> Response:
    r = resolve(db, who, parsed, Access.MANAGE)
    assert r.project is not None
    value = parsed.arg
    if value is None:
        raise HTTPException(400, detail=f"A value is required: .../{parsed.tail}/{{value}}")
    project_pk = r.project.pk
    db.rollback()
    with ctx.session() as wdb:
        project = wdb.get(Project, project_pk)
        assert project is not None
        if parsed.tail in ("prearchive_code", "quarantine_code"):
            allowed = {"prearchive_code": {0, 4, 5}, "quarantine_code": {0, 1}}[parsed.tail]
            if not value.isdigit() or int(value) not in allowed:
                raise HTTPException(400, detail=f"{parsed.tail} must be one of {sorted(allowed)}")
            setattr(project, parsed.tail, int(value))
        elif parsed.tail == "current_arc":
            if not re.match(r"^[\w-]+$", value):
                raise HTTPException(400, detail=f"Invalid archive folder name {value!r}")
            project.current_arc = value
        else:
            project.accessibility = _accessibility(value)
    return PlainTextResponse(value)
