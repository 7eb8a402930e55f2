"""The XNAT-compatible archive REST API: ``/data[/archive]/projects|subjects|experiments/...``.

One handler per root collection parses the rest of the path (:mod:`.paths`), checks the caller's access
to the project concerned, and hands over to :mod:`.handlers`. Uploads stream the request body to a
staging file first (memory stays flat; an aborted upload leaves nothing behind), everything else runs in
the thread pool because the catalog and the archive are synchronous.
"""

from __future__ import annotations

import json
from importlib import resources as pkg_resources

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.orm import Session

from flip_imaging import __version__
from flip_imaging.auth.deps import get_ctx, get_db, principal
from flip_imaging.auth.principal import Principal
from flip_imaging.xnat_api import common, files, handlers, projects
from flip_imaging.xnat_api.paths import BadPath, parse

router = APIRouter()

XNAT_VERSION = "1.8.10"
METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE"]
SCHEMAS = ("xdat", "xnat")


def _make_endpoint(root: str):  # type: ignore[no-untyped-def]
    async def endpoint(
        request: Request, rest: str = "", who: Principal = Depends(principal), db: Session = Depends(get_db)
    ) -> Response:
        segments = [root] + ([s for s in rest.split("/")] if rest else [])
        if segments and segments[-1] == "" and len(segments) > 1:
            segments = segments[:-1]
        try:
            parsed = parse(segments)
        except BadPath as exc:
            raise HTTPException(404, detail=str(exc)) from exc
        ctx = get_ctx(request)
        query = dict(request.query_params)
        method = "GET" if request.method == "HEAD" else request.method
        if parsed.tail == "files" and parsed.arg and method in ("PUT", "POST"):
            return await files.upload(ctx, db, who, parsed, query, request)
        if method == "POST" and parsed.tail == "projects" and not parsed.chain:
            body = await projects.read_small_body(request)
            return await run_in_threadpool(projects.create_project_xml, ctx, db, who, body)
        if (
            method in ("PUT", "POST")
            and parsed.tail is None
            and parsed.last_kind == "project"
            and request.headers.get("content-type", "").split(";")[0].strip() in common.XML_TYPES
        ):
            body = await projects.read_small_body(request)
            if body.strip():
                return await run_in_threadpool(
                    projects.create_project_xml, ctx, db, who, body, parsed.chain[0][1]
                )
        return await run_in_threadpool(handlers.dispatch, ctx, db, who, method, parsed, query)

    endpoint.__name__ = f"xnat_archive_{root}"
    return endpoint


for _prefix in ("/data", "/data/archive"):
    for _root in ("projects", "subjects", "experiments"):
        _endpoint = _make_endpoint(_root)
        router.add_api_route(f"{_prefix}/{_root}", _endpoint, methods=METHODS, include_in_schema=False)
        router.add_api_route(
            f"{_prefix}/{_root}/{{rest:path}}", _endpoint, methods=METHODS, include_in_schema=False
        )


# -- site information -----------------------------------------------------------------------------------


@router.get("/data/version", response_class=PlainTextResponse)
def data_version() -> PlainTextResponse:
    return PlainTextResponse(XNAT_VERSION)


@router.get("/xapi/siteConfig/buildInfo")
def build_info() -> JSONResponse:
    """A flat string map, as XNAT's; xnatpy reads ``version`` from it."""
    return JSONResponse(
        {
            "version": XNAT_VERSION,
            "buildNumber": "flip-imaging-" + __version__,
            "buildDate": "",
            "commit": "",
            "sha": "",
            "isDirty": "false",
            "branch": "main",
            "product": "flip-imaging " + __version__,
        }
    )


@router.get("/xapi/siteConfig/buildInfo/version", response_class=PlainTextResponse)
def build_info_version() -> PlainTextResponse:
    return PlainTextResponse(XNAT_VERSION)


@router.get("/xapi/schemas")
def schema_list(who: Principal = Depends(principal)) -> JSONResponse:
    return JSONResponse(list(SCHEMAS))


@router.get("/xapi/schemas/{name}")
def schema_document(name: str, who: Principal = Depends(principal)) -> Response:
    name = name.removesuffix(".xsd")
    if name not in SCHEMAS:
        raise HTTPException(404, detail=f"Unknown schema {name}")
    text = pkg_resources.files("flip_imaging.xnat_api").joinpath("schemas", f"{name}.xsd").read_text("utf-8")
    return Response(text, media_type="application/xml")


@router.get("/data/archive/scanners")
@router.get("/data/scanners")
def scanner_list(
    request: Request, who: Principal = Depends(principal), db: Session = Depends(get_db)
) -> Response:
    rows = [{"scanner": s} for s in handlers.site_scanners(db, who)]
    return Response(
        json.dumps({"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}}),
        media_type="application/json",
    )


@router.get("/data/archive/scan_types")
@router.get("/data/scan_types")
def scan_type_list(
    request: Request, who: Principal = Depends(principal), db: Session = Depends(get_db)
) -> Response:
    rows = [{"type": t} for t in handlers.site_scan_types(db, who)]
    return Response(
        json.dumps({"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}}),
        media_type="application/json",
    )


# -- search element catalogue (xnatpy reads it at connect to attach search fields to its classes) -----

_SEARCH_FIELDS = {
    "xnat:projectData": ["ID", "SECONDARY_ID", "NAME", "DESCRIPTION", "KEYWORDS", "PI"],
    "xnat:subjectData": ["SUBJECT_ID", "SUBJECT_LABEL", "PROJECT", "INSERT_DATE", "INSERT_USER"],
    "xnat:imageScanData": ["ID", "TYPE", "SERIES_DESCRIPTION", "QUALITY", "MODALITY", "UID"],
}
_SESSION_FIELDS = ["SESSION_ID", "LABEL", "PROJECT", "SUBJECT_ID", "DATE", "MODALITY", "INSERT_DATE"]


def _search_elements() -> dict[str, list[str]]:
    from flip_imaging.archive.service import SESSION_TYPES

    elements = dict(_SEARCH_FIELDS)
    for session_type in sorted(SESSION_TYPES):
        elements[session_type] = _SESSION_FIELDS
    return elements


@router.get("/data/search/elements")
def search_elements(who: Principal = Depends(principal)) -> Response:
    rows = [
        {
            "ELEMENT_NAME": name,
            "PLURAL": name.split(":")[1] + "s",
            "SINGULAR": name.split(":")[1],
            "COUNT": "0",
        }
        for name in _search_elements()
    ]
    return Response(
        json.dumps({"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}}),
        media_type="application/json",
    )


@router.get("/data/search/elements/{name}")
def search_element_fields(name: str, who: Principal = Depends(principal)) -> Response:
    fields = _search_elements().get(name)
    if fields is None:
        raise HTTPException(404, detail=f"Unknown data type {name}")
    rows = [
        {
            "FIELD_ID": f,
            "HEADER": f.replace("_", " ").title(),
            "TYPE": "string",
            "DESC": "",
            "SUMMARY": "",
            "REQUIRES_VALUE": "false",
            "ELEMENT_NAME": name,
        }
        for f in fields
    ]
    return Response(
        json.dumps({"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}}),
        media_type="application/json",
    )
