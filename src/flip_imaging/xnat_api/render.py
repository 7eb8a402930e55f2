"""XNAT's wire shapes: listing rows (JSON ResultSet / CSV), single objects (``items`` JSON and XML).

Listing values are strings, as XNAT sends them (clients call ``.strip()`` on IDs). Object URIs in
listings are the canonical short forms (``/data/experiments/XNAT_E00001``); clients rebuild child URIs.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any
from xml.etree import ElementTree as ET

from fastapi.responses import PlainTextResponse, Response

from flip_imaging.archive.models import Assessor, Experiment, File, Project, Resource, Scan, Subject
from flip_imaging.archive.service import FileEntry

XNAT_NS = "http://nrg.wustl.edu/xnat"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
ET.register_namespace("xnat", XNAT_NS)
ET.register_namespace("xsi", XSI_NS)

Row = dict[str, str]
#: query parameters that steer a listing and never filter rows
CONTROL_PARAMS = {"format", "columns", "sortBy", "sortOrder", "offset", "limit", "project", "xsiType_filter"}


def _s(value: Any) -> str:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _date(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value is not None else ""


# -- listing rows -----------------------------------------------------------------------------------


def project_rows(p: Project, with_aliases: bool = False) -> list[Row]:
    """One row per project, or per alias when the ``alias`` column is asked for (as XNAT's search)."""
    if not with_aliases:
        return [project_row(p)]
    return [{**project_row(p), "alias": a} for a in ([a.alias for a in p.aliases] or [""])]


def project_row(p: Project) -> Row:
    return {
        "ID": p.id,
        "secondary_ID": p.secondary_id or "",
        "name": p.name,
        "description": p.description or "",
        "pi_firstname": p.pi_firstname or "",
        "pi_lastname": p.pi_lastname or "",
        "URI": f"/data/projects/{p.id}",
    }


def subject_row(s: Subject) -> Row:
    return {
        "ID": s.id,
        "project": s.project.id,
        "label": s.label,
        "insert_date": _date(s.created_at),
        "insert_user": _s(s.extra.get("insert_user")),
        "group": _s(s.extra.get("group")),
        "URI": f"/data/subjects/{s.id}",
    }


def experiment_row(e: Experiment) -> Row:
    return {
        "ID": e.id,
        "project": e.project.id,
        "label": e.label,
        "xsiType": e.xsi_type,
        "date": _s(e.date),
        "time": _s(e.time),
        "modality": e.modality or "",
        "insert_date": _date(e.created_at),
        "subject_ID": e.subject.id,
        "subject_label": e.subject.label,
        "URI": f"/data/experiments/{e.id}",
    }


def scan_row(s: Scan) -> Row:
    return {
        "xnat_imagescandata_id": str(s.pk),
        "ID": s.scan_id,
        "type": s.type or "",
        "quality": s.quality or "",
        "series_description": s.series_description or "",
        "xsiType": s.xsi_type,
        "note": s.note or "",
        "modality": s.modality or "",
        "UID": s.uid or "",
        "frames": _s(s.frames),
        "URI": f"/data/experiments/{s.experiment.id}/scans/{s.scan_id}",
    }


def assessor_row(a: Assessor) -> Row:
    return {
        "ID": a.id,
        "label": a.label,
        "xsiType": a.xsi_type,
        "project": a.experiment.project.id,
        "session_ID": a.experiment.id,
        "session_label": a.experiment.label,
        "insert_date": _date(a.created_at),
        "URI": f"/data/experiments/{a.experiment.id}/assessors/{a.id}",
    }


def resource_row(r: Resource, stats: tuple[int, int], category: str = "resources") -> Row:
    return {
        "xnat_abstractresource_id": str(r.xnat_id),
        "cat_id": str(r.xnat_id),
        "label": r.label,
        "element_name": "xnat:resourceCatalog",
        "category": category,
        "cat_desc": "",
        "format": r.format or "",
        "content": r.content or "",
        "tags": "",
        "file_count": str(stats[0]),
        "file_size": str(stats[1]),
    }


def file_row(base_uri: str, r: Resource, f: File | FileEntry) -> Row:
    return {
        "Name": f.path.rsplit("/", 1)[-1],
        "Size": str(f.size),
        "URI": f"{base_uri}/resources/{r.label}/files/{f.path}",
        "collection": r.label,
        "file_tags": "",
        "file_format": "",
        "file_content": "",
        "cat_ID": str(r.xnat_id),
        "digest": "",
    }


# -- listing responses ------------------------------------------------------------------------------


def filter_rows(rows: list[Row], query: dict[str, str]) -> list[Row]:
    """Keep rows whose columns match every filter parameter (shell-style wildcards, as xnatpy sends)."""
    filters = {k: v for k, v in query.items() if k not in CONTROL_PARAMS and rows and k in rows[0]}
    if not filters:
        return rows
    out = []
    for row in rows:
        ok = True
        for key, pattern in filters.items():
            options = pattern.split(",") if key == "xsiType" else [pattern]
            if not any(fnmatchcase(row.get(key, ""), p) for p in options):
                ok = False
                break
        if ok:
            out.append(row)
    return out


def select_columns(rows: list[Row], columns: str | None) -> list[Row]:
    """Honour ``columns=``: keep the requested columns that exist, and always ``URI`` (as XNAT does)."""
    if not columns or not rows:
        return rows
    by_lower = {k.lower(): k for k in rows[0]}
    pairs: list[tuple[str, str]] = []  # (output name, source column)
    for col in (c for c in columns.split(",") if c):
        # xpath-style columns (``xnat:ctSessionData/label``) name the field by their last part
        source = by_lower.get(col.lower()) or by_lower.get(col.rsplit("/", 1)[-1].lower())
        if source is not None and col not in (p[0] for p in pairs):
            pairs.append((col, source))
    for always in ("ID", "URI"):  # XNAT answers with the identity columns whatever was asked
        if always in rows[0] and always not in (p[0] for p in pairs):
            pairs.append((always, always))
    return [{out: row[src] for out, src in pairs} for row in rows]


#: column names of each listing, for the CSV header of an empty listing (pyxnat needs one)
HEADERS = {
    "projects": ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname", "URI"],
    "subjects": ["ID", "project", "label", "insert_date", "insert_user", "group", "URI"],
    "experiments": [
        "ID",
        "project",
        "label",
        "xsiType",
        "date",
        "time",
        "modality",
        "insert_date",
        "subject_ID",
        "subject_label",
        "URI",
    ],
    "scans": [
        "xnat_imagescandata_id",
        "ID",
        "type",
        "quality",
        "series_description",
        "xsiType",
        "note",
        "modality",
        "UID",
        "frames",
        "URI",
    ],
    "assessors": ["ID", "label", "xsiType", "project", "session_ID", "session_label", "insert_date", "URI"],
    "resources": [
        "xnat_abstractresource_id",
        "cat_id",
        "label",
        "element_name",
        "category",
        "cat_desc",
        "format",
        "content",
        "tags",
        "file_count",
        "file_size",
    ],
    "files": [
        "Name",
        "Size",
        "URI",
        "collection",
        "file_tags",
        "file_format",
        "file_content",
        "cat_ID",
        "digest",
    ],
}


def empty_header(kind: str, columns: str | None) -> list[str]:
    known = HEADERS.get(kind, ["ID", "URI"])
    if not columns:
        return known
    wanted = [c for c in columns.split(",") if c]
    return wanted + [c for c in ("ID", "URI") if c in known and c not in wanted]


def listing_response(
    rows: Sequence[Row], fmt: str | None, title: str = "Results", header: Sequence[str] = ()
) -> Response:
    fmt = (fmt or "json").lower()
    if fmt == "csv":
        buf = io.StringIO()
        keys = list(rows[0].keys()) if rows else list(header)
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(keys)
        for row in rows:
            writer.writerow([row.get(k, "") for k in keys])
        return Response(buf.getvalue(), media_type="text/csv")
    if fmt == "xml":
        root = ET.Element("ResultSet", {"totalRecords": str(len(rows)), "title": title})
        res = ET.SubElement(root, "results")
        for row in rows:
            r = ET.SubElement(res, "row")
            for k, v in row.items():
                c = ET.SubElement(r, "cell", {"name": k})
                c.text = v
        return Response(ET.tostring(root, encoding="unicode"), media_type="application/xml")
    if fmt not in ("json", "html"):
        return PlainTextResponse(f"Unsupported format {fmt!r} for a listing", status_code=400)
    body = {"ResultSet": {"Result": list(rows), "totalRecords": str(len(rows)), "title": title}}
    return Response(json.dumps(body), media_type="application/json")


# -- single objects ---------------------------------------------------------------------------------


def _item(
    xsi_type: str, data: dict[str, Any], children: list[dict[str, Any]] | None = None, start: Any = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"xsi:type": xsi_type, "isHistory": False}
    if start is not None:
        meta["start_date"] = start.strftime("%a %b %d %H:%M:%S UTC %Y")
    return {
        "meta": meta,
        "data_fields": {k: v for k, v in data.items() if v not in (None, "")},
        "children": children or [],
    }


def resource_item(r: Resource, stats: tuple[int, int]) -> dict[str, Any]:
    return _item(
        "xnat:resourceCatalog",
        {
            "xnat_abstractresource_id": r.xnat_id,
            "label": r.label,
            "format": r.format,
            "content": r.content,
            "file_count": stats[0],
            "file_size": stats[1],
        },
    )


def project_fields(p: Project) -> dict[str, Any]:
    return {
        "ID": p.id,
        "secondary_ID": p.secondary_id,
        "name": p.name,
        "description": p.description,
        "keywords": p.keywords,
        "PI/firstname": p.pi_firstname,
        "PI/lastname": p.pi_lastname,
    }


def project_item(p: Project) -> dict[str, Any]:
    children = []
    if p.aliases:
        children.append(
            {
                "field": "aliases/alias",
                "items": [_item("xnat:projectData_alias", {"alias": a.alias}) for a in p.aliases],
            }
        )
    return _item("xnat:projectData", project_fields(p), children, p.created_at)


def subject_fields(s: Subject) -> dict[str, Any]:
    data = {"ID": s.id, "project": s.project.id, "label": s.label}
    data.update({k: v for k, v in s.extra.items() if isinstance(v, str | int | float)})
    return data


def subject_item(s: Subject) -> dict[str, Any]:
    return _item("xnat:subjectData", subject_fields(s), None, s.created_at)


def scan_fields(s: Scan) -> dict[str, Any]:
    data = {k: v for k, v in s.extra.items() if isinstance(v, str | int | float)}
    data.update(
        {
            "ID": s.scan_id,
            "type": s.type,
            "series_description": s.series_description,
            "quality": s.quality,
            "UID": s.uid,
            "modality": s.modality,
            "frames": s.frames,
            "note": s.note,
            "image_session_ID": s.experiment.id,
            "project": s.experiment.project.id,
            "xnat_imagescandata_id": s.pk,
        }
    )
    return data


def scan_item(s: Scan, resources: Sequence[tuple[Resource, tuple[int, int]]] = ()) -> dict[str, Any]:
    children = []
    if resources:
        children.append({"field": "file", "items": [resource_item(r, st) for r, st in resources]})
    return _item(s.xsi_type, scan_fields(s), children, s.created_at)


def experiment_fields(e: Experiment) -> dict[str, Any]:
    data = {k: v for k, v in e.extra.items() if isinstance(v, str | int | float)}
    data.update(
        {
            "ID": e.id,
            "label": e.label,
            "project": e.project.id,
            "subject_ID": e.subject.id,
            "date": _s(e.date),
            "time": _s(e.time),
            "modality": e.modality,
            "UID": e.uid,
            "dcmAccessionNumber": e.accession_number,
        }
    )
    return data


def experiment_item(
    e: Experiment,
    scans: Sequence[Scan],
    resources: Sequence[tuple[Resource, tuple[int, int]]],
    assessors: Sequence[Assessor],
) -> dict[str, Any]:
    children = []
    if scans:
        children.append({"field": "scans/scan", "items": [scan_item(s) for s in scans]})
    if resources:
        children.append(
            {"field": "resources/resource", "items": [resource_item(r, st) for r, st in resources]}
        )
    if assessors:
        children.append({"field": "assessors/assessor", "items": [assessor_item(a) for a in assessors]})
    return _item(e.xsi_type, experiment_fields(e), children, e.created_at)


def assessor_fields(a: Assessor) -> dict[str, Any]:
    data = {k: v for k, v in a.extra.items() if isinstance(v, str | int | float)}
    data.update(
        {"ID": a.id, "label": a.label, "project": a.experiment.project.id, "imageSession_ID": a.experiment.id}
    )
    return data


def assessor_item(a: Assessor) -> dict[str, Any]:
    return _item(a.xsi_type, assessor_fields(a), None, a.created_at)


def items_response(item: dict[str, Any]) -> Response:
    return Response(json.dumps({"items": [item]}), media_type="application/json")


# -- XML documents ----------------------------------------------------------------------------------

_ROOT_NAMES = {
    "xnat:projectData": "Project",
    "xnat:subjectData": "Subject",
    "xnat:mrSessionData": "MRSession",
    "xnat:ctSessionData": "CTSession",
    "xnat:petSessionData": "PETSession",
    "xnat:crSessionData": "CRSession",
    "xnat:dxSessionData": "DXSession",
    "xnat:usSessionData": "USSession",
    "xnat:mgSessionData": "MGSession",
    "xnat:xaSessionData": "XASession",
    "xnat:nmSessionData": "NMSession",
    "xnat:otherDicomSessionData": "OtherDicomSession",
    "xnat:imageAssessorData": "ImageAssessor",
}


def _q(name: str) -> str:
    return f"{{{XNAT_NS}}}{name}"


def _root(xsi_type: str, attrs: dict[str, Any]) -> ET.Element:
    prefix, _, local = xsi_type.partition(":")
    name = _ROOT_NAMES.get(xsi_type, local[0].upper() + local[1:] if local else "Item")
    el = ET.Element(_q(name), {k: _s(v) for k, v in attrs.items() if v not in (None, "")})
    el.set(f"{{{XSI_NS}}}schemaLocation", f"{XNAT_NS} https://localhost/schemas/xnat/xnat.xsd")
    return el


def _sub(parent: ET.Element, name: str, value: Any) -> None:
    if value in (None, ""):
        return
    ET.SubElement(parent, _q(name)).text = _s(value)


def _xml_resources(
    parent: ET.Element,
    tag: str,
    resources: Sequence[tuple[Resource, tuple[int, int]]],
    wrapper: str | None = None,
) -> None:
    if not resources:
        return
    holder = ET.SubElement(parent, _q(wrapper)) if wrapper else parent
    for r, (count, size) in resources:
        el = ET.SubElement(
            holder,
            _q(tag),
            {
                f"{{{XSI_NS}}}type": "xnat:resourceCatalog",
                "label": r.label,
                "file_count": str(count),
                "file_size": str(size),
            },
        )
        if r.format:
            el.set("format", r.format)
        if r.content:
            el.set("content", r.content)


def xml_response(el: ET.Element) -> Response:
    body = '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(el, encoding="unicode")
    return Response(body, media_type="text/xml")


def project_xml(p: Project, resources: Sequence[tuple[Resource, tuple[int, int]]]) -> ET.Element:
    el = _root("xnat:projectData", {"ID": p.id, "secondary_ID": p.secondary_id})
    _sub(el, "name", p.name)
    _sub(el, "description", p.description)
    _sub(el, "keywords", p.keywords)
    if p.aliases:
        aliases = ET.SubElement(el, _q("aliases"))
        for a in p.aliases:
            ET.SubElement(aliases, _q("alias")).text = a.alias
    _xml_resources(el, "resource", resources, "resources")
    if p.pi_firstname or p.pi_lastname:
        pi = ET.SubElement(el, _q("PI"))
        _sub(pi, "firstname", p.pi_firstname)
        _sub(pi, "lastname", p.pi_lastname)
    return el


def subject_xml(s: Subject, resources: Sequence[tuple[Resource, tuple[int, int]]]) -> ET.Element:
    el = _root("xnat:subjectData", {"ID": s.id, "project": s.project.id, "label": s.label})
    for key in ("group", "src"):
        _sub(el, key, s.extra.get(key))
    _xml_resources(el, "resource", resources, "resources")
    return el


def experiment_xml(
    e: Experiment,
    scans: Sequence[tuple[Scan, Sequence[tuple[Resource, tuple[int, int]]]]],
    resources: Sequence[tuple[Resource, tuple[int, int]]],
    assessors: Sequence[Assessor],
) -> ET.Element:
    el = _root(e.xsi_type, {"ID": e.id, "project": e.project.id, "label": e.label})
    _sub(el, "date", e.date)
    _sub(el, "time", e.time)
    _xml_resources(el, "resource", resources, "resources")
    _sub(el, "subject_ID", e.subject.id)
    _sub(el, "dcmAccessionNumber", e.accession_number)
    _sub(el, "modality", e.modality)
    _sub(el, "UID", e.uid)
    if scans:
        holder = ET.SubElement(el, _q("scans"))
        for s, res in scans:
            sc = ET.SubElement(holder, _q("scan"), {"ID": s.scan_id, f"{{{XSI_NS}}}type": s.xsi_type})
            if s.type:
                sc.set("type", s.type)
            if s.uid:
                sc.set("UID", s.uid)
            _sub(sc, "image_session_ID", e.id)
            _sub(sc, "quality", s.quality)
            _sub(sc, "series_description", s.series_description)
            _sub(sc, "modality", s.modality)
            _sub(sc, "frames", s.frames)
            _xml_resources(sc, "file", res)
    if assessors:
        holder = ET.SubElement(el, _q("assessors"))
        for a in assessors:
            ET.SubElement(
                holder,
                _q("assessor"),
                {"ID": a.id, "label": a.label, "project": e.project.id, f"{{{XSI_NS}}}type": a.xsi_type},
            )
    return el


def scan_xml(s: Scan, resources: Sequence[tuple[Resource, tuple[int, int]]]) -> ET.Element:
    el = _root(
        s.xsi_type, {"ID": s.scan_id, "type": s.type, "UID": s.uid, "project": s.experiment.project.id}
    )
    _sub(el, "image_session_ID", s.experiment.id)
    _sub(el, "note", s.note)
    _sub(el, "quality", s.quality)
    _sub(el, "series_description", s.series_description)
    _sub(el, "modality", s.modality)
    _sub(el, "frames", s.frames)
    _xml_resources(el, "file", resources)
    return el


def assessor_xml(a: Assessor, out: Sequence[tuple[Resource, tuple[int, int]]]) -> ET.Element:
    el = _root(
        a.xsi_type,
        {
            "ID": a.id,
            "project": a.experiment.project.id,
            "label": a.label,
            "imageSession_ID": a.experiment.id,
        },
    )
    _xml_resources(el, "file", out, "out")
    return el
