"""From spool to prearchive: parse, route (original header), de-identify, group into sessions.

One worker drains ``incoming/`` in batches. For each raw file: strict parse, routing from the original
header, the site script (and the project script when the destination is the archive), then the
de-identified copy is written atomically under ``<data>/prearchive/<session>/`` and recorded as a
:class:`DicomInstance` of a :class:`DicomSession`. The batch's database commit is the point where the
raw file moves from ``work/`` to ``held/`` (kept until the session is archived, so the prearchive can
be re-derived with other labels). Quarantined files move to ``quarantine/`` with a reason.

At-least-once, idempotent: a file seen twice (a crash between commit and rename, or a re-send) is an
upsert keyed by (session, SOP Instance UID hash); the archive step never stores a SOP instance twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from flip_imaging.archive.models import Project
from flip_imaging.context import AppContext
from flip_imaging.dicomedit.scripts import with_site_secret
from flip_imaging.intake import deid_worker, scriptstore
from flip_imaging.intake.deid_worker import DeidJob, DeidResult, ScriptRef
from flip_imaging.intake.models import (
    DicomImport,
    DicomInstance,
    DicomQuarantine,
    DicomReceiver,
    DicomRelabel,
    DicomSession,
)
from flip_imaging.intake.routing import ROUTING_TAGS, UNASSIGNED, Route, RoutingRules, header_text, route
from flip_imaging.intake.spool import Spool

log = logging.getLogger(__name__)

BATCH = 64
SOP_UID, SERIES_UID, STUDY_UID = 0x00080018, 0x0020000E, 0x0020000D


class QuarantineError(Exception):
    """Processing of one file stopped for a reason an administrator should see."""


def uid_key(uid: str) -> str:
    """Original UIDs are identifying: only their SHA-256 is stored."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()


def prearchive_timestamp() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y%m%d_%H%M%S") + f"{now.microsecond // 1000:03d}"


@dataclass
class SourceConfig:
    """How files from one source (a receiver or an import request) are handled."""

    label: str
    rules: RoutingRules
    direct: bool = False
    anonymize: bool = True
    destination: str = "archive"
    overwrite: str = "none"
    receiver_pk: int | None = None
    import_pk: int | None = None
    user: str | None = None


@dataclass
class _Plan:
    name: str
    path: Path
    source: SourceConfig
    session: DicomSession
    sop_key: str
    series_key: str
    deid_rel: str
    job: DeidJob


@dataclass
class BatchResult:
    processed: int = 0
    quarantined: int = 0
    sessions: set[int] = field(default_factory=set)


class Pipeline:
    """The processing side of the intake, shared by the DICOM service and the import endpoint."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.spool = Spool(ctx.settings.spool_dir)
        self.prearchive_root = ctx.settings.data_dir / "prearchive"
        self.prearchive_root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.prearchive_root, 0o700)
        #: replaces the FLIP script's placeholder date-shift secret whenever a script is applied
        self.date_shift_secret = scriptstore.site_secret(ctx.settings)
        #: worker processes for de-identification (attached by the DICOM service), else in-thread
        self.executor: Executor | None = None
        self.workers = 1
        #: one processor at a time (the worker thread, or an import request when no worker runs)
        self.lock = threading.RLock()
        #: set whenever a batch commits or a session changes state (import requests wait on it)
        self.changed = threading.Condition()

    # -- start-up ------------------------------------------------------------------------------------
    def recover(self) -> None:
        """Put the spool and the prearchive back into a consistent state after a crash or stop."""
        from flip_imaging.intake.assembly import cleanup_archived

        with self.lock:
            returned = self.spool.recover()
            if returned:
                log.info("spool recovery: %d claimed files returned to the queue", returned)
            self._finish_interrupted_moves()
            links = self.prearchive_root / ".links"
            if links.exists():
                for leftover in links.iterdir():
                    leftover.unlink(missing_ok=True)
            with self.ctx.session() as db:
                db.execute(
                    update(DicomSession).where(DicomSession.state == "ARCHIVING").values(state="RECEIVING")
                )
                # sessions opened by a batch that never recorded its instances (crash in between)
                db.execute(
                    delete(DicomSession).where(
                        DicomSession.state == "RECEIVING", DicomSession.n_instances == 0
                    )
                )
            cleanup_archived(self)
            self._rederive_pending()

    def _finish_interrupted_moves(self) -> None:
        """A crash between a batch's commit and its renames leaves raw files of recorded (or quarantined)
        instances in the queue: finish the move instead of processing them again."""
        names = set(self.spool.pending())
        if not names:
            return
        with self.ctx.session() as db:
            recorded = set(
                db.scalars(select(DicomInstance.raw_name).where(DicomInstance.raw_name.in_(names)))
            )
            quarantined = set(
                db.scalars(select(DicomQuarantine.raw_name).where(DicomQuarantine.raw_name.in_(names)))
            )
        for name in recorded:
            os.rename(self.spool.incoming / name, self.spool.held / name)
        for name in quarantined - recorded:
            os.rename(self.spool.incoming / name, self.spool.quarantine / name)
        if recorded or quarantined:
            log.info(
                "spool recovery: %d recorded and %d quarantined files put in place",
                len(recorded),
                len(quarantined - recorded),
            )

    def _rederive_pending(self) -> None:
        """De-identified copies are written without fsync: after a crash, sessions still being received
        get theirs re-derived from the raw spool files (prearchived ones are re-derived when archived)."""
        with self.ctx.session() as db:
            sessions = list(
                db.scalars(
                    select(DicomSession).where(
                        DicomSession.state == "RECEIVING", DicomSession.destination == "archive"
                    )
                )
            )
            for session in sessions:
                try:
                    self.rederive(db, session, session.project, session.subject, session.label)
                except QuarantineError as exc:
                    session.state = "ERROR"
                    session.reason = f"cannot restore after restart: {exc}"

    # -- sources -------------------------------------------------------------------------------------
    def _source(self, db: Session, name: str, cache: dict[str, SourceConfig | None]) -> SourceConfig | None:
        tag = Spool.source_of(name)
        if tag in cache:
            return cache[tag]
        cfg: SourceConfig | None = None
        try:
            pk = int(tag[1:])
        except ValueError:
            pk = -1
        if tag.startswith("r"):
            rec = db.get(DicomReceiver, pk)
            if rec is not None:
                cfg = SourceConfig(
                    label=f"{rec.ae_title}:{rec.port}",
                    rules=RoutingRules(
                        rec.routing_expressions_enabled,
                        rec.project_routing_expression,
                        rec.subject_routing_expression,
                        rec.session_routing_expression,
                    ),
                    direct=rec.direct_archive,
                    anonymize=rec.anonymization_enabled,
                    receiver_pk=rec.pk,
                )
            else:  # receiver deleted since: process with default routing
                cfg = SourceConfig(label="receiver (deleted)", rules=RoutingRules())
        elif tag.startswith("i"):
            imp = db.get(DicomImport, pk)
            if imp is not None:
                cfg = SourceConfig(
                    label=f"import {imp.pk}",
                    rules=RoutingRules(project=imp.project, subject=imp.subject, session=imp.session),
                    direct=True,
                    destination=imp.destination,
                    overwrite=imp.overwrite,
                    import_pk=imp.pk,
                    user=imp.user,
                )
        cache[tag] = cfg
        return cfg

    # -- processing ----------------------------------------------------------------------------------
    def process_batch(
        self, limit: int = BATCH, during: Callable[[set[int]], None] | None = None
    ) -> BatchResult:
        """Claim up to ``limit`` spooled files and process them; returns what happened.

        Three steps: routing and session bookkeeping (a first commit), de-identification through
        :attr:`executor` (worker processes under the DICOM service) while ``during`` runs in this thread
        (the service archives due sessions meanwhile, excluding the sessions given to it), then the
        instances are recorded (second commit) and the raw files move to ``held/``.
        """
        result = BatchResult()
        with self.lock:
            names = self.spool.pending(limit)
            claimed = [(n, p) for n in names if (p := self.spool.claim(n)) is not None]
            if not claimed:
                if during is not None:
                    during(set())
                return result
            moves: list[tuple[Path, Path | None]] = []
            plans: list[_Plan] = []
            new_sessions: set[int] = set()
            with self.ctx.session() as db:
                cache: dict[str, SourceConfig | None] = {}
                site = scriptstore.site_script(db)
                memo: dict[object, object] = {}
                for name, path in claimed:
                    source = self._source(db, name, cache)
                    try:
                        if source is None:
                            raise QuarantineError("the import request of this file no longer exists")
                        plans.append(self._prepare(db, name, path, source, site, new_sessions, memo))
                    except QuarantineError as exc:
                        self._quarantined(db, name, path, str(exc), source, moves, result)
            pending = self.submit_jobs([p.job for p in plans])
            if during is not None:
                try:
                    during({p.session.pk for p in plans})
                except Exception:
                    log.exception("work done while de-identifying failed")
            outcomes = pending()
            with self.ctx.session() as db:
                sessions: dict[int, DicomSession] = {}
                ok_plans = [p for p, o in zip(plans, outcomes, strict=True) if o.ok]
                known = self._existing_instances(db, ok_plans)
                for plan, outcome in zip(plans, outcomes, strict=True):
                    if not outcome.ok:
                        self._quarantined(
                            db, plan.name, plan.path, outcome.reason, plan.source, moves, result
                        )
                        continue
                    pk = plan.session.pk
                    if pk not in sessions:
                        row = db.get(DicomSession, pk)
                        assert row is not None
                        sessions[pk] = row
                    plan.session = sessions[pk]
                    replaced_raw = self._record(db, plan, outcome, known)
                    result.sessions.add(pk)
                    result.processed += 1
                    moves.append((plan.path, self.spool.held / plan.name))
                    if replaced_raw and replaced_raw != plan.name:
                        moves.append((self.spool.held / replaced_raw, None))
                    if plan.source.import_pk:
                        self._import_progress(db, plan.source.import_pk)
                db.flush()
                for pk in new_sessions:  # a new session whose every file failed is dropped
                    session = db.get(DicomSession, pk)
                    if session is not None and session.n_instances == 0:
                        db.delete(session)
                        result.sessions.discard(pk)
            # committed: the raw files change folder (a crash before this only means a harmless redo)
            for src, dst in moves:
                if dst is None:
                    src.unlink(missing_ok=True)
                else:
                    try:
                        os.rename(src, dst)
                    except FileNotFoundError:
                        pass
        with self.changed:
            self.changed.notify_all()
        return result

    def submit_jobs(self, jobs: list[DeidJob]) -> Callable[[], list[DeidResult]]:
        """Start de-identification (worker processes when a pool is attached); call the result to wait."""
        if self.executor is None or len(jobs) < 2:
            return lambda: [deid_worker.run(j) for j in jobs]
        futures = [
            self.executor.submit(deid_worker.run_many, jobs[i : i + 2]) for i in range(0, len(jobs), 2)
        ]
        return lambda: [r for f in futures for r in f.result()]

    def run_jobs(self, jobs: list[DeidJob]) -> list[DeidResult]:
        return self.submit_jobs(jobs)()

    def _quarantined(
        self,
        db: Session,
        name: str,
        path: Path,
        reason: str,
        source: SourceConfig | None,
        moves: list[tuple[Path, Path | None]],
        result: BatchResult,
    ) -> None:
        self._quarantine(db, name, path, reason, source)
        moves.append((path, self.spool.quarantine / name))
        result.quarantined += 1
        if source is not None and source.import_pk:
            self._import_progress(db, source.import_pk, quarantined=True)

    def _import_progress(self, db: Session, import_pk: int, quarantined: bool = False) -> None:
        values = {"n_done": DicomImport.n_done + 1}
        if quarantined:
            values["n_quarantined"] = DicomImport.n_quarantined + 1
        db.execute(update(DicomImport).where(DicomImport.pk == import_pk).values(**values))

    def _quarantine(
        self, db: Session, name: str, path: Path, reason: str, source: SourceConfig | None
    ) -> None:
        exists = db.scalar(select(DicomQuarantine).where(DicomQuarantine.raw_name == name))
        size = path.stat().st_size if path.exists() else 0
        if exists is None:
            db.add(
                DicomQuarantine(
                    kind="instance",
                    reason=reason,
                    raw_name=name,
                    size=size,
                    source=source.label if source else Spool.source_of(name),
                )
            )
        log.warning("quarantined spool file %s: %s", name, reason)

    def _prepare(
        self,
        db: Session,
        name: str,
        path: Path,
        source: SourceConfig,
        site: scriptstore.StoredScript,
        new_sessions: set[int],
        memo: dict[object, object],
    ) -> _Plan:
        """Read the original header (no pixels), route, find or open the session, plan the job."""
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            raise QuarantineError(f"not a readable DICOM file ({type(exc).__name__})") from None
        sop, study, series = (header_text(ds, t) for t in (SOP_UID, STUDY_UID, SERIES_UID))
        if not sop or not study or not series:
            raise QuarantineError("missing SOP Instance, Study Instance or Series Instance UID")
        study_key, sop_key, series_key = uid_key(study), uid_key(sop), uid_key(series)
        # files of one study route alike: decisions are memoised for the batch (keyed by what they read)
        route_key = ("route", id(source), *(header_text(ds, t) for t in ROUTING_TAGS))
        r = memo.get(route_key)
        if r is None:
            r = memo[route_key] = route(db, ds, source.rules)
        assert isinstance(r, Route)
        destination = source.destination
        if r.project == UNASSIGNED:
            destination = "prearchive"
        else:
            project_key = ("project", r.project)
            if project_key not in memo:
                memo[project_key] = db.scalar(select(Project).where(Project.id == r.project))
            project_row = memo[project_key]  # type: ignore[assignment]
            if source.user is not None and not self._may_write(db, source.user, project_row):
                raise QuarantineError(f"user {source.user} may not add data to project {r.project}")
            if project_row is not None and project_row.prearchive_code == 0 and source.import_pk is None:
                destination = "prearchive"
        subject = r.subject or f"SUBJ_{study_key[:8]}"
        label = r.session or f"SESS_{study_key[:8]}"
        variables = {"project": r.project, "subject": subject, "session": label}
        script_project = r.project if destination == "archive" and r.project != UNASSIGNED else None
        scripts_key = ("scripts", source.anonymize, script_project)
        if scripts_key not in memo:
            memo[scripts_key] = self._scripts(db, source.anonymize, site, script_project)
        scripts = memo[scripts_key]
        session_key = ("session", study_key, r.project, destination)
        session = memo.get(session_key)
        if session is None:
            session = self._find_session(db, study_key, r.project, destination)
            if session is not None:
                memo[session_key] = session
        if session is None:
            session = DicomSession(
                study_key=study_key,
                project=r.project,
                subject=subject,
                label=label,
                state="RECEIVING",
                destination=destination,
                direct=source.direct,
                overwrite=source.overwrite,
                timestamp=prearchive_timestamp(),
                receiver_pk=source.receiver_pk,
                import_pk=source.import_pk,
                source=source.label,
                accession_number=(r.accession or None) and r.accession[:64],
                modalities=[],
                n_instances=0,
                last_received=time.time(),
                reason=(f"project {r.unknown_project} does not exist" if r.unknown_project else None),
            )
            db.add(session)
            db.flush()
            new_sessions.add(session.pk)
            memo[session_key] = session
            if r.relabel_pk is not None:
                db.execute(
                    update(DicomRelabel)
                    .where(DicomRelabel.pk == r.relabel_pk)
                    .values(used_at=datetime.now(UTC))
                )
        elif source.import_pk is not None and session.import_pk != source.import_pk:
            session.import_pk = source.import_pk
            session.direct = True
        deid_rel = f"{session.pk}/{series_key[:16]}/{sop_key[:40]}.dcm"
        assert isinstance(session, DicomSession)
        job = DeidJob(
            raw=str(path),
            out=str(self.prearchive_root / deid_rel),
            scripts=list(scripts),  # type: ignore[call-overload]
            variables=variables,
            # the receiver walked the data set before acknowledging it (see scp.check_dataset)
            structure_checked=Spool.source_of(name).startswith("r"),
        )
        return _Plan(name, path, source, session, sop_key, series_key, deid_rel, job)

    @staticmethod
    def _existing_instances(db: Session, plans: list[_Plan]) -> dict[tuple[int, str], DicomInstance]:
        """Instances already recorded for the batch's (session, SOP) keys, in one query (not one per
        file: a batch records up to :data:`BATCH` instances)."""
        if not plans:
            return {}
        rows = db.scalars(
            select(DicomInstance).where(
                DicomInstance.session_pk.in_({p.session.pk for p in plans}),
                DicomInstance.sop_key.in_({p.sop_key for p in plans}),
            )
        )
        return {(r.session_pk, r.sop_key): r for r in rows}

    def _record(
        self, db: Session, plan: _Plan, outcome: DeidResult, known: dict[tuple[int, str], DicomInstance]
    ) -> str | None:
        """Record a de-identified instance in its session; returns the raw file it replaces, if any.
        ``known`` holds the batch's recorded instances by (session, SOP key) and is kept current."""
        v = outcome.values
        session = plan.session
        values = dict(
            series_key=plan.series_key,
            raw_name=plan.name,
            deid_path=plan.deid_rel,
            sop_uid=v.get("sop_uid") or plan.sop_key,
            series_uid=v.get("series_uid"),
            series_number=v.get("series_number"),
            series_description=v.get("series_description"),
            modality=v.get("modality"),
            size=outcome.size,
            sha256=outcome.sha256,
            state="PENDING",
        )
        existing = known.get((session.pk, plan.sop_key))
        replaced_raw = None
        if existing is None:
            row = DicomInstance(session_pk=session.pk, sop_key=plan.sop_key, **values)
            db.add(row)
            known[(session.pk, plan.sop_key)] = row
            session.n_instances += 1
        else:
            replaced_raw = existing.raw_name
            for k, val in values.items():
                setattr(existing, k, val)
        modality = values["modality"]
        if modality and modality not in session.modalities:
            session.modalities = [*session.modalities, modality]
        if session.study_uid is None:
            session.study_uid = v.get("study_uid")
            session.study_date = v.get("study_date")
            session.study_time = v.get("study_time")
        session.last_received = time.time()
        session.updated_at = datetime.now(UTC)
        if session.state == "READY":
            session.state = "RECEIVING"
        return replaced_raw

    def _scripts(
        self, db: Session, site_enabled: bool, site: scriptstore.StoredScript, project: str | None
    ) -> list[ScriptRef]:
        """Site script (when on), then the project script when the file is bound for that project."""
        scripts = []
        if site_enabled and site.enabled:
            scripts.append(self.script_ref("site", site))
        if project is not None:
            proj = scriptstore.project_script(db, project)
            if proj is not None and proj.enabled:
                scripts.append(self.script_ref("project", proj))
        return scripts

    def script_ref(self, which: str, stored: scriptstore.StoredScript) -> ScriptRef:
        """Publish a script's text for the worker processes (once per text) and refer to it.

        The text published is the one applied: the site's date-shift secret in place of the FLIP
        script's placeholder. It stays in the private spool (owner-only, never served)."""
        text = with_site_secret(stored.text, self.date_shift_secret)
        digest = hashlib.sha256(text.encode()).hexdigest()
        path = self.spool.scripts / f"{digest}.das"
        if not path.exists():
            tmp = path.with_name(f".{digest}.{threading.get_ident()}.part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        return ScriptRef(which, stored.script_id, digest, str(path))

    @staticmethod
    def _may_write(db: Session, username: str, project: Project | None) -> bool:
        if project is None:
            return False
        from flip_imaging.auth.models import User
        from flip_imaging.auth.principal import Access, load_principal, project_access

        user = db.scalar(select(User).where(User.username == username))
        if user is None:
            return False
        return project_access(db, load_principal(db, user), project) >= Access.WRITE

    @staticmethod
    def _find_session(db: Session, study_key: str, project: str, destination: str) -> DicomSession | None:
        states = ("RECEIVING", "READY") if destination == "prearchive" else ("RECEIVING",)
        return db.scalar(
            select(DicomSession)
            .where(
                DicomSession.study_key == study_key,
                DicomSession.project == project,
                DicomSession.destination == destination,
                DicomSession.state.in_(states),
            )
            .order_by(DicomSession.pk.desc())
            .limit(1)
        )

    # -- re-derivation (prearchive → archive with other labels) ----------------------------------
    def rederive(self, db: Session, session: DicomSession, project: str, subject: str, label: str) -> None:
        """Re-run de-identification from the held raw files with the final labels and project script."""
        site = scriptstore.site_script(db)
        rec = db.get(DicomReceiver, session.receiver_pk) if session.receiver_pk else None
        scripts = self._scripts(db, rec.anonymization_enabled if rec is not None else True, site, project)
        variables = {"project": project, "subject": subject, "session": label}
        instances = list(db.scalars(select(DicomInstance).where(DicomInstance.session_pk == session.pk)))
        jobs = []
        for inst in instances:
            raw = self.spool.held / inst.raw_name
            if not raw.exists():
                raise QuarantineError("raw data of a prearchived instance is missing from the spool")
            jobs.append(
                DeidJob(
                    raw=str(raw),
                    out=str(self.prearchive_root / inst.deid_path),
                    scripts=scripts,
                    variables=variables,
                )
            )
        for inst, outcome in zip(instances, self.run_jobs(jobs), strict=True):
            if not outcome.ok:
                raise QuarantineError(outcome.reason)
            v = outcome.values
            inst.size = outcome.size
            inst.sha256 = outcome.sha256
            inst.sop_uid = v.get("sop_uid") or inst.sop_key
            inst.series_uid = v.get("series_uid")
            session.study_uid = v.get("study_uid")
            session.study_date = v.get("study_date")
            session.study_time = v.get("study_time")

    # -- waiting -----------------------------------------------------------------------------------
    def wait_changed(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()


def due_sessions(db: Session, quiet: float, now: float | None = None) -> list[int]:
    """Sessions whose reception is over: direct ones at once, others after the quiet period; sessions of
    an import request only once every file of the request is processed."""
    now = time.time() if now is None else now
    rows = db.execute(
        select(DicomSession.pk, DicomSession.import_pk, DicomSession.direct, DicomSession.last_received)
        .where(DicomSession.state == "RECEIVING", DicomSession.n_instances > 0)
        .where(
            or_(
                DicomSession.direct.is_(True),
                DicomSession.last_received <= now - quiet,
                DicomSession.import_pk.is_not(None),
            )
        )
        .order_by(DicomSession.pk)
    ).all()
    out = []
    imports: dict[int, bool] = {}
    for pk, import_pk, direct, last in rows:
        if import_pk is not None:
            if import_pk not in imports:
                imp = db.get(DicomImport, import_pk)
                imports[import_pk] = imp is None or (imp.state != "receiving" and imp.n_done >= imp.n_files)
            if not imports[import_pk]:
                continue
        elif not direct and last > now - quiet:
            continue
        out.append(pk)
    return out


def forget_instances(db: Session, session_pk: int) -> None:
    db.execute(delete(DicomInstance).where(DicomInstance.session_pk == session_pk))
