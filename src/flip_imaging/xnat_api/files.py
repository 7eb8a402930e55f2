"""Files: listings, single-file downloads, streamed zips, and uploads (raw, or zip/tar to unpack).

Uploads stream the request body into a staging file (memory stays flat) and are archived in one
:class:`ArchiveWriter` transaction; a client that disconnects mid-body leaves nothing behind.
"""

from __future__ import annotations

import logging
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import IO, Any

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from flip_imaging.archive import service as svc
from flip_imaging.archive.models import (
    Assessor,
    Experiment,
    File,
    Project,
    Resource,
    Scan,
    Subject,
)
from flip_imaging.archive.store import (
    STAGING,
    ArchiveWriter,
    UnsafePathError,
    file_path,
    safe_relpath,
)
from flip_imaging.archive.zipstream import ZipMember, stream_zip
from flip_imaging.auth.principal import Access, Principal
from flip_imaging.context import AppContext
from flip_imaging.xnat_api import render
from flip_imaging.xnat_api.common import (
    Resolved,
    not_found,
    owner_in,
    owner_paths,
    publish_resource,
    resolve,
    safe_component,
    write_errors,
)
from flip_imaging.xnat_api.paths import Parsed

log = logging.getLogger(__name__)

# -- files ----------------------------------------------------------------------------------------------


def _selected_files(db: Session, r: Resolved) -> list[tuple[Any, Resource, svc.FileEntry]]:
    """The files a ``.../files`` URL selects, each with the resource's owner."""
    if r.resources is not None:
        resources = r.resources
    elif r.resource is not None:
        resources = [r.resource]
    else:
        owners = r.scans if r.scans is not None else [r.owner]
        if r.scans is None and isinstance(r.owner, Experiment):
            owners = [r.owner, *svc.list_scans(db, r.owner)]
        resources = svc.list_resources(db, owners)
    owner_of: dict[int, Any] = {}
    for res in resources:
        owner_of[res.pk] = _resource_owner(db, res, r)
    return [(owner_of[res.pk], res, f) for res, f in svc.list_files(db, resources)]


def _resource_owner(db: Session, res: Resource, r: Resolved) -> Any:
    if res.owner_kind == "scan":
        for s in (r.scans or []) + ([r.scan] if r.scan else []):
            if s.pk == res.scan_pk:
                return s
        return db.get(Scan, res.scan_pk)
    if res.owner_kind == "assessor":
        return db.get(Assessor, res.assessor_pk)
    if res.owner_kind == "experiment":
        return db.get(Experiment, res.experiment_pk)
    if res.owner_kind == "subject":
        return db.get(Subject, res.subject_pk)
    return db.get(Project, res.project_pk)


def list_or_zip_files(
    ctx: AppContext, db: Session, r: Resolved, fmt: str | None, query: dict[str, str]
) -> Response:
    selected = _selected_files(db, r)
    if fmt == "zip":
        if not selected:
            raise HTTPException(404, detail="No files match this request")
        members = []
        for owner, res, f in selected:
            _base, folder = owner_paths(owner)
            members.append(
                ZipMember(
                    f"{folder}/resources/{res.label}/files/{f.path}",
                    file_path(ctx.archive_root, res, f),
                    f.size,
                    f.created_at.timestamp() if f.created_at else None,
                )
            )
        # a catalogued file missing from disk would cut the zip off mid-stream: refuse before starting
        missing = [m.arcname for m in members if not m.path.is_file()]
        if missing:
            log.error("zip refused: %d catalogued file(s) missing from the archive", len(missing))
            raise HTTPException(
                500,
                detail=f"{len(missing)} catalogued file(s) are missing from the archive, e.g. {missing[0]}",
            )
        name = (
            safe_component(owner_paths(r.owner)[1].replace("/", "_")) if r.owner is not None else "download"
        )
        return StreamingResponse(
            stream_zip(members),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
        )
    rows = [render.file_row(owner_paths(owner)[0], res, f) for owner, res, f in selected]
    rows = render.filter_rows(rows, query)
    return render.listing_response(rows, fmt, header=render.HEADERS["files"])


def download_file(ctx: AppContext, db: Session, r: Resolved, path: str) -> Response:
    try:
        rel = safe_relpath(path)
    except UnsafePathError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    resources = r.resources if r.resources is not None else ([r.resource] if r.resource else None)
    if resources is None:
        resources = svc.list_resources(db, r.scans if r.scans is not None else [r.owner])
    for res in resources:
        f = svc.find_file(db, res, rel)
        if f is not None:
            disk = file_path(ctx.archive_root, res, f)
            if not disk.is_file():
                raise HTTPException(404, detail=f"File {rel} is catalogued but missing from the archive")
            return FileResponse(
                disk, media_type=f.content_type or "application/octet-stream", filename=rel.rsplit("/", 1)[-1]
            )
    raise HTTPException(404, detail=f"File {rel} not found")


def delete_file(ctx: AppContext, db: Session, who: Principal, parsed: Parsed) -> Response:
    r = resolve(db, who, parsed, Access.DELETE)
    try:
        rel = safe_relpath(parsed.arg or "")
    except UnsafePathError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    if r.resource is None:
        raise HTTPException(
            400, detail="Delete files through their resource: .../resources/{label}/files/{path}"
        )
    f = svc.find_file(db, r.resource, rel)
    if f is None:
        raise HTTPException(404, detail=f"File {rel} not found")
    db.rollback()
    with write_errors(), ArchiveWriter(ctx) as w:
        row = w.db.get(File, f.pk)
        if row is None:
            raise HTTPException(404, detail=f"File {rel} not found")
        w.delete_file(row)
    return PlainTextResponse("")


# -- uploads --------------------------------------------------------------------------------------------

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes", "y")


async def upload(
    ctx: AppContext, db: Session, who: Principal, parsed: Parsed, query: dict[str, str], request: Request
) -> Response:
    """Stream the body to a staging file, then archive it (or the members of a zip/tar) atomically."""
    try:
        rel = safe_relpath(parsed.arg or "")
    except UnsafePathError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    r = await run_in_threadpool(resolve, db, who, parsed, Access.WRITE, allow_missing=True)
    if r.missing is not None and r.missing[0] != "resource":
        raise not_found(*r.missing)
    if r.scans is not None or r.resources is not None:
        raise HTTPException(400, detail="Upload into a single resource")
    limit = ctx.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, detail=f"Upload larger than the limit of {limit} bytes")
    await run_in_threadpool(db.rollback)
    staging = ctx.archive_root / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"upload-{uuid.uuid4().hex}"
    try:
        size = 0
        fh = await run_in_threadpool(open, tmp, "wb")
        try:
            buffer = bytearray()
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, detail=f"Upload larger than the limit of {limit} bytes")
                buffer.extend(chunk)
                if len(buffer) >= 1024 * 1024:
                    await run_in_threadpool(fh.write, bytes(buffer))
                    buffer.clear()
            if buffer:
                await run_in_threadpool(fh.write, bytes(buffer))
        finally:
            await run_in_threadpool(fh.close)
        return await run_in_threadpool(_store_upload, ctx, who, r, rel, tmp, query)
    except ClientDisconnect:
        log.info("upload aborted by the client; nothing stored")
        return PlainTextResponse("Upload aborted", status_code=400)
    finally:
        tmp.unlink(missing_ok=True)


def _store_upload(
    ctx: AppContext, who: Principal, r: Resolved, rel: str, tmp: Path, query: dict[str, str]
) -> Response:
    overwrite = truthy(query.get("overwrite"))
    extract = truthy(query.get("extract")) and rel.lower().endswith(ARCHIVE_SUFFIXES)
    limit = ctx.settings.max_upload_bytes
    with write_errors(), ArchiveWriter(ctx) as w:
        owner = owner_in(w, r)
        if r.resource is not None:
            res = w.db.get(Resource, r.resource.pk)
            created = False
        else:
            assert r.missing is not None
            res, created = w.ensure_resource(owner, r.missing[1], format=None, content=None)
        try:
            if extract:
                base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
                count = _extract_into(w, res, tmp, base, overwrite=overwrite, limit=limit)
                if count == 0:
                    raise HTTPException(400, detail="The archive contains no files")
            else:
                w.add_file(res, rel, tmp, overwrite=overwrite, move=True, content_type=None)
        except ValueError as exc:
            if isinstance(exc, UnsafePathError):
                raise
            raise HTTPException(413, detail=str(exc)) from exc
        publish_resource(w, who, owner, res, "CREATED" if created else "UPDATED")
    return PlainTextResponse("")


def _extract_into(
    w: ArchiveWriter, res: Resource, archive: Path, base: str, *, overwrite: bool, limit: int
) -> int:
    """Add every regular member of a zip or tar archive; any unsafe member name fails the whole upload."""
    count = 0
    total = 0
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode == 0o120000:
                        raise HTTPException(400, detail=f"Symbolic links are not accepted: {info.filename}")
                    name = safe_relpath(base + info.filename)
                    total += info.file_size
                    if total > limit:
                        raise ValueError(f"extracted content larger than the limit of {limit} bytes")
                    with zf.open(info) as src:
                        w.add_file(res, name, src, overwrite=overwrite, max_bytes=limit)
                    count += 1
        except zipfile.BadZipFile as exc:
            raise HTTPException(400, detail=f"Corrupt zip archive: {exc}") from exc
        return count
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise HTTPException(
                        400, detail=f"Only regular files are accepted in archives: {member.name}"
                    )
                name = safe_relpath(base + member.name.removeprefix("./"))
                total += member.size
                if total > limit:
                    raise ValueError(f"extracted content larger than the limit of {limit} bytes")
                src: IO[bytes] | None = tf.extractfile(member)
                if src is None:
                    continue
                with src:
                    w.add_file(res, name, src, overwrite=overwrite, max_bytes=limit)
                count += 1
    except tarfile.TarError as exc:
        raise HTTPException(400, detail=f"Not a readable zip or tar archive: {exc}") from exc
    return count
