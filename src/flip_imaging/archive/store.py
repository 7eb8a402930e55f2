"""Atomic writes to the archive: catalog rows and files change together or not at all.

Every change goes through an :class:`ArchiveWriter`, one database transaction plus one journal:

1. files are streamed into ``.staging/`` under the archive root (same file system), fsynced;
2. on success, a journal naming every move and deletion is written and fsynced, the staged files are
   renamed into the XNAT-style tree (``{project}/arc001/{label}/SCANS/{scan}/{resource}/...``), and the
   database transaction commits together with an :class:`~flip_imaging.archive.models.ArchiveTxn` row;
3. deletions of files happen only after the commit; the journal is then removed.

After a crash :func:`recover` reads the leftover journals: with the ``ArchiveTxn`` row present the
commit happened and the pending deletions are finished; without it the moves are undone. Readers see
either the old state or the new one, never a half-written file with a catalog entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date as date_type
from datetime import time as time_type
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from flip_imaging.archive.ids import EXPERIMENT, RESOURCE, SUBJECT, next_value, next_xnat_id
from flip_imaging.archive.models import (
    ArchiveTxn,
    Assessor,
    Experiment,
    File,
    Project,
    ProjectAlias,
    Resource,
    Scan,
    Subject,
)
from flip_imaging.context import AppContext
from flip_imaging.events import bus
from flip_imaging.fsutil import fsync_path

log = logging.getLogger(__name__)

STAGING = ".staging"
JOURNAL = ".journal"
CHUNK = 1024 * 1024

Owner = Project | Subject | Experiment | Scan | Assessor


class UnsafePathError(ValueError):
    """A file path or label that could escape its folder (``..``, absolute, empty parts, NUL)."""


def safe_relpath(path: str) -> str:
    """Normalise a client-supplied relative file path, refusing anything that could leave the folder."""
    if not path or "\x00" in path or "\\" in path:
        raise UnsafePathError(f"invalid file path {path!r}")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise UnsafePathError(f"absolute file path {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise UnsafePathError(f"invalid file path {path!r}")
    return "/".join(parts)


def safe_label(label: str) -> str:
    """A label used as one path component (project ID, subject/experiment/scan/resource label)."""
    if not label or label in (".", "..") or "/" in label or "\\" in label or "\x00" in label:
        raise UnsafePathError(f"invalid label {label!r}")
    if label.startswith("."):
        raise UnsafePathError(f"label may not start with '.': {label!r}")
    return label


def resource_dir(archive_root: Path, resource: Resource) -> Path:
    return archive_root / resource.path


def file_path(archive_root: Path, resource: Resource, file: File) -> Path:
    return archive_root / resource.path / file.path


def _fsync_all(paths: list[Path], threads: int = 8) -> None:
    """fsync many files at once: waiting fsyncs share the journal commits of the file system, so a
    batch costs a few commits instead of one per file."""
    if len(paths) < 2:
        for path in paths:
            fsync_path(path)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(paths)), thread_name_prefix="fsync") as pool:
        for _ in pool.map(fsync_path, paths):
            pass


def _makedirs(path: Path) -> None:
    """Create ``path`` and fsync each new directory's parent so the entry itself is durable."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            pass
        fsync_path(d.parent)


@dataclass
class _Move:
    staged: Path
    final: Path
    backup: Path | None = None
    #: staged from a source with a known digest and not yet fsynced: fsynced with the batch at commit
    unsynced: bool = False


@dataclass
class _Plan:
    moves: list[_Move] = field(default_factory=list)
    delete_dirs: list[Path] = field(default_factory=list)
    delete_files: list[Path] = field(default_factory=list)


class ArchiveWriter:
    """One atomic change to the archive (see the module docstring). Use as a context manager."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.root = ctx.archive_root
        self.staging = self.root / STAGING
        self.journal_dir = self.root / JOURNAL
        self.txid = uuid.uuid4().hex
        self.db: Session = ctx.writer_sessions()
        self._plan = _Plan()
        self._pending: dict[Path, _Move] = {}  # final path → its move, to spot re-adds in O(1)
        self._resource_files: dict[int, dict[str, File]] = {}  # see _files_of
        self._published = False

    # -- context management -------------------------------------------------------------------------
    def __enter__(self) -> ArchiveWriter:
        self.staging.mkdir(parents=True, exist_ok=True)
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                self._commit()
            else:
                self._abort()
        finally:
            self.db.close()

    def _journal_path(self) -> Path:
        return self.journal_dir / f"{self.txid}.json"

    def _write_journal(self) -> None:
        data = {
            "txid": self.txid,
            "moves": [[str(m.staged), str(m.final), str(m.backup) if m.backup else None]
                      for m in self._plan.moves],
            "delete_dirs": [str(p) for p in self._plan.delete_dirs],
            "delete_files": [str(p) for p in self._plan.delete_files],
        }
        tmp = self.journal_dir / f"{self.txid}.tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._journal_path())
        fsync_path(self.journal_dir)

    def _commit(self) -> None:
        plan = self._plan
        if not plan.moves and not plan.delete_dirs and not plan.delete_files:
            self.db.commit()
            self._after_commit()
            return
        try:
            self.db.add(ArchiveTxn(txid=self.txid))
            self.db.flush()  # constraint violations surface here, before any file moves
            _fsync_all([m.staged for m in plan.moves if m.unsynced])
            self._write_journal()
            for move in plan.moves:
                _makedirs(move.final.parent)
                if move.final.exists():
                    move.backup = self.staging / f"{uuid.uuid4().hex}.bak"
                    os.replace(move.final, move.backup)
                    self._write_journal()
                os.replace(move.staged, move.final)
            for parent in {m.final.parent for m in plan.moves}:
                fsync_path(parent)
            self.db.commit()
        except BaseException:
            self._abort()
            raise
        self._finish(plan)
        self._after_commit()

    def _finish(self, plan: _Plan) -> None:
        """After the commit: carry out deletions, drop backups, forget the journal."""
        _apply_deletions(self.root, plan.delete_files, plan.delete_dirs)
        for move in plan.moves:
            if move.backup is not None:
                move.backup.unlink(missing_ok=True)
        self._journal_path().unlink(missing_ok=True)
        with self.ctx.writer_sessions() as db:
            db.execute(delete(ArchiveTxn).where(ArchiveTxn.txid == self.txid))
            db.commit()

    def _after_commit(self) -> None:
        if self._published:
            bus.notify()

    def _abort(self) -> None:
        self.db.rollback()
        _undo_moves(self._plan.moves)
        self._journal_path().unlink(missing_ok=True)

    # -- lookups and creation -----------------------------------------------------------------------
    def project(self, project_id: str) -> Project:
        project = self.db.scalar(
            select(Project).outerjoin(ProjectAlias, ProjectAlias.project_pk == Project.pk)
            .where(or_(Project.id == project_id, ProjectAlias.alias == project_id)).limit(1))
        if project is None:
            raise LookupError(f"no project {project_id!r}")
        return project

    def ensure_subject(self, project: Project, label: str, **extra: Any) -> tuple[Subject, bool]:
        subject = self.db.scalar(select(Subject).where(Subject.project_pk == project.pk,
                                                       Subject.label == label))
        if subject is not None:
            return subject, False
        subject = Subject(id=next_xnat_id(self.db, SUBJECT), project_pk=project.pk,
                          label=safe_label(label), extra=extra)
        subject.project = project
        self.db.add(subject)
        self.db.flush()
        return subject, True

    def ensure_experiment(self, project: Project, subject: Subject, label: str, *, xsi_type: str,
                          date: date_type | None = None, time: time_type | None = None,
                          modality: str | None = None, uid: str | None = None,
                          accession_number: str | None = None, **extra: Any) -> tuple[Experiment, bool]:
        exp = self.db.scalar(select(Experiment).where(Experiment.project_pk == project.pk,
                                                      Experiment.label == label))
        if exp is not None:
            return exp, False
        exp = Experiment(id=next_xnat_id(self.db, EXPERIMENT), project_pk=project.pk, subject_pk=subject.pk,
                         label=safe_label(label), xsi_type=xsi_type, date=date, time=time,
                         modality=modality, uid=uid, accession_number=accession_number, extra=extra)
        exp.project, exp.subject = project, subject
        self.db.add(exp)
        self.db.flush()
        return exp, True

    def ensure_scan(self, experiment: Experiment, scan_id: str, *, xsi_type: str, type: str | None = None,
                    series_description: str | None = None, modality: str | None = None,
                    uid: str | None = None, **extra: Any) -> tuple[Scan, bool]:
        scan = self.db.scalar(select(Scan).where(Scan.experiment_pk == experiment.pk,
                                                 Scan.scan_id == scan_id))
        if scan is not None:
            return scan, False
        scan = Scan(experiment_pk=experiment.pk, scan_id=safe_label(scan_id), xsi_type=xsi_type, type=type,
                    series_description=series_description, modality=modality, uid=uid, extra=extra)
        scan.experiment = experiment
        self.db.add(scan)
        self.db.flush()
        return scan, True

    def ensure_assessor(self, experiment: Experiment, label: str, *, xsi_type: str,
                        **extra: Any) -> tuple[Assessor, bool]:
        assessor = self.db.scalar(select(Assessor).where(Assessor.experiment_pk == experiment.pk,
                                                         Assessor.label == label))
        if assessor is not None:
            return assessor, False
        assessor = Assessor(id=next_xnat_id(self.db, EXPERIMENT), experiment_pk=experiment.pk,
                            label=safe_label(label), xsi_type=xsi_type, extra=extra)
        assessor.experiment = experiment
        self.db.add(assessor)
        self.db.flush()
        return assessor, True

    def ensure_resource(self, owner: Owner, label: str, *, format: str | None = None,
                        content: str | None = None) -> tuple[Resource, bool]:
        cols = self._owner_columns(owner)
        query = select(Resource).where(Resource.label == label, Resource.owner_kind == cols["owner_kind"])
        for name in ("project_pk", "subject_pk", "experiment_pk", "scan_pk", "assessor_pk"):
            column = getattr(Resource, name)
            query = query.where(column.is_(None) if cols[name] is None else column == cols[name])
        resource = self.db.scalar(query)
        if resource is not None:
            return resource, False
        path = self._resource_path(owner, label)
        taken = self.db.scalar(select(Resource.pk).where(Resource.path == path).limit(1)) is not None
        if taken or (self.root / path).exists():
            # a relabelled or half-deleted object still owns this folder: never share it
            path = f"{path}.{uuid.uuid4().hex[:8]}"
        resource = Resource(xnat_id=next_value(self.db, RESOURCE), label=safe_label(label), format=format,
                            content=content, path=path, **cols)
        self.db.add(resource)
        self.db.flush()
        return resource, True

    @staticmethod
    def _owner_columns(owner: Owner) -> dict[str, Any]:
        cols: dict[str, Any] = dict(project_pk=None, subject_pk=None, experiment_pk=None, scan_pk=None,
                                    assessor_pk=None)
        if isinstance(owner, Project):
            cols.update(owner_kind="project", project_pk=owner.pk)
        elif isinstance(owner, Subject):
            cols.update(owner_kind="subject", project_pk=owner.project_pk, subject_pk=owner.pk)
        elif isinstance(owner, Experiment):
            cols.update(owner_kind="experiment", project_pk=owner.project_pk, experiment_pk=owner.pk)
        elif isinstance(owner, Scan):
            cols.update(owner_kind="scan", project_pk=owner.experiment.project_pk, scan_pk=owner.pk)
        elif isinstance(owner, Assessor):
            cols.update(owner_kind="assessor", project_pk=owner.experiment.project_pk, assessor_pk=owner.pk)
        else:
            raise TypeError(f"resources cannot belong to {type(owner).__name__}")
        return cols

    @staticmethod
    def _resource_path(owner: Owner, label: str) -> str:
        """XNAT's layout (a suffix is added by the caller when the folder is already taken)."""
        if isinstance(owner, Project):
            base = f"{owner.id}/resources"
        elif isinstance(owner, Subject):
            base = f"{owner.project.id}/subjects/{owner.label}/resources"
        elif isinstance(owner, Experiment):
            base = f"{owner.project.id}/{owner.project.current_arc}/{owner.label}/RESOURCES"
        elif isinstance(owner, Scan):
            exp = owner.experiment
            base = f"{exp.project.id}/{exp.project.current_arc}/{exp.label}/SCANS/{owner.scan_id}"
        else:
            exp = owner.experiment
            base = f"{exp.project.id}/{exp.project.current_arc}/{exp.label}/ASSESSORS/{owner.label}"
        return f"{base}/{safe_label(label)}"

    # -- files --------------------------------------------------------------------------------------
    def add_file(self, resource: Resource, relpath: str, source: Path | bytes | IO[bytes], *,
                 overwrite: bool = False, move: bool = False, content_type: str | None = None,
                 max_bytes: int | None = None, known: tuple[int, str] | None = None,
                 flush: bool = True) -> File:
        """Stage ``source`` and record it as ``relpath`` in ``resource``.

        ``move=True`` renames a source path into staging (same file system) instead of copying it;
        with ``known`` = (size, SHA-256) the caller vouches for the digest (the DICOM intake's worker
        processes compute it while writing), so the file is not read again; it is fsynced at commit,
        together with the other such files (concurrent fsyncs share the file system's journal
        commits). ``max_bytes`` bounds a streamed source: exceeding it raises :class:`ValueError` and
        stages nothing. ``flush=False`` leaves the INSERT to the next flush (bulk adds); the returned
        row then has no primary key yet.
        """
        relpath = safe_relpath(relpath)
        final = resource_dir(self.root, resource) / relpath
        existing = self._files_of(resource).get(relpath)
        pending = final in self._pending
        if (existing is not None or pending) and not overwrite:
            raise FileExistsError(f"{relpath} already exists in resource {resource.label}")
        staged = self.staging / f"{self.txid}-{uuid.uuid4().hex}"
        if known is not None and move and isinstance(source, Path):
            os.replace(source, staged)
            (size, digest), unsynced = known, True
        else:
            size, digest = _stage(source, staged, move=move, max_bytes=max_bytes)
            unsynced = False
        if pending:
            replaced = self._pending.pop(final)
            replaced.staged.unlink(missing_ok=True)
            self._plan.moves.remove(replaced)
        if final in self._plan.delete_files:  # deleted, then added again: the new file replaces it
            self._plan.delete_files.remove(final)
        move_ = _Move(staged=staged, final=final, unsynced=unsynced)
        self._plan.moves.append(move_)
        self._pending[final] = move_
        if existing is not None:
            existing.size, existing.sha256, existing.content_type = size, digest, content_type
            if flush:
                self.db.flush()
            return existing
        row = File(resource_pk=resource.pk, path=relpath, size=size, sha256=digest, content_type=content_type)
        self.db.add(row)
        self._files_of(resource)[relpath] = row
        if flush:
            self.db.flush()
        return row

    def _files_of(self, resource: Resource) -> dict[str, File]:
        """The resource's catalog rows by path, loaded once per transaction (one query, not one per
        added file); :meth:`add_file` and :meth:`delete_file` keep it current."""
        files = self._resource_files.get(resource.pk)
        if files is None:
            files = {f.path: f for f in self.db.scalars(select(File).where(File.resource_pk == resource.pk))}
            self._resource_files[resource.pk] = files
        return files

    def delete_file(self, file: File) -> None:
        resource = self.db.get(Resource, file.resource_pk)
        assert resource is not None
        cached = self._resource_files.get(resource.pk)
        if cached is not None and cached.get(file.path) is file:
            del cached[file.path]
        self._plan.delete_files.append(file_path(self.root, resource, file))
        self.db.delete(file)
        self.db.flush()

    def delete_resource(self, resource: Resource) -> None:
        self._resource_files.clear()
        self._plan.delete_dirs.append(resource_dir(self.root, resource))
        self.db.delete(resource)
        self.db.flush()

    def delete(self, obj: Project | Subject | Experiment | Scan | Assessor) -> None:
        """Delete a catalog object with everything below it (files removed after the commit)."""
        self._resource_files.clear()
        for resource in self._resources_under(obj):
            self._plan.delete_dirs.append(resource_dir(self.root, resource))
        if isinstance(obj, Project):
            self._plan.delete_dirs.append(self.root / obj.id)
        self.db.delete(obj)
        self.db.flush()

    def _resources_under(self, obj: Owner) -> Iterable[Resource]:
        q = select(Resource)
        if isinstance(obj, Project):
            q = q.where(Resource.project_pk == obj.pk)
        elif isinstance(obj, Subject):
            exps = select(Experiment.pk).where(Experiment.subject_pk == obj.pk)
            scans = select(Scan.pk).where(Scan.experiment_pk.in_(exps))
            assessors = select(Assessor.pk).where(Assessor.experiment_pk.in_(exps))
            q = q.where(or_(Resource.subject_pk == obj.pk, Resource.experiment_pk.in_(exps),
                            Resource.scan_pk.in_(scans), Resource.assessor_pk.in_(assessors)))
        elif isinstance(obj, Experiment):
            scans = select(Scan.pk).where(Scan.experiment_pk == obj.pk)
            assessors = select(Assessor.pk).where(Assessor.experiment_pk == obj.pk)
            q = q.where(or_(Resource.experiment_pk == obj.pk, Resource.scan_pk.in_(scans),
                            Resource.assessor_pk.in_(assessors)))
        elif isinstance(obj, Scan):
            q = q.where(Resource.scan_pk == obj.pk)
        else:
            q = q.where(Resource.assessor_pk == obj.pk)
        return list(self.db.scalars(q))

    # -- events -------------------------------------------------------------------------------------
    def publish(self, event_type: str, status: str, payload: dict[str, Any], *, project_id: str | None = None,
                object_uri: str | None = None, user: str | None = None) -> None:
        """Publish an event in this transaction: it exists if and only if the change commits."""
        bus.publish(self.db, event_type, status, payload, project_id=project_id, object_uri=object_uri,
                    user=user)
        self._published = True


def _stage(source: Path | bytes | IO[bytes], staged: Path, *, move: bool,
           max_bytes: int | None) -> tuple[int, str]:
    """Write ``source`` to ``staged`` (fsynced) and return its size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    if isinstance(source, Path) and move:
        os.replace(source, staged)
        with open(staged, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
            os.fsync(fh.fileno())
        return size, digest.hexdigest()
    try:
        with open(staged, "wb") as out:
            if isinstance(source, bytes):
                chunks: Iterable[bytes] = [source]
            elif isinstance(source, Path):
                chunks = _read_chunks(open(source, "rb"), close=True)
            else:
                chunks = _read_chunks(source, close=False)
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise ValueError(f"file larger than the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def _read_chunks(fh: IO[bytes], *, close: bool) -> Iterable[bytes]:
    try:
        while chunk := fh.read(CHUNK):
            yield chunk
    finally:
        if close:
            fh.close()


def _undo_moves(moves: list[_Move]) -> None:
    """Put the tree back as it was: a move happened iff its staged file is gone."""
    for move in reversed(moves):
        if move.staged.exists():
            move.staged.unlink()
        else:
            move.final.unlink(missing_ok=True)
        if move.backup is not None and move.backup.exists():
            os.replace(move.backup, move.final)


def _apply_deletions(root: Path, files: list[Path], dirs: list[Path]) -> None:
    for path in files:
        path.unlink(missing_ok=True)
        _prune_empty_parents(root, path.parent)
    for path in dirs:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        _prune_empty_parents(root, path.parent)


def _prune_empty_parents(root: Path, path: Path) -> None:
    root = root.resolve()
    p = path
    while p.resolve() != root and root in p.resolve().parents:
        try:
            p.rmdir()
        except OSError:
            return
        p = p.parent


def recover(ctx: AppContext) -> int:
    """Finish or undo archive transactions interrupted by a crash; returns how many were found.

    Run at start-up before anything writes. Leftover staged files that no journal names are deleted.
    """
    root = ctx.archive_root
    journal_dir, staging = root / JOURNAL, root / STAGING
    found = 0
    if journal_dir.exists():
        for journal in sorted(journal_dir.glob("*.json")):
            found += 1
            data = json.loads(journal.read_text())
            txid = data["txid"]
            moves = [_Move(Path(s), Path(f), Path(b) if b else None) for s, f, b in data["moves"]]
            with ctx.sessions() as db:
                committed = db.get(ArchiveTxn, txid) is not None
            if committed:
                _apply_deletions(root, [Path(p) for p in data["delete_files"]],
                                 [Path(p) for p in data["delete_dirs"]])
                for move in moves:
                    if move.backup is not None:
                        move.backup.unlink(missing_ok=True)
                log.info("archive recovery: finished committed transaction %s", txid)
            else:
                _undo_moves(moves)
                log.info("archive recovery: rolled back uncommitted transaction %s", txid)
            journal.unlink()
            with ctx.writer_sessions() as db:
                db.execute(delete(ArchiveTxn).where(ArchiveTxn.txid == txid))
                db.commit()
        for tmp in journal_dir.glob("*.tmp"):
            tmp.unlink()
    if staging.exists():
        for leftover in staging.iterdir():
            leftover.unlink(missing_ok=True)
    return found
