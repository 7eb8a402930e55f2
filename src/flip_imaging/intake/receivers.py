"""Receiver configuration (XNAT's ``/xapi/dicomscp`` model) and the background DICOM service.

The service started by ``flip-imaging serve`` owns the pipeline worker thread and one pynetdicom server
per enabled receiver. Changes made through the API call :func:`apply_changes`, which restarts exactly the
receivers whose settings changed, so they take effect without restarting the server.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flip_imaging.context import AppContext, register_service
from flip_imaging.dicom.scp import ReceiverSpec, parse_whitelist, whitelist_entry
from flip_imaging.intake import deid_worker
from flip_imaging.intake.models import DicomReceiver, DicomSession
from flip_imaging.intake.pipeline import Pipeline, due_sessions
from flip_imaging.intake.routing import parse_expressions
from flip_imaging.intake.scp_host import ScpHost
from flip_imaging.prefs import get_pref, set_pref

log = logging.getLogger(__name__)

DEFAULT_CREATED_PREF = "dicom.default_receiver_created"
SCP_ENABLED_PREF = "dicom.scp_enabled"

#: field name in the API → column
FIELDS = {
    "aeTitle": "ae_title", "port": "port", "enabled": "enabled", "identifier": "identifier",
    "fileNamer": "file_namer", "customProcessing": "custom_processing", "directArchive": "direct_archive",
    "anonymizationEnabled": "anonymization_enabled", "whitelistEnabled": "whitelist_enabled",
    "whitelist": "whitelist", "routingExpressionsEnabled": "routing_expressions_enabled",
    "projectRoutingExpression": "project_routing_expression",
    "subjectRoutingExpression": "subject_routing_expression",
    "sessionRoutingExpression": "session_routing_expression",
}
_BOOL = {"enabled", "custom_processing", "direct_archive", "anonymization_enabled", "whitelist_enabled",
         "routing_expressions_enabled"}
_TEXT = {"identifier", "file_namer", "project_routing_expression", "subject_routing_expression",
         "session_routing_expression"}


class ReceiverError(ValueError):
    """Invalid receiver settings (400) or a clash with another receiver (409 when ``conflict``)."""

    def __init__(self, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


def to_json(r: DicomReceiver) -> dict[str, Any]:
    return {"id": r.pk, "aeTitle": r.ae_title, "port": r.port, "enabled": r.enabled,
            "identifier": r.identifier, "fileNamer": r.file_namer, "customProcessing": r.custom_processing,
            "directArchive": r.direct_archive, "anonymizationEnabled": r.anonymization_enabled,
            "whitelistEnabled": r.whitelist_enabled, "whitelist": list(r.whitelist or []),
            "routingExpressionsEnabled": r.routing_expressions_enabled,
            "projectRoutingExpression": r.project_routing_expression,
            "subjectRoutingExpression": r.subject_routing_expression,
            "sessionRoutingExpression": r.session_routing_expression}


def _valid_ae(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > 16 or "\\" in value:
        raise ReceiverError("aeTitle must be 1-16 characters without backslash")
    if not value.isascii() or any(ord(c) < 32 for c in value):
        raise ReceiverError("aeTitle must be printable ASCII")
    return value.strip()


def apply_fields(db: Session, receiver: DicomReceiver, body: dict[str, Any]) -> None:
    """Validate and copy API fields onto ``receiver`` (unknown fields are ignored, as XNAT does)."""
    for key, value in body.items():
        column = FIELDS.get(key)
        if column is None:
            continue
        if column == "ae_title":
            value = _valid_ae(value)
        elif column == "port":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ReceiverError("port must be an integer 1-65535")
            try:
                value = int(value)
            except ValueError:
                raise ReceiverError("port must be an integer 1-65535") from None
            if not 1 <= value <= 65535:
                raise ReceiverError("port must be an integer 1-65535")
        elif column in _BOOL:
            if not isinstance(value, bool):
                raise ReceiverError(f"{key} must be true or false")
        elif column == "whitelist":
            if value is None:
                value = []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ReceiverError("whitelist must be a list of AE titles (AETITLE or AETITLE@address)")
            value = [v.strip() for v in value if v.strip()]
            for entry in value:
                try:
                    whitelist_entry(entry)
                except ValueError as exc:
                    raise ReceiverError(str(exc)) from None
        elif column in _TEXT:
            value = "" if value is None else value
            if not isinstance(value, str):
                raise ReceiverError(f"{key} must be text")
            if column.endswith("routing_expression"):
                try:
                    parse_expressions(value)
                except ValueError as exc:
                    raise ReceiverError(str(exc)) from None
        setattr(receiver, column, value)
    clash = db.scalar(select(DicomReceiver).where(DicomReceiver.ae_title == receiver.ae_title,
                                                  DicomReceiver.port == receiver.port,
                                                  DicomReceiver.pk != (receiver.pk or -1)))
    if clash is not None:
        raise ReceiverError(f"a receiver {receiver.ae_title}:{receiver.port} already exists", conflict=True)


def create_receiver(db: Session, body: dict[str, Any]) -> DicomReceiver:
    if "aeTitle" not in body or "port" not in body:
        raise ReceiverError("aeTitle and port are required")
    receiver = DicomReceiver(ae_title="", port=0, enabled=True, identifier="dicomObjectIdentifier",
                             file_namer="", custom_processing=False, direct_archive=False,
                             anonymization_enabled=True, whitelist_enabled=False, whitelist=[],
                             routing_expressions_enabled=False, project_routing_expression="",
                             subject_routing_expression="", session_routing_expression="")
    apply_fields(db, receiver, {k: v for k, v in body.items() if k != "id"})
    db.add(receiver)
    db.flush()
    return receiver


def ensure_default_receiver(ctx: AppContext) -> None:
    """On first start, the receiver from settings (unless ``dicom_port`` is 0); only ever once."""
    s = ctx.settings
    with ctx.session() as db:
        if get_pref(db, DEFAULT_CREATED_PREF):
            return
        set_pref(db, DEFAULT_CREATED_PREF, True)
        if s.dicom_port and not db.scalar(select(DicomReceiver).limit(1)):
            create_receiver(db, {"aeTitle": s.dicom_ae_title, "port": s.dicom_port})


def _spec(r: DicomReceiver, host: str) -> ReceiverSpec:
    whitelist = parse_whitelist(list(r.whitelist or [])) if r.whitelist_enabled else None
    return ReceiverSpec(pk=r.pk, ae_title=r.ae_title, port=r.port, whitelist=whitelist, host=host)


def deid_processes(ctx: AppContext) -> int:
    """Worker processes for de-identification: setting ``deid_processes``, 0 (default) one per CPU."""
    value = int(ctx.settings.deid_processes or 0)
    if value > 0:
        return value
    return max(1, os.cpu_count() or 1)


class DicomService:
    """Background service: DICOM receivers plus the worker that drains the spool and archives."""

    name = "dicom"

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.pipeline = Pipeline(ctx)
        self.host: ScpHost | None = None
        self.errors: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._scp_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        # the archive's own crash recovery ran in create_context(), before any service started
        self.pipeline.recover()
        workers = deid_processes(self.ctx)
        if workers > 1:
            mp = multiprocessing.get_context("forkserver")
            mp.set_forkserver_preload(["flip_imaging.intake.deid_worker", "flip_imaging.intake.scriptstore"])
            self.pipeline.executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=mp,
                initializer=deid_worker.init_worker,
                initargs=(os.getpid(),),
            )
            self.pipeline.workers = workers
            self._warm_workers(workers)
        ensure_default_receiver(self.ctx)
        self.host = ScpHost(self.ctx.settings.spool_dir)
        self.pipeline.spool.wakeup = self.host.wakeup
        SERVICES[id(self.ctx)] = self
        self.sync_receivers()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dicom-worker", daemon=True)
        self._thread.start()

    def _warm_workers(self, workers: int) -> None:
        """Start every de-identification process now, with the current scripts compiled (a process
        that starts while a study arrives costs that study seconds of CPU)."""
        from flip_imaging.intake import scriptstore

        assert self.pipeline.executor is not None
        with self.ctx.session() as db:
            refs = [self.pipeline.script_ref("site", scriptstore.site_script(db))]
        futures = [self.pipeline.executor.submit(deid_worker.warm, refs) for _ in range(workers)]
        for future in futures:
            try:
                future.result(timeout=120)
            except Exception:  # a worker that cannot warm up will say so on its first real job
                log.exception("de-identification worker warm-up failed")

    def stop(self) -> None:
        SERVICES.pop(id(self.ctx), None)
        with self._scp_lock:
            if self.host is not None:
                self.host.stop()
                self.host = None
        self._stop.set()
        self.pipeline.spool.wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.pipeline.executor is not None:
            self.pipeline.executor.shutdown(wait=True, cancel_futures=True)
            self.pipeline.executor = None

    # -- receivers ---------------------------------------------------------------------------------
    def sync_receivers(self) -> None:
        """Make the receiver process run exactly the enabled receivers of the database."""
        with self._scp_lock:
            if self.host is None:
                return
            with self.ctx.session() as db:
                scp_on = get_pref(db, SCP_ENABLED_PREF, True) is not False
                wanted = [
                    _spec(r, self.ctx.settings.host)
                    for r in db.scalars(select(DicomReceiver))
                    if r.enabled and scp_on
                ]
            self.errors = self.host.apply(wanted)

    # -- worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        # this thread's backlog can wait a little; the receivers' answers cannot (senders wait on them)
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)
        except (OSError, AttributeError):
            pass
        spool = self.pipeline.spool
        quiet = float(self.ctx.settings.session_quiet_seconds)
        while not self._stop.is_set():
            try:
                # due sessions are archived while the batch is being de-identified (worker processes)
                batch = self.pipeline.process_batch(during=lambda busy: self._archive_due(quiet, busy))
                continue_soon = bool(batch.processed or batch.quarantined)
                from flip_imaging.intake.assembly import settle_imports

                settle_imports(self.pipeline)
            except Exception:  # the worker must survive anything (e.g. the database restarting)
                log.exception("DICOM worker iteration failed")
                continue_soon = False
                time.sleep(1.0)
            if not continue_soon:
                spool.wakeup.wait(timeout=min(0.25, max(quiet / 4, 0.05)))
                spool.wakeup.clear()

    def _archive_due(self, quiet: float, busy: set[int]) -> None:
        """Archive (or hand to the prearchive) every due session not touched by the batch in flight."""
        from flip_imaging.intake.assembly import ArchiveFailed, archive_session, finish_prearchive

        with self.ctx.session() as db:
            due = [pk for pk in due_sessions(db, quiet) if pk not in busy]
            destinations = (
                dict(
                    db.execute(
                        select(DicomSession.pk, DicomSession.destination).where(DicomSession.pk.in_(due))
                    ).all()
                )
                if due
                else {}
            )
        for pk in due:
            if self._stop.is_set():
                return
            if destinations.get(pk) == "prearchive":
                finish_prearchive(self.pipeline, pk)
                continue
            try:
                archive_session(self.pipeline, pk)
            except ArchiveFailed:
                pass  # recorded in the quarantine


#: running services by context, so routes can reach them (tests run several contexts in one process)
SERVICES: dict[int, DicomService] = {}


def service_for(ctx: AppContext) -> DicomService | None:
    return SERVICES.get(id(ctx))


def apply_changes(ctx: AppContext) -> None:
    """Make receiver changes take effect now (no-op when the service is not running)."""
    service = service_for(ctx)
    if service is not None:
        service.sync_receivers()


def _factory(ctx: AppContext) -> DicomService:
    return DicomService(ctx)


register_service(_factory)
